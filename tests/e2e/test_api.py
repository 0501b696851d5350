"""Docker Engine API behaviour through docker-py and plain HTTP."""

import socket
import time
import uuid

import docker
import pytest

from conftest import request


@pytest.fixture(scope="module")
def busybox(sidewhale):
    client = docker.DockerClient(base_url=sidewhale.docker_host, version="auto")
    client.images.pull("busybox", tag="latest")
    client.close()
    return "busybox:latest"


def run_to_exit(client, image, command, **options):
    container = client.containers.run(image, command, detach=True, **options)
    result = container.wait(timeout=60)
    output = container.logs()
    container.remove(force=True)
    return result["StatusCode"], output


def test_ping_and_version(sidewhale):
    status, text = request(sidewhale, "GET", "/_ping")
    assert (status, text) == (200, "OK")
    status, version = request(sidewhale, "GET", "/v1.41/version")
    assert status == 200
    assert version["ApiVersion"] >= "1.41"
    assert version["MinAPIVersion"] == "1.24"
    status, error = request(sidewhale, "GET", "/v1.99/version")
    assert status == 400
    assert "too new" in error["message"]


def test_errors_have_docker_shape(sidewhale, busybox):
    status, error = request(sidewhale, "GET", "/containers/nope/json")
    assert status == 404
    assert error == {"message": "No such container: nope"}
    status, error = request(sidewhale, "GET", "/images/nope:1/json")
    assert status == 404
    assert error["message"] == "No such image: nope:1"
    status, error = request(sidewhale, "POST", "/containers/create", {"Image": "absent:1"})
    assert status == 404
    assert error["message"] == "No such image: absent:1"
    status, error = request(sidewhale, "POST", "/containers/create", "not an object")
    assert status == 400
    assert "message" in error


def test_duplicate_name_is_conflict(sidewhale, busybox):
    name = f"dup-{uuid.uuid4().hex[:6]}"
    status, created = request(sidewhale, "POST", f"/containers/create?name={name}", {"Image": busybox, "Cmd": ["true"]})
    assert status == 201
    status, error = request(sidewhale, "POST", f"/containers/create?name={name}", {"Image": busybox, "Cmd": ["true"]})
    assert status == 409
    assert name in error["message"]
    assert request(sidewhale, "DELETE", f"/containers/{created['Id']}")[0] == 204


def test_null_fields_are_accepted(sidewhale, busybox):
    body = {
        "Image": busybox, "Cmd": ["true"], "Entrypoint": None, "Env": None, "Labels": None,
        "ExposedPorts": None, "HostConfig": {"PortBindings": None, "Binds": None, "AutoRemove": None},
        "SomethingNew": {"x": 1},
    }
    status, created = request(sidewhale, "POST", "/containers/create", body)
    assert status == 201, created
    assert request(sidewhale, "DELETE", f"/containers/{created['Id']}")[0] == 204


def test_environment_is_image_and_request_only(docker_client, busybox):
    code, output = run_to_exit(docker_client, busybox, ["env"], environment={"FOO": "bar"})
    env = dict(line.split("=", 1) for line in output.decode().splitlines())
    assert code == 0
    assert env["FOO"] == "bar"
    assert "PATH" in env
    assert "SIDEWHALE_TEST_MARKER" not in env
    assert not [key for key in env if key.startswith("PROOT")]


def test_exit_code_and_streams(docker_client, busybox):
    container = docker_client.containers.run(busybox, ["sh", "-c", "echo out; echo err >&2; exit 7"], detach=True)
    assert container.wait(timeout=60)["StatusCode"] == 7
    assert container.logs(stdout=True, stderr=False) == b"out\n"
    assert container.logs(stdout=False, stderr=True) == b"err\n"
    container.reload()
    assert container.attrs["State"]["Status"] == "exited"
    assert container.attrs["State"]["ExitCode"] == 7
    assert container.attrs["State"]["FinishedAt"] != "0001-01-01T00:00:00Z"
    container.remove()


def test_wait_posted_before_start_sees_exit(docker_client, busybox):
    container = docker_client.containers.create(busybox, ["sh", "-c", "sleep 1; exit 4"])
    result = {}

    import threading

    waiter = threading.Thread(
        target=lambda: result.update(docker_client.api.wait(container.id, condition="next-exit", timeout=60))
    )
    waiter.start()
    time.sleep(0.5)
    container.start()
    waiter.join(timeout=60)
    assert result.get("StatusCode") == 4
    container.remove()


