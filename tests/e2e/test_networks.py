"""User-defined networks: the networks API, aliases that resolve between
containers, and what inspect reports, through testcontainers-python, the
docker CLI, docker-py and plain HTTP."""

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import uuid

import docker
import pytest
from testcontainers.community.redis import RedisContainer
from testcontainers.core.container import DockerContainer
from testcontainers.core.network import Network

from conftest import Sidewhale, request


def docker_cli(sidewhale, *args, check=True, timeout=120):
    result = subprocess.run(
        ["docker", *args], env=sidewhale.env(), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)} exited with {result.returncode}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        )
    return result


def redis_ping(container, host):
    """Sends PING to redis at host:6379 from inside a running busybox
    container and returns what came back."""
    exit_code, output = container.exec_run(["sh", "-c", f"printf 'PING\\r\\n' | nc -w 3 {host} 6379"])
    return exit_code, output.decode(errors="replace")


def wait_for_redis(container, host, deadline_seconds=30):
    deadline = time.monotonic() + deadline_seconds
    exit_code, output = redis_ping(container, host)
    while "+PONG" not in output and time.monotonic() < deadline:
        time.sleep(0.5)
        exit_code, output = redis_ping(container, host)
    return exit_code, output


@pytest.fixture(scope="module")
def images(sidewhale):
    client = docker.DockerClient(base_url=sidewhale.docker_host, version="auto")
    client.images.pull("busybox", tag="latest")
    client.images.pull("redis", tag="7")
    client.close()


@pytest.fixture
def unique():
    return uuid.uuid4().hex[:8]


def test_testcontainers_network_alias_reaches_redis(sidewhale, images, docker_client):
    with Network() as network:
        with RedisContainer("redis:7").with_network(network).with_network_aliases("cache") as redis:
            assert redis.get_client().ping()
            app = docker_client.containers.run(
                "busybox:latest", ["sleep", "300"], detach=True, network=network.name
            )
            try:
                exit_code, output = wait_for_redis(app, "cache")
                assert "+PONG" in output, (exit_code, output)
                app.reload()
                endpoint = app.attrs["NetworkSettings"]["Networks"][network.name]
                assert endpoint["NetworkID"] == network.id
                assert endpoint["IPAddress"].startswith("127.")
            finally:
                app.remove(force=True)

            redis_info = docker_client.api.inspect_container(redis.get_wrapped_container().id)
            redis_endpoint = redis_info["NetworkSettings"]["Networks"][network.name]
            assert redis_endpoint["Aliases"] == ["cache"]
            assert "cache" in redis_endpoint["DNSNames"]


