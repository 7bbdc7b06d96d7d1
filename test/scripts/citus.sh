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

tmp=$(mktemp -d /tmp/popularity-citus.XXXXXX)
chmod 755 "$tmp"
cleanup() {
    # Background clients of this script (pgbench, the session holding the runs), if a check failed
    # while they ran.
    local pid
    for pid in $(jobs -p); do kill "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
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
# The catalog's owner: a role with LOGIN and the operator rights (not a superuser), which registers
# and runs the jobs; its statements run as it on the workers too.
as_owner() { local node=$1; shift; citus_psql "$node" -U curator "$@"; }
val() { local node=$1; shift; citus_psql "$node" -At "$@"; }

# 8 shards (4 per worker): enough to show each node walking several shards of its own.
citus_nodes_start "$NODES" "citus.shard_count = 8" "popularity.database = 'postgres'" "popularity.progress_interval = '300ms'" \
    "autovacuum = off"
echo "cluster: coordinator and $((NODES - 1)) workers up after $((SECONDS - started_at)) s"

# --- 1. The extension on every node --------------------------------------------------------------
# Citus propagates CREATE EXTENSION to every node where the extension is available; each node then
# has its own (local) configuration tables, which the coordinator keeps equal to its own.
on 0 -c "CREATE EXTENSION popularity"
for ((i = 1; i < NODES; i++)); do
    check "CREATE EXTENSION on the coordinator created it on worker $i" "0.2.0" \
        "$(val "$i" -c "SELECT extversion FROM pg_extension WHERE extname = 'popularity'")"
done

# The Openverse-shaped catalog (test/lib/ingest.sh's columns), distributed by identifier, and the
# data generators (Citus propagates the functions to the workers).
on 0 >/dev/null <<'SQL'
CREATE TABLE image (
    identifier uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_on timestamptz NOT NULL DEFAULT now(),
    updated_on timestamptz NOT NULL DEFAULT now(),
    ingestion_type varchar(80) DEFAULT 'provider_api',
    provider varchar(80) NOT NULL,
    source varchar(80),
    foreign_identifier text NOT NULL,
    foreign_landing_url text,
    url text NOT NULL,
    license varchar(50) NOT NULL DEFAULT 'by',
    title text,
    meta_data jsonb,
    tags jsonb,
    removed_from_source boolean NOT NULL DEFAULT false
);
SELECT create_distributed_table('image', 'identifier');
CREATE FUNCTION provider_of(g bigint) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (ARRAY['flickr', 'flickr', 'flickr', 'flickr', 'flickr', 'wikimedia', 'wikimedia',
                  'rawpixel', 'nappy', 'stocksnap', 'smithsonian', 'flickr', 'flickr', 'flickr',
                  'flickr', 'flickr', 'wikimedia', 'wikimedia', 'rawpixel', 'smithsonian'])[(1 + g % 20)::int] $$;
CREATE FUNCTION metric_data(record_provider text, v bigint) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE record_provider
               WHEN 'flickr' THEN jsonb_build_object('views', v)
               WHEN 'wikimedia' THEN jsonb_build_object('global_usage_count', v % 50)
               WHEN 'rawpixel' THEN jsonb_build_object('download_count', v)
               WHEN 'nappy' THEN jsonb_build_object('downloads', v)
               WHEN 'stocksnap' THEN jsonb_build_object('downloads_raw', v::text)
               ELSE jsonb_build_object('unit_code', 'NMNH') END $$;
-- Tags the default rules partly drop: low-accuracy machine tags, a denylisted name, rekognition.
CREATE FUNCTION make_tags(g bigint) RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_array(jsonb_build_object('name', 'tag' || g % 40),
                             jsonb_build_object('name', 'machine' || g % 7, 'provider', 'clarifai',
                                                'accuracy', (ARRAY[0.97, 0.5, 0.93])[(1 + g % 3)::int]))
           || CASE WHEN g % 5 = 0 THEN '[{"name": "cc0"}]' ELSE '[]' END::jsonb
           || CASE WHEN g % 7 = 0 THEN '[{"name": "Person", "provider": "rekognition", "accuracy": 0.99}]'
                   ELSE '[]' END::jsonb $$;
SQL
ingest() { # first last: catalog keys first..last, through the coordinator
    on 0 -c "INSERT INTO image (identifier, provider, foreign_identifier, url, title, meta_data, tags)
             SELECT md5('c' || g)::uuid, provider_of(g), 'c' || g, 'https://cdn.example.org/' || g,
                    'Photograph ' || g, metric_data(provider_of(g), floor(exp(random() * 9))::bigint)
                        || jsonb_build_object('description', repeat('d', 40 + (g % 60)::int)),
                    make_tags(g)
             FROM generate_series($1, $2) AS g" >/dev/null
}

# --- 2. Registration: the triggers run on the shards ---------------------------------------------
# (CREATE ROLE is propagated by Citus; grant_operator on the coordinator grants on every worker.)
on 0 -c "CREATE ROLE curator LOGIN" -c "ALTER TABLE image OWNER TO curator" \
     -c "SELECT popularity.grant_operator('curator')" >/dev/null
for ((i = 1; i < NODES; i++)); do
    check "worker $i: grant_operator on the coordinator gave the role the operator rights there" "t" \
        "$(val "$i" -c "SELECT has_function_privilege('curator', 'popularity._media_table(text)', 'EXECUTE')")"
done
as_owner 0 -c "SELECT popularity.register_media_type('image', 'image')" >/dev/null
check "no citus.enable_unsafe_triggers left on after registration" "off" \
    "$(as_owner 0 -At -c "SELECT popularity.register_media_type('image', 'image'); SHOW citus.enable_unsafe_triggers" | tail -1)"
config_sql="SELECT md5(string_agg(format('%s %s %s %s %s', provider, metric, percentile, val, constant), ',' ORDER BY provider))
            FROM popularity.metrics WHERE media_type = 'image'"
shards_total=0
for ((i = 1; i < NODES; i++)); do
    check "worker $i has the media type registered on its own copy of the table" "t" \
        "$(val "$i" -c "SELECT media_table = 'public.image'::regclass FROM popularity.media_types WHERE media_type = 'image'")"
    check "worker $i has the coordinator's metrics" "$(val 0 -c "$config_sql")" "$(val "$i" -c "$config_sql")"
    shards=$(val "$i" -c "SELECT count(*) FROM popularity._citus_local_shards('image')")
    shards_total=$((shards_total + shards))
    check "worker $i: the score and the 3 counts triggers are on each of its $shards shards" "$((4 * shards))" \
        "$(val "$i" -c "SELECT count(*) FROM pg_trigger AS t JOIN popularity._citus_local_shards('image') AS s(shard)
                        ON t.tgrelid = s.shard
                        WHERE t.tgname ~ '^zz_popularity_(score|stats_insert|stats_update|stats_delete)_[0-9]+$'")"
done
check "every shard is on a worker" "8" "$shards_total"

# A sample first (scored NULL: no constants yet), then the constants from it, then the catalog.
SAMPLE=$((ROWS / 10))
ingest 1 "$SAMPLE"
constants_started=$SECONDS
as_owner 0 -c "SELECT count(*) FROM popularity.refresh_constants('image')" >/dev/null
echo "refresh_constants over $SAMPLE rows on the coordinator: $((SECONDS - constants_started)) s"

# --- 4. refresh_constants: exact over every shard ----------------------------------------------
truth_sql="SELECT string_agg(format('%s %s %s', x.provider, CASE WHEN x.pv = 0 THEN 1 ELSE x.pv END,
                                    popularity_constant(x.pv, x.percentile)), ', ' ORDER BY x.provider) FROM (
               SELECT m.provider, m.percentile,
                      percentile_disc(m.percentile) WITHIN GROUP (ORDER BY popularity_metric_value(i.meta_data, m.metric)) AS pv
               FROM image AS i JOIN popularity.metrics AS m ON m.provider = i.provider::text AND m.media_type = 'image'
               GROUP BY m.provider, m.percentile) AS x"
