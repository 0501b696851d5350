#!/bin/bash
# Prepare this machine for the sidewhale tests. Run it as root before the tests, as
# often as needed: finished steps are skipped. It needs only the Debian package
# mirror, PyPI and the npm registry, never a Docker daemon.
#
# Steps:
#   1. install the Debian packages the tests use (apt-get update runs only when a
#      package is missing)
#   2. install the Python test clients from tests/requirements.txt into .venv, and
#      the Node test clients of tests/node/package-lock.json into tests/node
#      (Debian's nodejs and npm are installed when node is missing)
#   3. create the unprivileged user sidewhale-test with subordinate ids, and
#      give /dev/net/tun mode 0666 so that its rootless sidewhale has slirp4netns
#   4. build the test images (tests/images/build.sh) unless
#      ${SIDEWHALE_TEST_CACHE:-/var/cache/sidewhale-tests}/images-HASH exists, where
#      HASH covers the image build files
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO_ROOT/tests/images/lib.sh"

readonly TEST_USER=sidewhale-test
readonly VENV_DIR="$REPO_ROOT/.venv"
readonly REQUIREMENTS="$REPO_ROOT/tests/requirements.txt"
readonly NODE_DIR="$REPO_ROOT/tests/node"
# testcontainers 11 uses undici 7, which needs this Node release or newer.
readonly NODE_MIN_VERSION=20.18.1

# Executors use proot, bubblewrap and uidmap. tests/registry.sh uses docker-registry
# and skopeo. The image build and its checks use debootstrap, umoci, busybox-static
# and python3. postgresql-client and redis-tools are clients for checks from the host.
# slirp4netns gives containers in network namespaces outbound access.
readonly DEBIAN_PACKAGES=(
	bubblewrap
	busybox-static
	ca-certificates
	coreutils
	curl
	debian-archive-keyring
	debootstrap
	docker-registry
	gzip
	iproute2
	jq
	postgresql-client
	proot
	procps
	python3
	python3-venv
	redis-tools
	skopeo
	slirp4netns
	tar
	uidmap
	umoci
	util-linux
)

missing_debian_packages() {
	local package status
	for package in "${DEBIAN_PACKAGES[@]}"; do
		status="$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)"
		[ "$status" = installed ] || printf '%s\n' "$package"
	done
}

install_debian_packages() {
	local -a missing
	mapfile -t missing < <(missing_debian_packages)
	if [ ${#missing[@]} -eq 0 ]; then
		log "Debian packages: all ${#DEBIAN_PACKAGES[@]} installed"
		return
	fi
	log "Debian packages: installing ${missing[*]}"

	# On hosts with a working init, the docker-registry maintainer scripts would start
	# a registry on :5000, and a policy-rc.d that exits 101 prevents that. Only a
	# policy file that this script created is removed again.
	local created_policy=""
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 0755 /usr/sbin/policy-rc.d
		created_policy=yes
	fi
	local status=0
	apt-get update -qq &&
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" ||
		status=$?
	if [ -n "$created_policy" ]; then
		rm -f /usr/sbin/policy-rc.d
	fi
	[ "$status" = 0 ] || die "apt-get failed (exit code $status) installing: ${missing[*]}"
}

# Install the Python clients unless .venv already contains this exact requirements file.
install_python_clients() {
	local stamp="$VENV_DIR/.sidewhale-requirements.sha256"
	local wanted
	wanted="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
	if [ -x "$VENV_DIR/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ]; then
		log "Python clients: .venv is up to date"
		return
	fi
	log "Python clients: installing tests/requirements.txt into $VENV_DIR"
	# Debian's interpreter, so the venv does not depend on a user's pyenv or PATH.
	/usr/bin/python3 -m venv "$VENV_DIR"
	"$VENV_DIR/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS" ||
		die "pip install -r $REQUIREMENTS failed, check that PyPI is reachable"
	printf '%s\n' "$wanted" >"$stamp"
}

# Install the Node clients unless node_modules already matches package-lock.json.
install_node_clients() {
	if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
		log "Node: installing Debian's nodejs and npm"
		apt-get update -qq &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm ||
			die "apt-get failed installing nodejs and npm"
	fi
	local version
	version="$(node --version)"
	version="${version#v}"
	if [ "$(printf '%s\n%s\n' "$NODE_MIN_VERSION" "$version" | sort -V | head -n 1)" != "$NODE_MIN_VERSION" ]; then
		die "tests/node needs Node $NODE_MIN_VERSION or newer, found $version; install a newer nodejs"
	fi

	local stamp="$NODE_DIR/node_modules/.sidewhale-lock.sha256"
	local wanted
	wanted="$(sha256sum "$NODE_DIR/package-lock.json" | cut -d' ' -f1)"
	if [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ]; then
		log "Node clients: tests/node/node_modules is up to date"
		return
	fi
	log "Node clients: npm ci in $NODE_DIR"
	# --ignore-scripts: the optional native parts of ssh2 would download Node
	# headers to build, and the tests do not use them.
	(cd "$NODE_DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) ||
		die "npm ci in $NODE_DIR failed, check that the npm registry is reachable"
	printf '%s\n' "$wanted" >"$stamp"
}

create_test_user() {
	if id "$TEST_USER" >/dev/null 2>&1; then
		log "user $TEST_USER: exists"
		return
	fi
	log "user $TEST_USER: creating"
	useradd --create-home --shell /bin/bash "$TEST_USER"
}

# Rootless mode maps the user's subordinate ids. Debian's useradd adds a
# range of 65536; a user made otherwise may have none.
add_subordinate_ids() {
	if grep -q "^$TEST_USER:" /etc/subuid 2>/dev/null && grep -q "^$TEST_USER:" /etc/subgid 2>/dev/null; then
		log "user $TEST_USER: has subordinate ids"
		return
	fi
	log "user $TEST_USER: adding subordinate ids 200000-265535"
	usermod --add-subuids 200000-265535 --add-subgids 200000-265535 "$TEST_USER"
}

# slirp4netns opens /dev/net/tun, which an unprivileged sidewhale can do
# only with the mode 0666 that systemd's udev rules give it. Containers and
# minimal machines without udev may leave it at 0600.
open_tun_device() {
	if [ ! -c /dev/net/tun ]; then
		log "/dev/net/tun: missing, containers of sidewhale-test get no outbound network"
		return
	fi
	chmod 0666 /dev/net/tun
}

build_images() {
	local cache
	cache="$(image_cache_dir)"
	if [ -f "$cache/complete" ] && [ -f "$cache/oci/index.json" ]; then
		log "test images: cached in $cache"
		return
	fi

	log "test images: building into $cache (takes minutes, timings in tests/images/README.md)"
	mkdir -p "$SIDEWHALE_TEST_CACHE"
	chmod 0755 "$SIDEWHALE_TEST_CACHE"
	local partial="$cache.partial"
	rm -rf "$partial"
	"$REPO_ROOT/tests/images/build.sh" "$partial" || die "image build failed, partial output left in $partial"
	rm -rf "$cache"
	mv "$partial" "$cache"
	# The unprivileged test user reads the layouts too.
	chmod -R a+rX "$cache"
	log "test images: ready in $cache/oci"
}

main() {
	[ "$(id -u)" = 0 ] || die "tests/setup.sh must run as root (apt-get, useradd, debootstrap)"
	install_debian_packages
	install_python_clients
	install_node_clients
	create_test_user
	add_subordinate_ids
	open_tun_device
	build_images
}

main "$@"
