"""Files in and out of containers: GET, HEAD and PUT
/containers/{id}/archive through the docker CLI, docker-py and
testcontainers-python, including attempts to escape the rootfs."""

import base64
import io
import json
import pathlib
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import docker
import pytest

from conftest import docker_cli

# Go's os.FileMode bits, as Docker's path stat carries them.
MODE_DIR = 1 << 31
MODE_SYMLINK = 1 << 27
MODE_SETUID = 1 << 23



@pytest.fixture(autouse=True, scope="module")
def images(sidewhale):
    import docker as docker_module

    client = docker_module.DockerClient(base_url=sidewhale.docker_host, version="auto", timeout=300)
    for repository, tag in [("busybox", "latest")]:
        client.images.pull(repository, tag=tag)
    client.close()

def make_tar(entries):
    """Builds a tar from (name, kind, data or target, mode) tuples."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, kind, payload, mode in entries:
            info = tarfile.TarInfo(name)
            info.mode = mode
            info.mtime = 1_700_000_000
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = payload
                tar.addfile(info)
            elif kind == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = payload
                tar.addfile(info)
    return buffer.getvalue()


def read_tar(stream):
    data = b"".join(stream)
    return tarfile.open(fileobj=io.BytesIO(data))


def shared_tempdir():
    """Returns a host directory that sidewhale can write, also when it
    runs as the unprivileged test user."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="sw-archive-"))
    path.chmod(0o777)
    return path


@pytest.fixture
def sleeper(docker_client):
    """A created, not yet started busybox container that sleeps."""
    container = docker_client.containers.create("busybox", ["sleep", "300"])
    yield container
    container.remove(force=True)


def wait_exit(container, timeout=60):
    return container.wait(timeout=timeout)["StatusCode"]


def test_cli_cp_round_trip(sidewhale, docker_client, sleeper, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("hello from the host\n")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "nested.txt").write_text("nested\n")

    # Before start: the container is only created.
    docker_cli(sidewhale, "cp", str(source), f"{sleeper.id}:/tmp/in.txt")
    docker_cli(sidewhale, "cp", str(tree), f"{sleeper.id}:/tmp/")
    sleeper.start()

    result = sleeper.exec_run(["cat", "/tmp/in.txt", "/tmp/tree/sub/nested.txt"])
    assert result.exit_code == 0
    assert result.output == b"hello from the host\nnested\n"

    out = tmp_path / "out"
    out.mkdir()
    docker_cli(sidewhale, "cp", f"{sleeper.id}:/tmp/in.txt", str(out / "copy.txt"))
    assert (out / "copy.txt").read_text() == "hello from the host\n"
    docker_cli(sidewhale, "cp", f"{sleeper.id}:/tmp/tree", str(out))
    assert (out / "tree" / "sub" / "nested.txt").read_text() == "nested\n"


def test_cli_cp_from_exited_container(sidewhale, docker_client, tmp_path):
    container = docker_client.containers.run(
        "busybox", ["sh", "-c", "echo done > /result.txt"], detach=True
    )
    try:
        assert wait_exit(container) == 0
        docker_cli(sidewhale, "cp", f"{container.id}:/result.txt", str(tmp_path / "result.txt"))
        assert (tmp_path / "result.txt").read_text() == "done\n"
    finally:
        container.remove(force=True)


def test_put_before_start_read_by_process(docker_client):
    container = docker_client.containers.create("busybox", ["cat", "/data/input.txt"])
    try:
        archive = make_tar([("data/input.txt", "file", b"written before start\n", 0o644)])
        assert container.put_archive("/", archive)
        container.start()
        assert wait_exit(container) == 0
        assert container.logs() == b"written before start\n"
    finally:
        container.remove(force=True)


def test_put_gzip_archive(sleeper):
    import gzip

    archive = gzip.compress(make_tar([("gz/inner.txt", "file", b"compressed\n", 0o600)]))
    assert sleeper.put_archive("/tmp", archive)
    stream, stat = sleeper.get_archive("/tmp/gz/inner.txt")
    assert stat["mode"] == 0o600
    assert read_tar(stream).extractfile("inner.txt").read() == b"compressed\n"


def test_stat_header_modes(docker_client, sleeper):
    archive = make_tar(
        [
            ("stat", "dir", None, 0o750),
            ("stat/tool", "file", b"#!/bin/sh\n", 0o4755),
            ("stat/link", "symlink", "tool", 0o777),
        ]
    )
    assert sleeper.put_archive("/", archive)

    stream, stat = sleeper.get_archive("/stat/tool")
    assert stat["name"] == "tool"
    assert stat["size"] == 10
    assert stat["mode"] == MODE_SETUID | 0o755
    assert stat["linkTarget"] == ""
    assert stat["mtime"].startswith("2023-11-14T22:13:20")
    members = read_tar(stream).getmembers()
    assert [member.name for member in members] == ["tool"]
    assert members[0].mode & 0o7777 == 0o4755

    stream, stat = sleeper.get_archive("/stat")
    assert stat["name"] == "stat"
    assert stat["mode"] == MODE_DIR | 0o750
    names = sorted(member.name.rstrip("/") for member in read_tar(stream).getmembers())
    assert names == ["stat", "stat/link", "stat/tool"]

    stream, stat = sleeper.get_archive("/stat/link")
    assert stat["mode"] & MODE_SYMLINK
    assert stat["linkTarget"] == "/stat/tool"
    member = read_tar(stream).getmembers()[0]
    assert member.issym()
    assert member.linkname == "tool"