vals_sql="SELECT string_agg(format('%s %s %s', provider, val, constant), ', ' ORDER BY provider)
          FROM popularity.metrics WHERE media_type = 'image'"
check "refresh_constants on the coordinator equals percentile_disc over every shard" \
    "$(val 0 -c "$truth_sql")" "$(val 0 -c "$vals_sql")"
for ((i = 1; i < NODES; i++)); do
    check "worker $i got the new constants at commit" "$(val 0 -c "$config_sql")" "$(val "$i" -c "$config_sql")"
done

ingest $((SAMPLE + 1)) "$ROWS"
echo "catalog: $ROWS rows ingested through the coordinator after $((SECONDS - started_at)) s"
stale_sql="SELECT count(*) FROM image AS i JOIN popularity.metrics AS m ON m.media_type = 'image' AND m.provider = i.provider::text
           WHERE i.standardized_popularity IS DISTINCT FROM standardized_popularity(popularity_metric_value(i.meta_data, m.metric), m.constant)"
check "rows ingested after the constants are scored by the trigger on their shards" "0" \
    "$(val 0 -c "$stale_sql AND substr(i.foreign_identifier, 2)::bigint > $SAMPLE")"
sample_stale=$(val 0 -c "$stale_sql AND substr(i.foreign_identifier, 2)::bigint <= $SAMPLE")
if [ "$sample_stale" -gt 0 ]; then ok "the sample ingested before the constants is stale ($sample_stale rows)"; else bad "the sample is not stale"; fi

