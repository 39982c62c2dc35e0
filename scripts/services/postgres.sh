#!/usr/bin/env bash
# A private PostgreSQL on loopback for drover's store tests.
#
#   scripts/services/postgres.sh start|stop|status
#
# start: installs Debian's postgresql if missing, creates a cluster under
#   $DROVER_SERVICES_DIR/postgres (default /tmp/drover-services/postgres) owned
#   by user postgres, starts it on 127.0.0.1:$DROVER_PG_PORT (default 5433) with
#   `pg_ctl -w`, and creates the role and database `drover`. Clients on
#   127.0.0.1 authenticate with the password in $STATE/password (root only);
#   the URL is written to $STATE/url (root only).
# stop: `pg_ctl stop -m fast`. status: exit 0 if the server accepts connections.
set -euo pipefail

SERVICE_NAME=postgres
# shellcheck source=lib.sh
. "$(dirname "$(readlink -f "$0")")/lib.sh"

PORT="${DROVER_PG_PORT:-5433}"
STATE="$SERVICES_DIR/postgres"
DATA="$STATE/data"
LOG="$STATE/postgres.log"

bindir() {
    local dir
    dir="$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)"
    [ -n "$dir" ] || die "no PostgreSQL binaries under /usr/lib/postgresql"
    printf '%s\n' "$dir"
}

as_postgres() { runuser -u postgres -- "$@"; }

running() { [ -d "$DATA" ] && as_postgres "$(bindir)/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

start() {
    need_root
    local t0 bin pass
    t0="$(now)"
    apt_install postgresql
    bin="$(bindir)"
    mkdir -p "$STATE"
    chown postgres:postgres "$STATE"
    chmod 700 "$STATE"
    if [ ! -s "$DATA/PG_VERSION" ]; then
        as_postgres "$bin/initdb" -D "$DATA" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
            -E UTF8 --locale=C.UTF-8 >"$STATE/initdb.log" 2>&1 || { cat "$STATE/initdb.log" >&2; die "initdb failed"; }
        step "initdb $DATA"
    fi
    if ! running; then
        mkdir -p /run/postgresql && chown postgres:postgres /run/postgresql
        as_postgres "$bin/pg_ctl" -D "$DATA" -l "$LOG" -w -t 30 \
            -o "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories=/run/postgresql" start \
            >/dev/null || { tail -n 30 "$LOG" >&2; die "pg_ctl start failed"; }
        step "started PostgreSQL on 127.0.0.1:$PORT ($(elapsed "$t0") s)"
    fi
    if [ ! -s "$STATE/password" ]; then
        head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$STATE/password"
    fi
    chown root:root "$STATE/password" && chmod 600 "$STATE/password"
    pass="$(cat "$STATE/password")"
    as_postgres psql -h /run/postgresql -p "$PORT" -v ON_ERROR_STOP=1 -q -d postgres >/dev/null <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'drover') THEN
    CREATE ROLE drover LOGIN;
  END IF;
END \$\$;
ALTER ROLE drover PASSWORD '$pass';
SQL
    if [ -z "$(as_postgres psql -h /run/postgresql -p "$PORT" -tAq -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'drover'")" ]; then
        as_postgres createdb -h /run/postgresql -p "$PORT" -O drover drover
        step "created database drover"
    fi
    printf 'postgres://drover:%s@127.0.0.1:%s/drover\n' "$pass" "$PORT" >"$STATE/url"
    chmod 600 "$STATE/url"
    step "up: $(cut -d@ -f2 "$STATE/url") ($(elapsed "$t0") s)"
}

stop() {
    need_root
    if running; then
        as_postgres "$(bindir)/pg_ctl" -D "$DATA" -m fast -w -t 30 stop >/dev/null
        step "stopped PostgreSQL"
    else
        step "PostgreSQL not running"
    fi
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) running ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
