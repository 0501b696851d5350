"""User-defined networks: the networks API, aliases that resolve between
containers, and what inspect reports, through testcontainers-python, the
docker CLI, docker-py and plain HTTP.

Where sidewhale gives containers on user-defined networks namespaces of
their own, joined by a bridge, members reach each other at addresses in
the network's subnet. Otherwise they share the host's network and the
subnet is 127.N.0.0/16 (see README, Network isolation). The tests check
what is true in both cases, and the bridge's own behaviour where it is used.
"""

import ipaddress
import json
import shutil
import socket
import threading
import tempfile
import time
import urllib.parse
import uuid

import docker
import pytest
from testcontainers.community.redis import RedisContainer
from testcontainers.core.network import Network
from testcontainers.postgres import PostgresContainer

from conftest import Sidewhale, docker_cli, request

# A PostgreSQL SSLRequest message in octal escapes for printf: length 8,
# code 80877103. The server replies with the single byte N (no SSL) or S.
SSL_REQUEST = r"\000\000\000\010\004\322\026\057"


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


def postgres_probe(host, port=5432):
    """Returns a shell command that sends an SSLRequest to PostgreSQL at
    host:port and prints the one-byte reply."""
    return f"printf '{SSL_REQUEST}' | nc -w 3 {host} {port}"


def wait_for_postgres(container, host, deadline_seconds=60):
    """Sends SSLRequest to PostgreSQL at host:5432 from inside a running
    busybox container until the reply arrives. Returns (exit code, output)."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        exit_code, output = container.exec_run(["sh", "-c", postgres_probe(host)])
        output = output.decode(errors="replace")
        if output in ("N", "S") or time.monotonic() > deadline:
            return exit_code, output
        time.sleep(0.5)


def network_subnet(docker_client, name):
    """Returns the network's IPAM subnet and gateway."""
    config = docker_client.api.inspect_network(name)["IPAM"]["Config"][0]
    return ipaddress.ip_network(config["Subnet"]), ipaddress.ip_address(config["Gateway"])


def is_bridged(subnet):
    """Tells whether a user-defined network's members get addresses of
    their own: sidewhale's networks on the host's network use 127.N.0.0/16."""
    return not subnet.subnet_of(ipaddress.ip_network("127.0.0.0/8"))


def interface_addresses(container):
    """Returns {interface: address/prefix} of the IPv4 addresses inside a
    running busybox container, from busybox's ip applet."""
    result = container.exec_run(["ip", "-o", "-4", "addr", "show"])
    assert result.exit_code == 0, result.output
    addresses = {}
    for line in result.output.decode().splitlines():
        fields = line.split()
        addresses[fields[1]] = fields[3]
    return addresses


@pytest.fixture(scope="module")
def images(sidewhale):
    client = docker.DockerClient(base_url=sidewhale.docker_host, version="auto")
    client.images.pull("busybox", tag="latest")
    client.images.pull("redis", tag="7")
    client.images.pull("postgres", tag="16")
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
                subnet, _ = network_subnet(docker_client, network.name)
                assert ipaddress.ip_address(endpoint["IPAddress"]) in subnet
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
        # Published ports listen on the host's loopback, which
        # testcontainers-python inside a container reaches through the
        # endpoint's gateway.
        assert networks[second]["Gateway"] == "127.0.0.1"
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
        # The host's loopback: 127.0.0.1 itself, or slirp4netns's 10.0.2.2
        # from a network namespace.
        host = next(line[0] for line in lines if line[1:] == ["host.docker.internal"])
        assert host in ("127.0.0.1", "10.0.2.2")
        assert [host, "gateway.test"] in lines
        assert any(line[0] == host and "buddy" in line for line in lines)
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
    assert subnet.split(".")[0] in ("127", "172")
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