# --- 3. Provider counts: per shard, exact from the coordinator ---------------------------------
recount_sql="SELECT string_agg(format('%s %s %s %s %s', r.provider, r.rows, r.ok, r.scored, r.invalid), ', ' ORDER BY r.provider) FROM (
                 SELECT i.provider::text AS provider, count(*) AS rows,
                        count(*) FILTER (WHERE popularity._metric_status(i.meta_data, m.metric) = 'ok') AS ok,
                        count(*) FILTER (WHERE i.standardized_popularity IS NOT NULL) AS scored,
                        count(*) FILTER (WHERE popularity._metric_status(i.meta_data, m.metric) = 'invalid') AS invalid
                 FROM image AS i LEFT JOIN popularity.metrics AS m ON m.media_type = 'image' AND m.provider = i.provider::text
                 GROUP BY 1) AS r"
counted_sql="SELECT string_agg(format('%s %s %s %s %s', provider, rows, rows_with_metric, rows_scored, rows_invalid_metric), ', ' ORDER BY provider)
             FROM popularity.citus_provider_stats('image')"
check "provider counts (statement triggers with transition tables on the shards) equal a recount" \
    "$(val 0 -c "$recount_sql")" "$(val 0 -c "$counted_sql")"
check "every provider is counted on both workers, none waits for reconcile_stats" "6 0" \
    "$(val 0 -F' ' -c "SELECT count(*) FILTER (WHERE nodes = 2), count(*) FILTER (WHERE reconcile_pending) FROM popularity.citus_provider_stats('image')")"
# The reconciliation as backstop: a worker's counts made wrong are found and mended from the coordinator.
val 1 -c "INSERT INTO popularity.stats_journal (media_type, provider, rows, rows_with_metric, rows_scored, rows_invalid_metric)
          VALUES ('image', 'flickr', 7, 0, 0, 0)" >/dev/null
if [ "$(val 0 -c "$counted_sql")" != "$(val 0 -c "$recount_sql")" ]; then ok "a drift on worker 1 shows in the counts"; else bad "the drift does not show"; fi
check "reconcile_stats on the coordinator corrects it on the worker" "1" \
    "$(as_owner 0 -At -c "CALL popularity.reconcile_stats('image')")"
check "the counts equal a recount again" "$(val 0 -c "$recount_sql")" "$(val 0 -c "$counted_sql")"

# --- 5. The jobs, from the coordinator: each worker node walks its own shards -------------------
as_owner 0 -q -c "SELECT popularity.set_metric('image', p, m, 0.8) FROM popularity.metrics AS x(mt, p, m) WHERE x.mt = 'image'" >/dev/null
# The new constants first (the CALL computes them again: unchanged), so the rows to rescore are known.
as_owner 0 -c "SELECT count(*) FROM popularity.refresh_constants('image')" >/dev/null
stale_before=$(val 0 -c "$stale_sql")
refresh_started=$SECONDS
as_owner 0 -c "CALL refresh_popularity('image')" 2>&1 | grep -v '^NOTICE: .*queued' | sed 's/^/  /'
echo "refresh_popularity of $ROWS rows from the coordinator: $((SECONDS - refresh_started)) s"
check "after refresh_popularity no row is stale on any shard" "0" "$(val 0 -c "$stale_sql")"
for ((i = 1; i < NODES; i++)); do
    run=$(val "$i" -c "SELECT max(run_id) FROM popularity.refresh_runs WHERE job = 'refresh'")
    check "worker $i: its run is the catalog owner's (its background workers run as that role)" "curator" \
        "$(val "$i" -c "SELECT requested_by::regrole FROM popularity.refresh_runs WHERE run_id = $run")"
    check "worker $i: its refresh run succeeded, walking each of its shards" \
        "succeeded $(val "$i" -c "SELECT count(*) FROM popularity._citus_local_shards('image')")" \
        "$(val "$i" -F' ' -c "SELECT r.state, count(DISTINCT t.leaf) FROM popularity.refresh_runs AS r
                             JOIN popularity.refresh_tasks AS t USING (run_id) WHERE r.run_id = $run GROUP BY r.state")"
