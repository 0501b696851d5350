"""Choosing an executor: HostConfig.Runtime, the configured rules, the
default, and what /info reports about them."""

import pathlib
import subprocess
import tempfile

import docker
import pytest

from conftest import BINARY, EXECUTOR, TEST_USER, docker_cli, request

RULES = """\
[executor]
default = "proot"

[[executor.rules]]
image = "docker.io/library/busybox:*"
executor = "chroot"
"""


@pytest.fixture
def ruled_server(private_server):
    """A sidewhale of the test's own whose configuration sends busybox to
    chroot."""
    root = pathlib.Path(tempfile.mkdtemp(prefix="sw-rules-"))
    config = root / "sidewhale.toml"
    config.write_text(RULES)
    return private_server("--config", str(config), root=root)


def test_info_lists_every_executor(docker_client):
    info = docker_client.info()

    assert {"proot", "bubblewrap", "chroot"} <= set(info["Runtimes"])
    assert info["DefaultRuntime"] == (EXECUTOR or "proot")


def test_cli_runtime_bubblewrap_echo(sidewhale):
    assert docker_cli(sidewhale, "pull", "busybox", check=False).returncode == 0

    result = docker_cli(
        sidewhale, "run", "--rm", "--runtime", "bubblewrap", "busybox", "echo", "ok", check=False
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


def test_runtime_shows_in_inspect(docker_client):
    docker_client.images.pull("busybox", tag="latest")

    container = docker_client.containers.create("busybox", ["true"], runtime="bubblewrap")

    assert container.attrs["HostConfig"]["Runtime"] == "bubblewrap"
    container.remove()


def test_unknown_runtime_is_rejected(sidewhale, docker_client):
    docker_client.images.pull("busybox", tag="latest")

    status, body = request(
        sidewhale, "POST", "/containers/create",
        {"Image": "busybox", "HostConfig": {"Runtime": "no-such-runtime"}},
    )

    assert status == 400
    assert "no-such-runtime" in body["message"]


def test_rule_sends_busybox_to_chroot(ruled_server):
    client = docker.DockerClient(base_url=ruled_server.docker_host, version="auto", timeout=120)
    client.images.pull("busybox", tag="latest")
    try:
        if TEST_USER is not None:
            # chroot needs the host's root, so the rule's executor cannot run.
            with pytest.raises(docker.errors.APIError) as raised:
                client.containers.create("busybox", ["true"])
            assert raised.value.status_code == 400
            assert "chroot" in raised.value.explanation
            assert "root" in raised.value.explanation
            return

        container = client.containers.create("busybox", ["uname", "-n"], hostname="ruled")
        assert container.attrs["HostConfig"]["Runtime"] == "chroot"
        container.start()
        assert container.wait(timeout=60)["StatusCode"] == 0
        # chroot gives the container a UTS namespace with its own name,
        # which proot cannot.
        assert container.logs() == b"ruled\n"
        container.remove()

        # The request's Runtime comes before the rules.
        chosen = client.containers.create("busybox", ["true"], runtime="proot")
        assert chosen.attrs["HostConfig"]["Runtime"] == "proot"
        chosen.remove()
    finally:
        client.close()


def test_invalid_config_stops_start_up():
    root = pathlib.Path(tempfile.mkdtemp(prefix="sw-badconfig-"))
    config = root / "bad.toml"
    config.write_text('[executor]\ndefault = 5\n')

    result = subprocess.run(
        [str(BINARY), "--config", str(config), "--state-dir", str(root / "state")],
        capture_output=True, text=True, timeout=30,
    )

    assert result.returncode != 0
    assert "executor.default" in result.stderr
    # figment names the file relative to the working directory.
    assert f"{root.name}/bad.toml" in result.stderr