def test_testcontainers_app_reaches_postgres_alias(sidewhale, images, docker_client):
    with Network() as network:
        postgres = PostgresContainer("postgres:16", username="tester", password="secret", dbname="shop")
        with postgres.with_network(network).with_network_aliases("db"):
            app = docker_client.containers.run(
                "busybox:latest", ["sleep", "300"], detach=True, network=network.name
            )
            try:
                exit_code, output = wait_for_postgres(app, "db")
                assert output == "N", (exit_code, output)
            finally:
                app.remove(force=True)


def test_cli_app_reaches_postgres_alias(sidewhale, images, unique):
    network, db = f"pg-{unique}", f"pg-db-{unique}"
    docker_cli(sidewhale, "network", "create", network)
    try:
        docker_cli(
            sidewhale, "run", "-d", "--name", db, "--network", network, "--network-alias", "db",
            "-e", "POSTGRES_PASSWORD=secret", "postgres:16",
        )
        # The app polls until PostgreSQL has initialised its database.
        script = (
            "for attempt in $(seq 120); do "
            f"answer=$({postgres_probe('db')}); "
            "[ \"$answer\" = N ] && { echo \"answer=$answer\"; exit 0; }; sleep 0.5; "
            "done; echo \"answer=$answer\"; exit 1"
        )
        result = docker_cli(
            sidewhale, "run", "--rm", "--network", network, "busybox", "sh", "-c", script,
            check=False, timeout=180,
        )
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert result.stdout.strip() == "answer=N"
    finally:
        docker_cli(sidewhale, "rm", "-f", db, check=False)
        docker_cli(sidewhale, "network", "rm", network, check=False)


def test_members_get_distinct_addresses(sidewhale, images, docker_client, unique):
    network = docker_client.networks.create(f"addr-{unique}")
    members = []
    try:
        subnet, gateway = network_subnet(docker_client, network.name)
        assert gateway in subnet
        for index in range(2):
            members.append(docker_client.containers.run(
                "busybox:latest", ["sleep", "300"], detach=True,
                name=f"addr-{index}-{unique}", network=network.name,
            ))
        endpoints = []
        for member in members:
            member.reload()
            endpoint = member.attrs["NetworkSettings"]["Networks"][network.name]
            endpoints.append(endpoint)
            assert ipaddress.ip_address(endpoint["IPAddress"]) in subnet
            assert endpoint["IPPrefixLen"] == subnet.prefixlen
            assert endpoint["Gateway"] == "127.0.0.1"
            assert endpoint["MacAddress"] != ""
        assert endpoints[0]["IPAddress"] != endpoints[1]["IPAddress"]
        assert endpoints[0]["MacAddress"] != endpoints[1]["MacAddress"]

        listed = docker_client.api.inspect_network(network.id)["Containers"]
        for member, endpoint in zip(members, endpoints):
            assert listed[member.id]["IPv4Address"] == f"{endpoint['IPAddress']}/{subnet.prefixlen}"
            assert listed[member.id]["MacAddress"] == endpoint["MacAddress"]

        if is_bridged(subnet):
            # Each member has its address on eth0 and reaches the other's.
            for member, endpoint in zip(members, endpoints):
                address = f"{endpoint['IPAddress']}/{subnet.prefixlen}"
                assert interface_addresses(member).get("eth0") == address
            first_name = members[0].name
            server = members[0].exec_run(["sh", "-c", "echo hello | nc -l -p 7000"], detach=True)
            assert server is not None
            deadline = time.monotonic() + 10
            output = b""
            while b"hello" not in output and time.monotonic() < deadline:
                time.sleep(0.3)
                output = members[1].exec_run(["sh", "-c", f"nc -w 2 {first_name} 7000 </dev/null"]).output
            assert b"hello" in output
            hosts = members[1].exec_run(["cat", "/etc/hosts"]).output.decode()
            assert f"{endpoints[0]['IPAddress']}\t{first_name}" in hosts
    finally:
        for member in members:
            member.remove(force=True)
        network.remove()


