#!/usr/bin/env bash
# Make sure Redis and PostgreSQL are reachable for FlashSale and write
# .run/services.env with REDIS_URL / DATABASE_URL for the Makefile to source.
#
# Idempotent. Reuses whatever already runs (or REDIS_URL / DATABASE_URL from
# the environment); installs (Debian packages) and starts services only when
# nothing answers. Never stops, reconfigures or flushes running services.
#
# Knobs: FLASHSALE_REDIS_PORT (default 6379), FLASHSALE_PG_PORT (default 5432).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
RUN_DIR="$ROOT/.run"
ENV_FILE="$RUN_DIR/services.env"

REDIS_HOST=127.0.0.1
REDIS_PORT=${FLASHSALE_REDIS_PORT:-6379}
PG_HOST=127.0.0.1
PG_PORT=${FLASHSALE_PG_PORT:-5432}
DB_NAME=flashsale
DB_USER=flashsale
DB_PASS=flashsale

log() { printf 'ensure-services: %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }
mask() { sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"; }

# ---------------------------------------------------------------- privileges
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    SUDO=(sudo)
fi
as_root() {
    if [[ ${#SUDO[@]} -gt 0 ]] && ! have sudo; then
        die "need root for: $* (not root and sudo is not installed)"
    fi
    "${SUDO[@]}" "$@"
}

APT_UPDATED=0
apt_install() {
    have apt-get || die "apt-get not found; install these packages yourself: $*"
    if [[ $APT_UPDATED -eq 0 ]]; then
        log "running apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        APT_UPDATED=1
    fi
    log "installing: $*"
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" >&2
}

# --------------------------------------------------------------------- Redis
# redis_ping HOST PORT -> 0 if it answers +PONG
redis_ping() {
    local host=$1 port=$2
    if have redis-cli; then
        [[ $(timeout 5 redis-cli -h "$host" -p "$port" ping 2>/dev/null) == PONG ]]
    else
        # shellcheck disable=SC2016  # expanded by the inner bash
        timeout 5 bash -c '
            exec 3<>"/dev/tcp/$1/$2" || exit 1
            printf "PING\r\n" >&3
            IFS= read -r -t 3 line <&3 || exit 1
            [[ $line == +PONG* ]]' _ "$host" "$port" 2>/dev/null
    fi
}

# redis_url_ping URL -> 0 if the server behind URL answers PING
redis_url_ping() {
    local url=$1
    if have redis-cli; then
        [[ $(timeout 5 redis-cli --no-auth-warning -u "$url" ping 2>/dev/null) == PONG ]]
    else
        # Best effort without redis-cli: host/port only (no AUTH, no TLS).
        local rest hostport host port
        rest=${url#*://}
        rest=${rest%%/*}
        hostport=${rest##*@}
        host=${hostport%%:*}
        port=6379
        [[ $hostport == *:* ]] && port=${hostport##*:}
        redis_ping "${host:-127.0.0.1}" "$port"
    fi
}

start_redis() {
    if ! have redis-server; then
        apt_install redis-server
        # The package may have started its own service (systemd hosts).
        if redis_ping "$REDIS_HOST" "$REDIS_PORT"; then
            return 0
        fi
    fi
    mkdir -p "$RUN_DIR"
    log "starting redis-server on $REDIS_HOST:$REDIS_PORT (data/log in .run/)"
    redis-server --daemonize yes --bind "$REDIS_HOST" --port "$REDIS_PORT" \
        --save "" --appendonly no --dir "$RUN_DIR" \
        --logfile "$RUN_DIR/redis.log" --pidfile "$RUN_DIR/redis.pid" >&2 ||
        die "redis-server failed to start; see $RUN_DIR/redis.log"
    local i
    for ((i = 0; i < 40; i++)); do
        redis_ping "$REDIS_HOST" "$REDIS_PORT" && return 0
        sleep 0.5
    done
    tail -n 20 "$RUN_DIR/redis.log" >&2 2>/dev/null || true
    die "redis-server did not answer PING on $REDIS_HOST:$REDIS_PORT within 20 s (log: $RUN_DIR/redis.log)"
}

ensure_redis() {
    if [[ -n ${REDIS_URL:-} ]]; then
        redis_url_ping "$REDIS_URL" ||
            die "REDIS_URL=$(mask "$REDIS_URL") is set but does not answer PING"
        return 0
    fi
    if ! redis_ping "$REDIS_HOST" "$REDIS_PORT"; then
        start_redis
    fi
    REDIS_URL="redis://$REDIS_HOST:$REDIS_PORT/0"
}

# ---------------------------------------------------------------- PostgreSQL
# pg_probe -> 0 accepting, 1 rejecting (starting up/shutting down), 2 nothing
pg_probe() {
    if have pg_isready; then
        local rc=0
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 3 || rc=$?
        [[ $rc -le 2 ]] || rc=2
        return "$rc"
    fi
    # shellcheck disable=SC2016  # expanded by the inner bash
    if timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$PG_HOST" "$PG_PORT" 2>/dev/null; then
        return 0
    fi
    return 2
}

pg_wait() {
    local i rc
    for ((i = 0; i < 60; i++)); do
        rc=0
        pg_probe || rc=$?
        [[ $rc -eq 0 ]] && return 0
        sleep 0.5
    done
    return 1
}

start_postgres() {
    if ! have pg_ctlcluster; then
        apt_install postgresql postgresql-client
        # The package may have created and started a cluster itself.
        if pg_probe; then
            return 0
        fi
    fi
    local ver=""
    if [[ -d /etc/postgresql ]]; then
        ver=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -V | tail -n 1)
    fi
    if [[ -z $ver ]]; then
        ver=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)
        [[ -n $ver ]] || die "no PostgreSQL server found under /usr/lib/postgresql"
    fi
    if [[ ! -d /etc/postgresql/$ver/main ]]; then
        log "creating PostgreSQL cluster $ver/main on port $PG_PORT"
        as_root pg_createcluster -p "$PG_PORT" "$ver" main >&2
    fi
    # Use the cluster's configured port (it may differ from the default).
    local info port status
    info=$(pg_lsclusters -h 2>/dev/null | awk -v v="$ver" '$1 == v && $2 == "main" { print $3, $4 }')
    read -r port status <<<"$info" || true
    [[ -n ${port:-} ]] && PG_PORT=$port
    if [[ ${status:-} != online* ]]; then
        log "starting PostgreSQL cluster $ver/main on port $PG_PORT"
        as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start >&2 ||
            die "could not start PostgreSQL cluster $ver/main (see /var/log/postgresql/postgresql-$ver-main.log)"
    fi
    pg_wait || die "PostgreSQL $ver/main did not become ready on $PG_HOST:$PG_PORT within 30 s"
}

# psql_check URL -> 0 if `select 1` works (never prompts for a password)
psql_check() {
    PGCONNECT_TIMEOUT=5 psql "$1" -X -w -q -A -t -c 'select 1' >/dev/null 2>&1
}

# Run SQL from stdin as the postgres OS user over the local socket (peer auth).
psql_as_postgres() {
    local cmd=(psql -X -w -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres)
    if [[ $(id -u) -eq 0 ]]; then
        (cd / && su postgres -s /bin/sh -c "$(printf '%q ' "${cmd[@]}")")
    elif have sudo; then
        (cd / && sudo -u postgres "${cmd[@]}")
    else
        return 1
    fi
}

ensure_postgres() {
    if [[ -n ${DATABASE_URL:-} ]]; then
        if have psql; then
            psql_check "$DATABASE_URL" ||
                die "DATABASE_URL=$(mask "$DATABASE_URL") is set but 'select 1' fails: $(PGCONNECT_TIMEOUT=5 psql "$DATABASE_URL" -X -w -q -c 'select 1' 2>&1 >/dev/null | head -n 1)"
        fi
        return 0
    fi

    local rc=0
    pg_probe || rc=$?
    if [[ $rc -eq 1 ]]; then
        log "PostgreSQL on $PG_HOST:$PG_PORT is not accepting connections yet; waiting"
        pg_wait || die "PostgreSQL on $PG_HOST:$PG_PORT did not become ready within 30 s"
    elif [[ $rc -ne 0 ]]; then
        start_postgres
    fi
    have psql || apt_install postgresql-client

    # 1) trust auth for postgres over TCP?
    if (unset PGPASSWORD PGUSER PGDATABASE PGSERVICE; PGCONNECT_TIMEOUT=5 \
        psql -X -w -q -A -t -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres \
        -c 'select 1' >/dev/null 2>&1); then
        local exists
        exists=$(unset PGPASSWORD PGUSER PGDATABASE PGSERVICE; PGCONNECT_TIMEOUT=5 \
            psql -X -w -q -A -t -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres \
            -c "select 1 from pg_database where datname = '$DB_NAME'")
        if [[ $exists != 1 ]]; then
            log "creating database $DB_NAME"
            (unset PGPASSWORD PGUSER PGDATABASE PGSERVICE; PGCONNECT_TIMEOUT=5 \
                psql -X -w -q -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres \
                -v ON_ERROR_STOP=1 -c "create database $DB_NAME") >&2
        fi
        DATABASE_URL="postgresql://postgres@$PG_HOST:$PG_PORT/$DB_NAME"
    else
        # 2) password auth (stock Debian): set up role/db via peer auth.
        # psql's output (only \echo lines) goes to stderr, prefixed.
        psql_as_postgres 2>&1 <<SQL | sed 's/^/ensure-services: /' >&2 ||
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') AS need_role,
       NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB_NAME') AS need_db \gset
\if :need_role
\echo creating role $DB_USER
CREATE ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASS';
\endif
\if :need_db
\echo creating database $DB_NAME owned by $DB_USER
CREATE DATABASE $DB_NAME OWNER $DB_USER;
\endif
SQL
            die "cannot log in to PostgreSQL on $PG_HOST:$PG_PORT as postgres without a password, and peer auth as the postgres OS user failed; set DATABASE_URL"
        DATABASE_URL="postgresql://$DB_USER:$DB_PASS@$PG_HOST:$PG_PORT/$DB_NAME"
    fi

    psql_check "$DATABASE_URL" ||
        die "cannot connect with $(mask "$DATABASE_URL"): $(PGCONNECT_TIMEOUT=5 psql "$DATABASE_URL" -X -w -q -c 'select 1' 2>&1 >/dev/null | head -n 1)"
}

# ---------------------------------------------------------------------- main
ensure_redis
ensure_postgres

mkdir -p "$RUN_DIR"
tmp=$(mktemp "$RUN_DIR/services.env.XXXXXX")
{
    printf 'export REDIS_URL=%q\n' "$REDIS_URL"
    printf 'export DATABASE_URL=%q\n' "$DATABASE_URL"
} >"$tmp"
chmod 600 "$tmp"
mv -f "$tmp" "$ENV_FILE"

log "Redis: $(mask "$REDIS_URL")  PostgreSQL: $(mask "$DATABASE_URL")"
