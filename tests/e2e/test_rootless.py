"""Rootless mode: a sidewhale started by a user other than root runs as
root of a user namespace that maps the user's subordinate ids.

tests/setup.sh installs uidmap and makes sure sidewhale-test has ranges
in /etc/subuid and /etc/subgid, so the mode is active whenever
SIDEWHALE_TEST_USER is set.
"""

import docker

from conftest import TEST_USER as USER


def test_info_reports_rootless_mode(docker_client):
    options = docker_client.info()["SecurityOptions"]

    assert ("name=rootless" in options) == (USER is not None)
    if USER is not None:
        # Root of the user namespace may create network namespaces.
        assert "name=netns,mode=namespace" in options


def test_user_namespace_key_applies_to_users_only(private_server):
    """An ordinary user with user_namespace = "off" keeps a single id, and
    root ignores the key, even with "required"."""
    mode = "off" if USER is not None else "required"
    server = private_server("--user-namespace", mode)
    client = docker.DockerClient(base_url=server.docker_host, version="auto", timeout=120)

    options = client.info()["SecurityOptions"]

    assert "name=rootless" not in options
    client.close()


def test_chown_to_another_user_is_kept(docker_client):
    """The ids 1 to 65536 of the container are real ids in rootless
    mode, so a chown done by an entrypoint is what later reads see."""
    docker_client.images.pull("busybox", tag="latest")

    output = docker_client.containers.run(
        "busybox",
        ["sh", "-c", "touch /tmp/owned && chown 1234:2345 /tmp/owned && stat -c %u:%g /tmp/owned"],
        remove=True,
    )

    assert output.decode().strip() == "1234:2345"


def test_layer_owners_survive_the_pull(docker_client):
    """/data of the redis image belongs to its redis user in the layer,
    and keeps that owner in the container's rootfs, as root and in
    rootless mode."""
    docker_client.images.pull("redis", tag="7")

    output = docker_client.containers.run(
        "redis:7", ["stat", "-c", "%U:%G", "/data"], entrypoint=[], remove=True
    )

    assert output.decode().strip() == "redis:redis"
