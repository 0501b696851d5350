"""Volumes, bind mounts and tmpfs mounts, and the /volumes API."""

import json
import os
import pathlib
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import uuid

import docker
import pytest
from docker.types import Mount

HEX64 = re.compile(r"^[0-9a-f]{64}$")



@pytest.fixture(autouse=True, scope="module")
def images(sidewhale):
    import docker as docker_module

    client = docker_module.DockerClient(base_url=sidewhale.docker_host, version="auto", timeout=300)
    for repository, tag in [("busybox", "latest"), ("postgres", "16")]:
        client.images.pull(repository, tag=tag)
    client.close()

def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def delete_volume(sidewhale, name, force):
    """Sends DELETE /volumes/{name} and returns the status and the error
    message, None on success. docker-py 7 drops the force parameter, so
    the request is made directly."""
    query = "?force=true" if force else ""
    url = f"http://127.0.0.1:{sidewhale.port}/volumes/{name}{query}"
    request = urllib.request.Request(url, method="DELETE")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())["message"]


def run_to_exit(docker_client, command, **kwargs):
    """Runs a busybox command to its end and returns its output."""
    container = docker_client.containers.run("busybox", command, detach=True, **kwargs)
    try:
        assert container.wait(timeout=60)["StatusCode"] == 0, container.logs()
        return container.logs()
    finally:
        container.remove(force=True)


def test_volume_api_lifecycle(sidewhale, docker_client):
    api = docker_client.api
    name = unique("vol")
    created = api.create_volume(name, labels={"suite": "volumes", "owner": name})
    assert created["Name"] == name
    assert created["Driver"] == "local"
    assert created["Scope"] == "local"
    assert created["Labels"] == {"suite": "volumes", "owner": name}
    assert created["Mountpoint"].endswith(f"/volumes/{name}/_data")
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", created["CreatedAt"])

    assert api.inspect_volume(name) == created
    # Creating an existing volume returns it unchanged.
    assert api.create_volume(name)["Labels"] == created["Labels"]

    listed = api.volumes()
    assert listed["Warnings"] == []
    assert name in [volume["Name"] for volume in listed["Volumes"]]
    by_label = api.volumes(filters={"label": f"owner={name}"})["Volumes"]
    assert [volume["Name"] for volume in by_label] == [name]
    by_name = api.volumes(filters={"name": name})["Volumes"]
    assert [volume["Name"] for volume in by_name] == [name]
    dangling = api.volumes(filters={"dangling": "true"})["Volumes"]
    assert name in [volume["Name"] for volume in dangling]
    with pytest.raises(docker.errors.APIError) as raised:
        api.volumes(filters={"bogus": "x"})
    assert raised.value.status_code == 400

    api.remove_volume(name)
    with pytest.raises(docker.errors.NotFound) as raised:
        api.inspect_volume(name)
    assert raised.value.explanation == f"get {name}: no such volume"
    with pytest.raises(docker.errors.NotFound):
        api.remove_volume(name)
    # Docker 20.10: without force 404 {"message":"get NAME: no such
    # volume"}, with force=true 204 and no body.
    assert delete_volume(sidewhale, name, force=False) == (404, f"get {name}: no such volume")
    assert delete_volume(sidewhale, name, force=True) == (204, None)


def test_volume_without_name_is_random(docker_client):
    volume = docker_client.api.create_volume()
    try:
        assert HEX64.match(volume["Name"])
    finally:
        docker_client.api.remove_volume(volume["Name"])


def test_invalid_volume_name_rejected(docker_client):
    with pytest.raises(docker.errors.APIError) as raised:
        docker_client.api.create_volume("bad/name")
    assert raised.value.status_code == 400
    assert "includes invalid characters for a local volume name" in raised.value.explanation


