#!/bin/bash
# Build the sidewhale test images from Debian packages, without Docker, into one OCI
# image layout:
#   busybox-latest     busybox-static (amd64), one layer
#   busybox-arm64      busybox-static (arm64/v8), one layer, never run on this host
#   busybox-multiarch  image index over busybox-latest and busybox-arm64
#   redis-7            debootstrap base layer + redis-server, gosu
#   postgres-16        the same base layer + postgresql (15 in bookworm), gosu
#
# Usage: build.sh OUTPUT_DIR
# Writes OUTPUT_DIR/oci (the layout) and OUTPUT_DIR/complete when everything
# succeeded. Needs root (debootstrap and chroot), debootstrap, python3 and the
# Debian package mirror.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

readonly SUITE=bookworm
readonly OCI_LAYOUT_PY="$SIDEWHALE_IMAGES_DIR/oci_layout.py"
readonly CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

usage() {
	echo "usage: $0 OUTPUT_DIR" >&2
	exit 2
}

# Print the first Debian mirror URI configured on this host, preferring the deb822
# file that Debian 12 installs and falling back to a one-line sources.list.
find_debian_mirror() {
	local uri=""
	if [ -r /etc/apt/sources.list.d/debian.sources ]; then
		uri="$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)"
	fi
	if [ -z "$uri" ] && [ -r /etc/apt/sources.list ]; then
		uri="$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list)"
	fi
	[ -n "$uri" ] || die "no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
	printf '%s\n' "${uri%/}"
}

oci_layout() {
	python3 "$OCI_LAYOUT_PY" "$@"
}

# Download busybox-static for ARCH from the mirror into DIR without touching the
# host's apt state, because the host need not have ARCH enabled.
download_busybox_deb() {
	local arch="$1" dir="$2"
	local state="$dir/apt-state"
	mkdir -p "$state/lists/partial" "$state/cache/archives/partial"
	local -a options=(
		-o "APT::Architecture=$arch"
		-o "APT::Architectures=$arch"
		-o "Dir::State::Lists=$state/lists"
		-o "Dir::Cache=$state/cache"
		-o "Dir::State::status=/dev/null"
		-o "APT::Sandbox::User=root"
		-o "Debug::NoLocking=1"
	)
	apt-get "${options[@]}" -qq update
	(cd "$dir" && apt-get "${options[@]}" -qq download busybox-static)
	rm -rf "$state"
}

# Create a busybox rootfs in ROOTFS from the busybox-static .deb in DEB_DIR.
# APPLET_LIST is written by a native build and read by a foreign one.
make_busybox_rootfs() {
	local deb_dir="$1" rootfs="$2" applet_list="$3"
	local extracted="$deb_dir/extracted"
	dpkg-deb -x "$deb_dir"/busybox-static_*.deb "$extracted"

	mkdir -p "$rootfs"
	(
		cd "$rootfs"
		mkdir -p bin dev etc home proc root sys tmp usr/bin usr/sbin var/spool/mail var/www
		chmod 1777 tmp
		chmod 0700 root
		install -m 0755 "$extracted/bin/busybox" bin/busybox

		# A foreign binary cannot run here, so a foreign build reuses the applet list
		# saved from the native build, which must therefore come first. Both builds
		# come from the same source package version and configuration.
		local applets
		if [ "$(dpkg-deb -f "$deb_dir"/busybox-static_*.deb Architecture)" = "$(dpkg --print-architecture)" ]; then
			bin/busybox --list >"$applet_list"
		fi
		[ -s "$applet_list" ] || die "no busybox applet list at $applet_list, build the native busybox first"
		applets="$(cat "$applet_list")"
		local applet
		for applet in $applets; do
			[ "$applet" = busybox ] || ln -sf busybox "bin/$applet"
		done

		cat >etc/passwd <<-'EOF'
			root:x:0:0:root:/root:/bin/sh
			daemon:x:1:1:daemon:/usr/sbin:/bin/false
			www-data:x:33:33:www-data:/var/www:/bin/false
			nobody:x:65534:65534:nobody:/home:/bin/false
		EOF
		cat >etc/group <<-'EOF'
			root:x:0:
			daemon:x:1:
			tty:x:5:
			www-data:x:33:
			nogroup:x:65534:
		EOF
		chmod 0644 etc/passwd etc/group
	)
	# Every file belongs to root, whoever extracted the package.
	chown -R 0:0 "$rootfs"
}

