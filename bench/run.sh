#!/usr/bin/env bash
# Builds sidewhale in release mode, starts it against the test registry and
# prints the figures of bench/bench.py. Run tests/setup.sh once before.
# Set DOCKER_COMPARE_HOST to a Docker Engine's DOCKER_HOST to measure it
# with the same script (it needs the same images through its own mirror).
# SIDEWHALE_BENCH_ARGS adds arguments to sidewhale's command line, such as
# `--network-isolation host` to measure proot with relocated ports.
set -euo pipefail
cd "$(dirname "$0")/.."

# A registry of its own, so that a registry used by tests is left alone.
export SIDEWHALE_TEST_REGISTRY_PORT=${SIDEWHALE_TEST_REGISTRY_PORT:-5020}

cargo build --release -p sidewhale-server
bash tests/registry.sh start
state=$(mktemp -d /tmp/sidewhale-bench.XXXXXX)
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$state"; bash tests/registry.sh stop' EXIT

port=23799
read -r -a extra_args <<< "${SIDEWHALE_BENCH_ARGS:-}"
SIDEWHALE_LOG=warn target/release/sidewhale --listen "127.0.0.1:$port" --state-dir "$state" \
    --registry-mirror "http://127.0.0.1:$SIDEWHALE_TEST_REGISTRY_PORT" "${extra_args[@]}" &
server=$!
for _ in $(seq 50); do
    curl -fs "http://127.0.0.1:$port/_ping" >/dev/null && break
    sleep 0.1
done

echo "== sidewhale $(git rev-parse --short HEAD) ${SIDEWHALE_BENCH_ARGS:-} on $(nproc) cores, $(uname -r)"
.venv/bin/python bench/bench.py --docker-host "tcp://127.0.0.1:$port" --pid "$server"
if [[ -n "${DOCKER_COMPARE_HOST:-}" ]]; then
    echo "== Docker Engine at $DOCKER_COMPARE_HOST"
    .venv/bin/python bench/bench.py --docker-host "$DOCKER_COMPARE_HOST"
fi
