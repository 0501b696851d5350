# Shared helpers for tests/setup.sh, tests/images/build.sh and tests/registry.sh.
# Source this file from bash. It defines functions and variables only.

SIDEWHALE_IMAGES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SIDEWHALE_TEST_CACHE="${SIDEWHALE_TEST_CACHE:-/var/cache/sidewhale-tests}"

log() {
	printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

# Print a SHA-256 over the names and contents of the build files in tests/images (all
# but Markdown), so any edit to them selects a new cache directory.
image_build_hash() {
	(
		cd "$SIDEWHALE_IMAGES_DIR"
		find . -type f ! -name '*.md' ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 |
			LC_ALL=C sort -z |
			xargs -0 sha256sum
	) | sha256sum | cut -c1-16
}

# Print the cache directory for the current image build files. A build is complete
# when it contains oci/index.json and the marker file "complete".
image_cache_dir() {
	printf '%s/images-%s\n' "$SIDEWHALE_TEST_CACHE" "$(image_build_hash)"
}