build_busybox_images() {
	local work="$1" layout="$2"
	local arch variant ref
	# amd64 must come first, see make_busybox_rootfs.
	for arch in amd64 arm64; do
		log "building busybox for $arch"
		mkdir -p "$work/busybox-$arch/deb"
		download_busybox_deb "$arch" "$work/busybox-$arch/deb"
		make_busybox_rootfs "$work/busybox-$arch/deb" "$work/busybox-$arch/rootfs" "$work/busybox-applets"

		oci_layout layer --layout "$layout" --rootfs "$work/busybox-$arch/rootfs" \
			--created-by "busybox-static from Debian $SUITE ($arch) with applet symlinks in /bin" \
			--output "$work/busybox-$arch/layer.json"

		variant=""
		ref=busybox-latest
		if [ "$arch" = arm64 ]; then
			variant=v8
			ref=busybox-arm64
		fi
		oci_layout image --layout "$layout" --ref "$ref" \
			--config "$SIDEWHALE_IMAGES_DIR/busybox/config.json" \
			--architecture "$arch" ${variant:+--variant "$variant"} \
			--layer "$work/busybox-$arch/layer.json"
	done
	oci_layout index --layout "$layout" --ref busybox-multiarch \
		--manifest-ref busybox-latest --manifest-ref busybox-arm64
}

