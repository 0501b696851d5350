"""Containers that listen on the same port side by side: each in its own
network namespace (network.isolation auto or namespace), or on the host's
network with relocated ports where sidewhale can create no namespace and
the executor (proot) relocates them.

Skipped where containers share the host's network without relocation:
with an executor that does not join namespaces, or on a host that cannot
create them (see README, Network isolation).
"""

import socket
import time

import docker
import pytest
import redis as redis_module
import sqlalchemy
from testcontainers.postgres import PostgresContainer

from conftest import EXECUTOR

# Executors whose containers join the namespace sidewhale creates.
# `example` is the example executor plugin, which runs proot.
NAMESPACE_EXECUTORS = {None, "proot", "bubblewrap", "chroot", "example"}

# Probes the port from inside the container: with nc where the image has
# it, otherwise with bash's /dev/tcp, as Testcontainers' wait strategies do.
PROBE = (
    "if command -v nc >/dev/null; then nc -z localhost {port}; "
    "else bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}'; fi"
)


@pytest.fixture(scope="module")
def isolated(sidewhale):
    client = docker.DockerClient(base_url=sidewhale.docker_host, version="auto", timeout=120)
    options = client.info().get("SecurityOptions") or []
    client.images.pull("redis", tag="7")
    client.images.pull("busybox", tag="latest")
    client.close()
    if EXECUTOR not in NAMESPACE_EXECUTORS:
        pytest.skip(f"executor {EXECUTOR} shares the host's network")
    for mode in ("namespace", "relocated"):
        if f"name=netns,mode={mode}" in options:
            return mode
    pytest.skip(f"sidewhale shares the host's network here (SecurityOptions {options})")


def published_port(container, port):
    container.reload()
    return int(container.attrs["NetworkSettings"]["Ports"][f"{port}/tcp"][0]["HostPort"])


def wait_for_redis(port):
    client = redis_module.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    for _ in range(100):
        try:
            if client.ping():
                return client
        except redis_module.exceptions.ConnectionError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"redis on published port {port} did not answer")


def listening_ports(container):
    """Returns the ports in LISTEN state in the container's /proc/net/tcp
    and /proc/net/tcp6."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        result = container.exec_run(["cat", table])
        assert result.exit_code == 0, result.output
        for line in result.output.decode().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                ports.add(int(fields[1].split(":")[-1], 16))
    return ports


def test_two_redis_on_one_port(sidewhale, isolated, docker_client):
    first = docker_client.containers.run("redis:7", detach=True, ports={"6379/tcp": None})
    try:
        second = docker_client.containers.run("redis:7", detach=True, ports={"6379/tcp": None})
        try:
            first_port = published_port(first, 6379)
            second_port = published_port(second, 6379)
            assert first_port != second_port

            first_client = wait_for_redis(first_port)
            second_client = wait_for_redis(second_port)
            assert first_client.set("owner", "first")
            assert first_client.get("owner") == b"first"
            assert second_client.get("owner") is None

            for container in (first, second):
                probe = container.exec_run(["sh", "-c", PROBE.format(port=6379)])
                assert probe.exit_code == 0, probe.output
                assert 6379 in listening_ports(container)
            first_client.close()
            second_client.close()
        finally:
            second.remove(force=True)
    finally:
        first.remove(force=True)


def test_two_postgres_at_once(sidewhale, isolated):
    first = PostgresContainer("postgres:16", username="tester", password="secret", dbname="one")
    second = PostgresContainer("postgres:16", username="tester", password="secret", dbname="two")
    with first, second:
        names = []
        for postgres in (first, second):
            engine = sqlalchemy.create_engine(postgres.get_connection_url())
            with engine.connect() as connection:
                names.append(connection.execute(sqlalchemy.text("SELECT current_database()")).scalar())
            engine.dispose()
        assert names == ["one", "two"]
        assert first.get_exposed_port(5432) != second.get_exposed_port(5432)


def test_host_network_collision_is_rejected_or_relocated(private_server):
    """With the host's network shared, the proot executor relocates the
    ports of two containers that listen on the same one. Under other
    executors, the second container that exposes a port already in use
    fails to start with an error naming the first."""
    server = private_server("--network-isolation", "host")
    client = docker.DockerClient(base_url=server.docker_host, version="auto", timeout=120)
    try:
        client.images.pull("busybox", tag="latest")
        if "name=netns,mode=relocated" in client.info()["SecurityOptions"]:
            check_relocated_ports(client)
            return
        first = client.containers.run(
            "busybox", ["sleep", "300"], name="first-on-6390", ports={"6390/tcp": None}, detach=True
        )
        second = client.containers.create("busybox", ["sleep", "300"], ports={"6390/tcp": None})

        with pytest.raises(docker.errors.APIError) as raised:
            second.start()

        assert raised.value.status_code == 500
        message = raised.value.explanation
        assert "container first-on-6390 already uses port 6390/tcp" in message
        assert "network isolation mode: host" in message
        second.reload()
        assert second.status == "created"
        first.remove(force=True)
        second.start()
        second.remove(force=True)
    finally:
        client.close()


def check_relocated_ports(client):
    """Checks that two busybox servers on port 6390 reply on their
    published ports, and that each finds its own from inside."""
    containers = []
    try:
        for name in ("first", "second"):
            command = ["nc", "-ll", "-p", "6390", "-e", "echo", name]
            containers.append(client.containers.run("busybox", command, ports={"6390/tcp": None}, detach=True))
        for name, container in zip(("first", "second"), containers):
            assert read_published(published_port(container, 6390)) == f"{name}\n".encode()
            inside = container.exec_run(["nc", "127.0.0.1", "6390"])
            assert inside.output == f"{name}\n".encode()
            assert 6390 in listening_ports(container)
    finally:
        for container in containers:
            container.remove(force=True)


def read_published(port):
    """Reads everything a server sends on a published port, trying again
    until it listens."""
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as connection:
                received = connection.makefile("rb").read()
            if received or time.monotonic() > deadline:
                return received
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.3)


def test_non_root_user_binds_port_80(sidewhale, isolated, docker_client):
    """An image user other than root listens on port 80, as Docker allows
    with net.ipv4.ip_unprivileged_port_start=0 in each container. With
    relocated ports the host's setting stays, and port 80 is relocated."""
    container = docker_client.containers.run(
        "busybox:latest",
        ["sh", "-c", "while true; do echo low | nc -l -p 80; done"],
        detach=True,
        user="65534:65534",
        ports={"80/tcp": None},
    )
    try:
        if isolated == "namespace":
            sysctl = container.exec_run(["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"])
            assert sysctl.output.decode().strip() == "0"
        identity = container.exec_run(["id", "-u"], user="65534")
        assert identity.output.decode().strip() == "65534"

        deadline = time.monotonic() + 15
        while 80 not in listening_ports(container) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert 80 in listening_ports(container), container.logs()

        received = read_published(published_port(container, 80))
        assert received == b"low\n", container.logs()
    finally:
        container.remove(force=True)
