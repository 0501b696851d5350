"""The docker CLI through sidewhale: pull, create, start, ps, logs, exec,
stop and rm."""

import json
import pathlib
import time
import uuid

import pytest

from conftest import TEST_USER, docker_cli


@pytest.fixture
def name():
    return f"cli-{uuid.uuid4().hex[:8]}"


def test_cli_container_lifecycle(sidewhale, name):
    pulled = docker_cli(sidewhale, "pull", "busybox")
    assert "busybox:latest" in pulled.stdout

    script = "echo hello; echo oops >&2; trap 'echo bye; exit 0' TERM; while true; do sleep 1; done"
    created = docker_cli(sidewhale, "create", "--name", name, "--label", "suite=cli", "busybox", "sh", "-c", script)
    container_id = created.stdout.strip()
    assert len(container_id) == 64

    listed = docker_cli(sidewhale, "ps", "-a", "--filter", f"name={name}", "--format", "{{.ID}} {{.Status}}")
    assert listed.stdout.startswith(container_id[:12])
    assert "Created" in listed.stdout

    docker_cli(sidewhale, "start", name)
    running = docker_cli(sidewhale, "ps", "--filter", "label=suite=cli", "--format", "{{.Names}} {{.Status}}")
    assert f"{name} Up" in running.stdout

    deadline = time.monotonic() + 10
    logs = docker_cli(sidewhale, "logs", name)
    # stdout and stderr are separate pipes, so either may arrive first.
    while "hello" not in logs.stdout or "oops" not in logs.stderr:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
        logs = docker_cli(sidewhale, "logs", name)
    assert logs.stdout == "hello\n"
    assert logs.stderr == "oops\n"

    executed = docker_cli(sidewhale, "exec", name, "sh", "-c", "echo from-exec; cat /etc/hostname")
    assert executed.stdout == f"from-exec\n{container_id[:12]}\n"
    failed = docker_cli(sidewhale, "exec", name, "sh", "-c", "exit 3", check=False)
    assert failed.returncode == 3
    missing = docker_cli(sidewhale, "exec", name, "no-such-command", check=False)
    assert missing.returncode == 127

    docker_cli(sidewhale, "stop", "-t", "5", name)
    stopped = docker_cli(sidewhale, "ps", "-a", "--filter", f"name={name}", "--format", "{{.Status}}")
    assert stopped.stdout.startswith("Exited (0)")
    assert "bye" in docker_cli(sidewhale, "logs", name).stdout

    docker_cli(sidewhale, "rm", "-f", name)
    gone = docker_cli(sidewhale, "ps", "-a", "--filter", f"name={name}", "--format", "{{.ID}}")
    assert gone.stdout == ""


def test_cli_rm_force_kills_running(sidewhale, name):
    docker_cli(sidewhale, "pull", "busybox")
    docker_cli(sidewhale, "run", "-d", "--name", name, "busybox", "sleep", "1000")
    docker_cli(sidewhale, "rm", "-f", name)
    inspected = docker_cli(sidewhale, "inspect", name, check=False)
    assert inspected.returncode != 0
    assert "No such object" in inspected.stderr or "No such container" in inspected.stderr


def test_cli_missing_image_fails_cleanly(sidewhale):
    result = docker_cli(sidewhale, "pull", "no-such-image-anywhere:1", check=False)
    assert result.returncode != 0
    assert "not found" in result.stderr or "does not exist" in result.stderr


def test_cli_run_foreground_prints_and_exits(sidewhale):
    docker_cli(sidewhale, "pull", "busybox")
    result = docker_cli(sidewhale, "run", "--rm", "busybox", "echo", "hello")
    assert result.stdout == "hello\n"
    failed = docker_cli(sidewhale, "run", "--rm", "busybox", "sh", "-c", "exit 5", check=False)
    assert failed.returncode == 5


def test_cli_run_interactive_stdin(sidewhale):
    docker_cli(sidewhale, "pull", "busybox")
    result = docker_cli(sidewhale, "run", "-i", "--rm", "busybox", "cat", input="x\n")
    assert result.stdout == "x\n"


def test_cli_stat_sees_the_container_files(sidewhale):
    """GNU coreutils' ls and stat call statx(2). In the container they must
    see the image's files, not the host's."""
    docker_cli(sidewhale, "pull", "redis:7")

    # The image's entrypoint script and /data exist in the image only.
    result = docker_cli(
        sidewhale, "run", "--rm", "--entrypoint", "", "redis:7",
        "stat", "-c", "%n %F", "/usr/local/bin/docker-entrypoint.sh", "/data",
    )
    assert result.stdout == (
        "/usr/local/bin/docker-entrypoint.sh regular file\n/data directory\n"
    )

    # A directory of the host that the image lacks stays invisible.
    host_only = docker_cli(
        sidewhale, "run", "--rm", "--entrypoint", "", "redis:7",
        "ls", "-ld", str(pathlib.Path(__file__).resolve().parent), check=False,
    )
    assert host_only.returncode != 0
    assert "No such file or directory" in host_only.stderr


def test_cli_run_rm_of_missing_command_exits_127(sidewhale, name):
    """A start that fails still removes an AutoRemove container, which
    `docker run --rm` waits for before it exits."""
    docker_cli(sidewhale, "pull", "busybox")

    result = docker_cli(
        sidewhale, "run", "--rm", "--name", name, "busybox", "/no/such/program",
        check=False, timeout=60,
    )

    assert result.returncode == 127
    assert "/no/such/program" in result.stderr
    gone = docker_cli(sidewhale, "ps", "-a", "--filter", f"name={name}", "--format", "{{.ID}}")
    assert gone.stdout == ""


def test_cli_non_root_user_has_only_its_groups(sidewhale):
    """A non-root image user gets its own groups, not sidewhale's (root's
    group 0 would open files of the root group)."""
    info = json.loads(docker_cli(sidewhale, "info", "--format", "{{json .SecurityOptions}}").stdout)
    if TEST_USER and "name=rootless" not in info:
        pytest.skip("outside rootless mode an unprivileged sidewhale cannot set groups")
    docker_cli(sidewhale, "pull", "busybox")

    result = docker_cli(sidewhale, "run", "--rm", "-u", "65534", "busybox", "id", "-G")

    assert result.stdout == "65534\n"