# Remove package caches, documentation, manual pages and translations from ROOTFS.
# C and C.UTF-8 stay available because glibc ships them in libc-bin.
slim_rootfs() {
	local rootfs="$1"
	rm -rf "$rootfs"/var/lib/apt/lists/* \
		"$rootfs"/var/cache/apt/*.bin \
		"$rootfs"/var/cache/apt/archives/*.deb \
		"$rootfs"/var/cache/debconf/*-old \
		"$rootfs"/var/lib/dpkg/*-old \
		"$rootfs"/usr/share/man/* \
		"$rootfs"/usr/share/info/* \
		"$rootfs"/usr/share/lintian \
		"$rootfs"/usr/share/linda
	mkdir -p "$rootfs/usr/share/locale" "$rootfs/usr/share/doc" "$rootfs/var/log"
	find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf '{}' +
	find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
	find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
	find "$rootfs/var/log" -type f -delete
	rm -f "$rootfs/run/adduser"
	# The container runtime provides these files.
	: >"$rootfs/etc/resolv.conf"
	: >"$rootfs/etc/hostname"
	chmod 0644 "$rootfs/etc/resolv.conf" "$rootfs/etc/hostname"
}

# Run a shell command inside ROOTFS with /proc mounted in a private mount namespace,
# so the mount disappears with the command.
run_in_chroot() {
	local rootfs="$1" command="$2"
	unshare --mount --propagation private -- /bin/sh -c '
		set -e
		mount -t proc proc "$1/proc"
		exec chroot "$1" /usr/bin/env -i PATH="$2" DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 \
			/bin/sh -c "$3"
	' run_in_chroot "$rootfs" "$CHROOT_PATH" "$command"
}

build_base_rootfs() {
	local rootfs="$1" mirror="$2"
	log "running debootstrap --variant=minbase $SUITE from $mirror"
	debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >"$rootfs.debootstrap.log" 2>&1 ||
		die "debootstrap failed, see $rootfs.debootstrap.log"

	# Keep later package installs as small as the slimmed base.
	cat >"$rootfs/etc/dpkg/dpkg.cfg.d/sidewhale-slim" <<-'EOF'
		path-exclude /usr/share/doc/*
		path-include /usr/share/doc/*/copyright
		path-exclude /usr/share/man/*
		path-exclude /usr/share/info/*
		path-exclude /usr/share/locale/*
		path-include /usr/share/locale/locale.alias
		path-exclude /usr/share/lintian/*
	EOF
	cat >"$rootfs/etc/apt/apt.conf.d/sidewhale-slim" <<-'EOF'
		APT::Install-Recommends "false";
		APT::Install-Suggests "false";
	EOF
	slim_rootfs "$rootfs"
}

# Copy the base rootfs BASE to ROOTFS and prepare it for install_packages.
copy_base_rootfs() {
	local base="$1" rootfs="$2"
	cp -a "$base" "$rootfs"
	cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
	# policy-rc.d exit code 101 stops maintainer scripts from starting services.
	printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
	chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
}

# Install PACKAGES into ROOTFS with apt, then slim it again.
install_packages() {
	local rootfs="$1"
	shift
	run_in_chroot "$rootfs" "apt-get update -qq && apt-get install -y -qq -o Dpkg::Use-Pty=0 $* >/dev/null"
	rm -f "$rootfs/usr/sbin/policy-rc.d"
	slim_rootfs "$rootfs"
}

build_redis_rootfs() {
	local base="$1" rootfs="$2"
	log "installing redis-server and gosu"
	copy_base_rootfs "$base" "$rootfs"
	install_packages "$rootfs" redis-server gosu
	install -m 0755 "$SIDEWHALE_IMAGES_DIR/redis/docker-entrypoint.sh" "$rootfs/usr/local/bin/docker-entrypoint.sh"
	mkdir -p "$rootfs/data"
	run_in_chroot "$rootfs" "chown redis:redis /data && redis-server --version && gosu --version"
}

build_postgres_rootfs() {
	local base="$1" rootfs="$2"
	log "installing postgresql and gosu"
	copy_base_rootfs "$base" "$rootfs"
	# postgresql-common reads this file before creating a default cluster, so the
	# image ships without one and the entrypoint runs initdb on PGDATA instead.
	mkdir -p "$rootfs/etc/postgresql-common"
	echo 'create_main_cluster = false' >"$rootfs/etc/postgresql-common/createcluster.conf"
	install_packages "$rootfs" postgresql gosu tzdata

	install -m 0755 "$SIDEWHALE_IMAGES_DIR/postgres/docker-entrypoint.sh" "$rootfs/usr/local/bin/docker-entrypoint.sh"
	mkdir -p "$rootfs/docker-entrypoint-initdb.d" "$rootfs/var/lib/postgresql/data"
	run_in_chroot "$rootfs" "
		chown postgres:postgres /var/lib/postgresql /var/lib/postgresql/data
		chmod 0700 /var/lib/postgresql/data
		install -d -o postgres -g postgres -m 3775 /var/run/postgresql
		test -x /usr/lib/postgresql/15/bin/initdb
		for tool in pg_isready psql gosu; do command -v "\$tool"; done
	"
}

main() {
	[ $# -eq 1 ] || usage
	[ "$(id -u)" = 0 ] || die "build.sh must run as root (debootstrap and chroot need it)"
	local output="$1"
	local layout="$output/oci"
	local work="$output/work"
	local started=$SECONDS

	rm -rf "$layout" "$work" "$output/complete"
	mkdir -p "$layout" "$work"
	# Fixed umask so files created here get the same modes on every machine.
	umask 0022

	local mirror
	mirror="$(find_debian_mirror)"

	build_busybox_images "$work" "$layout"

	build_base_rootfs "$work/base" "$mirror"
	log "packing the shared base layer"
	oci_layout layer --layout "$layout" --rootfs "$work/base" \
		--created-by "debootstrap --variant=minbase $SUITE $mirror, slimmed" \
		--output "$work/base-layer.json"

	build_redis_rootfs "$work/base" "$work/redis"
	oci_layout layer --layout "$layout" --rootfs "$work/redis" --base "$work/base" \
		--created-by "apt-get install redis-server gosu; docker-entrypoint.sh; /data" \
		--output "$work/redis-layer.json"
	oci_layout image --layout "$layout" --ref redis-7 \
		--config "$SIDEWHALE_IMAGES_DIR/redis/config.json" \
		--layer "$work/base-layer.json" --layer "$work/redis-layer.json"

	build_postgres_rootfs "$work/base" "$work/postgres"
	oci_layout layer --layout "$layout" --rootfs "$work/postgres" --base "$work/base" \
		--created-by "apt-get install postgresql gosu tzdata; docker-entrypoint.sh; PGDATA" \
		--output "$work/postgres-layer.json"
	oci_layout image --layout "$layout" --ref postgres-16 \
		--config "$SIDEWHALE_IMAGES_DIR/postgres/config.json" \
		--layer "$work/base-layer.json" --layer "$work/postgres-layer.json"

	rm -rf "$work"
	date -u +%Y-%m-%dT%H:%M:%SZ >"$output/complete"
	log "built all images in $((SECONDS - started)) s into $layout"
}

main "$@"
