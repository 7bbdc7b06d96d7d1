# Throwaway PostgreSQL 15 cluster for tests, the demo and benchmarks. Source this file, then:
#   cluster_start [extra postgresql.conf lines...]   sets PGHOST, PGPORT, PGUSER, PGDATABASE, CLUSTER_DIR
#   cluster_stop [mode]                               stops it (mode: fast, immediate) and keeps files
#   cluster_destroy                                   stops it and removes its directory
# The server runs as the `postgres` user (PostgreSQL refuses root) in a fresh directory, listening
# only on a Unix socket in that directory and on a free loopback port.

PG_CONFIG=${PG_CONFIG:-pg_config}
PG_BIN=${PG_BIN:-$("$PG_CONFIG" --bindir)}

# Runs a command as postgres from `/`: a command inherits the working directory, and the repository
# may live where postgres cannot enter (e.g. /root/...), which made initdb and pg_ctl warn "could
# not change directory to ...: Permission denied". Every path given to them is absolute.
_as_postgres() {
    if [ "$(id -un)" = postgres ]; then (cd / && "$@"); else (cd / && runuser -u postgres -- "$@"); fi
}

_free_port() {
    local port
    for _ in $(seq 1 50); do
        port=$((20000 + RANDOM % 20000))
        if ! (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    echo "no free port found" >&2
    return 1
}

cluster_start() {
    CLUSTER_DIR=$(mktemp -d /tmp/popularity-pg.XXXXXX)
    chown postgres: "$CLUSTER_DIR"
    chmod 755 "$CLUSTER_DIR"
    PGPORT=$(_free_port)
    _as_postgres "$PG_BIN/initdb" -D "$CLUSTER_DIR/data" -U postgres --auth=trust \
        --no-sync -E UTF8 --locale=C.UTF-8 >"$CLUSTER_DIR/initdb.log" 2>&1 || {
        cat "$CLUSTER_DIR/initdb.log" >&2
        return 1
    }
    {
        echo "port = $PGPORT"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = '$CLUSTER_DIR'"
        echo "shared_preload_libraries = 'popularity'"
        echo "fsync = off"
        echo "max_worker_processes = 16"
        echo "log_min_messages = warning"
        echo "log_line_prefix = '%m [%p] %q%a '"
        for line in "$@"; do echo "$line"; done
    } >>"$CLUSTER_DIR/data/postgresql.conf"
    cluster_restart_start
    export PGHOST=$CLUSTER_DIR PGPORT PGUSER=postgres PGDATABASE=postgres CLUSTER_DIR
}

# Starts the (stopped) cluster again, e.g. after a crash test.
cluster_restart_start() {
    _as_postgres "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -l "$CLUSTER_DIR/server.log" -w -t 60 \
        start >/dev/null || {
        tail -50 "$CLUSTER_DIR/server.log" >&2
        return 1
    }
}

cluster_stop() {
    [ -n "${CLUSTER_DIR:-}" ] && [ -d "$CLUSTER_DIR/data" ] || return 0
    _as_postgres "$PG_BIN/pg_ctl" -D "$CLUSTER_DIR/data" -m "${1:-fast}" -w -t 60 stop \
        >/dev/null 2>&1 || true
}

cluster_destroy() {
    cluster_stop fast
    [ -n "${CLUSTER_DIR:-}" ] && rm -rf "$CLUSTER_DIR"
    CLUSTER_DIR=
}
