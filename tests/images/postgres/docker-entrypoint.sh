#!/bin/bash
# Entrypoint of the sidewhale test image postgres:16 (Debian bookworm's PostgreSQL 15).
#
# It follows the documented interface of the official postgres image:
#   POSTGRES_PASSWORD         superuser password, required unless
#                             POSTGRES_HOST_AUTH_METHOD=trust
#   POSTGRES_USER             superuser name (default: postgres)
#   POSTGRES_DB               database created at first start (default: POSTGRES_USER)
#   POSTGRES_INITDB_ARGS      extra arguments for initdb, split on whitespace
#   POSTGRES_INITDB_WALDIR    passed to initdb as --waldir
#   POSTGRES_HOST_AUTH_METHOD pg_hba method for host connections (default: scram-sha-256)
#   VAR_FILE                  each of the variables above may instead be read from a file
# On an empty PGDATA it runs initdb, starts a temporary server that listens on the
# unix socket only, runs /docker-entrypoint-initdb.d/*.sh, *.sql, *.sql.gz and
# *.sql.xz in sorted order, stops that server and then execs the real one.
set -Eeuo pipefail

log() {
	printf '%s: %s\n' "${0##*/}" "$*" >&2
}

die() {
	log "error: $*"
	exit 1
}

# Set VAR from VAR or from the file named by VAR_FILE, never from both.
load_env_or_file() {
	local name="$1" default="${2:-}"
	local file_name="${name}_FILE"
	local value="$default"

	if [ -n "${!name:-}" ] && [ -n "${!file_name:-}" ]; then
		die "both $name and $file_name are set, set only one of them"
	fi
	if [ -n "${!name:-}" ]; then
		value="${!name}"
	elif [ -n "${!file_name:-}" ]; then
		value="$(<"${!file_name}")"
	fi
	export "$name"="$value"
	unset "$file_name"
}

load_settings() {
	load_env_or_file POSTGRES_PASSWORD
	load_env_or_file POSTGRES_USER postgres
	load_env_or_file POSTGRES_DB "$POSTGRES_USER"
	load_env_or_file POSTGRES_INITDB_ARGS
	load_env_or_file POSTGRES_HOST_AUTH_METHOD
	: "${POSTGRES_INITDB_WALDIR:=}"
	: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
	: "${PGDATA:?PGDATA must be set}"
}

# Create the data and socket directories. As root, also give them to the postgres
# user, which main then switches to with gosu.
prepare_directories() {
	mkdir -p "$PGDATA" /var/run/postgresql
	if [ -n "$POSTGRES_INITDB_WALDIR" ]; then
		mkdir -p "$POSTGRES_INITDB_WALDIR"
	fi
	if [ "$(id -u)" = 0 ]; then
		chown -R postgres:postgres "$PGDATA" /var/run/postgresql
		if [ -n "$POSTGRES_INITDB_WALDIR" ]; then
			chown -R postgres:postgres "$POSTGRES_INITDB_WALDIR"
		fi
	fi
	# A failed chmod is tolerated because a bind-mounted PGDATA may belong to another user,
	# and then postgres itself reports the exact problem.
	chmod 0700 "$PGDATA" 2>/dev/null || true
	chmod 3775 /var/run/postgresql 2>/dev/null || true
}

check_auth_settings() {
	if [ -n "$POSTGRES_PASSWORD" ] || [ "$POSTGRES_HOST_AUTH_METHOD" = trust ]; then
		return
	fi
	die "the database is uninitialized and POSTGRES_PASSWORD is empty.
  Set POSTGRES_PASSWORD to a non-empty value for the superuser, for example
  -e POSTGRES_PASSWORD=secret, or set POSTGRES_HOST_AUTH_METHOD=trust to allow
  every connection without a password (never do this outside tests)."
}