def test_named_volume_shared_between_containers(sidewhale, docker_client):
    name = unique("shared")
    binds = {name: {"bind": "/data", "mode": "rw"}}
    run_to_exit(docker_client, ["sh", "-c", "echo shared > /data/note.txt"], volumes=binds)
    assert docker_client.api.inspect_volume(name)["Name"] == name

    reader = docker_client.containers.create("busybox", ["cat", "/data/note.txt"], volumes=binds)
    try:
        mount = reader.attrs["Mounts"][0]
        assert mount["Type"] == "volume"
        assert mount["Name"] == name
        assert mount["Destination"] == "/data"
        assert mount["Driver"] == "local"
        assert mount["Mode"] == "rw"
        assert mount["RW"] is True
        assert mount["Propagation"] == ""

        with pytest.raises(docker.errors.APIError) as raised:
            docker_client.api.remove_volume(name)
        assert raised.value.status_code == 409
        assert raised.value.explanation == f"remove {name}: volume is in use - [{reader.id}]"
        # Docker keeps a volume in use even with force: 20.10 returned
        # 409 {"message":"remove NAME: volume is in use - [CONTAINER_ID]"}
        # with and without force=true.
        in_use = (409, f"remove {name}: volume is in use - [{reader.id}]")
        assert delete_volume(sidewhale, name, force=False) == in_use
        assert delete_volume(sidewhale, name, force=True) == in_use
        in_use = docker_client.api.volumes(filters={"dangling": "false"})["Volumes"]
        assert name in [volume["Name"] for volume in in_use]

        reader.start()
        assert reader.wait(timeout=60)["StatusCode"] == 0
        assert reader.logs() == b"shared\n"
    finally:
        reader.remove(force=True)
    docker_client.api.remove_volume(name)


def test_archive_put_into_volume(docker_client):
    name = unique("archive")
    container = docker_client.containers.create(
        "busybox", ["sleep", "300"], volumes={name: {"bind": "/vol", "mode": "rw"}}
    )
    try:
        import io
        import tarfile

        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo("in-volume.txt")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"vol"))
        assert container.put_archive("/vol", buffer.getvalue())
    finally:
        container.remove(force=True)
    output = run_to_exit(
        docker_client, ["cat", "/v/in-volume.txt"], volumes={name: {"bind": "/v", "mode": "ro"}}
    )
    assert output == b"vol"
    docker_client.api.remove_volume(name)


def test_anonymous_volumes_per_container(docker_client):
    first = docker_client.containers.create(
        "busybox", ["sh", "-c", "echo first > /scratch/f"], volumes=["/scratch"]
    )
    second = docker_client.containers.create(
        "busybox", ["ls", "-A", "/scratch"], volumes=["/scratch"]
    )
    try:
        first_mount = first.attrs["Mounts"][0]
        second_mount = second.attrs["Mounts"][0]
        assert first_mount["Type"] == "volume"
        assert HEX64.match(first_mount["Name"])
        assert first_mount["Name"] != second_mount["Name"]
        assert first_mount["Destination"] == "/scratch"
        assert first_mount["Mode"] == ""
        volume = docker_client.api.inspect_volume(first_mount["Name"])
        assert volume["Labels"] == {"com.docker.volume.anonymous": ""}

        first.start()
        assert first.wait(timeout=60)["StatusCode"] == 0
        second.start()
        assert second.wait(timeout=60)["StatusCode"] == 0
        assert second.logs() == b""
    finally:
        first.remove(v=True, force=True)
        second.remove(force=True)
    with pytest.raises(docker.errors.NotFound):
        docker_client.api.inspect_volume(first_mount["Name"])
    # Without v=1 the anonymous volume stays.
    assert docker_client.api.inspect_volume(second_mount["Name"])
    docker_client.api.remove_volume(second_mount["Name"])


def test_image_volume_gets_anonymous_volume(docker_client):
    container = docker_client.containers.create("postgres:16", ["true"])
    try:
        mounts = container.attrs["Mounts"]
        assert [mount["Destination"] for mount in mounts] == ["/var/lib/postgresql/data"]
        assert HEX64.match(mounts[0]["Name"])
    finally:
        container.remove(v=True, force=True)


