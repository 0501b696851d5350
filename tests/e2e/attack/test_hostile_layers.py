"""Images whose layers try to write outside the root filesystem.

The README promises that a layer entry landing outside its directory
(through "..", an absolute path, a symlink or a hard link) is rejected
and the pull fails. These images are pushed to a private registry that a
private sidewhale uses as its Docker Hub mirror.
"""

import json
import os
import pathlib

import pytest

from attack_helpers import (
    REGISTRY_BINARY, SKOPEO, Registry, base_layer, private_server, remove_server, request,
    start_server, tar_entry,
)

pytestmark = pytest.mark.skipif(
    not (SKOPEO and os.path.exists(REGISTRY_BINARY)),
    reason="needs skopeo and docker-registry (tests/setup.sh installs both)",
)

ESCAPE = "../" * 12 + "tmp"


@pytest.fixture(scope="module")
def registry():
    registry = Registry()
    registry.start()
    # The lower layer plants a relative symlink that climbs out of the root,
    # and the upper layer writes a file through it.
    registry.push("cross-layer-symlink", [
        base_layer() + [tar_entry("escape", "symlink", target=ESCAPE)],
        [tar_entry("escape/sidewhale-cross-layer-marker", data=b"written through a lower layer's symlink")],
    ])
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def server(registry):
    server = private_server(mirror=f"http://{registry.address}")
    start_server(server)
    yield server
    remove_server(server)


def pull(server, repository):
    """Pulls repository:latest and returns the decoded progress messages."""
    status, raw = request(server, "POST", f"/images/create?fromImage={repository}&tag=latest", timeout=120)
    assert status == 200, raw
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


def test_cross_layer_symlink_fails_pull(server):
    marker = pathlib.Path("/tmp/sidewhale-cross-layer-marker")
    assert not marker.exists(), f"remove {marker} left by an earlier run"
    messages = pull(server, "cross-layer-symlink")
    errors = [message for message in messages if "error" in message]
    try:
        assert not marker.exists(), "a layer wrote through a symlink to the host's /tmp"
        assert errors, f"the pull reported success: {messages[-1]}"
        status, raw = request(server, "GET", "/images/cross-layer-symlink/json")
        assert status == 404, "an image whose layers were rejected is listed"
    finally:
        if marker.exists():
            marker.unlink()


def test_rejected_layer_create_is_not_500(server):
    # Whatever the pull reported, creating a container from such an image
    # is a client error (bad image), not an internal server error.
    pull(server, "cross-layer-symlink")
    status, raw = request(server, "POST", "/containers/create?name=cross-layer", {"Image": "cross-layer-symlink"})
    try:
        assert status != 500, raw
    finally:
        request(server, "DELETE", "/containers/cross-layer?force=1")
