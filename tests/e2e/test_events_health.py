"""Events and health checks through docker-py, the docker CLI and
testcontainers-python."""

import json
import queue
import threading
import time
import uuid

import docker
import pytest

from conftest import docker_cli



SECOND = 1_000_000_000


@pytest.fixture(scope="module")
def client(sidewhale):
    client = docker.DockerClient(base_url=sidewhale.docker_host, version="auto", timeout=120)
    client.images.pull("busybox", tag="latest")
    yield client
    client.close()


@pytest.fixture
def name():
    return f"ev-{uuid.uuid4().hex[:8]}"


class EventCollector:
    """Reads `client.events` in a thread until `until` ends the stream."""

    def __init__(self, client, filters, seconds=60):
        self.events = queue.Queue()
        self.stream = client.events(decode=True, filters=filters, until=int(time.time()) + seconds)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for event in self.stream:
                self.events.put(event)
        except Exception as error:  # The stream closed under us.
            self.events.put({"error": repr(error)})

    def wait_for(self, action, timeout=60):
        """Returns every event up to and including the first `action`."""
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(event)
            if event.get("Action") == action:
                return seen
        raise AssertionError(f"no {action} event within {timeout} s; saw {seen}")

    def close(self):
        self.stream.close()


def wait_for_health(container, wanted, timeout=60):
    deadline = time.monotonic() + timeout
    health = None
    while time.monotonic() < deadline:
        container.reload()
        health = container.attrs["State"].get("Health")
        if health and health["Status"] == wanted:
            return health
        time.sleep(0.2)
    raise AssertionError(f"health did not become {wanted} within {timeout} s: {health}")


def test_events_lifecycle_with_filters(client, name):
    collector = EventCollector(client, {"container": name, "type": "container"})
    die_only = EventCollector(client, {"container": name, "event": "die"})
    try:
        container = client.containers.create(
            "busybox", ["sh", "-c", "exit 3"], name=name, labels={"suite": "events"}
        )
        container.start()
        assert container.wait(timeout=60)["StatusCode"] == 3
        container.remove()
        events = collector.wait_for("destroy")
        dies = die_only.wait_for("die")
    finally:
        collector.close()
        die_only.close()

    actions = [event["Action"] for event in events]
    assert actions == ["create", "start", "die", "destroy"]
    die = events[2]
    assert die["Type"] == "container"
    assert die["Actor"]["ID"] == container.id
    assert die["Actor"]["Attributes"]["exitCode"] == "3"
    assert die["Actor"]["Attributes"]["name"] == name
    assert die["Actor"]["Attributes"]["image"] == "busybox"
    assert die["Actor"]["Attributes"]["suite"] == "events"
    assert die["scope"] == "local"
    assert die["time"] == die["timeNano"] // SECOND
    assert die["status"] == "die"
    assert die["id"] == container.id
    assert die["from"] == "busybox"
    assert [event["Action"] for event in dies] == ["die"]


def test_events_stop_kill_and_exec(client, name):
    collector = EventCollector(client, {"container": name})
    try:
        container = client.containers.run("busybox", ["sleep", "300"], name=name, detach=True)
        result = container.exec_run(["sh", "-c", "exit 4"])
        assert result.exit_code == 4
        container.stop(timeout=1)
        events = collector.wait_for("stop")
    finally:
        collector.close()
        client.api.remove_container(name, force=True)

    actions = [event["Action"] for event in events]
    assert actions[:2] == ["create", "start"]
    assert "exec_create: sh -c exit 4" in actions
    assert "exec_start: sh -c exit 4" in actions
    exec_die = next(event for event in events if event["Action"] == "exec_die")
    assert exec_die["Actor"]["Attributes"]["exitCode"] == "4"
    assert exec_die["Actor"]["Attributes"]["execID"]
    kill = next(event for event in events if event["Action"] == "kill")
    assert kill["Actor"]["Attributes"]["signal"] == "15"
    assert actions[-2:] == ["die", "stop"]


