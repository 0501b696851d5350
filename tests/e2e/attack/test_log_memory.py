"""Container output must not be held in sidewhale's memory.

Docker's json-file driver writes output to disk as it arrives, so a
chatty container costs disk, not daemon memory.
"""

import json
import time

import pytest

from attack_helpers import private_server, remove_server, request, rss_kib, server_pid, start_server

OUTPUT_BYTES = 150 * 1024 * 1024
ALLOWED_GROWTH_KIB = 64 * 1024


@pytest.fixture
def server():
    # A private server, so that no other test's work changes the measurement.
    server = private_server()
    start_server(server)
    yield server
    remove_server(server)


def test_output_not_kept_in_memory(server):
    status, raw = request(server, "POST", "/images/create?fromImage=busybox&tag=latest", timeout=120)
    assert status == 200, raw
    pid = server_pid(server)
    before = rss_kib(pid)
    command = f"yes 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef | head -c {OUTPUT_BYTES}"
    status, raw = request(server, "POST", "/containers/create?name=loud",
                          {"Image": "busybox", "Cmd": ["sh", "-c", command]})
    assert status == 201, raw
    status, raw = request(server, "POST", "/containers/loud/start")
    assert status == 204, raw
    status, raw = request(server, "POST", "/containers/loud/wait", timeout=300)
    assert status == 200, raw
    assert json.loads(raw)["StatusCode"] == 0, raw
    time.sleep(1)
    growth = rss_kib(pid) - before
    assert growth < ALLOWED_GROWTH_KIB, (
        f"sidewhale's resident memory grew by {growth // 1024} MiB "
        f"for {OUTPUT_BYTES // (1024 * 1024)} MiB of container output"
    )
