#!/usr/bin/env bash
# Both jobs converge under continuous ingestion (issue 13, item 2). On a server of its own, pgbench
# clients upsert into an Openverse-shaped `image` table (INSERT ... ON CONFLICT (identifier) DO
# UPDATE: new rows, and existing rows whose meta_data grows, so that their new versions do not fit
# in their page and move, many of them into free space at the start of the table, i.e. into blocks
# a job has already walked) while a job runs:
#   refresh: every provider's percentile changed, then CALL refresh_popularity('image');
#   filter:  a catalog whose tags the rules mostly drop, then CALL filter_tags('image'), with
#            upserts that change only meta_data of existing rows, and new rows.
# When the CALL returns, ingestion stops and the script checks, each check reported on its own:
#   - the job's invariant holds on every row: score = the definition under the current constants
#     (refresh), tags = popularity.filtered_tags(tags) (filter); the number of rows violating it is
#     printed on failure;
#   - no ingested row is lost: every upsert logs, in its own transaction, the key and the values it
#     stored (ingest_log); every logged key exists with the values of its last log entry (as the
#     job leaves them), and the table holds exactly the catalog plus the new keys logged;
#   - the provider counts kept by the counts triggers (popularity.provider_stats) equal a recount;
#   - every pgbench client ran without error.
# Upsert latency (p50, p99, max) without a job, during the refresh and during the filter run is
# printed as information, never asserted (test/bench/bench-ingest-during-job measures it alone).
#
# The filter case runs twice, once per way the rows reach the table:
#   filter (ingestion filtering off): ingesters write clean tags themselves (new rows carry
#     popularity.filtered_tags of their tags), so every violation left is a pre-existing row the
#     run missed: the defect the issue reports (updated rows move to blocks the walk has passed);
#   filter (ingestion filtering on): filter_tags_at_ingestion is on, so the ingestion trigger
#     filters every row version an upsert writes, new rows with dirty tags included.
#
# The catalog, the pgbench scripts and the latency figures come from test/lib/ingest.sh. On the
# code of issue 13's start, the refresh and "filter (ingestion filtering on)" pass and "filter
# (ingestion filtering off)" fails: some hundreds of rows moved by upserts while the run walked are
# left unfiltered (in blocks it had passed, or added after it started), in every try.
#
# Environment (optional): CONVERGE_ROWS (catalog rows, default 120000), CONVERGE_CLIENTS (pgbench
# clients, default 3), CONVERGE_KEEP=1 (keep the temporary directory: pgbench logs and outputs).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../lib/cluster.sh
source test/lib/cluster.sh
# shellcheck source=../lib/ingest.sh
source test/lib/ingest.sh

ROWS=${CONVERGE_ROWS:-120000}
INGEST_CLIENTS=${CONVERGE_CLIENTS:-3}
[[ "$ROWS" =~ ^[1-9][0-9]{3,8}$ ]] || { echo "CONVERGE_ROWS must be an integer >= 1000" >&2; exit 2; }
[[ "$INGEST_CLIENTS" =~ ^[1-9][0-9]?$ ]] || { echo "CONVERGE_CLIENTS must be a positive integer" >&2; exit 2; }
[ -x "$INGEST_PGBENCH" ] || { echo "FAILED: no pgbench at $INGEST_PGBENCH" >&2; exit 1; }

