#!/bin/sh
# Entrypoint of the sidewhale test image redis:7 (Debian bookworm's Redis 7.0).
#
# It follows the documented behaviour of the official redis image:
# - arguments that start with "-" or a first argument ending in ".conf" are passed
#   to redis-server;
# - started as root, redis-server runs as the redis user (through gosu) after the
#   working directory (/data) is handed to that user;
# - without a config file, redis-server runs with --protected-mode no, so clients
#   outside the container can connect without a password.
set -eu

case "${1:-}" in
-* | *.conf)
	set -- redis-server "$@"
	;;
esac

if [ "${1:-}" = redis-server ] && [ "$(id -u)" = 0 ]; then
	# Files in a volume mounted on /data may belong to another user.
	find . \! -user redis -exec chown redis '{}' +
	exec gosu redis "$0" "$@"
fi

if [ "${1:-}" = redis-server ]; then
	shift
	# redis-server reads a config file only from its first argument, and every
	# other argument starts with "--" (or is a value following such an option).
	case "${1:-}" in
	"" | --*)
		set -- redis-server --protected-mode no "$@"
		;;
	*)
		set -- redis-server "$@"
		;;
	esac
fi

exec "$@"
