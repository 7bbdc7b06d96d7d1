# shellcheck shell=bash
# shellcheck disable=SC2034 # CITUS_SKIP_REASON is read by the caller
# Citus for the multi-node tests: finds (or builds once) Citus in the PostgreSQL tree of $PG_CONFIG,
# and starts a coordinator with workers on localhost. Source it after test/lib/cluster.sh, then:
#   citus_ensure              0 when Citus 13.2 is usable in $PG_CONFIG's tree: installed already
#                             (citus.so and citus.control with default_version 13.2-x), or built and
#                             installed now from the pinned source tarball; 1 otherwise, with the
#                             reason in CITUS_SKIP_REASON
#   citus_nodes_start N [conf lines...]
#                             N throwaway clusters (node 0 the coordinator, 1..N-1 the workers), each
#                             with shared_preload_libraries = 'citus,popularity' and the conf lines;
#                             creates the extension citus in database postgres of each node and adds
#                             the workers to the coordinator. Sets CITUS_DIRS[i], CITUS_PORTS[i].
#   citus_psql I [psql args...]   psql -X on node I, database postgres (ON_ERROR_STOP on)
#   citus_nodes_destroy       stops and removes every node started
#
# Where the source comes from (first found): $CITUS_TARBALL; else vendor/citus-13.2.2.tar.gz in a
# directory beside the repository, or beside the repository's git origin when that is a local path
# (a clean clone's origin is the checkout it was cloned from). It must match CITUS_SHA256. The build
# follows the tarball's README: Debian build dependencies (installed only when missing), a one-line
# patch for PostgreSQL 15.20, configure --without-libcurl. Installed once per tree: a second run
# finds it installed (a stamp file in the tree's pkglibdir records the checksum it was built from).

CITUS_VERSION=13.2.2
CITUS_SHA256=c8fc76dc8294636a52b1a0dd75a20d8b4a36937df6443e30ca84d8d0464a6bb9
CITUS_SKIP_REASON=
CITUS_DIRS=()
CITUS_PORTS=()

