#!/usr/bin/env bash
# The extension on a 3-node Citus cluster (issue 14, item 2): a coordinator and two workers on
# localhost, an Openverse-shaped `image` table distributed by identifier, ingestion through the
# coordinator. Each check is reported on its own line ("ok: ..." or "FAILED: ..."); the script exits
# 0 when all pass, 1 otherwise, and 77 after a line "SKIPPED: <reason>" when Citus is neither
# installed in $PG_CONFIG's tree nor buildable from the vendored source (test/lib/citus.sh).
#
# Environment (optional): CITUS_ROWS (catalog rows, default 100000), CITUS_TARBALL (the Citus
# source to build from), CITUS_KEEP=1 (leave the nodes running and print how to reach them).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../lib/cluster.sh
source test/lib/cluster.sh
# shellcheck source=../lib/citus.sh
source test/lib/citus.sh

ROWS=${CITUS_ROWS:-100000}
[[ "$ROWS" =~ ^[1-9][0-9]{3,8}$ ]] || { echo "CITUS_ROWS must be an integer >= 1000" >&2; exit 2; }
started_at=$SECONDS

if ! citus_ensure; then
    echo "SKIPPED: $CITUS_SKIP_REASON"
    exit 77
fi

cleanup() {
    if [ "${CITUS_KEEP:-0}" = 1 ]; then
        for i in "${!CITUS_DIRS[@]}"; do echo "kept node $i: psql -h ${CITUS_DIRS[i]} -p ${CITUS_PORTS[i]} -U postgres"; done
    else
        citus_nodes_destroy
    fi
}
trap cleanup EXIT

failures=0
ok() { echo "ok: $*"; }
bad() { echo "FAILED: $*"; failures=$((failures + 1)); }
# check NAME EXPECTED ACTUAL
check() {
    if [ "$2" = "$3" ]; then ok "$1"; else bad "$1: expected '$2', got '$3'"; fi
}
# Node count: the coordinator (0) and the workers.
NODES=3
on() { citus_psql "$@"; }
val() { local node=$1; shift; citus_psql "$node" -At "$@"; }

# 8 shards (4 per worker): enough to show each node walking several shards of its own.
citus_nodes_start "$NODES" "citus.shard_count = 8" "popularity.database = 'postgres'" \
    "autovacuum = off"
echo "cluster: coordinator and $((NODES - 1)) workers up after $((SECONDS - started_at)) s"

# --- 1. The extension on every node --------------------------------------------------------------
on 0 -c "CREATE EXTENSION popularity"
for ((i = 1; i < NODES; i++)); do
    check "CREATE EXTENSION on the coordinator created it on worker $i" "0.2.0" \
        "$(val "$i" -c "SELECT extversion FROM pg_extension WHERE extname = 'popularity'")"
done

echo "run time: $((SECONDS - started_at)) s"
if [ "$failures" -gt 0 ]; then
    echo "$failures check(s) failed"
    exit 1
fi
echo "all checks passed"