done
check "the coordinator sees both workers' runs succeed, and every row they rescored" \
    "2 succeeded $stale_before" \
    "$(val 0 -F' ' -c "SELECT count(DISTINCT node), string_agg(DISTINCT state, ','), sum(rows_updated)
                      FROM popularity.citus_refresh_status('image')
                      WHERE job = 'refresh' AND (node, run_id) IN (SELECT node, max(run_id) FROM popularity.citus_refresh_status('image')
                                                                  WHERE job = 'refresh' GROUP BY node)")"
echo "  refresh rows/s per node (information): $(val 0 -c "SELECT string_agg(format('%s %s', node, r), ', ') FROM (
        SELECT node, sum(rows_per_second) AS r FROM popularity.citus_refresh_status('image')
        WHERE job = 'refresh' AND (node, run_id) IN (SELECT node, max(run_id) FROM popularity.citus_refresh_status('image')
                                                    WHERE job = 'refresh' GROUP BY node) GROUP BY node) AS x")"

dirty_sql="SELECT count(*) FROM image WHERE tags IS DISTINCT FROM popularity.filtered_tags(tags, provider, 'image')"
dirty=$(val 0 -c "$dirty_sql")
if [ "$dirty" -gt 0 ]; then ok "$dirty rows have tags the rules drop"; else bad "no row has tags to drop"; fi
filter_started=$SECONDS
as_owner 0 -c "CALL filter_tags('image')" 2>&1 | grep -v '^NOTICE: .*queued' | sed 's/^/  /'
echo "filter_tags of $ROWS rows from the coordinator: $((SECONDS - filter_started)) s"
check "after filter_tags every row's tags are as the rules leave them, on every shard" "0" "$(val 0 -c "$dirty_sql")"
echo "  filter rows/s per node (information): $(val 0 -c "SELECT string_agg(format('%s %s', node, rows_per_second), ', ')
        FROM popularity.citus_refresh_status('image') WHERE job = 'filter_tags'")"
check "both workers' filter runs succeeded and together changed every dirty row" "2 succeeded $dirty" \
    "$(val 0 -F' ' -c "SELECT count(DISTINCT node), string_agg(DISTINCT state, ','), sum(rows_updated)
                      FROM popularity.citus_refresh_status('image') WHERE job = 'filter_tags'")"

# Cancel: a transaction that writes on every worker and stays open holds the runs (a run waits for
# the writers in progress when it was queued), so the cancel finds them active.
on 0 -c "BEGIN; UPDATE image SET title = title WHERE substr(foreign_identifier, 2)::bigint <= 100;
         SELECT pg_sleep(600); COMMIT" >"$tmp/holder.out" 2>&1 &