def test_logs_tail_timestamps_and_follow(docker_client, busybox):
    container = docker_client.containers.run(
        busybox, ["sh", "-c", "for i in 1 2 3 4 5; do echo line$i; done; sleep 2; echo late"], detach=True
    )
    followed = b"".join(container.logs(stream=True, follow=True))
    assert followed == b"line1\nline2\nline3\nline4\nline5\nlate\n"
    assert container.logs(tail=2) == b"line5\nlate\n"
    stamped = container.logs(timestamps=True, tail=1).decode()
    stamp, text = stamped.split(" ", 1)
    assert stamp.endswith("Z")
    assert "T" in stamp
    assert text == "late\n"
    assert container.logs(tail=0) == b""
    container.remove()


def test_published_port_inspect_shape_and_relay(docker_client, busybox):
    container = docker_client.containers.run(
        busybox,
        ["sh", "-c", "while true; do echo pong | nc -l -p 18080; done"],
        detach=True,
        ports={"18080/tcp": None, "18081/tcp": None},
    )
    try:
        container.reload()
        ports = container.attrs["NetworkSettings"]["Ports"]
        binding = ports["18080/tcp"][0]
        assert binding["HostIp"] == "0.0.0.0"
        assert isinstance(binding["HostPort"], str) and int(binding["HostPort"]) > 0
        # A listener exists as soon as start returns.
        with socket.create_connection(("127.0.0.1", int(binding["HostPort"])), timeout=5):
            pass
        deadline = time.monotonic() + 10
        answer = b""
        while answer != b"pong\n" and time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", int(binding["HostPort"])), timeout=5) as connection:
                answer = connection.recv(100)
            if answer != b"pong\n":
                time.sleep(0.2)
        assert answer == b"pong\n"
    finally:
        container.remove(force=True)


def test_exposed_unpublished_port_is_null(docker_client, busybox):
    container = docker_client.containers.run(
        busybox, ["sleep", "30"], detach=True, ports={"9999/tcp": None}
    )
    try:
        api = docker_client.api
        created = api.create_container(busybox, ["sleep", "30"], ports=[7777])
        api.start(created["Id"])
        ports = api.inspect_container(created["Id"])["NetworkSettings"]["Ports"]
        assert ports == {"7777/tcp": None}
        api.remove_container(created["Id"], force=True)
    finally:
        container.remove(force=True)


def test_writable_rootfs_is_per_container(docker_client, busybox):
    first = docker_client.containers.run(busybox, ["sh", "-c", "echo mine > /bin/marker; echo x >> /etc/passwd; sleep 60"], detach=True)
    try:
        time.sleep(0.5)
        code, output = run_to_exit(docker_client, busybox, ["sh", "-c", "cat /bin/marker; grep -c x$ /etc/passwd"])
        assert b"mine" not in output
        assert first.exec_run(["cat", "/bin/marker"]).output == b"mine\n"
    finally:
        first.remove(force=True)


def test_etc_files_and_shm(docker_client, busybox):
    container = docker_client.containers.run(busybox, ["sleep", "60"], detach=True)
    try:
        hostname = container.exec_run(["cat", "/etc/hostname"]).output.decode().strip()
        assert hostname == container.id[:12]
        hosts = container.exec_run(["cat", "/etc/hosts"]).output.decode()
        assert container.id[:12] in hosts
        shm = container.exec_run(["sh", "-c", "echo data > /dev/shm/x && cat /dev/shm/x"])
        assert shm.exit_code == 0
        assert shm.output == b"data\n"
    finally:
        container.remove(force=True)


def test_exec_env_workdir_user(docker_client, busybox):
    container = docker_client.containers.run(busybox, ["sleep", "60"], detach=True)
    try:
        result = container.exec_run(["sh", "-c", "echo $GREETING; pwd; id -u"], environment={"GREETING": "hi"}, workdir="/tmp", user="1234")
        assert result.exit_code == 0
        assert result.output.decode().splitlines() == ["hi", "/tmp", "1234"]
        inspect = docker_client.api.exec_inspect(docker_client.api.exec_create(container.id, ["true"])["Id"])
        assert inspect["Running"] is False
        assert inspect["ExitCode"] is None
    finally:
        container.remove(force=True)