run_initdb() {
	# Host connections from 127.0.0.1 use the configured method too (initdb's default is
	# trust), because without a network namespace every client connects from loopback.
	local -a args=(
		--username="$POSTGRES_USER"
		--auth-local=trust
		--auth-host="$POSTGRES_HOST_AUTH_METHOD"
	)
	local password_file=""

	if [ -n "$POSTGRES_PASSWORD" ]; then
		password_file="$(mktemp)"
		printf '%s\n' "$POSTGRES_PASSWORD" >"$password_file"
		args+=(--pwfile="$password_file")
	fi
	if [ -n "$POSTGRES_INITDB_WALDIR" ]; then
		args+=(--waldir="$POSTGRES_INITDB_WALDIR")
	fi
	# POSTGRES_INITDB_ARGS is split on whitespace on purpose, as documented.
	# shellcheck disable=SC2206
	args+=($POSTGRES_INITDB_ARGS)

	initdb "${args[@]}"
	if [ -n "$password_file" ]; then
		rm -f "$password_file"
	fi
}

configure_server() {
	printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
	if [ "$POSTGRES_HOST_AUTH_METHOD" = trust ]; then
		log "warning: POSTGRES_HOST_AUTH_METHOD=trust lets every host connect without a password"
	fi
	printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"
}

# pg_ctl sends the server log to its stdout, so the temporary server logs
# "ready to accept connections" on stdout and the final server logs it on stderr.
start_temporary_server() {
	PGUSER="$POSTGRES_USER" pg_ctl -D "$PGDATA" -w \
		-o "-c listen_addresses='' -p ${PGPORT:-5432}" start
}

stop_temporary_server() {
	PGUSER="$POSTGRES_USER" pg_ctl -D "$PGDATA" -m fast -w stop
}

run_psql() {
	psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password \
		--username "$POSTGRES_USER" "$@"
}

create_database() {
	if [ "$POSTGRES_DB" = postgres ]; then
		return
	fi
	local exists
	exists="$(run_psql --dbname postgres --tuples-only --no-align \
		--set db="$POSTGRES_DB" <<<"SELECT 1 FROM pg_database WHERE datname = :'db';")"
	if [ -z "$exists" ]; then
		run_psql --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
	fi
}

run_init_files() {
	local file
	for file in /docker-entrypoint-initdb.d/*; do
		[ -e "$file" ] || continue
		case "$file" in
		*.sh)
			if [ -x "$file" ]; then
				log "running $file"
				"$file"
			else
				log "sourcing $file"
				# shellcheck disable=SC1090
				. "$file"
			fi
			;;
		*.sql)
			log "running $file"
			run_psql --dbname "$POSTGRES_DB" -f "$file"
			;;
		*.sql.gz)
			log "running $file"
			gzip -dc "$file" | run_psql --dbname "$POSTGRES_DB"
			;;
		*.sql.xz)
			log "running $file"
			xz -dc "$file" | run_psql --dbname "$POSTGRES_DB"
			;;
		*)
			log "ignoring $file: not a .sh, .sql, .sql.gz or .sql.xz file"
			;;
		esac
	done
}

initialize_cluster() {
	check_auth_settings
	run_initdb
	configure_server

	export PGPASSWORD="$POSTGRES_PASSWORD"
	start_temporary_server
	create_database
	run_init_files
	stop_temporary_server
	unset PGPASSWORD

	log "PostgreSQL init process complete, ready for start up"
}

# Return success when the arguments only ask postgres to print something and exit.
wants_help_only() {
	local arg
	for arg in "$@"; do
		case "$arg" in
		-'?' | --help | --describe-config | -V | --version | -C | --config-only)
			return 0
			;;
		esac
	done
	return 1
}

main() {
	if [ "${1:0:1}" = - ]; then
		set -- postgres "$@"
	fi
	if [ "$1" != postgres ] || wants_help_only "$@"; then
		exec "$@"
	fi

	load_settings
	prepare_directories
	if [ "$(id -u)" = 0 ]; then
		exec gosu postgres "${BASH_SOURCE[0]}" "$@"
	fi

	if [ ! -s "$PGDATA/PG_VERSION" ]; then
		initialize_cluster
	else
		log "PGDATA already contains a database, skipping initialization"
	fi
	exec "$@"
}

main "$@"
