#!/usr/bin/env bash
# Runs every test of sidewhale on a bare Debian 12 machine, as root:
# installs what the tests need, builds the test images and the workspace,
# runs the Rust tests, then the end-to-end suite twice, with sidewhale
# running as root and as the unprivileged user sidewhale-test.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing test dependencies"
bash tests/setup.sh

echo "== building"
cargo build --workspace --all-targets

echo "== Rust tests"
cargo test --workspace

echo "== starting the test registry"
export SIDEWHALE_TEST_MIRROR="http://127.0.0.1:${SIDEWHALE_TEST_REGISTRY_PORT:-5000}"
bash tests/registry.sh start
trap 'bash tests/registry.sh stop' EXIT

# The unprivileged user cannot reach a binary inside /root, so both runs
# use a copy in a directory everybody can read.
bin_dir=$(mktemp -d /tmp/sidewhale-bin.XXXXXX)
chmod 755 "$bin_dir"
install -m 755 target/debug/sidewhale "$bin_dir/sidewhale"
export SIDEWHALE_BIN="$bin_dir/sidewhale"

echo "== end-to-end tests, sidewhale as root"
.venv/bin/pytest tests/e2e -v -p no:cacheprovider

echo "== end-to-end tests, sidewhale as the unprivileged user sidewhale-test"
SIDEWHALE_TEST_USER=sidewhale-test .venv/bin/pytest tests/e2e -v -p no:cacheprovider
rm -rf "$bin_dir"
