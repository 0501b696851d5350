"""Stats, top, rename, pause, resize, ExtraHosts and prunes through
docker-py, the docker CLI and plain HTTP."""

import json
import os
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import docker
import pytest

from conftest import Sidewhale, docker_cli

ZERO_TIME = "0001-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def client(sidewhale):
    client = docker.DockerClient(base_url=sidewhale.docker_host, version="auto", timeout=120)
    client.images.pull("busybox", tag="latest")
    yield client
    client.close()


@pytest.fixture
def name():
    return f"ops-{uuid.uuid4().hex[:8]}"


def request(server, method, path):
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_for_log(container, text, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = container.logs().decode()
        if text in logs:
            return logs
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in logs within {timeout} s: {container.logs()!r}")


def test_stats_one_shot_shape(client, name):
    container = client.containers.run("busybox", ["sh", "-c", "sleep 300 & sleep 300"], name=name, detach=True)
    try:
        time.sleep(0.5)
        stats = container.stats(stream=False, one_shot=True)
        assert stats["id"] == container.id
        assert stats["name"] == f"/{name}"
        assert stats["read"] != ZERO_TIME
        assert stats["preread"] == ZERO_TIME
        # busybox sh runs its last command in place, so the two sleeps are
        # the container's only processes.
        assert stats["pids_stats"]["current"] >= 2
        assert stats["memory_stats"]["usage"] > 0
        assert stats["memory_stats"]["limit"] > stats["memory_stats"]["usage"]
        assert "inactive_file" in stats["memory_stats"]["stats"]
        assert stats["cpu_stats"]["system_cpu_usage"] > 0
        assert stats["cpu_stats"]["online_cpus"] >= 1
        assert stats["precpu_stats"]["cpu_usage"]["total_usage"] == 0
        assert "eth0" in stats["networks"]
        ops = {entry["op"] for entry in stats["blkio_stats"]["io_service_bytes_recursive"]}
        assert ops == {"read", "write"}
    finally:
        container.remove(force=True)


def test_stats_sample_pair_and_stream(client, name):
    container = client.containers.run("busybox", ["sh", "-c", "while :; do :; done"], name=name, detach=True)
    try:
        stats = container.stats(stream=False)
        assert stats["preread"] != ZERO_TIME
        used = stats["cpu_stats"]["cpu_usage"]["total_usage"] - stats["precpu_stats"]["cpu_usage"]["total_usage"]
        assert used > 0
        assert stats["cpu_stats"]["system_cpu_usage"] > stats["precpu_stats"]["system_cpu_usage"]

        stream = container.stats(stream=True, decode=True)
        first = next(stream)
        second = next(stream)
        stream.close()
        assert first["preread"] == ZERO_TIME
        assert second["preread"] == first["read"]
        assert second["precpu_stats"] == first["cpu_stats"]
        assert second["cpu_stats"]["cpu_usage"]["total_usage"] > first["cpu_stats"]["cpu_usage"]["total_usage"]
    finally:
        container.remove(force=True)


def test_stats_cli_and_stopped_container(sidewhale, client, name):
    container = client.containers.run("busybox", ["sleep", "300"], name=name, detach=True)
    try:
        output = docker_cli(sidewhale, "stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}}", name).stdout
        assert output.split() == [name, "1"]
        container.stop(timeout=1)
        stats = container.stats(stream=False)
        assert stats["read"] == ZERO_TIME
        assert stats["memory_stats"] == {}
    finally:
        container.remove(force=True)


def test_top_lists_processes(sidewhale, client, name):
    container = client.containers.run("busybox", ["sh", "-c", "sleep 301 & sleep 302"], name=name, detach=True)
    try:
        time.sleep(0.5)
        top = container.top()
        assert top["Titles"] == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
        commands = [row[7] for row in top["Processes"]]
        assert "sleep 301" in commands
        assert "sleep 302" in commands
        container.reload()
        pids = [row[1] for row in top["Processes"]]
        assert str(container.attrs["State"]["Pid"]) == pids[0]
        assert all(len(row) == 8 for row in top["Processes"])
        output = docker_cli(sidewhale, "top", name).stdout
        assert "sleep 301" in output
        container.stop(timeout=1)
        status, body = request(sidewhale, "GET", f"/containers/{name}/top")
        assert status == 409
        assert json.loads(body)["message"] == f"Container {container.id} is not running"
    finally:
        container.remove(force=True)


def test_rename(sidewhale, client, name):
    container = client.containers.create("busybox", ["true"], name=name)
    other = client.containers.create("busybox", ["true"], name=f"{name}-other")
    try:
        container.rename(f"{name}-new")
        container.reload()
        assert container.name == f"{name}-new"
        assert client.containers.get(f"{name}-new").id == container.id
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(name)
        with pytest.raises(docker.errors.APIError) as raised:
            container.rename(f"{name}-other")
        assert raised.value.status_code == 409
        assert "is already in use by container" in str(raised.value)
        status, _ = request(sidewhale, "POST", f"/containers/{container.id}/rename?name=bad%20name")
        assert status == 400
        status, _ = request(sidewhale, "POST", "/containers/missing-container/rename?name=x1")
        assert status == 404
    finally:
        container.remove(force=True)
        other.remove(force=True)


def test_extra_hosts_hostname_and_domainname(client, name):
    output = client.containers.run(
        "busybox",
        ["cat", "/etc/hosts"],
        name=name,
        hostname="web",
        domainname="example.test",
        extra_hosts={"db.test": "10.1.2.3", "gateway.test": "host-gateway"},
        remove=True,
    ).decode()
    lines = output.splitlines()
    assert "10.1.2.3\tdb.test" in lines
    # host-gateway is the host's loopback: 127.0.0.1 itself, or
    # slirp4netns's 10.0.2.2 from a network namespace.
    host = next(line.split()[0] for line in lines if line.endswith("host.docker.internal"))
    assert host in ("127.0.0.1", "10.0.2.2")
    assert f"{host}\tgateway.test" in lines
    assert "127.0.0.1\tweb.example.test web" in lines


def test_pause_and_unpause(sidewhale, client, name):
    # The rename keeps /tmp/count whole even when a pause comes mid-write.
    script = "i=0; while true; do i=$((i+1)); echo $i > /tmp/next; mv /tmp/next /tmp/count; sleep 0.1; done"
    container = client.containers.run("busybox", ["sh", "-c", script], name=name, detach=True)
    try:
        time.sleep(0.5)
        container.pause()
        container.reload()
        assert container.attrs["State"]["Status"] == "paused"
        assert container.attrs["State"]["Paused"] is True
        assert container.attrs["State"]["Running"] is True
        summary = client.api.containers(filters={"name": name, "status": "paused"})
        assert len(summary) == 1
        assert summary[0]["State"] == "paused"
        assert summary[0]["Status"].endswith("(Paused)")
        with pytest.raises(docker.errors.APIError) as raised:
            container.exec_run(["true"])
        assert raised.value.status_code == 409
        with pytest.raises(docker.errors.APIError) as raised:
            container.pause()
        assert raised.value.status_code == 409

        time.sleep(0.3)
        container.unpause()
        first = int(container.exec_run(["cat", "/tmp/count"]).output)
        container.pause()
        time.sleep(1)
        container.unpause()
        second = int(container.exec_run(["cat", "/tmp/count"]).output)
        assert second - first < 5, "the counter advanced while paused"
        time.sleep(1)
        third = int(container.exec_run(["cat", "/tmp/count"]).output)
        assert third > second, "the counter did not advance after unpause"
        with pytest.raises(docker.errors.APIError) as raised:
            container.unpause()
        assert raised.value.status_code == 409

        container.pause()
        container.stop(timeout=2)
        container.reload()
        assert container.attrs["State"]["Status"] == "exited"
        assert container.attrs["State"]["Paused"] is False
    finally:
        container.remove(force=True)


def test_pause_stopped_container_conflicts(sidewhale, client, name):
    container = client.containers.create("busybox", ["true"], name=name)
    try:
        status, body = request(sidewhale, "POST", f"/containers/{name}/pause")
        assert status == 409
        assert "is not running" in json.loads(body)["message"]
    finally:
        container.remove(force=True)


def test_resize_container_tty(sidewhale, client, name):
    script = "while true; do stty size; sleep 0.2; done"
    container = client.containers.run("busybox", ["sh", "-c", script], name=name, detach=True, tty=True)
    try:
        time.sleep(0.5)
        container.resize(height=41, width=103)
        wait_for_log(container, "41 103")
        container.kill()
        container.wait(timeout=30)
        status, _ = request(sidewhale, "POST", f"/containers/{name}/resize?h=10&w=10")
        assert status == 409
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def private_server():
    """A sidewhale of this module's own, so that prunes touch nothing else."""
    root = tempfile.mkdtemp(prefix="sw-prune-")
    server = Sidewhale(root, os.environ.get("SIDEWHALE_TEST_USER") or None)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_client(private_server):
    client = docker.DockerClient(base_url=private_server.docker_host, version="auto", timeout=120)
    yield client
    client.close()


def test_container_prune(private_server, private_client):
    client = private_client
    client.images.pull("busybox", tag="latest")
    keep_running = client.containers.run("busybox", ["sleep", "300"], detach=True)
    first = client.containers.create("busybox", ["true"], labels={"group": "a"})
    second = client.containers.run("busybox", ["true"], labels={"group": "b"}, detach=True)
    second.wait(timeout=60)
    try:
        result = client.containers.prune(filters={"until": "2000-01-01T00:00:00Z"})
        assert result["ContainersDeleted"] is None
        assert result["SpaceReclaimed"] == 0

        result = client.containers.prune(filters={"label": "group=a"})
        assert result["ContainersDeleted"] == [first.id]
        assert result["SpaceReclaimed"] > 0

        result = client.containers.prune(filters={"label!": "group=a"})
        assert result["ContainersDeleted"] == [second.id]

        remaining = [container.id for container in client.containers.list(all=True)]
        assert remaining == [keep_running.id]
        status, _ = request(private_server, "POST", "/containers/prune?filters=%7B%22bogus%22%3A%5B%22x%22%5D%7D")
        assert status == 400
    finally:
        keep_running.remove(force=True)


def test_image_prune(private_server, private_client):
    client = private_client
    image = client.images.pull("busybox", tag="latest")
    user = client.containers.create("busybox", ["true"])

    result = client.images.prune()
    assert result["ImagesDeleted"] is None
    assert result["SpaceReclaimed"] == 0

    result = client.images.prune(filters={"dangling": False})
    assert result["ImagesDeleted"] is None, "an image in use was pruned"

    user.remove()
    result = client.images.prune(filters={"dangling": False, "label": "no.such.label"})
    assert result["ImagesDeleted"] is None

    since = time.time()
    result = client.images.prune(filters={"dangling": False})
    deleted = result["ImagesDeleted"]
    assert {"Untagged": "busybox:latest"} in deleted
    assert {"Deleted": image.id} in deleted
    assert result["SpaceReclaimed"] > 0
    assert client.images.list() == []
    events = list(client.events(decode=True, since=since, until=time.time(), filters={"type": "image"}))
    actions = [event["Action"] for event in events]
    untag = next(event for event in events if event["Action"] == "untag")
    assert untag["Actor"]["ID"] == image.id
    # Docker 20.10 sent, after its untag and delete events:
    # {"Type":"image","Action":"prune","Actor":{"ID":"",
    #  "Attributes":{"reclaimed":"1984357"}}}, the SpaceReclaimed of the prune.
    assert actions[-2:] == ["delete", "prune"]
    assert events[-2]["Actor"]["ID"] == image.id
    prune = events[-1]
    assert prune["Actor"] == {"ID": "", "Attributes": {"reclaimed": str(result["SpaceReclaimed"])}}
    assert "id" not in prune


def test_image_remove_events(private_server, private_client):
    """The events of DELETE /images/{name}, as Docker sends them.

    Docker 20.10, removing the tag solo:x of an image that keeps another
    tag, sent
    {"status":"untag","id":"sha256:5fbb…","Type":"image","Action":"untag",
     "Actor":{"ID":"sha256:5fbb…","Attributes":{"name":"sha256:5fbb…"}},
     "scope":"local",…}
    and, removing the last tag, the same untag event followed by
    {"status":"delete","id":"sha256:5fbb…","Type":"image","Action":"delete",
     "Actor":{"ID":"sha256:5fbb…","Attributes":{"name":"sha256:5fbb…"}},…}.
    Docker 29 with its default containerd image store names the removed
    reference instead ({"name":"solo:x"}), which sidewhale follows; a
    digest reference that goes with its tag gets no event of its own.
    """
    client = private_client
    image = client.images.pull("busybox", tag="latest")
    client.images.get("busybox:latest").tag("solo", tag="x")
    since = time.time()
    # The busybox repository keeps no tag, so its digest reference goes
    # too, as Docker removes it; solo:x keeps the image.
    assert client.api.remove_image("busybox:latest") == [
        {"Untagged": "busybox:latest"},
        {"Untagged": image.attrs["RepoDigests"][0]},
    ]
    assert client.images.get("solo:x").attrs["RepoDigests"] == []
    removed = client.api.remove_image("solo:x")
    assert removed[0] == {"Untagged": "solo:x"}
    assert removed[-1] == {"Deleted": image.id}
    events = list(client.events(decode=True, since=since, until=time.time(), filters={"type": "image"}))
    summary = [(event["Action"], event["Actor"]["ID"], event["Actor"]["Attributes"]) for event in events]
    assert summary == [
        ("untag", image.id, {"name": "busybox:latest"}),
        ("untag", image.id, {"name": "solo:x"}),
        ("delete", image.id, {"name": image.id}),
    ]
    assert all(event["Type"] == "image" and event["status"] == event["Action"] for event in events)
    assert all(event["id"] == image.id for event in events)
