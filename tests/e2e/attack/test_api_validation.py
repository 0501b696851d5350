"""Invalid input that Docker rejects with 400 and a JSON message.

The expected behaviour is the Docker Engine's: moby's
daemon/container.go validateContainerConfig checks WorkingDir (absolute),
StopSignal (a known signal) and Env (a non-empty name) at create, and image
names and tags follow distribution/reference. The API reference documents
these failures as "400 bad parameter".
"""

import socket
import uuid

import pytest

from attack_helpers import json_message, request


@pytest.fixture(scope="module", autouse=True)
def busybox(sidewhale):
    status, raw = request(sidewhale, "POST", "/images/create?fromImage=busybox&tag=latest", timeout=120)
    assert status == 200, raw


def create(sidewhale, body):
    name = f"val-{uuid.uuid4().hex[:8]}"
    status, raw = request(sidewhale, "POST", f"/containers/create?name={name}", body)
    if status == 201:
        request(sidewhale, "DELETE", f"/containers/{name}?force=1")
    return status, raw


def test_tag_containing_slash_rejected(sidewhale):
    # "myrepo" + tag "5000/name" must not become the reference myrepo:5000/name.
    status, raw = request(sidewhale, "POST", "/images/busybox/tag?repo=myrepo&tag=5000/name")
    try:
        assert status == 400, raw
        assert json_message(raw), raw
    finally:
        request(sidewhale, "DELETE", "/images/myrepo:5000/name")
    status, _ = request(sidewhale, "GET", "/images/myrepo:5000/name/json")
    assert status == 404


def test_tag_dot_dot_rejected(sidewhale):
    status, raw = request(sidewhale, "POST", "/images/busybox/tag?repo=attack&tag=../x")
    try:
        assert status == 400, raw
    finally:
        request(sidewhale, "DELETE", "/images/attack:../x")


def test_invalid_stop_signal_rejected(sidewhale):
    # Accepted at create, such a container can never be stopped: every
    # stop then fails with 400 "Invalid signal".
    status, raw = create(sidewhale, {"Image": "busybox", "StopSignal": "SIGBOGUS"})
    assert status == 400, raw
    assert "SIGBOGUS" in (json_message(raw) or ""), raw


def test_invalid_image_reference_is_400(sidewhale):
    status, raw = create(sidewhale, {"Image": "Bad Image Name!!"})
    assert status == 400, raw
    assert "invalid reference format" in (json_message(raw) or ""), raw


def test_env_without_name_rejected(sidewhale):
    status, raw = create(sidewhale, {"Image": "busybox", "Env": ["=value"]})
    assert status == 400, raw


def test_relative_working_dir_rejected(sidewhale):
    status, raw = create(sidewhale, {"Image": "busybox", "WorkingDir": "../../.."})
    assert status == 400, raw


@pytest.mark.parametrize("body", [
    {"Image": "busybox", "Cmd": ["echo", "a\u0000b"]},
    {"Image": "busybox", "Cmd": ["env"], "Env": ["A=x\u0000y"]},
], ids=["argv", "env"])
def test_nul_byte_start_not_500(sidewhale, body):
    name = f"nul-{uuid.uuid4().hex[:8]}"
    status, raw = request(sidewhale, "POST", f"/containers/create?name={name}", body)
    try:
        if status == 201:
            status, raw = request(sidewhale, "POST", f"/containers/{name}/start")
        assert status == 400, raw
    finally:
        request(sidewhale, "DELETE", f"/containers/{name}?force=1")


def test_large_create_body_accepted(sidewhale):
    # Docker sets no 2 MiB cap on request bodies; 3 MiB of labels is valid.
    body = {"Image": "busybox", "Labels": {f"label{index}": "x" * 1000 for index in range(3000)}}
    status, raw = create(sidewhale, body)
    assert status == 201, raw[:200]


def test_oversized_body_error_is_json(sidewhale):
    # Announces a 1 GiB body but sends only 4 MiB of it, past any cap the
    # server applies, then reads the answer.
    with socket.create_connection(("127.0.0.1", sidewhale.port), timeout=30) as client:
        client.sendall(
            b"POST /containers/create HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n"
        )
        try:
            client.sendall(b" " * (4 << 20))
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = client.recv(65536)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.split(b" ")[1:2] in ([b"400"], [b"413"]), head
    assert json_message(body), f"not a Docker JSON error: {body[:200]!r}"
