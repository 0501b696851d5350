"""Restart policies through the docker CLI and the API: which exits
start a container again, how many times, and what stops them."""

import json
import time

import pytest

from conftest import docker_cli, request


def inspect(sidewhale, name):
    return json.loads(docker_cli(sidewhale, "inspect", name).stdout)[0]


def wait_for(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module", autouse=True)
def busybox(sidewhale):
    docker_cli(sidewhale, "pull", "busybox")


def test_on_failure_stops_after_retry_count(sidewhale):
    name = "restart-on-failure"
    docker_cli(sidewhale, "run", "-d", "--name", name, "--restart", "on-failure:2", "busybox", "sh", "-c", "exit 3")
    try:
        assert wait_for(lambda: inspect(sidewhale, name)["RestartCount"] == 2)
        # No third restart: the container stays exited with its code.
        time.sleep(2)
        state = inspect(sidewhale, name)
        assert state["RestartCount"] == 2
        assert state["State"]["Status"] == "exited"
        assert state["State"]["ExitCode"] == 3
        assert state["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    finally:
        docker_cli(sidewhale, "rm", "-f", name, check=False)


def test_on_failure_ignores_success(sidewhale):
    name = "restart-on-success"
    docker_cli(sidewhale, "run", "-d", "--name", name, "--restart", "on-failure", "busybox", "true")
    try:
        assert wait_for(lambda: inspect(sidewhale, name)["State"]["Status"] == "exited")
        time.sleep(1)
        assert inspect(sidewhale, name)["RestartCount"] == 0
    finally:
        docker_cli(sidewhale, "rm", "-f", name, check=False)


def test_always_restarts_until_stopped(sidewhale):
    name = "restart-always"
    docker_cli(sidewhale, "run", "-d", "--name", name, "--restart", "always", "busybox", "sh", "-c", "sleep 0.3")
    try:
        assert wait_for(lambda: inspect(sidewhale, name)["RestartCount"] >= 2)
        docker_cli(sidewhale, "stop", "-t", "1", name)
        stopped = inspect(sidewhale, name)["RestartCount"]
        # A stopped container stays stopped, even with a restart pending.
        time.sleep(3)
        state = inspect(sidewhale, name)
        assert state["State"]["Status"] == "exited"
        assert state["RestartCount"] == stopped
    finally:
        docker_cli(sidewhale, "rm", "-f", name, check=False)


def test_killed_container_not_restarted(sidewhale):
    name = "restart-killed"
    docker_cli(sidewhale, "run", "-d", "--name", name, "--restart", "unless-stopped", "busybox", "sleep", "300")
    try:
        docker_cli(sidewhale, "kill", name)
        assert wait_for(lambda: inspect(sidewhale, name)["State"]["Status"] == "exited")
        time.sleep(2)
        state = inspect(sidewhale, name)
        assert state["State"]["Status"] == "exited"
        assert state["RestartCount"] == 0
    finally:
        docker_cli(sidewhale, "rm", "-f", name, check=False)


@pytest.mark.parametrize(
    ("policy", "auto_remove", "message"),
    [
        ({"Name": "sometimes"}, False, "invalid restart policy: unknown policy 'sometimes'"),
        (
            {"Name": "always", "MaximumRetryCount": 2},
            False,
            "invalid restart policy: maximum retry count can only be used with 'on-failure'",
        ),
        (
            {"Name": "on-failure", "MaximumRetryCount": -1},
            False,
            "invalid restart policy: maximum retry count cannot be negative",
        ),
        ({"Name": "always"}, True, "can't create 'AutoRemove' container with restart policy"),
    ],
)
def test_invalid_policy_rejected(sidewhale, policy, auto_remove, message):
    body = {
        "Image": "busybox",
        "Cmd": ["true"],
        "HostConfig": {"RestartPolicy": policy, "AutoRemove": auto_remove},
    }
    status, reply = request(sidewhale, "POST", "/containers/create", body)
    assert status == 400
    assert message in reply["message"]