def test_cli_network_alias_and_second_network(sidewhale, images, docker_client, unique):
    first, second = f"front-{unique}", f"back-{unique}"
    db, app = f"db-{unique}", f"app-{unique}"
    docker_cli(sidewhale, "network", "create", "--label", "suite=networks", first)
    docker_cli(sidewhale, "network", "create", second)
    try:
        docker_cli(sidewhale, "run", "-d", "--name", db, "--network", first, "--network-alias", "store", "redis:7")
        docker_cli(sidewhale, "run", "-d", "--name", app, "--network", second, "busybox", "sleep", "300")
        app_container = docker_client.containers.get(app)

        before = app_container.exec_run(["sh", "-c", "stat -c %i /etc/hosts; cat /etc/hosts"])
        inode_before = before.output.decode().split()[0]
        assert "warehouse" not in before.output.decode()

        # The running redis joins the app's network under another alias:
        # the app's hosts file changes in place and the alias resolves.
        docker_cli(sidewhale, "network", "connect", "--alias", "warehouse", second, db)
        exit_code, output = wait_for_redis(app_container, "warehouse")
        assert "+PONG" in output, (exit_code, output)
        after = app_container.exec_run(["sh", "-c", "stat -c %i /etc/hosts"])
        assert after.output.decode().split()[0] == inode_before

        # The first network's alias stays scoped to the first network.
        exit_code, output = redis_ping(app_container, "store")
        assert "+PONG" not in output

        inspected = json.loads(docker_cli(sidewhale, "inspect", db).stdout)[0]
        networks = inspected["NetworkSettings"]["Networks"]
        assert sorted(networks) == sorted([first, second])
        assert networks[first]["Aliases"] == ["store"]
        assert networks[second]["Aliases"] == ["warehouse"]
        assert networks[first]["IPAddress"] != networks[second]["IPAddress"]
        assert networks[second]["Gateway"].endswith(".0.1")
        assert db in networks[second]["DNSNames"]
        assert inspected["Id"][:12] in networks[second]["DNSNames"]

        listed = docker_cli(sidewhale, "network", "ls", "--filter", "label=suite=networks", "--format", "{{.Name}}")
        assert listed.stdout.split() == [first]
        network = json.loads(docker_cli(sidewhale, "network", "inspect", second).stdout)[0]
        names = sorted(container["Name"] for container in network["Containers"].values())
        assert names == sorted([db, app])

        docker_cli(sidewhale, "network", "disconnect", second, db)
        hosts = app_container.exec_run(["cat", "/etc/hosts"]).output.decode()
        assert "warehouse" not in hosts
        removal = docker_cli(sidewhale, "network", "rm", second, check=False)
        assert removal.returncode != 0
        assert "has active endpoints" in removal.stderr
    finally:
        docker_cli(sidewhale, "rm", "-f", db, app, check=False)
        docker_cli(sidewhale, "network", "rm", first, second, check=False)
    assert docker_cli(sidewhale, "network", "ls", "-q", "--filter", f"name={unique}").stdout.strip() == ""


def test_links_and_extra_hosts_resolve(sidewhale, images, docker_client, unique):
    target = docker_client.containers.run("busybox:latest", ["sleep", "300"], detach=True, name=f"linked-{unique}")
    try:
        output = docker_client.containers.run(
            "busybox:latest",
            ["cat", "/etc/hosts"],
            links={target.name: "buddy"},
            extra_hosts={"gateway.test": "host-gateway"},
            remove=True,
        ).decode()
        lines = [line.split() for line in output.splitlines()]
        assert ["127.0.0.1", "host.docker.internal"] in lines
        assert ["127.0.0.1", "gateway.test"] in lines
        assert any(line[0] == "127.0.0.1" and "buddy" in line for line in lines)
    finally:
        target.remove(force=True)


