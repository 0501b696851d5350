#!/bin/bash
# Run a local OCI registry with the sidewhale test images, for tests that pull
# images the way sidewhale pulls from Docker Hub.
#
# Usage:
#   tests/registry.sh start   start (or restart) the registry and push the images
#   tests/registry.sh stop    stop the registry and delete its storage
#   tests/registry.sh status  print the registry address if it is running
#
# Environment:
#   SIDEWHALE_TEST_REGISTRY_PORT   TCP port on 127.0.0.1 (default 5000)
#   SIDEWHALE_TEST_REGISTRY_STATE  directory for the pid, config, log and storage path
#                                  (default ${TMPDIR:-/tmp}/sidewhale-test-registry-PORT)
#   SIDEWHALE_TEST_CACHE           image cache written by tests/setup.sh
#                                  (default /var/cache/sidewhale-tests)
#
# Pushed repositories (Docker Hub names, because sidewhale uses this registry as a
# Docker Hub mirror):
#   library/busybox:latest     Docker schema 2 manifest
#   library/busybox:multiarch  OCI image index: linux/amd64 and linux/arm64/v8
#   library/redis:7            OCI manifest
#   library/postgres:16        OCI manifest, sharing its base layer with redis:7
set -euo pipefail

TESTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$TESTS_DIR/images/lib.sh"

PORT="${SIDEWHALE_TEST_REGISTRY_PORT:-5000}"
ADDRESS="127.0.0.1:$PORT"
STATE_DIR="${SIDEWHALE_TEST_REGISTRY_STATE:-${TMPDIR:-/tmp}/sidewhale-test-registry-$PORT}"
PID_FILE="$STATE_DIR/pid"
STORAGE_FILE="$STATE_DIR/storage"
CONFIG_FILE="$STATE_DIR/config.yml"
LOG_FILE="$STATE_DIR/registry.log"
STARTUP_TIMEOUT_SECONDS=30
STOP_TIMEOUT_SECONDS=10

usage() {
	sed -n '4,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

# Print the pid of the registry recorded in the state dir, if that process is still
# a docker-registry. A stale pid file (reused pid, crashed registry) prints nothing.
running_pid() {
	[ -s "$PID_FILE" ] || return 0
	local pid
	pid="$(<"$PID_FILE")"
	if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'docker-registry serve'; then
		printf '%s\n' "$pid"
	fi
}

registry_answers() {
	curl --silent --fail --noproxy '*' --max-time 2 --output /dev/null "http://$ADDRESS/v2/"
}

stop_registry() {
	local pid waited=0
	pid="$(running_pid)"
	if [ -n "$pid" ]; then
		log "stopping registry pid $pid on $ADDRESS"
		kill -TERM "$pid" 2>/dev/null || true
		while kill -0 "$pid" 2>/dev/null; do
			if [ "$waited" -ge "$((STOP_TIMEOUT_SECONDS * 10))" ]; then
				log "registry pid $pid ignored SIGTERM for ${STOP_TIMEOUT_SECONDS} s, sending SIGKILL"
				kill -KILL "$pid" 2>/dev/null || true
				break
			fi
			sleep 0.1
			waited=$((waited + 1))
		done
	fi
	if [ -s "$STORAGE_FILE" ]; then
		local storage
		storage="$(<"$STORAGE_FILE")"
		# Only remove directories this script created (mktemp name below).
		case "$storage" in
		*/sidewhale-registry-storage.*) rm -rf "$storage" ;;
		*) log "not removing unexpected storage path $storage" ;;
		esac
	fi
	rm -f "$PID_FILE" "$STORAGE_FILE" "$CONFIG_FILE"
}

write_config() {
	local storage="$1"
	cat >"$CONFIG_FILE" <<-EOF
		version: 0.1
		log:
		  level: info
		  accesslog:
		    disabled: true
		storage:
		  filesystem:
		    rootdirectory: $storage
		  delete:
		    enabled: true
		  maintenance:
		    uploadpurging:
		      enabled: false
		http:
		  addr: $ADDRESS
	EOF
}

start_registry() {
	command -v docker-registry >/dev/null || die "docker-registry not found, run tests/setup.sh first"
	if [ -n "$(running_pid)" ]; then
		log "a registry from $STATE_DIR is already running, restarting it"
	fi
	stop_registry
	if registry_answers || ss -Hltn "sport = :$PORT" | grep -q .; then
		die "port $PORT on 127.0.0.1 is already in use by another process, set SIDEWHALE_TEST_REGISTRY_PORT to a free port"
	fi

	mkdir -p "$STATE_DIR"
	local storage
	storage="$(mktemp -d "${TMPDIR:-/tmp}/sidewhale-registry-storage.XXXXXX")"
	printf '%s\n' "$storage" >"$STORAGE_FILE"
	write_config "$storage"

	# setsid detaches the registry from this shell, so it keeps running after
	# start returns and a later "stop" from another process can end it by pid.
	setsid docker-registry serve "$CONFIG_FILE" >"$LOG_FILE" 2>&1 </dev/null &
	local pid=$!
	printf '%s\n' "$pid" >"$PID_FILE"
	log "started docker-registry pid $pid on $ADDRESS, storage $storage, log $LOG_FILE"

	local waited=0
	until registry_answers; do
		if ! kill -0 "$pid" 2>/dev/null; then
			tail -n 20 "$LOG_FILE" >&2 || true
			die "docker-registry exited during startup, see $LOG_FILE"
		fi
		if [ "$waited" -ge "$((STARTUP_TIMEOUT_SECONDS * 10))" ]; then
			die "docker-registry did not answer http://$ADDRESS/v2/ within ${STARTUP_TIMEOUT_SECONDS} s, see $LOG_FILE"
		fi
		sleep 0.1
		waited=$((waited + 1))
	done
}

# Copy tag SOURCE of the cached layout to REPOSITORY in the registry, with extra
# skopeo options (manifest format, --all).
push_image() {
	local layout="$1" source="$2" repository="$3"
	shift 3
	log "pushing $source as $ADDRESS/$repository"
	skopeo --insecure-policy copy --quiet --dest-tls-verify=false "$@" \
		"oci:$layout:$source" "docker://$ADDRESS/$repository"
}

# Print the cached OCI layout for the current image build files.
find_layout() {
	local cache
	cache="$(image_cache_dir)"
	[ -f "$cache/complete" ] || die "no complete image build in $cache, run tests/setup.sh first"
	printf '%s\n' "$cache/oci"
}

push_images() {
	local layout="$1"
	push_image "$layout" busybox-latest library/busybox:latest --format v2s2
	push_image "$layout" busybox-multiarch library/busybox:multiarch --all --format oci
	push_image "$layout" redis-7 library/redis:7 --format oci
	push_image "$layout" postgres-16 library/postgres:16 --format oci
}

main() {
	[ $# -eq 1 ] || usage
	case "$1" in
	start)
		local layout
		layout="$(find_layout)"
		start_registry
		push_images "$layout"
		log "registry ready at $ADDRESS"
		;;
	stop)
		stop_registry
		;;
	status)
		if [ -n "$(running_pid)" ] && registry_answers; then
			echo "running at $ADDRESS (pid $(running_pid), state $STATE_DIR)"
		else
			echo "not running (state $STATE_DIR)"
			exit 1
		fi
		;;
	*)
		usage
		;;
	esac
}

main "$@"