def test_head_sends_stat(sidewhale, sleeper):
    query = urllib.parse.urlencode({"path": "/etc/passwd"})
    url = f"http://127.0.0.1:{sidewhale.port}/v1.43/containers/{sleeper.id}/archive?{query}"
    request = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(request) as response:
        assert response.status == 200
        encoded = response.headers["X-Docker-Container-Path-Stat"]
    stat = json.loads(base64.b64decode(encoded))
    assert stat["name"] == "passwd"
    assert stat["mode"] & MODE_DIR == 0

    missing = urllib.parse.urlencode({"path": "/no/such/file"})
    url = f"http://127.0.0.1:{sidewhale.port}/containers/{sleeper.id}/archive?{missing}"
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"))
    assert raised.value.code == 404


def test_get_sends_tar_content_type(sidewhale, sleeper):
    query = urllib.parse.urlencode({"path": "/etc/hostname"})
    url = f"http://127.0.0.1:{sidewhale.port}/containers/{sleeper.id}/archive?{query}"
    with urllib.request.urlopen(url) as response:
        assert response.headers["Content-Type"] == "application/x-tar"
        tar = tarfile.open(fileobj=io.BytesIO(response.read()))
    member = tar.getmember("hostname")
    assert tar.extractfile(member).read() == f"{sleeper.id[:12]}\n".encode()


def test_missing_paths_and_non_directories(docker_client, sleeper):
    with pytest.raises(docker.errors.NotFound) as raised:
        sleeper.get_archive("/no/such/file")
    assert raised.value.explanation == f"Could not find the file /no/such/file in container {sleeper.id}"

    archive = make_tar([("x.txt", "file", b"x", 0o644)])
    with pytest.raises(docker.errors.NotFound):
        sleeper.put_archive("/no/such/dir", archive)
    with pytest.raises(docker.errors.APIError) as raised:
        sleeper.put_archive("/etc/passwd", archive)
    assert raised.value.status_code == 400


def test_no_overwrite_dir_non_dir(sidewhale, sleeper):
    assert sleeper.put_archive("/", make_tar([("clash", "dir", None, 0o755)]))
    query = urllib.parse.urlencode({"path": "/", "noOverwriteDirNonDir": "1"})
    url = f"http://127.0.0.1:{sidewhale.port}/containers/{sleeper.id}/archive?{query}"
    request = urllib.request.Request(
        url, data=make_tar([("clash", "file", b"x", 0o644)]), method="PUT"
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request)
    # Docker 20.10 returned 500 with the message: Error processing tar
    # file(exit status 1): cannot overwrite directory "/clash" with
    # non-directory "/". Docker 25 and later extract in the daemon process
    # and leave out the "Error processing tar file(exit status 1): " prefix.
    assert raised.value.code == 500
    assert json.loads(raised.value.read())["message"] == (
        'cannot overwrite directory "/clash" with non-directory "/"'
    )

    # A directory over a file fails the same way.
    assert sleeper.put_archive("/tmp", make_tar([("clash-file", "file", b"x", 0o644)]))
    query = urllib.parse.urlencode({"path": "/tmp", "noOverwriteDirNonDir": "true"})
    url = f"http://127.0.0.1:{sidewhale.port}/containers/{sleeper.id}/archive?{query}"
    request = urllib.request.Request(
        url, data=make_tar([("clash-file", "dir", None, 0o755)]), method="PUT"
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request)
    assert raised.value.code == 500
    assert json.loads(raised.value.read())["message"] == (
        'cannot overwrite non-directory "/tmp/clash-file" with directory "/tmp"'
    )

    # Without the flag the file replaces the directory, as with Docker.
    assert sleeper.put_archive("/", make_tar([("clash", "file", b"x", 0o644)]))
    _, stat = sleeper.get_archive("/clash")
    assert stat["mode"] & MODE_DIR == 0


def test_testcontainers_copy_helpers(sidewhale, tmp_path):
    from testcontainers.core.container import DockerContainer

    with DockerContainer("busybox").with_command("sleep 300") as container:
        container.copy_into_container(b"via testcontainers\n", "/tmp/tc.txt")
        wrapped = container.get_wrapped_container()
        result = wrapped.exec_run(["cat", "/tmp/tc.txt"])
        assert result.output == b"via testcontainers\n"
        target = tmp_path / "back.txt"
        container.copy_from_container("/tmp/tc.txt", target)
        assert target.read_text() == "via testcontainers\n"


@pytest.fixture
def host_marker():
    """A host directory with a marker file that no archive may touch."""
    directory = shared_tempdir()
    marker = directory / "marker.txt"
    marker.write_text("untouched\n")
    yield directory, marker
    assert marker.read_text() == "untouched\n"
    assert sorted(path.name for path in directory.iterdir()) == ["marker.txt"]


