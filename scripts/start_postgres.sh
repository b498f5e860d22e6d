#!/usr/bin/env bash
# Start (or reuse) a throw-away PostgreSQL cluster for tests; the last stdout line is its SQLAlchemy URL.
#
#   export HS_TEST_PG_URL="$(scripts/start_postgres.sh | tail -n 1)"
#   .venv/bin/python -m pytest -m postgres tests/db tests/services
#   scripts/start_postgres.sh --stop        # stop the cluster (data dir kept for reuse)
#
# Installs Debian's postgresql package when no server binaries are found. No systemd: initdb + pg_ctl,
# run as the "postgres" user, listening on 127.0.0.1 only, data under ${HS_PG_DIR:-/tmp/hs-pg}.
# Progress goes to stderr so that stdout holds only the URL.
set -euo pipefail

BASE_DIR="${HS_PG_DIR:-/tmp/hs-pg}"
DATA_DIR="$BASE_DIR/data"
PORT_FILE="$BASE_DIR/port"
FIRST_PORT="${HS_PG_PORT:-55432}"
DB_NAME="${HS_PG_DB:-hs_test}"
DB_USER="${HS_PG_USER:-hs}"
DB_PASSWORD="${HS_PG_PASSWORD:-hs_test_password}"
RUN_AS="postgres"

say() { echo "start_postgres: $*" >&2; }

find_bin_dir() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [[ -n "$dir" && -x "$dir/pg_ctl" ]]; then
        echo "$dir"
    elif command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v pg_ctl)"
    fi
}

as_pg() {
    # Run a command as the postgres user (directly if we already are that user).
    if [[ "$(id -un)" == "$RUN_AS" ]]; then
        "$@"
    elif [[ "$(id -u)" == 0 ]]; then
        if command -v runuser >/dev/null 2>&1; then
            runuser -u "$RUN_AS" -- "$@"
        else
            su -s /bin/sh "$RUN_AS" -c "$(printf '%q ' "$@")"
        fi
    else
        say "run as root or as the $RUN_AS user"
        exit 1
    fi
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

BIN_DIR="$(find_bin_dir)"
if [[ -z "$BIN_DIR" ]]; then
    say "PostgreSQL not found; installing the Debian package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >&2
    apt-get install -y postgresql >&2
    BIN_DIR="$(find_bin_dir)"
    [[ -n "$BIN_DIR" ]] || { say "postgresql installed but pg_ctl not found"; exit 1; }
fi
id "$RUN_AS" >/dev/null 2>&1 || { say "user $RUN_AS does not exist"; exit 1; }

if [[ "${1:-}" == "--stop" ]]; then
    if [[ -f "$DATA_DIR/PG_VERSION" ]]; then
        as_pg "$BIN_DIR/pg_ctl" -D "$DATA_DIR" -m fast stop >&2 || true
    fi
    exit 0
fi

mkdir -p "$BASE_DIR"
chown "$RUN_AS" "$BASE_DIR" 2>/dev/null || true
chmod 700 "$BASE_DIR" 2>/dev/null || true

if [[ -f "$DATA_DIR/PG_VERSION" ]] && as_pg "$BIN_DIR/pg_ctl" -D "$DATA_DIR" status >/dev/null 2>&1; then
    PORT="$(cat "$PORT_FILE")"
    say "reusing the cluster running on 127.0.0.1:$PORT"
else
    if [[ ! -f "$DATA_DIR/PG_VERSION" ]]; then
        say "initialising a cluster in $DATA_DIR"
        as_pg "$BIN_DIR/initdb" -D "$DATA_DIR" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
            -E UTF8 --locale=C.UTF-8 >&2 || as_pg "$BIN_DIR/initdb" -D "$DATA_DIR" -U postgres \
            --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C >&2
    fi
    PORT="$FIRST_PORT"
    while port_in_use "$PORT"; do
        PORT=$((PORT + 1))
        [[ "$PORT" -lt $((FIRST_PORT + 50)) ]] || { say "no free port from $FIRST_PORT"; exit 1; }
    done
    say "starting on 127.0.0.1:$PORT"
    as_pg "$BIN_DIR/pg_ctl" -D "$DATA_DIR" -l "$BASE_DIR/server.log" -w -t 60 \
        -o "-p $PORT -k $BASE_DIR -c listen_addresses=127.0.0.1" start >&2
    echo "$PORT" >"$PORT_FILE"
fi

psql_admin() { as_pg "$BIN_DIR/psql" -h "$BASE_DIR" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA "$@"; }

if [[ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER'")" != "1" ]]; then
    psql_admin -c "CREATE ROLE \"$DB_USER\" LOGIN PASSWORD '$DB_PASSWORD'" >&2
fi
if [[ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != "1" ]]; then
    psql_admin -c "CREATE DATABASE \"$DB_NAME\" OWNER \"$DB_USER\"" >&2
fi

echo "postgresql+psycopg://$DB_USER:$DB_PASSWORD@127.0.0.1:$PORT/$DB_NAME"