_citus_repo_root() {
    git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel 2>/dev/null ||
        (cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
}

# Citus usable in the tree: the library, and a control file whose default version is 13.2-x.
_citus_installed() {
    local pkglibdir sharedir
    pkglibdir=$("$PG_CONFIG" --pkglibdir) && sharedir=$("$PG_CONFIG" --sharedir) || return 1
    [ -f "$pkglibdir/citus.so" ] &&
        grep -qE "^default_version *= *'13\.2-[0-9]+'" "$sharedir/extension/citus.control" 2>/dev/null
}

_citus_find_tarball() { # sets _citus_tarball
    local root origin dir candidate
    if [ -n "${CITUS_TARBALL:-}" ]; then
        [ -f "$CITUS_TARBALL" ] && { _citus_tarball=$CITUS_TARBALL; return 0; }
        CITUS_SKIP_REASON="CITUS_TARBALL=$CITUS_TARBALL does not exist"
        return 1
    fi
    root=$(_citus_repo_root)
    origin=$(git -C "$root" config --get remote.origin.url 2>/dev/null || true)
    origin=${origin#file://}
    # (A local origin as a directory, normalised: "git clone ." records the path with a trailing /.)
    if [ -n "$origin" ] && [ -d "$origin" ]; then
        origin=$(cd "$origin" && pwd -P)
    fi
    for dir in "$(dirname "$root")" ${origin:+"$(dirname "$origin")"}; do
        [ -d "$dir" ] || continue
        for candidate in "$dir"/*/vendor/"citus-$CITUS_VERSION.tar.gz"; do
            [ -f "$candidate" ] && { _citus_tarball=$candidate; return 0; }
        done
    done
    CITUS_SKIP_REASON="Citus is not installed in $("$PG_CONFIG" --pkglibdir) and no vendor/citus-$CITUS_VERSION.tar.gz beside the repository"
    return 1
}

_citus_build_deps() {
    local p missing=()
    for p in libcurl4-openssl-dev liblz4-dev libzstd-dev libssl-dev libkrb5-dev; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "citus: installing build dependencies: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

_citus_build() { # tarball
    local tarball=$1 build_dir log rc
    build_dir=$(mktemp -d /tmp/popularity-citus-build.XXXXXX)
    log=$build_dir/build.log
    echo "citus: building $CITUS_VERSION from $tarball into $("$PG_CONFIG" --pkglibdir) (log: $log)"
    (
        set -e
        tar -xzf "$tarball" -C "$build_dir"
        cd "$build_dir/citus-$CITUS_VERSION"
        # PostgreSQL 15 minor releases after 13.2.2 export have_createdb_privilege(); Citus's
        # compatibility header still defines a static one for PG 15 (the tarball's README).
        sed -i 's/^have_createdb_privilege(void)$/citus_unused_have_createdb_privilege(void)/' \
            src/include/pg_version_compat.h
        ./configure --without-libcurl PG_CONFIG="$PG_CONFIG"
        make -j2 PG_CONFIG="$PG_CONFIG"
        make install PG_CONFIG="$PG_CONFIG"
    ) >"$log" 2>&1
    rc=$?
    if [ $rc -ne 0 ]; then
        tail -30 "$log" >&2
        CITUS_SKIP_REASON="the Citus build failed (see $log)"
        return 1
    fi
    rm -rf "$build_dir"
}

citus_ensure() {
    local pkglibdir sum lock _citus_tarball=
    PG_CONFIG=${PG_CONFIG:-pg_config}
    pkglibdir=$("$PG_CONFIG" --pkglibdir) || { CITUS_SKIP_REASON="no pg_config"; return 1; }
    _citus_installed && return 0
    # One build at a time per tree: concurrent runs wait for it, then find it installed.
    lock=/tmp/popularity-citus-build.$(echo "$pkglibdir" | md5sum | cut -c1-12).lock
    exec {lock_fd}>"$lock" || { CITUS_SKIP_REASON="cannot write $lock"; return 1; }
    flock "$lock_fd"
    _citus_ensure_locked
    local rc=$?
    flock -u "$lock_fd"
    exec {lock_fd}>&-
    return $rc
}

_citus_ensure_locked() {
    _citus_installed && return 0
    _citus_find_tarball || return 1
    sum=$(sha256sum "$_citus_tarball" | cut -d' ' -f1)
    if [ "$sum" != "$CITUS_SHA256" ]; then
        CITUS_SKIP_REASON="$_citus_tarball has sha256 $sum, not the pinned $CITUS_SHA256"
        return 1
    fi
    if ! _citus_build_deps; then
        CITUS_SKIP_REASON="the Citus build dependencies could not be installed"
        return 1
    fi
    _citus_build "$_citus_tarball" || return 1
    if ! _citus_installed; then
        CITUS_SKIP_REASON="Citus was built but is not usable in $pkglibdir"
        return 1
    fi
    # What was built, from which source (the check above is what makes a second run skip the build).
    echo "$CITUS_SHA256 $_citus_tarball" >"$pkglibdir/citus.popularity-build-stamp"
}

citus_psql() { # node [psql args...]
    local node=$1
    shift
    psql -X -q -v ON_ERROR_STOP=1 -h "${CITUS_DIRS[$node]}" -p "${CITUS_PORTS[$node]}" -U postgres -d postgres "$@"
}

citus_nodes_start() { # count [conf lines...]
    local count=$1 i
    shift
    for ((i = 0; i < count; i++)); do
        # A free port may be taken by another process before the server binds it: a few tries.
        for attempt in 1 2 3 4; do
            if cluster_start "shared_preload_libraries = 'citus,popularity'" \
                "citus.node_conninfo = 'sslmode=disable'" \
                "shared_buffers = 32MB" "max_connections = 60" "max_worker_processes = 20" \
                "$@" 2>"${TMPDIR:-/tmp}/popularity-citus-start.$$"; then
                break
            fi
            cluster_destroy
            if [ "$attempt" = 4 ]; then
                cat "${TMPDIR:-/tmp}/popularity-citus-start.$$" >&2
                rm -f "${TMPDIR:-/tmp}/popularity-citus-start.$$"
                return 1
            fi
        done
        rm -f "${TMPDIR:-/tmp}/popularity-citus-start.$$"
        CITUS_DIRS[i]=$CLUSTER_DIR
        CITUS_PORTS[i]=$PGPORT
        CLUSTER_DIR=
    done
    for ((i = 0; i < count; i++)); do
        citus_psql "$i" -c "CREATE EXTENSION citus" || return 1
    done
    citus_psql 0 -c "SELECT citus_set_coordinator_host('127.0.0.1', ${CITUS_PORTS[0]})" >/dev/null || return 1
    for ((i = 1; i < count; i++)); do
        citus_psql 0 -c "SELECT citus_add_node('127.0.0.1', ${CITUS_PORTS[i]})" >/dev/null || return 1
    done
    # Later psql calls without a node go to the coordinator.
    export PGHOST=${CITUS_DIRS[0]} PGPORT=${CITUS_PORTS[0]} PGUSER=postgres PGDATABASE=postgres
}

citus_nodes_destroy() {
    local dir
    for dir in "${CITUS_DIRS[@]}"; do
        CLUSTER_DIR=$dir
        cluster_destroy
    done
    CITUS_DIRS=()
    CITUS_PORTS=()
}
