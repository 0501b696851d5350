"""Other local users must not reach what sidewhale stores.

Docker locked down the permissions of its data root for CVE-2021-41091,
and containerd those of its container root directories for CVE-2021-41103,
because image layers and container root filesystems contain setuid programs
and container configurations contain secrets. sidewhale's state dir sits
under /var/lib (as root) or a home directory, both usually searchable by
everyone, so the state dir itself has to keep other users out.
"""

import json
import os
import stat
import uuid

from attack_helpers import request, searchable_by_others, setuid_files


def run_and_wait(sidewhale, body):
    status, raw = request(sidewhale, "POST", "/images/create?fromImage=busybox&tag=latest", timeout=120)
    assert status == 200, raw
    name = f"perm-{uuid.uuid4().hex[:8]}"
    status, raw = request(sidewhale, "POST", f"/containers/create?name={name}", body)
    assert status == 201, raw
    status, raw = request(sidewhale, "POST", f"/containers/{name}/start")
    assert status == 204, raw
    status, raw = request(sidewhale, "POST", f"/containers/{name}/wait", timeout=60)
    assert status == 200, raw
    assert json.loads(raw)["StatusCode"] == 0, raw
    return name


def test_setuid_copy_unreachable_by_others(sidewhale):
    # A process in the container is (real or emulated) root and may create a
    # setuid file in its root filesystem, as image layers also may.
    name = run_and_wait(sidewhale, {
        "Image": "busybox",
        "Cmd": ["sh", "-c", "cp /bin/busybox /tmp/suid-copy && chmod 4755 /tmp/suid-copy"],
    })
    try:
        found = list(setuid_files(sidewhale.state_dir))
        reachable = [path for path in found if searchable_by_others(path, sidewhale.state_dir)
                     and os.stat(path).st_mode & stat.S_IXOTH]
        assert reachable == [], (
            f"setuid files that any local user can execute as {sidewhale.user or 'root'}: {reachable}"
        )
    finally:
        request(sidewhale, "DELETE", f"/containers/{name}?force=1")


def test_container_env_unreadable_by_others(sidewhale):
    secret = f"POSTGRES_PASSWORD=secret-{uuid.uuid4().hex}"
    name = run_and_wait(sidewhale, {"Image": "busybox", "Cmd": ["true"], "Env": [secret]})
    try:
        leaking = []
        for directory, _, files in os.walk(sidewhale.state_dir):
            for file_name in files:
                path = os.path.join(directory, file_name)
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    continue
                if "/rootfs/" in path:
                    continue
                readable = os.stat(path).st_mode & stat.S_IROTH
                if readable and searchable_by_others(path, sidewhale.state_dir):
                    with open(path, "rb") as handle:
                        if secret.encode() in handle.read():
                            leaking.append(path)
        assert leaking == [], f"files any local user can read that contain the container's Env: {leaking}"
    finally:
        request(sidewhale, "DELETE", f"/containers/{name}?force=1")
