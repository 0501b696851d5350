"""A crash of sidewhale and a second sidewhale on the same state dir.

Docker stops the containers of a daemon that died when it starts again
(without live-restore), and refuses to start a second daemon on the same
data root (its pid file).
"""

import json
import os
import random
import signal
import socket
import time

import pytest

from attack_helpers import (
    kill_pids, pids_with_argv, private_server, remove_server, request, server_pid, start_server,
)

RESTART_GRACE_SECONDS = 10


@pytest.fixture
def server():
    server = private_server()
    start_server(server)
    status, raw = request(server, "POST", "/images/create?fromImage=busybox&tag=latest", timeout=120)
    assert status == 200, raw
    yield server
    remove_server(server)


def start_second_server(first):
    """Starts another sidewhale on first's state dir and stops it again.
    Returns whether it started."""
    second = private_server()
    second.state_dir = first.state_dir
    second.socket = first.socket
    try:
        start_server(second)
    except RuntimeError:
        return False
    finally:
        remove_server(second)
    return True


def test_sigkill_leaves_no_container_processes(server):
    # A unique sleep duration identifies this container's process on the host.
    argv = ["sleep", str(random.randint(10_000_000, 99_999_999))]
    status, raw = request(server, "POST", "/containers/create?name=crash", {"Image": "busybox", "Cmd": argv})
    assert status == 201, raw
    status, raw = request(server, "POST", "/containers/crash/start")
    assert status == 204, raw
    try:
        deadline = time.monotonic() + 10
        while not pids_with_argv(argv) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pids_with_argv(argv), "the container's process never appeared"

        os.kill(server_pid(server), signal.SIGKILL)
        server.process.wait(timeout=10)
        server.log.close()
        start_server(server)

        status, raw = request(server, "GET", "/containers/crash/json")
        assert status == 200, raw
        assert json.loads(raw)["State"]["Running"] is False
        deadline = time.monotonic() + RESTART_GRACE_SECONDS
        while pids_with_argv(argv) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pids_with_argv(argv) == [], (
            "the container is reported as exited, but its process still runs after the restart"
        )
    finally:
        kill_pids(pids_with_argv(argv))


def test_second_server_rejected(server):
    assert not start_second_server(server), "a second sidewhale started on a state dir that another one is using"


def test_second_server_keeps_first_socket(server):
    start_second_server(server)
    assert server.socket.exists(), f"{server.socket} was removed by the second server"
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(5)
        client.connect(str(server.socket))
        client.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
        answer = client.recv(1024)
    assert answer.split(b" ")[1:2] == [b"200"], answer
