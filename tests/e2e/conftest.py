"""Fixtures that run a real sidewhale against the local test registry.

The registry is started by tests/run.sh (tests/registry.sh start) and
reached as a Docker Hub mirror, as a user behind a corporate mirror would.
Set SIDEWHALE_TEST_USER to run sidewhale as that unprivileged user,
SIDEWHALE_TEST_EXECUTOR to choose its default executor (--executor), and
SIDEWHALE_TEST_SERVER_ARGS to add arguments to its command line (split as
by a POSIX shell), such as --executor-plugin PATH.

SIDEWHALE_TEST_DOCKER_HOST=unix:///PATH or tcp://127.0.0.1:PORT runs the
tests against a Docker Engine that you started yourself instead, to check
the expected results against Docker. Tests that send raw HTTP need the tcp
form, and tests of sidewhale's own files and log fail there.
"""

import json
import os
import pathlib
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
MIRROR = os.environ.get("SIDEWHALE_TEST_MIRROR", "http://127.0.0.1:5000")
BINARY = pathlib.Path(os.environ.get("SIDEWHALE_BIN", REPO / "target" / "debug" / "sidewhale"))
EXECUTOR = os.environ.get("SIDEWHALE_TEST_EXECUTOR") or None
TEST_USER = os.environ.get("SIDEWHALE_TEST_USER") or None
SERVER_ARGS = shlex.split(os.environ.get("SIDEWHALE_TEST_SERVER_ARGS", ""))
EXTERNAL_DOCKER_HOST = os.environ.get("SIDEWHALE_TEST_DOCKER_HOST") or None


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request(server, method, path, body=None):
    """Sends a raw request to the server and returns (status, parsed JSON or text)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.port}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"} if data else {},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def docker_cli(server, *args, check=True, input=None, timeout=120):
    """Runs the docker CLI against `server` and returns the completed
    process. With `check`, a non-zero exit fails the test with the output."""
    result = subprocess.run(
        ["docker", *args],
        env=server.env(),
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(args)} exited with {result.returncode}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        )
    return result


class Sidewhale:
    """A running sidewhale process and where to reach it."""

    def __init__(self, root, user, args=()):
        self.root = pathlib.Path(root)
        self.args = list(args)
        self.state_dir = self.root / "state"
        self.log_path = self.root / "sidewhale.log"
        self.port = free_port()
        self.docker_host = f"tcp://127.0.0.1:{self.port}"
        self.socket = self.state_dir / "docker.sock"
        self.user = user
        self.process = None

    def start(self):
        self.state_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(BINARY),
            "--listen", f"127.0.0.1:{self.port}",
            "--state-dir", str(self.state_dir),
            "--registry-mirror", MIRROR,
        ]
        if EXECUTOR:
            command += ["--executor", EXECUTOR]
        command += SERVER_ARGS + self.args
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "SIDEWHALE_LOG": os.environ.get("SIDEWHALE_LOG", "info"),
            # A marker that must never reach a container's environment.
            "SIDEWHALE_TEST_MARKER": "leaked",
        }
        if self.user:
            entry = pwd.getpwnam(self.user)
            for path in [self.root, *self.root.rglob("*")]:
                os.chown(path, entry.pw_uid, entry.pw_gid)
            env["HOME"] = entry.pw_dir
            command = ["runuser", "-u", self.user, "--", *command]
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sidewhale exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_ping", timeout=1) as response:
                    if response.read() == b"OK":
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"sidewhale did not answer /_ping within 30 s:\n{self.log_tail()}")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def log_tail(self, lines=40):
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def env(self):
        """Returns the environment a client of this sidewhale runs with."""
        env = dict(os.environ)
        env["DOCKER_HOST"] = self.docker_host
        env["TESTCONTAINERS_RYUK_DISABLED"] = "true"
        env.pop("DOCKER_CONFIG", None)
        return env


class ExternalServer(Sidewhale):
    """A Docker Engine that the tester started, used in place of sidewhale."""

    def __init__(self, docker_host):
        url = urllib.parse.urlsplit(docker_host)
        self.docker_host = docker_host
        self.port = url.port if url.scheme == "tcp" else None
        self.socket = pathlib.Path(url.path) if url.scheme == "unix" else None
        self.user = None
        self.process = None

    def start(self):
        pass

    def stop(self):
        pass

    def log_tail(self, lines=40):
        return f"(external server {self.docker_host}, no sidewhale log)"


def check_registry():
    try:
        with urllib.request.urlopen(f"{MIRROR}/v2/", timeout=5) as response:
            response.read()
    except OSError as error:
        pytest.exit(f"the test registry at {MIRROR} is not reachable ({error}); run tests/run.sh", 2)


@pytest.fixture(scope="session")
def sidewhale():
    if EXTERNAL_DOCKER_HOST:
        check_registry()
        root = None
        server = ExternalServer(EXTERNAL_DOCKER_HOST)
    else:
        if not BINARY.exists():
            pytest.exit(f"{BINARY} is missing; build it with cargo build", 2)
        check_registry()
        root = tempfile.mkdtemp(prefix="sw-")
        server = Sidewhale(root, TEST_USER)
    server.start()
    saved = {key: os.environ.get(key) for key in ("DOCKER_HOST", "TESTCONTAINERS_RYUK_DISABLED")}
    os.environ["DOCKER_HOST"] = server.docker_host
    os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"
    yield server
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()
    if root is None:
        return
    if os.environ.get("SIDEWHALE_TEST_KEEP"):
        print(f"sidewhale state kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Appends sidewhale's log to the report of a failed test."""
    outcome = yield
    report = outcome.get_result()
    server = item.funcargs.get("sidewhale") if hasattr(item, "funcargs") else None
    if report.failed and server is not None:
        report.sections.append(("sidewhale log", server.log_tail()))


@pytest.fixture
def private_server():
    """Returns a function that starts a sidewhale of the test's own, as
    the test user, with extra arguments and an optional root directory.
    Every server it started is stopped after the test."""
    started = []

    def start(*args, root=None):
        server = Sidewhale(root or tempfile.mkdtemp(prefix="sw-private-"), TEST_USER, args)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def docker_client(sidewhale):
    import docker

    client = docker.DockerClient(base_url=sidewhale.docker_host, version="auto", timeout=120)
    yield client
    client.close()