def test_events_rename_and_image_events(client, name):
    since = time.time()
    container = client.containers.create("busybox", ["true"], name=name)
    container.rename(f"{name}-renamed")
    container.remove()
    image_id = client.images.get("busybox:latest").id
    client.images.get("busybox:latest").tag("ev-tagged", tag=name)
    client.images.remove(f"ev-tagged:{name}")
    client.images.pull("busybox", tag="latest")
    until = time.time() + 0.5
    time.sleep(0.6)
    events = list(client.events(decode=True, since=since, until=until))
    renames = [e for e in events if e["Action"] == "rename"]
    assert len(renames) == 1
    assert renames[0]["Actor"]["Attributes"]["oldName"] == f"/{name}"
    assert renames[0]["Actor"]["Attributes"]["name"] == f"{name}-renamed"
    image_actions = [e["Action"] for e in events if e["Type"] == "image"]
    assert image_actions == ["tag", "untag", "pull"]
    # The image keeps its busybox tag, so Docker sends untag alone, with
    # the image id as actor. Docker 20.10 named the image id in `name`;
    # Docker 29's default containerd image store names the removed tag.
    untag = next(e for e in events if e["Action"] == "untag")
    assert untag["Actor"] == {"ID": image_id, "Attributes": {"name": f"ev-tagged:{name}"}}
    pull = [e for e in events if e["Action"] == "pull"][0]
    assert pull["Actor"]["ID"] == "busybox:latest"
    assert pull["Actor"]["Attributes"]["name"] == "busybox"