def test_connect_running_container_adds_interface(sidewhale, images, docker_client, unique):
    first = docker_client.networks.create(f"live-a-{unique}")
    second = docker_client.networks.create(f"live-b-{unique}")
    app = None
    try:
        first_subnet, _ = network_subnet(docker_client, first.name)
        if not is_bridged(first_subnet):
            pytest.skip("user-defined networks share the host's network here (subnet 127.N.0.0/16)")
        second_subnet, _ = network_subnet(docker_client, second.name)
        assert first_subnet != second_subnet
        app = docker_client.containers.run(
            "busybox:latest", ["sleep", "300"], detach=True, name=f"live-{unique}", network=first.name
        )
        before = interface_addresses(app)
        assert "eth0" in before
        assert "eth1" not in before

        second.connect(app, aliases=["late"])
        app.reload()
        endpoint = app.attrs["NetworkSettings"]["Networks"][second.name]
        address = f"{endpoint['IPAddress']}/{endpoint['IPPrefixLen']}"
        assert ipaddress.ip_address(endpoint["IPAddress"]) in second_subnet
        assert interface_addresses(app).get("eth1") == address
        hosts = app.exec_run(["cat", "/etc/hosts"]).output.decode()
        assert f"{endpoint['IPAddress']}\tlate" in hosts

        second.disconnect(app)
        assert "eth1" not in interface_addresses(app)
        assert "eth0" in interface_addresses(app)
    finally:
        if app is not None:
            app.remove(force=True)
        first.remove()
        second.remove()


def test_requested_subnet_is_used(sidewhale, images, docker_client, unique):
    probe = docker_client.networks.create(f"probe-{unique}")
    try:
        bridged = is_bridged(network_subnet(docker_client, probe.name)[0])
    finally:
        probe.remove()
    if not bridged:
        pytest.skip("a requested subnet is ignored where networks share the host's network")
    ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet="10.203.7.0/24")])
    network = docker_client.networks.create(f"ipam-{unique}", ipam=ipam)
    try:
        subnet, gateway = network_subnet(docker_client, network.name)
        assert str(subnet) == "10.203.7.0/24"
        assert str(gateway) == "10.203.7.1"
        member = docker_client.containers.run(
            "busybox:latest", ["sleep", "300"], detach=True, network=network.name
        )
        try:
            member.reload()
            endpoint = member.attrs["NetworkSettings"]["Networks"][network.name]
            assert endpoint["IPAddress"] == "10.203.7.2"
            assert endpoint["IPPrefixLen"] == 24
            assert interface_addresses(member).get("eth0") == "10.203.7.2/24"
        finally:
            member.remove(force=True)
        overlapping = request(sidewhale, "POST", "/networks/create", {
            "Name": f"overlap-{unique}", "IPAM": {"Config": [{"Subnet": "10.203.0.0/16"}]},
        })
        assert overlapping[0] == 403, overlapping
    finally:
        network.remove()


def test_host_docker_internal_reaches_host_server(sidewhale, images, docker_client):
    """A container reaches a TCP server on the host's 127.0.0.1 by the name
    host.docker.internal."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(60)
    port = listener.getsockname()[1]

    def serve_once():
        try:
            connection, _ = listener.accept()
        except OSError:
            return
        with connection:
            connection.sendall(b"from the host\n")

    server = threading.Thread(target=serve_once, daemon=True)
    server.start()
    try:
        info = docker_client.info()
        container = docker_client.containers.run(
            "busybox:latest",
            ["sh", "-c", f"grep host.docker.internal /etc/hosts; nc -w 5 host.docker.internal {port} </dev/null"],
            detach=True,
        )
        try:
            container.wait(timeout=60)
            output = container.logs().decode()
        finally:
            container.remove(force=True)
        host_line, _, received = output.partition("\n")
        if "name=netns,mode=namespace" in info.get("SecurityOptions", []) and host_line.startswith("127.0.0.1"):
            pytest.skip("containers in network namespaces reach the host only through slirp4netns")
        assert received == "from the host\n", output
    finally:
        listener.close()
        server.join(timeout=5)
