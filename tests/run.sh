#!/usr/bin/env bash
# Runs every test of sidewhale on a bare Debian 12 machine, as root. It
# installs what the tests need, builds the test images and the workspace,
# and runs the Rust tests. Then it runs the bollard and testcontainers-rs
# conformance tests with sidewhale as root and as sidewhale-test, and the
# end-to-end suite (with the Node clients) once per executor and user:
# proot and bubblewrap as root and as the unprivileged user sidewhale-test
# (in rootless mode), proot as sidewhale-test outside rootless mode (with
# relocated ports on the host's network), chroot as root, and the docker
# CLI, Testcontainers and same-port tests with the example executor
# plugin.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing test dependencies"
bash tests/setup.sh

echo "== building"
cargo build --workspace --all-targets

echo "== Rust tests"
# The conformance tests need the test registry, so they run after it starts.
cargo test --workspace --exclude sidewhale-conformance

echo "== starting the test registry"
export SIDEWHALE_TEST_MIRROR="http://127.0.0.1:${SIDEWHALE_TEST_REGISTRY_PORT:-5000}"
bash tests/registry.sh start
trap 'bash tests/registry.sh stop' EXIT

# The unprivileged user cannot reach a binary inside /root, so every run
# use a copy in a directory everybody can read.
bin_dir=$(mktemp -d /tmp/sidewhale-bin.XXXXXX)
chmod 755 "$bin_dir"
install -m 755 target/debug/sidewhale "$bin_dir/sidewhale"
export SIDEWHALE_BIN="$bin_dir/sidewhale"

echo "== network namespace tests as sidewhale-test"
netns_test=$(cargo test -p sidewhale-netns --test namespaces --no-run 2>&1 \
    | grep -o 'target/debug/deps/namespaces-[0-9a-f]*' | head -n 1)
install -m 755 "$netns_test" "$bin_dir/netns-test"
(cd /tmp && runuser -u sidewhale-test -- "$bin_dir/netns-test")

echo "== port relocation tests as sidewhale-test"
relocation_test=$(cargo test -p sidewhale-executors --test relocation --no-run 2>&1 \
    | grep -o 'target/debug/deps/relocation-[0-9a-f]*' | head -n 1)
install -m 755 "$relocation_test" "$bin_dir/relocation-test"
(cd /tmp && runuser -u sidewhale-test -- "$bin_dir/relocation-test")

# The bollard and testcontainers-rs tests. Each test binary starts its own
# sidewhale.
echo "== conformance tests (bollard, testcontainers-rs), sidewhale as root"
cargo test -p sidewhale-conformance
echo "== conformance tests (bollard, testcontainers-rs), sidewhale as sidewhale-test"
SIDEWHALE_TEST_USER=sidewhale-test cargo test -p sidewhale-conformance

# A full run takes about 3 minutes on 2 cores. The attack tests check the
# server and the image store rather than an executor, so they run with
# the default executor only.
e2e() {
    local executor=$1 user=$2
    shift 2
    echo "== end-to-end tests, executor $executor, sidewhale as ${user:-root}" \
        "${SIDEWHALE_TEST_SERVER_ARGS:+with $SIDEWHALE_TEST_SERVER_ARGS}"
    SIDEWHALE_TEST_EXECUTOR=$executor SIDEWHALE_TEST_USER=$user \
        .venv/bin/pytest -v -p no:cacheprovider "$@"
}
e2e proot "" tests/e2e
e2e proot sidewhale-test tests/e2e
e2e chroot "" tests/e2e --ignore=tests/e2e/attack
e2e bubblewrap "" tests/e2e --ignore=tests/e2e/attack
# sidewhale-test has a subordinate id range, so sidewhale runs in rootless
# mode and bubblewrap maps every id as it does for root.
e2e bubblewrap sidewhale-test tests/e2e --ignore=tests/e2e/attack
# Outside rootless mode an unprivileged sidewhale creates no network
# namespaces, as where user namespaces are forbidden: containers share the
# host's network and proot relocates their ports. The rootless mode tests
# do not apply there.
SIDEWHALE_TEST_SERVER_ARGS="--user-namespace off" \
    e2e proot sidewhale-test tests/e2e --ignore=tests/e2e/attack --ignore=tests/e2e/test_rootless.py

# The example executor plugin, loaded at start-up and chosen as the default
# executor: the docker CLI, Testcontainers and same-port tests only.
echo "== end-to-end tests, executor plugin example, sidewhale as root"
plugin="$bin_dir/libsidewhale_example_executor.so"
install -m 755 target/debug/libsidewhale_example_executor.so "$plugin"
SIDEWHALE_TEST_EXECUTOR=example SIDEWHALE_TEST_SERVER_ARGS="--executor-plugin $plugin" \
    .venv/bin/pytest tests/e2e/test_docker_cli.py tests/e2e/test_testcontainers.py \
    tests/e2e/test_same_port.py -v -p no:cacheprovider
rm -rf "$bin_dir"
