"""Helpers for the attack tests: private sidewhale servers, raw requests,
process lookups and a throwaway registry holding hand-built images.

Each helper starts only processes it owns and stops them by pid.
"""

import gzip
import hashlib
import io
import json
import os
import pathlib
import shutil
import signal
import stat
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request

import conftest

REGISTRY_BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
SKOPEO = shutil.which("skopeo")
BUSYBOX = shutil.which("busybox") or "/usr/bin/busybox"


def request(server, method, path, body=None, headers=None, timeout=60):
    """Sends one request to a sidewhale server and returns (status, raw body bytes)."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.port}{path}", data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def json_message(raw):
    """Returns the "message" field of a Docker JSON error body, or None if the body is not one."""
    try:
        return json.loads(raw).get("message")
    except (ValueError, AttributeError):
        return None


def server_pid(server):
    """Returns the pid of the sidewhale process itself, which is a child of
    runuser when the server runs as another user."""
    pid = server.process.pid
    if not server.user:
        return pid
    children = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, f"runuser {pid} has children {children}"
    return int(children[0])


def rss_kib(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def pids_with_argv(argv):
    """Returns the pids whose command line is exactly argv."""
    expected_cmdline = b"\0".join(arg.encode() for arg in argv) + b"\0"
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "cmdline").read_bytes() == expected_cmdline:
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def kill_pids(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def private_server(mirror=None):
    """Creates (not starts) a sidewhale with its own state dir, run as
    SIDEWHALE_TEST_USER like the session server, optionally with another
    registry mirror."""
    root = tempfile.mkdtemp(prefix="sw-attack-")
    server = conftest.Sidewhale(root, os.environ.get("SIDEWHALE_TEST_USER") or None)
    server.mirror = mirror
    return server


def start_server(server):
    """Starts a server made by private_server, with its mirror if it has one.
    conftest.Sidewhale reads the mirror from a module constant at start."""
    mirror = getattr(server, "mirror", None)
    saved = conftest.MIRROR
    if mirror:
        conftest.MIRROR = mirror
    try:
        server.start()
    finally:
        conftest.MIRROR = saved


def remove_server(server):
    server.stop()
    shutil.rmtree(server.root, ignore_errors=True)


def searchable_by_others(path, stop_at):
    """Returns whether a user who is neither owner nor group member can reach
    path by walking down from stop_at (stop_at's own ancestors are ignored,
    because users put the state dir under world-searchable parents such as
    /var/lib or a 0755 home)."""
    path = pathlib.Path(path)
    stop_at = pathlib.Path(stop_at)
    directory = path.parent
    chain = []
    while True:
        chain.append(directory)
        if directory == stop_at or directory == directory.parent:
            break
        directory = directory.parent
    return all(os.stat(d).st_mode & stat.S_IXOTH for d in chain)


def setuid_files(root):
    """Yields regular files under root with the setuid or setgid bit."""
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
                yield path


# Hand-built images


def tar_entry(name, kind="file", data=b"", target=None, mode=0o644):
    return {"name": name, "kind": kind, "data": data, "target": target, "mode": mode}


def make_tar(entries):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            info = tarfile.TarInfo(entry["name"])
            info.mode = entry["mode"]
            info.mtime = 0
            if entry["kind"] == "file":
                info.size = len(entry["data"])
                archive.addfile(info, io.BytesIO(entry["data"]))
            elif entry["kind"] == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                archive.addfile(info)
            elif entry["kind"] == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = entry["target"]
                archive.addfile(info)
            else:
                raise ValueError(f"unknown tar entry kind {entry['kind']}")
    return buffer.getvalue()


def base_layer():
    """A layer with a static busybox as /bin/sh, so entrypoints can run."""
    return [
        tar_entry("bin", "dir"),
        tar_entry("bin/busybox", data=pathlib.Path(BUSYBOX).read_bytes(), mode=0o755),
        tar_entry("bin/sh", "symlink", target="busybox"),
        tar_entry("tmp", "dir"),
        tar_entry("etc", "dir"),
        tar_entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"),
    ]


def write_oci_layout(directory, layers):
    """Writes an OCI image layout with one manifest tagged "latest". Each
    layer is a list of tar entries."""
    directory = pathlib.Path(directory)
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def add_blob(data):
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}", len(data)

    descriptors, diff_ids = [], []
    for entries in layers:
        tar = make_tar(entries)
        digest, size = add_blob(gzip.compress(tar, mtime=0))
        descriptors.append(
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size}
        )
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh", "-c", "echo ran"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_digest, config_size = add_blob(json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": descriptors,
    }
    manifest_digest, manifest_size = add_blob(json.dumps(manifest).encode())
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": "latest"},
            }
        ],
    }
    (directory / "index.json").write_text(json.dumps(index))


class Registry:
    """A docker-registry process on a free loopback port, with its storage
    in a temporary directory."""

    def __init__(self):
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="sw-attack-registry-"))
        self.port = conftest.free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process = None

    def start(self):
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'storage'}\n"
            f"http:\n  addr: {self.address}\n"
        )
        self.log = open(self.root / "registry.log", "ab")
        self.process = subprocess.Popen(
            [REGISTRY_BINARY, "serve", str(config)], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"docker-registry did not answer on {self.address} within 30 s")

    def push(self, repository, layers):
        """Builds an image from tar-entry layers and pushes it as
        library/<repository>:latest, a Docker Hub name behind a mirror."""
        layout = self.root / "layouts" / repository
        write_oci_layout(layout, layers)
        subprocess.run(
            [SKOPEO, "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
             f"oci:{layout}:latest", f"docker://{self.address}/library/{repository}:latest"],
            check=True, timeout=120,
        )

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)
