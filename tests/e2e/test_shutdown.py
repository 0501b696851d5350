"""Stopping and removing containers as Docker does: a forced removal of an
AutoRemove container, sidewhale's own shutdown, and restart and exec
details that clients see."""

import pathlib
import signal
import tempfile
import time
import uuid

import docker

from conftest import docker_cli


def test_force_remove_of_running_auto_remove_container(sidewhale, docker_client):
    """The client's forced DELETE owns the removal, and the exit's
    auto-removal skips it: testcontainers-python removes its Ryuk
    container this way at exit and accepts only success or 404."""
    docker_client.images.pull("busybox", tag="latest")

    for _ in range(3):
        name = f"autorm-{uuid.uuid4().hex[:8]}"
        created = docker_cli(
            sidewhale, "run", "-d", "--rm", "--name", name, "busybox", "sleep", "100",
            check=False, timeout=60,
        )
        assert created.returncode == 0, created.stderr

        removed = docker_cli(sidewhale, "rm", "-f", name, check=False, timeout=60)

        assert removed.returncode == 0, removed.stderr
        assert removed.stdout == f"{name}\n"


def test_shutdown_stops_containers_with_their_signal(private_server):
    """SIGTERM to sidewhale sends each running container its stop signal
    and waits, as Docker's daemon does, so a trap can save its data."""
    root = pathlib.Path(tempfile.mkdtemp(prefix="sw-shutdown-"))
    out = root / "out"
    out.mkdir()
    server = private_server(root=root)
    client = docker.DockerClient(base_url=server.docker_host, version="auto", timeout=120)
    try:
        client.images.pull("busybox", tag="latest")
        script = "trap 'echo saved > /out/flag; exit 0' TERM; while true; do sleep 0.2; done"
        client.containers.run("busybox", ["sh", "-c", script], detach=True, volumes=[f"{out}:/out"])
        time.sleep(1)
    finally:
        client.close()

    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=30)

    assert (out / "flag").read_text() == "saved\n"


def test_exec_with_tty_sets_term(docker_client):
    docker_client.images.pull("busybox", tag="latest")
    container = docker_client.containers.run("busybox", ["sleep", "300"], detach=True)
    try:
        result = container.exec_run(["sh", "-c", "echo TERM=$TERM"], tty=True)

        assert result.output.decode().strip() == "TERM=xterm"
    finally:
        container.remove(force=True)


def test_restart_sends_restart_event(docker_client):
    docker_client.images.pull("busybox", tag="latest")
    container = docker_client.containers.run("busybox", ["sleep", "300"], detach=True)
    since = time.time()
    try:
        container.restart(timeout=1)
        events = docker_client.events(
            decode=True, since=since, until=time.time() + 1, filters={"container": container.id}
        )

        actions = [event["Action"] for event in events]

        assert actions[-2:] == ["start", "restart"]
    finally:
        container.remove(force=True)