def test_tmpfs_is_empty_per_container(docker_client):
    command = ["sh", "-c", "ls -A /run/scratch; echo x > /run/scratch/file"]
    kwargs = {"tmpfs": {"/run/scratch": "size=64m"}}
    first = docker_client.containers.create("busybox", command, **kwargs)
    second = docker_client.containers.create("busybox", command, **kwargs)
    try:
        assert first.attrs["Mounts"] == []
        for container in (first, second):
            container.start()
            assert container.wait(timeout=60)["StatusCode"] == 0
            assert container.logs() == b""
    finally:
        first.remove(force=True)
        second.remove(force=True)


def test_mounts_api_types(docker_client):
    # A directory the unprivileged test user can reach too.
    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="sw-mounts-"))
    tmp_path.chmod(0o755)
    host = tmp_path / "bind"
    host.mkdir()
    host.chmod(0o777)
    (host / "seed.txt").write_text("seed\n")
    name = unique("mounted")
    mounts = [
        Mount("/b", str(host), type="bind", read_only=True),
        Mount("/v", name, type="volume"),
        Mount("/t", None, type="tmpfs"),
    ]
    output = run_to_exit(
        docker_client,
        ["sh", "-c", "cat /b/seed.txt; echo v > /v/x; ls -A /t"],
        mounts=mounts,
    )
    assert output == b"seed\n"
    container = docker_client.containers.create("busybox", ["true"], mounts=mounts)
    try:
        by_destination = {mount["Destination"]: mount for mount in container.attrs["Mounts"]}
        assert by_destination["/b"]["Type"] == "bind"
        assert by_destination["/b"]["RW"] is False
        assert by_destination["/v"]["Name"] == name
        assert by_destination["/t"] == {
            "Type": "tmpfs",
            "Source": "",
            "Destination": "/t",
            "Mode": "",
            "RW": True,
            "Propagation": "",
        }
    finally:
        container.remove(force=True)

    with pytest.raises(docker.errors.APIError) as raised:
        docker_client.containers.create(
            "busybox", ["true"], mounts=[Mount("/b", str(tmp_path / "missing"), type="bind")]
        )
    assert raised.value.status_code == 400
    assert "bind source path does not exist" in raised.value.explanation
    docker_client.api.remove_volume(name)


def test_prune_removes_only_anonymous_by_default(docker_client):
    named = unique("keep")
    docker_client.api.create_volume(named, labels={"suite": "prune"})
    container = docker_client.containers.create("busybox", ["true"], volumes=["/anon"])
    anonymous = container.attrs["Mounts"][0]["Name"]
    container.remove(force=True)

    report = docker_client.api.prune_volumes()
    assert anonymous in report["VolumesDeleted"]
    assert named not in report["VolumesDeleted"]
    assert docker_client.api.inspect_volume(named)

    report = docker_client.api.prune_volumes(filters={"all": "true", "label": "suite=prune"})
    assert report["VolumesDeleted"] == [named]
    assert report["SpaceReclaimed"] == 0


def test_cli_volume_commands(sidewhale, docker_client):
    import subprocess

    name = unique("cli")
    env = sidewhale.env()

    def cli(*args):
        result = subprocess.run(
            ["docker", *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr}"
        return result

    assert cli("volume", "create", name).stdout.strip() == name
    assert name in cli("volume", "ls", "-q").stdout.split()
    output = cli("run", "--rm", "-v", f"{name}:/d", "busybox", "sh", "-c", "echo hi > /d/f; cat /d/f")
    assert output.stdout == "hi\n"
    assert cli("volume", "rm", name).stdout.strip() == name


def test_volumes_survive_restart(sidewhale):
    from conftest import Sidewhale

    root = tempfile.mkdtemp(prefix="sw-restart-")
    user = os.environ.get("SIDEWHALE_TEST_USER") or None
    name = unique("persist")

    first = Sidewhale(root, user)
    first.start()
    try:
        client = docker.DockerClient(base_url=first.docker_host, version="auto", timeout=60)
        created = client.api.create_volume(name, labels={"kept": "yes"})
        client.close()
    finally:
        first.stop()

    second = Sidewhale(root, user)
    second.start()
    try:
        client = docker.DockerClient(base_url=second.docker_host, version="auto", timeout=60)
        assert client.api.inspect_volume(name) == created
        client.close()
    finally:
        second.stop()
        shutil.rmtree(root, ignore_errors=True)
