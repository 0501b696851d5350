"""A second pull, and a second container, transfer and unpack nothing."""

import json
import os


def layer_snapshot(state_dir):
    """Maps every stored blob and unpacked layer to its inode and mtime."""
    snapshot = {}
    images = state_dir / "images"
    for kind in ("blobs", "layers"):
        base = images / kind
        if not base.exists():
            continue
        for root, dirs, files in os.walk(base):
            if root.count(os.sep) - str(base).count(os.sep) > 1:
                dirs[:] = []
            for name in dirs + files:
                path = os.path.join(root, name)
                stat = os.lstat(path)
                snapshot[path] = (stat.st_ino, stat.st_mtime_ns)
    return snapshot


def pull_statuses(client, repository, tag):
    lines = client.api.pull(repository, tag=tag, stream=True, decode=True)
    return [line for line in lines]


def test_second_pull_and_container_reuse_layers(sidewhale, docker_client):
    first = pull_statuses(docker_client, "postgres", "16")
    assert not [line for line in first if "error" in line], first
    assert first[-1]["status"] in (
        "Status: Downloaded newer image for postgres:16",
        "Status: Image is up to date for postgres:16",
    )
    before = layer_snapshot(sidewhale.state_dir)
    assert any("/layers/" in path for path in before), "no unpacked layers in the store"

    second = pull_statuses(docker_client, "postgres", "16")
    statuses = [line.get("status", "") for line in second]
    assert statuses[-1] == "Status: Image is up to date for postgres:16"
    assert not [s for s in statuses if s in ("Downloading", "Extracting", "Download complete", "Pull complete")], statuses

    containers = [
        docker_client.containers.create("postgres:16", environment={"POSTGRES_PASSWORD": "x"})
        for _ in range(2)
    ]
    try:
        after = layer_snapshot(sidewhale.state_dir)
        assert after == before, "creating containers changed the blob or layer store"
        image = docker_client.images.get("postgres:16")
        layers = image.attrs["RootFS"]["Layers"]
        assert len(layers) >= 2
    finally:
        for container in containers:
            container.remove(force=True)


def test_redis_and_postgres_share_base_layer(sidewhale, docker_client):
    docker_client.images.pull("redis", tag="7")
    docker_client.images.pull("postgres", tag="16")
    redis_layers = docker_client.images.get("redis:7").attrs["RootFS"]["Layers"]
    postgres_layers = docker_client.images.get("postgres:16").attrs["RootFS"]["Layers"]
    assert redis_layers[0] == postgres_layers[0]
    unpacked = [
        name for name in os.listdir(sidewhale.state_dir / "images" / "layers")
        if redis_layers[0].split(":")[1] in name
    ]
    assert len(unpacked) == 1, json.dumps(unpacked)