tmp=$(mktemp -d /tmp/popularity-converge.XXXXXX)
chmod 755 "$tmp"
cleanup() {
    ingest_stop
    cluster_destroy
    if [ "${CONVERGE_KEEP:-0}" = 1 ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
started_at=$SECONDS

# autovacuum off: the free space the ingestion finds is the one this script makes.
cluster_start "autovacuum = off" "max_connections = 50" "popularity.database = 'postgres'"
psql -X -q -c "ALTER SYSTEM SET popularity.progress_interval = 0" -c "SELECT pg_reload_conf()" >/dev/null

passed=0
failed=0
check() { # label count [what [detail]]: one check, passed when count = 0
    if [ "$2" = 0 ]; then
        passed=$((passed + 1))
        echo "ok: $1"
    else
        failed=$((failed + 1))
        echo "FAILED: $1: $2 ${3:-violating rows}${4:+ ($4)}"
    fi
}
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" -c "$1"; }
now() { date +%s.%N; }

# The catalog: one database per case, copies of one catalog.
DB=converge_refresh
ingest_catalog "$DB" "$ROWS"
catalog_rows=$INGEST_CATALOG_ROWS
echo "catalog: $catalog_rows rows in $(q "SELECT pg_relation_size('image') / 8192") blocks," \
    "$(q "SELECT count(*) FROM image WHERE tags IS DISTINCT FROM popularity.filtered_tags(tags, provider, 'image')") of them with tags the rules drop;" \
    "set up in $((SECONDS - started_at)) s"
psql -X -q -c "CREATE DATABASE converge_filter_off TEMPLATE $DB" -c "CREATE DATABASE converge_filter_on TEMPLATE $DB"
ingest_scripts "$tmp"

# The pgbench clients ran without error: every slice exited 0.
check_ingestion() { # id [label]
    local bad
    bad=$(ingest_failed_slices "$1")
    check "${2:-$1}: every pgbench client ran without error ($(wc -l <"$tmp/$1.status") slices)" "$bad" \
        "pgbench runs failed" "$(grep -m 3 -iE 'error|abort' "$tmp/$1.pgbench" | tr '\n' ' ')"
}

# No ingested row lost: each logged key exists with the values of its last log entry (tags: as
# logged, or (filter) as the rules leave them), and the table holds the catalog plus the new keys.
check_nothing_lost() { # label [filter]
    local lost count
    lost=$(q "WITH last AS (SELECT DISTINCT ON (identifier) * FROM ingest_log ORDER BY identifier, log_id DESC)
              SELECT count(*) FROM last AS l LEFT JOIN image AS t USING (identifier)
              WHERE t.identifier IS NULL OR t.meta_data IS DISTINCT FROM l.meta_data
                 OR NOT (t.tags IS NOT DISTINCT FROM l.tags
                         OR ('${2:-}' = 'filter' AND t.tags IS NOT DISTINCT FROM popularity.filtered_tags(l.tags, t.provider, 'image')))")
    check "$1: every upsert logged is in the table with its last values ($(q "SELECT count(*) FROM ingest_log") upserts logged)" "$lost"
    count=$(q "SELECT count(*) - $catalog_rows - (SELECT count(DISTINCT identifier) FROM ingest_log WHERE kind = 'new') FROM image")
    check "$1: the table holds the catalog plus the new keys logged, no more, no less" "${count#-}" \
        "rows too many or missing" "rows - expected = $count"
}

# The counts kept by the counts triggers equal a recount (and nothing asks for reconcile_stats).
check_counts() { # label
    local diff
    diff=$(q "WITH truth AS (
                  SELECT t.provider::text AS provider, count(*) AS rows,
                         count(*) FILTER (WHERE popularity._metric_status(t.meta_data, m.metric) = 'ok') AS rows_with_metric,
                         count(*) FILTER (WHERE t.standardized_popularity IS NOT NULL) AS rows_scored,
                         count(*) FILTER (WHERE popularity._metric_status(t.meta_data, m.metric) = 'invalid') AS rows_invalid_metric
                  FROM image AS t LEFT JOIN popularity.metrics AS m ON m.media_type = 'image' AND m.provider = t.provider::text
                  GROUP BY 1),
              counted AS (SELECT * FROM popularity.provider_stats WHERE media_type = 'image')
              SELECT count(*) + (SELECT count(*) FROM counted WHERE reconcile_pending)
              FROM truth AS t FULL JOIN counted AS c USING (provider)
              WHERE (t.rows, t.rows_with_metric, t.rows_scored, t.rows_invalid_metric)
                    IS DISTINCT FROM (c.rows, c.rows_with_metric, c.rows_scored, c.rows_invalid_metric)")
    check "$1: the provider counts (popularity.provider_stats) equal a recount" "$diff" "providers whose counts differ"
    [ "$diff" = 0 ] || psql -X -d "$DB" -c "SELECT * FROM popularity.provider_stats WHERE media_type = 'image' ORDER BY provider"
}

# Not vacuous: upserts committed while the CALL ran.
check_ingested_during() { # label
    local n
    n=$(q "SELECT count(*) FROM ingest_log WHERE logged_at BETWEEN to_timestamp($job_from) AND to_timestamp($job_to)")
    check "$1: upserts committed while the CALL ran ($n)" "$([ "$n" -gt 0 ] && echo 0 || echo 1)" "(none)"
}

wrong_scores() {
    q "SELECT count(*) FROM image AS t JOIN popularity.metrics AS m ON m.media_type = 'image' AND m.provider = t.provider::text
       WHERE t.standardized_popularity IS DISTINCT FROM
             standardized_popularity(popularity_metric_value(t.meta_data, m.metric), m.constant)"
}
unfiltered() {
    q "SELECT count(*) FROM image WHERE tags IS DISTINCT FROM popularity.filtered_tags(tags, provider, 'image')"
}

# Baseline: ingestion without a job -------------------------------------------------------------

echo "baseline: $INGEST_CLIENTS pgbench clients upserting for 4 s without a job"
[ "$(wrong_scores)" = 0 ] || { echo "FAILED: setup: the catalog's scores are not right" >&2; exit 1; }
ingest_start baseline "$DB" existing_refresh.sql new_dirty.sql
sleep 4
ingest_stop
ingest_latency baseline "latency, no job"
check_ingestion baseline

# Refresh ----------------------------------------------------------------------------------------

echo
echo "refresh: every provider's percentile changes, then CALL refresh_popularity('image') while $INGEST_CLIENTS pgbench clients upsert"
q "SELECT popularity.set_metric('image', provider, metric, 0.8) FROM popularity.metrics WHERE media_type = 'image'" >/dev/null
q "CREATE TABLE constants_before AS SELECT provider, constant FROM popularity.metrics WHERE media_type = 'image'"
ingest_start refresh "$DB" existing_refresh.sql new_dirty.sql
sleep 1
job_from=$(now)
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" -c "CALL refresh_popularity('image')" >"$tmp/refresh.out" 2>&1 ||
    { cat "$tmp/refresh.out"; echo "FAILED: CALL refresh_popularity failed" >&2; exit 1; }
job_to=$(now)
ingest_stop
run=$(q "SELECT max(run_id) FROM popularity.refresh_runs")
echo "  refresh run $run: $(q "SELECT state || ': ' || sum(rows_scanned) || ' rows scanned, ' || sum(rows_updated) || ' updated, '
                                || sum(rows_skipped_locked) || ' skipped locked' FROM popularity.refresh_status WHERE run_id = $run GROUP BY state" 2>/dev/null || true)," \
    "$(awk -v a="$job_from" -v b="$job_to" 'BEGIN { printf "%.1f", b - a }') s"
ingest_latency refresh "latency during the refresh" "$job_from" "$job_to"
# Not vacuous: every provider's constant changed, so every row with a metric was stale when the run began.
check "refresh: the CALL changed every provider's constant (the run had every scored row to rewrite)" \
    "$(q "SELECT count(*) FROM popularity.metrics AS m JOIN constants_before AS b USING (provider)
          WHERE m.media_type = 'image' AND m.constant IS NOT DISTINCT FROM b.constant")" \
    "providers whose constant did not change"
check_ingested_during refresh
check "refresh: every row of a configured provider is scored under its current constant" "$(wrong_scores)"
check "refresh: freshness(exact => true) finds no stale row" \
    "$(q "SELECT coalesce(sum(rows_stale), 0) FROM popularity.freshness('image', exact => true)")"
check_nothing_lost refresh
check_counts refresh
check_ingestion refresh

# Filter ----------------------------------------------------------------------------------------

filter_case() { # id label db ingestion(true|false) new.sql
    local id=$1 label=$2
    DB=$3
    echo
    echo "$label: CALL filter_tags('image') while $INGEST_CLIENTS pgbench clients upsert (existing rows: meta_data only)"
    q "UPDATE popularity.media_types SET filter_tags_at_ingestion = $4 WHERE media_type = 'image'"
    dirty=$(unfiltered)
    echo "  rows with tags the rules drop: $dirty"
    [ "$dirty" -gt 0 ] || { echo "FAILED: setup: no tag to filter" >&2; exit 1; }
    ingest_start "$id" "$DB" existing_filter.sql "$5"
    sleep 1
    blocks=$(q "SELECT pg_relation_size('image') / current_setting('block_size')::int")
    job_from=$(now)
    psql -X -q -v ON_ERROR_STOP=1 -d "$DB" -c "CALL filter_tags('image')" >"$tmp/$id.out" 2>&1 ||
        { cat "$tmp/$id.out"; echo "FAILED: CALL filter_tags failed" >&2; exit 1; }
    job_to=$(now)
    ingest_stop
    sed -n 's/^.*NOTICE:  /  /p' "$tmp/$id.out"
    echo "  $(awk -v a="$job_from" -v b="$job_to" 'BEGIN { printf "%.1f", b - a }') s"
    ingest_latency "$id" "latency during the filter run" "$job_from" "$job_to"
    check_ingested_during "$label"
    # On failure, where the rows the run missed are: upserted while it ran (moved), beyond the
    # blocks the table had when it started, new rows.
    check "$label: every row's tags are what the rules keep" "$(unfiltered)" "violating rows" \
        "$(q "SELECT count(*) FILTER (WHERE EXISTS (SELECT FROM ingest_log AS l WHERE l.identifier = t.identifier
                                                     AND l.logged_at >= to_timestamp($job_from))) || ' upserted since the CALL started, '
                     || count(*) FILTER (WHERE (ctid::text::point)[0] >= $blocks) || ' in blocks added after it started, '
                     || count(*) FILTER (WHERE foreign_identifier LIKE 'n%') || ' new rows'
              FROM image AS t WHERE tags IS DISTINCT FROM popularity.filtered_tags(tags, provider, 'image')")"
    check_nothing_lost "$label" filter
    check_counts "$label"
    check_ingestion "$id" "$label"
}
filter_case filter_off "filter (ingestion filtering off)" converge_filter_off false new_clean.sql
filter_case filter_on "filter (ingestion filtering on)" converge_filter_on true new_dirty.sql

echo
echo "$passed passed, $failed failed ($((SECONDS - started_at)) s)"
[ "$failed" -eq 0 ]
