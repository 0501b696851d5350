"""Measures sidewhale, or any Docker Engine API server, with real clients.

Prints one line per figure: the operation, the number of runs, and the
median, minimum and maximum in seconds, then the server's memory use when
its pid is given. The server must reach the test images (busybox:latest,
postgres:16) through its registry mirror or already have them.

    python bench/bench.py --docker-host tcp://127.0.0.1:23750 --pid PID
"""

import argparse
import os
import statistics
import time

import docker
from testcontainers.postgres import PostgresContainer


def timed(runs, action):
    """Runs action `runs` times and returns the durations in seconds."""
    durations = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        durations.append(time.perf_counter() - started)
    return durations


def report(name, durations):
    print(
        f"{name:<44} runs={len(durations):<3} median={statistics.median(durations):.3f}s "
        f"min={min(durations):.3f}s max={max(durations):.3f}s",
        flush=True,
    )


def memory(pid):
    """Returns the resident and peak resident memory of a process, in MiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docker-host", required=True, help="DOCKER_HOST of the server to measure")
    parser.add_argument("--pid", type=int, help="pid of the server, to report its memory")
    parser.add_argument("--runs", type=int, default=10, help="runs of each quick operation")
    arguments = parser.parse_args()

    os.environ["DOCKER_HOST"] = arguments.docker_host
    os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"
    client = docker.DockerClient(base_url=arguments.docker_host, version="auto", timeout=300)

    for image in ("postgres:16", "busybox:latest"):
        try:
            client.images.remove(image, force=True)
        except docker.errors.ImageNotFound:
            pass
    report("pull postgres:16, empty store", timed(1, lambda: client.images.pull("postgres", tag="16")))
    report("pull postgres:16, up to date", timed(3, lambda: client.images.pull("postgres", tag="16")))
    client.images.pull("busybox", tag="latest")

    def run_busybox():
        client.containers.run("busybox:latest", ["true"], remove=True)

    report("run --rm busybox true", timed(arguments.runs, run_busybox))

    def create_and_remove_postgres():
        container = client.containers.create("postgres:16", environment={"POSTGRES_PASSWORD": "x"})
        container.remove(force=True)

    report("create + remove postgres:16 container", timed(arguments.runs, create_and_remove_postgres))

    def postgres_ready():
        with PostgresContainer("postgres:16") as postgres:
            postgres.get_connection_url()

    report("testcontainers PostgresContainer to ready", timed(3, postgres_ready))

    if arguments.pid:
        rss, peak = memory(arguments.pid)
        print(f"{'server memory':<44} rss={rss:.1f}MiB peak={peak:.1f}MiB", flush=True)


if __name__ == "__main__":
    main()