def test_cli_events_since_until(sidewhale, client, name):
    started = time.time()
    container = client.containers.run("busybox", ["true"], name=name, detach=True)
    container.wait(timeout=60)
    container.remove()
    finished = time.time() + 0.2
    time.sleep(0.3)
    result = docker_cli(
        sidewhale,
        "events",
        "--since", f"{started:.9f}",
        "--until", f"{finished:.9f}",
        "--filter", f"container={name}",
        "--format", "{{json .}}",
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    actions = [json.loads(line)["Action"] for line in result.stdout.splitlines()]
    assert actions == ["create", "start", "die", "destroy"]


def test_events_until_in_past_ends_at_once(sidewhale):
    started = time.monotonic()
    result = docker_cli(sidewhale, "events", "--since", "0", "--until", "1", check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert time.monotonic() - started < 10


def test_health_starting_to_healthy(client, name):
    since = time.time()
    container = client.containers.run(
        "busybox",
        ["sh", "-c", "sleep 2; touch /tmp/ready; sleep 300"],
        name=name,
        detach=True,
        healthcheck={
            "test": ["CMD-SHELL", "test -f /tmp/ready && echo ready"],
            "interval": SECOND // 2,
            "timeout": 5 * SECOND,
            "retries": 10,
        },
    )
    try:
        container.reload()
        assert container.attrs["State"]["Health"]["Status"] == "starting"
        summary = client.api.containers(filters={"name": name})[0]
        assert summary["Status"].endswith("(health: starting)")
        health = wait_for_health(container, "healthy")
        assert health["FailingStreak"] == 0
        last = health["Log"][-1]
        assert last["ExitCode"] == 0
        assert last["Output"] == "ready\n"
        assert last["Start"] <= last["End"]
        summary = client.api.containers(filters={"name": name})[0]
        assert summary["Status"].endswith("(healthy)")
        assert client.containers.list(filters={"health": "healthy", "name": name})
        events = list(
            client.events(
                decode=True,
                since=since,
                until=time.time(),
                filters={"container": name, "event": "health_status"},
            )
        )
        assert [e["Action"] for e in events] == ["health_status: healthy"]
    finally:
        container.remove(force=True)


def test_health_unhealthy_after_retries(client, name):
    container = client.containers.run(
        "busybox",
        ["sleep", "300"],
        name=name,
        detach=True,
        healthcheck={"test": ["CMD", "sh", "-c", "echo failing; exit 1"], "interval": SECOND // 4, "retries": 2},
    )
    try:
        health = wait_for_health(container, "unhealthy")
        assert health["FailingStreak"] >= 2
        assert health["Log"][-1]["ExitCode"] == 1
        assert health["Log"][-1]["Output"] == "failing\n"
        time.sleep(2.5)
        container.reload()
        health = container.attrs["State"]["Health"]
        assert len(health["Log"]) == 5
        assert health["FailingStreak"] >= 5
    finally:
        container.remove(force=True)


def test_health_start_period_keeps_starting(client, name):
    # docker-py drops StartInterval (API 1.44), so the body is sent raw.
    body = {
        "Image": "busybox",
        "Cmd": ["sleep", "300"],
        "Healthcheck": {
            "Test": ["CMD", "false"],
            "Interval": SECOND // 4,
            "StartPeriod": 60 * SECOND,
            "StartInterval": SECOND // 4,
            "Retries": 1,
        },
    }
    client.api.post(client.api._url("/containers/create"), params={"name": name}, json=body).raise_for_status()
    container = client.containers.get(name)
    container.start()
    try:
        time.sleep(2)
        container.reload()
        health = container.attrs["State"]["Health"]
        assert health["Status"] == "starting"
        assert health["FailingStreak"] == 0
        assert len(health["Log"]) >= 2
    finally:
        container.remove(force=True)


def test_health_timeout_and_none(client, name):
    container = client.containers.run(
        "busybox",
        ["sleep", "300"],
        name=name,
        detach=True,
        healthcheck={"test": ["CMD", "sleep", "10"], "interval": SECOND // 4, "timeout": SECOND // 2, "retries": 1},
    )
    try:
        health = wait_for_health(container, "unhealthy", timeout=30)
        assert health["Log"][-1]["ExitCode"] == -1
        assert health["Log"][-1]["Output"] == "Health check exceeded timeout (500ms)"
    finally:
        container.remove(force=True)

    disabled = client.containers.run(
        "busybox", ["sleep", "300"], name=f"{name}-none", detach=True, healthcheck={"test": ["NONE"]}
    )
    try:
        disabled.reload()
        assert "Health" not in disabled.attrs["State"]
    finally:
        disabled.remove(force=True)


def test_health_invalid_interval_rejected(client, name):
    with pytest.raises(docker.errors.APIError) as raised:
        client.containers.create(
            "busybox", ["true"], name=name, healthcheck={"test": ["CMD", "true"], "interval": 10}
        )
    assert raised.value.status_code == 400
    assert "Interval in Healthcheck cannot be less than 1ms" in str(raised.value)


def test_health_stops_with_container(client, name):
    container = client.containers.run(
        "busybox",
        ["sleep", "300"],
        name=name,
        detach=True,
        healthcheck={"test": ["CMD", "true"], "interval": SECOND // 4},
    )
    try:
        wait_for_health(container, "healthy")
        container.stop(timeout=1)
        container.reload()
        count = len(container.attrs["State"]["Health"]["Log"])
        ends = [entry["End"] for entry in container.attrs["State"]["Health"]["Log"]]
        time.sleep(1.5)
        container.reload()
        assert [entry["End"] for entry in container.attrs["State"]["Health"]["Log"]] == ends
        assert len(ends) == count
        container.start()
        container.reload()
        assert container.attrs["State"]["Health"]["Status"] == "starting"
        wait_for_health(container, "healthy")
    finally:
        container.remove(force=True)


def test_testcontainers_waits_for_health(sidewhale):
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import HealthcheckWaitStrategy

    healthcheck = {"test": ["CMD", "redis-cli", "ping"], "interval": SECOND // 2, "retries": 20}
    container = (
        DockerContainer("redis:7")
        .with_exposed_ports(6379)
        .with_kwargs(healthcheck=healthcheck)
        .waiting_for(HealthcheckWaitStrategy().with_startup_timeout(120))
    )
    with container:
        wrapped = container.get_wrapped_container()
        wrapped.reload()
        assert wrapped.attrs["State"]["Health"]["Status"] == "healthy"
        assert "PONG" in wrapped.attrs["State"]["Health"]["Log"][-1]["Output"]