def test_stop_uses_image_signal_then_kills(docker_client, busybox):
    container = docker_client.containers.run(
        busybox, ["sh", "-c", "trap '' TERM; echo ready; while true; do sleep 1; done"], detach=True
    )
    deadline = time.monotonic() + 10
    while b"ready" not in container.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    started = time.monotonic()
    container.stop(timeout=1)
    container.reload()
    assert container.attrs["State"]["Status"] == "exited"
    assert container.attrs["State"]["ExitCode"] == 137
    assert time.monotonic() - started < 30
    container.remove()


def test_list_filters(docker_client, busybox):
    tag = uuid.uuid4().hex[:8]
    running = docker_client.containers.run(busybox, ["sleep", "60"], detach=True, labels={"run": tag, "kind": "a"})
    created = docker_client.containers.create(busybox, ["true"], labels={"run": tag})
    try:
        by_label = docker_client.containers.list(all=True, filters={"label": f"run={tag}"})
        assert {c.id for c in by_label} == {running.id, created.id}
        only_running = docker_client.containers.list(filters={"label": f"run={tag}"})
        assert [c.id for c in only_running] == [running.id]
        by_status = docker_client.containers.list(all=True, filters={"label": f"run={tag}", "status": "created"})
        assert [c.id for c in by_status] == [created.id]
        both_labels = docker_client.containers.list(all=True, filters={"label": [f"run={tag}", "kind=a"]})
        assert [c.id for c in both_labels] == [running.id]
    finally:
        running.remove(force=True)
        created.remove(force=True)


def test_remove_running_without_force_conflicts(docker_client, busybox):
    container = docker_client.containers.run(busybox, ["sleep", "60"], detach=True)
    try:
        with pytest.raises(docker.errors.APIError) as error:
            container.remove()
        assert error.value.status_code == 409
    finally:
        container.remove(force=True)


def test_image_list_inspect_and_delete(docker_client, busybox):
    image = docker_client.images.get(busybox)
    assert image.id.startswith("sha256:")
    assert "busybox:latest" in image.tags
    assert image.attrs["RepoDigests"][0].startswith("busybox@sha256:")
    assert image.attrs["Config"]["Cmd"] == ["sh"]
    image.tag("copy-of-busybox", "v1")
    assert "copy-of-busybox:v1" in docker_client.images.get(busybox).tags
    removed = docker_client.api.remove_image("copy-of-busybox:v1")
    assert removed == [{"Untagged": "copy-of-busybox:v1"}]
    assert "copy-of-busybox:v1" not in docker_client.images.get(busybox).tags


def test_multiarch_index_resolves_host_platform(docker_client, sidewhale):
    docker_client.images.pull("busybox", tag="multiarch")
    image = docker_client.images.get("busybox:multiarch")
    assert image.attrs["Architecture"] == "amd64"
    code, output = run_to_exit(docker_client, "busybox:multiarch", ["echo", "ok"])
    assert (code, output) == (0, b"ok\n")


def test_console_size_applies_from_the_start(sidewhale, docker_client):
    """The docker CLI sends its terminal's size as ConsoleSize. A program
    that reads the size at once gets it, before any resize call."""
    docker_client.images.pull("busybox", tag="latest")
    status, created = request(sidewhale, "POST", "/containers/create", {
        "Image": "busybox", "Cmd": ["stty", "size"], "Tty": True,
        "HostConfig": {"ConsoleSize": [30, 100]},
    })
    assert status == 201
    container = docker_client.containers.get(created["Id"])
    try:
        container.start()
        assert container.wait(timeout=60)["StatusCode"] == 0
        assert container.logs() == b"30 100\r\n"

        sleeper = docker_client.containers.run("busybox", ["sleep", "300"], detach=True)
        exec_id = docker_client.api.exec_create(sleeper.id, ["stty", "size"], tty=True)["Id"]
        status, output = request(
            sidewhale, "POST", f"/exec/{exec_id}/start",
            {"Detach": False, "Tty": True, "ConsoleSize": [31, 101]},
        )
        assert status == 200
        assert output == "31 101\r\n"
        sleeper.remove(force=True)
    finally:
        container.remove(force=True)