holder=$!
active_runs() { val 0 -c "SELECT count(*) FROM popularity.citus_refresh_status('image')
                          WHERE job = 'refresh' AND state IN ('queued', 'running') AND provider = 'flickr'"; }
wait_for() { # condition-command expected
    for _ in $(seq 1 300); do [ "$($1)" = "$2" ] && return 0; sleep 0.1; done; return 1
}
sleep 0.5
as_owner 0 -c "CALL refresh_popularity('image', force => true)" >"$tmp/call.out" 2>&1 &
caller=$!
if wait_for active_runs 2; then
    on 0 -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE 'CALL refresh_popularity%' AND pid <> pg_backend_pid()" >/dev/null
fi
wait "$caller" || true
if grep -q 'cancelled on every worker node' "$tmp/call.out"; then
    ok "a cancelled CALL on the coordinator says its runs were cancelled on every worker"
else
    bad "the cancelled CALL said: $(tr '\n' ' ' <"$tmp/call.out")"
fi
for ((i = 1; i < NODES; i++)); do
    check "worker $i: its run of the cancelled CALL is cancelled" "cancelled" \
        "$(val "$i" -c "SELECT state FROM popularity.refresh_runs WHERE run_id = (SELECT max(run_id) FROM popularity.refresh_runs WHERE job = 'refresh')")"
done
as_owner 0 -c "CALL refresh_popularity('image', wait => false, force => true)" >/dev/null 2>&1 ||
    bad "refresh_popularity(wait => false) refused to start"
check "citus_cancel_refresh cancels a run started without wait on both workers" "2" \
    "$(as_owner 0 -At -c "SELECT count(*) FROM popularity.citus_cancel_refresh('image')")"
check "no run is left active on any worker" "0" "$(active_runs)"
on 0 -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'BEGIN; UPDATE image SET title%'" >/dev/null
wait "$holder" || true

# --- 6. Convergence under ingestion through the coordinator ------------------------------------
# (Citus evaluates functions of ON CONFLICT DO UPDATE SET only when IMMUTABLE: the new values come
# in the VALUES list, evaluated on the coordinator; 'ingested' marks each written row version.)
cat >"$tmp/existing.sql" <<'SQL'
\set n random(1, :rows)
\set v random(0, 200000)
INSERT INTO image AS old (identifier, provider, foreign_identifier, url, meta_data, tags, updated_on)
VALUES (md5('c' || :n)::uuid, provider_of(:n), 'c' || :n, 'https://cdn.example.org/' || :n,
        metric_data(provider_of(:n), :v) || jsonb_build_object('note', repeat('u', :v % 700), 'ingested', clock_timestamp()),
        '[]', now())
ON CONFLICT (identifier) DO UPDATE
    SET meta_data = old.meta_data || excluded.meta_data, updated_on = excluded.updated_on;
SQL
cat >"$tmp/new.sql" <<'SQL'
\set v random(0, 200000)
\set p random(0, 19)
INSERT INTO image (provider, foreign_identifier, url, meta_data, tags)
VALUES (provider_of(:p), 'n' || :v, 'https://cdn.example.org/new/' || :v,
        metric_data(provider_of(:p), :v) || jsonb_build_object('ingested', clock_timestamp()), '[]');
SQL
as_owner 0 -q -c "SELECT popularity.set_metric('image', p, m, 0.75) FROM popularity.metrics AS x(mt, p, m) WHERE x.mt = 'image'" >/dev/null
before=$(val 0 -c "SELECT count(*) FROM image")
"$PG_BIN/pgbench" -n -c 3 -j 1 -T 600 -h "${CITUS_DIRS[0]}" -p "${CITUS_PORTS[0]}" -U postgres -D rows="$ROWS" \
    -f "$tmp/existing.sql@3" -f "$tmp/new.sql@1" postgres >"$tmp/pgbench.out" 2>&1 &
pgbench=$!
sleep 1
run_started=$(val 0 -c "SELECT clock_timestamp()")
as_owner 0 -c "CALL refresh_popularity('image')" >"$tmp/converge.out" 2>&1 || bad "refresh under ingestion: $(tr '\n' ' ' <"$tmp/converge.out")"
run_ended=$(val 0 -c "SELECT clock_timestamp()")
kill -TERM "$pgbench" 2>/dev/null || true
wait "$pgbench" || true
check "after a refresh under ingestion through the coordinator no row is stale on any shard" "0" "$(val 0 -c "$stale_sql")"
during=$(val 0 -c "SELECT count(*) FROM image WHERE (meta_data->>'ingested')::timestamptz BETWEEN '$run_started' AND '$run_ended'")
added=$(( $(val 0 -c "SELECT count(*) FROM image") - before ))
if [ "$during" -gt 0 ] && [ "$added" -gt 0 ]; then
    ok "ingestion ran during the refresh ($during rows written while it ran, $added new rows in all)"
else
    bad "no ingestion during the refresh ($during rows written while it ran, $added new rows)"
fi
if grep -qE 'aborted|error' "$tmp/pgbench.out"; then bad "pgbench: $(grep -E 'aborted|error' "$tmp/pgbench.out" | head -3)"; fi
check "provider counts equal a recount after the ingestion" "$(val 0 -c "$recount_sql")" "$(val 0 -c "$counted_sql")"

# --- A distributed partitioned table: each worker walks the shards of every partition ------------
on 0 >/dev/null <<'SQL'
CREATE TABLE image_parted (
    identifier uuid NOT NULL,
    created_on timestamptz NOT NULL,
    updated_on timestamptz NOT NULL DEFAULT now(),
    provider text NOT NULL,
    meta_data jsonb,
    tags jsonb,
    PRIMARY KEY (identifier, created_on)
) PARTITION BY RANGE (created_on);
CREATE TABLE image_parted_2024 PARTITION OF image_parted FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE image_parted_2025 PARTITION OF image_parted FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
SELECT create_distributed_table('image_parted', 'identifier');
SELECT popularity.register_media_type('parted', 'image_parted', default_metrics => false);
SELECT popularity.set_metric('parted', 'flickr', 'views');
SELECT popularity.set_metric('parted', 'wikimedia', 'global_usage_count');
INSERT INTO image_parted (identifier, created_on, provider, meta_data, tags)
SELECT md5('p' || g)::uuid, '2024-06-01'::timestamptz + (g % 500) * interval '1 day', provider_of(g),
       metric_data(provider_of(g), floor(exp(random() * 9))::bigint), '[]'
FROM generate_series(1, 20000) AS g;
SQL
parted_stale_sql="SELECT count(*) FROM image_parted AS i JOIN popularity.metrics AS m ON m.media_type = 'parted' AND m.provider = i.provider
                  WHERE i.standardized_popularity IS DISTINCT FROM standardized_popularity(popularity_metric_value(i.meta_data, m.metric), m.constant)"
on 0 -c "CALL refresh_popularity('parted')" >/dev/null 2>&1 || bad "refresh_popularity('parted') failed"
check "distributed partitioned table: constants equal percentile_disc over every shard of every partition" \
    "$(val 0 -c "SELECT string_agg(format('%s %s', x.provider, popularity_constant(x.pv, 0.85)), ', ' ORDER BY x.provider) FROM (
                 SELECT m.provider, percentile_disc(0.85) WITHIN GROUP (ORDER BY popularity_metric_value(i.meta_data, m.metric)) AS pv
                 FROM image_parted AS i JOIN popularity.metrics AS m ON m.provider = i.provider AND m.media_type = 'parted'
                 GROUP BY m.provider) AS x")" \
    "$(val 0 -c "SELECT string_agg(format('%s %s', provider, constant), ', ' ORDER BY provider) FROM popularity.metrics WHERE media_type = 'parted'")"
check "distributed partitioned table: no row stale after refresh_popularity" "0" "$(val 0 -c "$parted_stale_sql")"
for ((i = 1; i < NODES; i++)); do
    check "worker $i walked the shards of both partitions" \
        "$(val "$i" -c "SELECT count(*) FROM popularity._citus_local_shards('image_parted')")" \
        "$(val "$i" -c "SELECT count(DISTINCT t.leaf) FROM popularity.refresh_tasks AS t JOIN popularity.refresh_runs AS r USING (run_id)
                        WHERE r.media_type = 'parted' AND r.state = 'succeeded'")"
done
check "distributed partitioned table: provider counts equal a recount" \
    "$(val 0 -c "SELECT string_agg(format('%s %s %s', provider, n, s), ', ' ORDER BY provider) FROM (
                 SELECT provider, count(*) AS n, count(standardized_popularity) AS s FROM image_parted GROUP BY 1) AS x")" \
    "$(val 0 -c "SELECT string_agg(format('%s %s %s', provider, rows, rows_scored), ', ' ORDER BY provider)
                 FROM popularity.citus_provider_stats('parted')")"

on 0 -c "SELECT popularity.unregister_media_type('parted')" >/dev/null
for ((i = 1; i < NODES; i++)); do
    check "worker $i: unregistering on the coordinator removes the media type and the shards' triggers" "0 0" \
        "$(val "$i" -F' ' -c "SELECT (SELECT count(*) FROM popularity.media_types WHERE media_type = 'parted'),
                                    (SELECT count(*) FROM pg_trigger AS t JOIN popularity._citus_local_shards('image_parted') AS s(shard)
                                     ON t.tgrelid = s.shard WHERE t.tgname LIKE 'zz_popularity%')")"
done

# TRUNCATE through the coordinator: no trigger fires on the shards (Citus creates none for TRUNCATE
# there); the coordinator's mark says the counts wait for reconcile_stats, which mends them.
on 0 -c "TRUNCATE image"
check "after a TRUNCATE the counts say they wait for reconcile_stats" "t" \
    "$(val 0 -c "SELECT bool_and(reconcile_pending) FROM popularity.citus_provider_stats('image')")"
on 0 -c "CALL popularity.reconcile_stats('image')" >/dev/null
check "reconcile_stats from the coordinator zeroes every worker's counts" "0 f" \
    "$(val 0 -F' ' -c "SELECT count(*), coalesce(bool_or(reconcile_pending), false) FROM popularity.citus_provider_stats('image')")"

echo "run time: $((SECONDS - started_at)) s"
if [ "$failures" -gt 0 ]; then
    echo "$failures check(s) failed"
    exit 1
fi
echo "all checks passed"