def test_tar_entries_cannot_escape(docker_client, sleeper, host_marker):
    directory, _ = host_marker
    depth = "../" * 20
    hostile = [
        make_tar([(f"{depth}{directory.relative_to('/')}/escaped.txt", "file", b"x", 0o644)]),
        make_tar([("tmp/../../escaped.txt", "file", b"x", 0o644)]),
        make_tar([("ln", "hardlink", f"{depth}{directory.relative_to('/')}/marker.txt", 0o644)]),
        make_tar([("out", "symlink", "../../../../..", 0o777)]),
    ]
    for archive in hostile:
        with pytest.raises(docker.errors.APIError) as raised:
            sleeper.put_archive("/tmp", archive)
        assert raised.value.status_code == 400

    # An absolute entry name is read as relative to the extraction
    # directory, as Docker reads it.
    absolute = make_tar([(f"{directory}/escaped.txt", "file", b"inside\n", 0o644)])
    assert sleeper.put_archive("/", absolute)
    _, stat = sleeper.get_archive(f"{directory}/escaped.txt")
    assert stat["size"] == 7


def test_container_symlinks_stay_in_rootfs(docker_client, sleeper, host_marker):
    directory, _ = host_marker
    sleeper.start()
    script = f"ln -s / /rootlink && ln -s ../../.. /uplink && ln -s {directory} /hostlink"
    assert sleeper.exec_run(["sh", "-c", script]).exit_code == 0

    archive = make_tar([("escaped.txt", "file", b"in the rootfs\n", 0o644)])
    assert sleeper.put_archive("/rootlink/tmp", archive)
    assert sleeper.put_archive("/uplink/tmp", archive)
    result = sleeper.exec_run(["cat", "/tmp/escaped.txt"])
    assert result.output == b"in the rootfs\n"
    assert not pathlib.Path("/tmp/escaped.txt").exists()

    # The link names a host path, which in the container does not exist.
    with pytest.raises(docker.errors.NotFound):
        sleeper.put_archive("/hostlink", archive)

    stream, _ = sleeper.get_archive("/uplink/etc/hostname")
    tar = read_tar(stream)
    assert tar.extractfile("hostname").read() == f"{sleeper.id[:12]}\n".encode()

    _, stat = sleeper.get_archive("/uplink")
    assert stat["linkTarget"] == "/"

    # A symlink planted by the archive is followed inside the rootfs too.
    planted = make_tar(
        [
            ("trap", "symlink", "/", 0o777),
            (f"trap/{directory.relative_to('/')}/escaped.txt", "file", b"x", 0o644),
        ]
    )
    assert sleeper.put_archive("/tmp", planted)
    result = sleeper.exec_run(["cat", f"{directory}/escaped.txt"])
    assert result.output == b"x"


def test_bind_mount_archive_reaches_host(docker_client):
    host = shared_tempdir()
    (host / "from-host.txt").write_text("host file\n")
    container = docker_client.containers.create(
        "busybox",
        ["sh", "-c", "echo from-container > /mnt/bind/written.txt; sleep 300"],
        volumes={str(host): {"bind": "/mnt/bind", "mode": "rw"}},
    )
    try:
        archive = make_tar([("put/deep.txt", "file", b"through the archive\n", 0o644)])
        assert container.put_archive("/mnt/bind", archive)
        assert (host / "put" / "deep.txt").read_text() == "through the archive\n"

        stream, _ = container.get_archive("/mnt/bind/from-host.txt")
        assert read_tar(stream).extractfile("from-host.txt").read() == b"host file\n"

        # Archiving a parent includes the bind's contents.
        stream, _ = container.get_archive("/mnt")
        names = [member.name for member in read_tar(stream).getmembers()]
        assert "mnt/bind/from-host.txt" in names

        container.start()
        deadline = time.monotonic() + 20
        while not (host / "written.txt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (host / "written.txt").read_text() == "from-container\n"

        mounts = container.attrs["Mounts"]
        assert mounts == [
            {
                "Type": "bind",
                "Source": str(host),
                "Destination": "/mnt/bind",
                "Mode": "rw",
                "RW": True,
                "Propagation": "rprivate",
            }
        ]
    finally:
        container.remove(force=True)


def test_read_only_bind_rejects_archive(docker_client):
    host = shared_tempdir()
    container = docker_client.containers.create(
        "busybox", ["sleep", "300"], volumes={str(host): {"bind": "/ro", "mode": "ro"}}
    )
    try:
        with pytest.raises(docker.errors.APIError) as raised:
            container.put_archive("/ro", make_tar([("x.txt", "file", b"x", 0o644)]))
        assert raised.value.status_code == 400
        assert raised.value.explanation == "mounted volume is marked read-only"
        assert list(host.iterdir()) == []
        mount = container.attrs["Mounts"][0]
        assert mount["RW"] is False
        assert mount["Mode"] == "ro"
    finally:
        container.remove(force=True)