def test_networks_api_status_codes(sidewhale, images, unique):
    name = f"api-{unique}"
    labels = {"org.testcontainers.sessionId": unique, "plain": "1"}
    status, created = request(sidewhale, "POST", "/networks/create", {"Name": name, "Labels": labels, "CheckDuplicate": True})
    assert status == 201, created
    assert created["Warning"] == ""
    network_id = created["Id"]
    assert len(network_id) == 64

    status, error = request(sidewhale, "POST", "/networks/create", {"Name": name})
    assert status == 409
    assert "already exists" in error["message"]

    for key in (name, network_id, network_id[:12]):
        status, network = request(sidewhale, "GET", f"/networks/{key}")
        assert status == 200
        assert network["Id"] == network_id
    assert network["Driver"] == "bridge"
    assert network["Labels"] == labels
    subnet = network["IPAM"]["Config"][0]["Subnet"]
    assert subnet.startswith("127.")
    assert subnet.endswith(".0.0/16")

    query = urllib.parse.quote(json.dumps({"label": [f"org.testcontainers.sessionId={unique}"]}))
    status, listed = request(sidewhale, "GET", f"/networks?filters={query}")
    assert [network["Name"] for network in listed] == [name]
    query = urllib.parse.quote(json.dumps({"type": ["builtin"]}))
    status, listed = request(sidewhale, "GET", f"/networks?filters={query}")
    assert sorted(network["Name"] for network in listed) == ["bridge", "host", "none"]
    query = urllib.parse.quote(json.dumps({"bogus": ["1"]}))
    assert request(sidewhale, "GET", f"/networks?filters={query}")[0] == 400

    status, container = request(
        sidewhale, "POST", f"/containers/create?name=member-{unique}",
        {"Image": "busybox:latest", "Cmd": ["sleep", "300"], "HostConfig": {"NetworkMode": name},
         "NetworkingConfig": {"EndpointsConfig": {name: {"Aliases": ["member"]}}}},
    )
    assert status == 201, container
    assert request(sidewhale, "POST", f"/containers/{container['Id']}/start")[0] == 204
    status, error = request(sidewhale, "POST", f"/networks/{name}/connect", {"Container": container["Id"]})
    assert status == 403
    status, error = request(sidewhale, "DELETE", f"/networks/{network_id}")
    assert status == 403
    assert "has active endpoints" in error["message"]
    status, network = request(sidewhale, "GET", f"/networks/{name}")
    assert list(network["Containers"]) == [container["Id"]]
    assert network["Containers"][container["Id"]]["IPv4Address"].endswith("/16")

    status, error = request(sidewhale, "POST", "/networks/bridge/connect",
                            {"Container": container["Id"], "EndpointConfig": {"Aliases": ["x"]}})
    assert status == 400
    assert "user defined networks" in error["message"]
    assert request(sidewhale, "POST", f"/networks/{name}/disconnect", {"Container": container["Id"], "Force": False})[0] == 200
    assert request(sidewhale, "DELETE", f"/containers/{container['Id']}?force=1")[0] == 204

    assert request(sidewhale, "GET", "/networks/absent-network")[0] == 404
    assert request(sidewhale, "DELETE", "/networks/bridge")[0] == 403
    status, error = request(sidewhale, "POST", "/containers/create",
                            {"Image": "busybox:latest", "HostConfig": {"NetworkMode": "absent-network"}})
    assert status == 404
    assert error["message"] == "network absent-network not found"

    query = urllib.parse.quote(json.dumps({"label": ["plain=1"], "until": ["1h"]}))
    status, pruned = request(sidewhale, "POST", f"/networks/prune?filters={query}")
    assert pruned == {"NetworksDeleted": []}
    query = urllib.parse.quote(json.dumps({"label": [f"org.testcontainers.sessionId={unique}"]}))
    status, pruned = request(sidewhale, "POST", f"/networks/prune?filters={query}")
    assert status == 200
    assert pruned == {"NetworksDeleted": [name]}
    assert request(sidewhale, "GET", f"/networks/{network_id}")[0] == 404


def test_cli_network_prune_and_rm(sidewhale, unique):
    docker_cli(sidewhale, "network", "create", f"prune-{unique}")
    pruned = docker_cli(sidewhale, "network", "prune", "-f", "--filter", "label!=keep")
    assert f"prune-{unique}" in pruned.stdout
    docker_cli(sidewhale, "network", "create", f"rm-{unique}")
    removed = docker_cli(sidewhale, "network", "rm", f"rm-{unique}")
    assert removed.stdout.strip() == f"rm-{unique}"
    missing = docker_cli(sidewhale, "network", "inspect", f"rm-{unique}", check=False)
    assert missing.returncode != 0


def test_networks_survive_restart(sidewhale):
    """A second sidewhale on its own state directory keeps its networks
    across a restart."""
    root = tempfile.mkdtemp(prefix="sw-net-")
    server = Sidewhale(root, sidewhale.user)
    server.start()
    try:
        status, created = request(server, "POST", "/networks/create",
                                  {"Name": "kept", "Labels": {"a.b.c": "d"}})
        assert status == 201
        server.stop()
        server.start()
        status, network = request(server, "GET", "/networks/kept")
        assert status == 200
        assert network["Id"] == created["Id"]
        assert network["Labels"] == {"a.b.c": "d"}
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
