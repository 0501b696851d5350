"""The built-in Ryuk: testcontainers-python with Ryuk enabled, the
protocol spoken directly, and the Docker socket bind that Ryuk requests."""

import socket
import subprocess
import sys
import time
import uuid

import docker
import pytest

RYUK_IMAGE = "testcontainers/ryuk:0.8.1"

# The child starts a redis container with Ryuk enabled, prints the
# container's id, and waits to be killed.
CHILD = """
import time
from testcontainers.community.redis import RedisContainer

redis = RedisContainer("redis:7")
redis.start()
print(redis.get_wrapped_container().id, flush=True)
time.sleep(600)
"""

RECONNECTION_TIMEOUT = 2


@pytest.fixture(scope="module")
def images(sidewhale):
    client = docker.DockerClient(base_url=sidewhale.docker_host, version="auto")
    client.images.pull("busybox", tag="latest")
    client.images.pull("redis", tag="7")
    client.close()


def container_ids(client):
    # One list request: `containers.list` also inspects each container,
    # which fails with 404 when Ryuk removes one in between.
    return {container["Id"] for container in client.api.containers(all=True)}


def wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return predicate()


def test_killed_session_is_reaped(sidewhale, images, docker_client):
    env = sidewhale.env()
    env.pop("TESTCONTAINERS_RYUK_DISABLED", None)
    env["RYUK_RECONNECTION_TIMEOUT"] = f"{RECONNECTION_TIMEOUT}s"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline().strip()
        assert len(line) == 64, f"child printed {line!r}; stderr:\n{child.stderr.read() if child.poll() is not None else ''}"
        redis_id = line
        ryuk = [c for c in docker_client.containers.list() if c.name.startswith("testcontainers-ryuk-")]
        assert len(ryuk) == 1
        assert ryuk[0].status == "running"
        assert redis_id in container_ids(docker_client)
    finally:
        child.kill()
        child.wait(timeout=30)

    # Removal of the redis directory adds to the reconnection timeout.
    gone = wait_until(lambda: redis_id not in container_ids(docker_client), RECONNECTION_TIMEOUT + 30)
    assert gone, "the killed session's redis container is still listed"
    ryuk_gone = wait_until(lambda: ryuk[0].id not in container_ids(docker_client), 15)
    assert ryuk_gone, "the Ryuk container, started with AutoRemove, is still listed"


def test_protocol_acks_and_removes_matches(sidewhale, images, docker_client):
    session = uuid.uuid4().hex
    labels = {"org.testcontainers.sessionId": session}
    ryuk = docker_client.containers.run(
        RYUK_IMAGE,
        detach=True,
        ports={8080: None},
        environment={"RYUK_RECONNECTION_TIMEOUT": "1s"},
        volumes=["/var/run/docker.sock:/var/run/docker.sock"],
        privileged=True,
    )
    ryuk.reload()
    assert ryuk.status == "running"
    assert ryuk.attrs["Config"]["ExposedPorts"] == {"8080/tcp": {}}
    host_port = int(ryuk.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"])
    assert wait_until(lambda: b"Started!" in ryuk.logs(), 10)

    kept = docker_client.containers.create("busybox:latest", ["true"], labels={"other": "1"})
    doomed = docker_client.containers.run(
        "busybox:latest", ["sleep", "300"], detach=True, labels=labels, volumes=["/scratch"]
    )
    doomed_volume = doomed.attrs["Mounts"][0]["Name"]
    network = docker_client.networks.create(f"ryuk-{session[:8]}", labels=labels)

    with socket.create_connection(("127.0.0.1", host_port), timeout=10) as client:
        client.sendall(f"label=org.testcontainers.sessionId%3D{session}\n".encode())
        client.sendall(b"label=never=matches&name=nothing-has-this-name\r\n")
        # The file must be closed too, or the connection stays open.
        with client.makefile("rb") as reader:
            assert reader.readline() == b"ACK\n"
            assert reader.readline() == b"ACK\n"
        # While a client stays connected, nothing is removed.
        time.sleep(2)
        assert doomed.id in container_ids(docker_client)

    assert wait_until(lambda: doomed.id not in container_ids(docker_client), 30)
    # Ryuk removes with RemoveVolumes, so anonymous volumes go too.
    assert doomed_volume not in [volume.name for volume in docker_client.volumes.list()]
    assert kept.id in container_ids(docker_client)
    assert not docker_client.networks.list(names=[network.name])
    ryuk.reload()
    assert ryuk.status == "exited"
    assert ryuk.attrs["State"]["ExitCode"] == 0
    assert b"removed 1 containers, 1 networks" in ryuk.logs()
    ryuk.remove()
    kept.remove()


def test_ryuk_image_needs_no_pull(sidewhale, docker_client):
    image = docker_client.images.get(RYUK_IMAGE)
    assert image.attrs["Config"]["ExposedPorts"] == {"8080/tcp": {}}
    docker_client.images.pull("docker.io/testcontainers/ryuk", tag="0.5.1")


def test_docker_socket_bind_is_redirected(sidewhale, images, docker_client):
    output = docker_client.containers.run(
        "busybox:latest",
        ["sh", "-c", "test -S /var/run/docker.sock && echo socket"],
        volumes=["/var/run/docker.sock:/var/run/docker.sock"],
        remove=False,
        detach=True,
    )
    try:
        assert output.wait(timeout=60)["StatusCode"] == 0
        assert output.logs() == b"socket\n"
        mount = [m for m in output.attrs["Mounts"] if m["Destination"] == "/var/run/docker.sock"][0]
        assert mount["Source"] == str(sidewhale.socket)
    finally:
        output.remove(force=True)


def test_tcp_bind_source_is_rejected(sidewhale, images, docker_client):
    with pytest.raises(docker.errors.APIError) as raised:
        docker_client.api.create_container(
            "busybox:latest",
            ["true"],
            host_config=docker_client.api.create_host_config(
                binds=["tcp://127.0.0.1:2375:/var/run/docker.sock"]
            ),
        )
    assert raised.value.status_code == 400
    assert "invalid volume specification" in str(raised.value)
