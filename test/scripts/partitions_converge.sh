#!/usr/bin/env bash
# Both jobs converge on a partitioned catalog under continuous ingestion, while partitions come and
# go (issue 14, item 1). On a server of its own, an Openverse-shaped `image` table partitioned by
# RANGE on created_on (primary key (identifier, created_on), one partition a month made by
# pg_partman, a default partition; test/lib/partitions.sh) is registered as the media type (the
# parent), and pgbench clients upsert into it (INSERT ... ON CONFLICT (identifier, created_on) DO
# UPDATE: new rows in every month, future months included, and existing rows whose meta_data grows,
# so that their new versions move) while a job runs:
#   refresh: every provider's percentile changed, then CALL refresh_popularity('image');
#   filter:  a catalog whose tags the rules mostly drop, then CALL filter_tags('image') (upserts
#            change only meta_data of existing rows; new rows carry clean tags).
# While the run is running (once it has done some blocks), the script, in this order:
#   - raises pg_partman's premake by 3 and runs partman.run_maintenance: three new monthly
#     partitions, which the new rows then reach;
#   - ATTACHes a pre-filled table as the month before the oldest one: rows with a wrong score
#     (0.5) and tags the rules drop, which only the run can put right;
#   - DETACHes one month's partition, and DROPs another one (whose catalog rows the upserts leave
#     alone: after the detach an upsert of one of them would insert it anew, in the default
#     partition); the dropped partition's rows are copied first, in the same transaction, under
#     the DROP's locks.
# When the CALL returns, ingestion stops and the script checks, each check on its own line:
#   - the run succeeded, and the four changes all committed while it was running;
#   - the job's invariant holds on every row of every partition: score = the definition under the
#     current constants (refresh), tags = popularity.filtered_tags(tags) (filter); the violations
#     per partition are printed on failure;
#   - no ingested row is lost: every logged upsert is in the table with its last values, the table
#     holds the catalog plus the new keys plus the attached rows minus the detached and dropped
#     ones, and the detached table still holds every row it had;
#   - the provider counts (popularity.provider_stats) equal a recount of the tree, ATTACH, DETACH
#     and DROP aside (tree + detached and dropped rows - attached rows as attached: the triggers
#     counted every upsert and every rewrite of the run, in every leaf); the changes, which no
#     trigger sees, marked the counts for reconcile_stats; after it, they equal a recount;
#   - every pgbench client ran without error;
#   - (refresh) refresh_constants, once ingestion has stopped, gives every provider the constant
#     of percentile_disc over the whole tree.
# Environment (optional): PARTITIONS_ROWS (catalog rows, default 100000), PARTITIONS_CLIENTS
# (pgbench clients, default 3), PARTITIONS_KEEP=1 (keep the temporary directory).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../lib/cluster.sh
source test/lib/cluster.sh
# shellcheck source=../lib/ingest.sh
source test/lib/ingest.sh
# shellcheck source=../lib/partitions.sh
source test/lib/partitions.sh

ROWS=${PARTITIONS_ROWS:-100000}
INGEST_CLIENTS=${PARTITIONS_CLIENTS:-3}
[[ "$ROWS" =~ ^[1-9][0-9]{3,8}$ ]] || { echo "PARTITIONS_ROWS must be an integer >= 1000" >&2; exit 2; }
[[ "$INGEST_CLIENTS" =~ ^[1-9][0-9]?$ ]] || { echo "PARTITIONS_CLIENTS must be a positive integer" >&2; exit 2; }
[ -x "$INGEST_PGBENCH" ] || { echo "FAILED: no pgbench at $INGEST_PGBENCH" >&2; exit 1; }
partman_ensure || { echo "FAILED: pg_partman is not available" >&2; exit 1; }

# The month whose partition is detached (an offset from the catalog's newest month), and the
# attached table's month: the one before the oldest catalog month.
DETACH_MONTH=-6
DROP_MONTH=-9
ATTACH_MONTH=$((-INGEST_MONTHS))
ATTACH_ROWS=$((ROWS / 50))
# shellcheck disable=SC2034 # read by ingest_start (test/lib/ingest.sh)
INGEST_SKIP_RESIDUES="$((DETACH_MONTH + INGEST_MONTHS - 1)) $((DROP_MONTH + INGEST_MONTHS - 1))"

detached= # set by change_partitions: the partition it detached, and its rows
detached_rows=0
tmp=$(mktemp -d /tmp/popularity-partitions.XXXXXX)
chmod 755 "$tmp"
call_pid=
cleanup() {
    ingest_stop
    [ -z "$call_pid" ] || kill "$call_pid" 2>/dev/null || true
    cluster_destroy
    if [ "${PARTITIONS_KEEP:-0}" = 1 ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
started_at=$SECONDS

# autovacuum off: the free space the ingestion finds is the one the catalog makes. Small batches
# and one worker: the run lasts long enough for the partition changes to happen while it runs.
cluster_start "autovacuum = off" "max_connections = 50" "popularity.database = 'postgres'" \
    "popularity.max_workers = 1" "popularity.batch_blocks = 32"
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

DB=partitions_refresh
partitions_catalog "$DB" "$ROWS"
catalog_rows=$INGEST_CATALOG_ROWS
q "UPDATE ingest_months SET skip = ARRAY[$DETACH_MONTH, $DROP_MONTH]"
# The table to attach: rows of the month before the oldest, scores wrong (0.5, where the provider
# has a metric; NULL, right, where it has none), tags the rules drop; and a copy of it.
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" -v rows="$ATTACH_ROWS" -v month="$ATTACH_MONTH" <<'SQL'
CREATE TABLE image_attached (LIKE image INCLUDING DEFAULTS);
INSERT INTO image_attached (identifier, created_on, provider, foreign_identifier, url, title, meta_data, tags,
                            standardized_popularity)
SELECT md5('a' || g)::uuid, month_start(:month) + (g * 7919 % 2419200) * interval '1 second', provider_of(g),
       'a' || g, 'https://cdn.example.org/attached/' || g, 'Attached photograph ' || g,
       metric_data(provider_of(g), g % 5000), make_tags(g, provider_of(g)),
       CASE WHEN provider_of(g) IN (SELECT provider FROM popularity.metrics WHERE media_type = 'image') THEN 0.5 END
FROM generate_series(1, :rows) AS g;
ALTER TABLE image_attached ADD PRIMARY KEY (identifier, created_on);
CREATE TABLE image_attached_as_attached AS SELECT * FROM image_attached;
VACUUM (ANALYZE) image_attached;
SQL
echo "catalog: $catalog_rows rows in $(partitions_leaves "$DB" | wc -l) leaf partitions (pg_partman $(q "SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'")," \
    "$(q "SELECT count(*) FROM image_default") rows in the default partition)," \
    "$(q "SELECT count(*) FROM image WHERE tags IS DISTINCT FROM popularity.filtered_tags(tags, provider, 'image')") of them with tags the rules drop;" \
    "$ATTACH_ROWS rows to attach; set up in $((SECONDS - started_at)) s"
psql -X -q -c "CREATE DATABASE partitions_filter TEMPLATE $DB"
ingest_scripts "$tmp"

check_ingestion() { # id label
    local bad
    bad=$(ingest_failed_slices "$1")
    check "$2: every pgbench client ran without error ($(wc -l <"$tmp/$1.status") slices)" "$bad" \
        "pgbench runs failed" "$(grep -m 3 -iE 'error|abort' "$tmp/$1.pgbench" | tr '\n' ' ')"
}

wrong_scores_by_leaf() {
    q "SELECT coalesce(string_agg(leaf || ': ' || n, ', ' ORDER BY leaf), '') FROM (
           SELECT t.tableoid::regclass::text AS leaf, count(*) AS n
           FROM image AS t JOIN popularity.metrics AS m ON m.media_type = 'image' AND m.provider = t.provider::text
           WHERE t.standardized_popularity IS DISTINCT FROM
                 standardized_popularity(popularity_metric_value(t.meta_data, m.metric), m.constant)
           GROUP BY 1) AS s"
}
wrong_scores() {
    q "SELECT count(*) FROM image AS t JOIN popularity.metrics AS m ON m.media_type = 'image' AND m.provider = t.provider::text
       WHERE t.standardized_popularity IS DISTINCT FROM
             standardized_popularity(popularity_metric_value(t.meta_data, m.metric), m.constant)"
}
unfiltered() {
    q "SELECT count(*) FROM image WHERE tags IS DISTINCT FROM popularity.filtered_tags(tags, provider, 'image')"
}
unfiltered_by_leaf() {
    q "SELECT coalesce(string_agg(leaf || ': ' || n, ', ' ORDER BY leaf), '') FROM (
           SELECT tableoid::regclass::text AS leaf, count(*) AS n FROM image
           WHERE tags IS DISTINCT FROM popularity.filtered_tags(tags, provider, 'image') GROUP BY 1) AS s"
}

# The run of the CALL started in the background: waits until it is running and has done some
# blocks, then changes the partitions; each change is recorded with the run's state after it.
run_state() { q "SELECT state FROM popularity.refresh_runs WHERE run_id = $run"; }
change_partitions() { # label
    local deadline=$((SECONDS + 60)) state detach_part drop_part
    run=
    while [ -z "$run" ]; do
        run=$(q "SELECT min(run_id) FROM popularity.refresh_runs WHERE run_id > $last_run")
        if [ $SECONDS -ge $deadline ] || ! kill -0 "$call_pid" 2>/dev/null; then break; fi
        [ -n "$run" ] || sleep 0.1
    done
    [ -n "$run" ] || { run=0; echo "  no run was queued" >&2; return 0; }
    while [ $SECONDS -lt $deadline ]; do
        state=$(q "SELECT r.state || ' ' || coalesce((SELECT max(blocks_done) FROM popularity.refresh_status AS s WHERE s.run_id = r.run_id), 0)
                   FROM popularity.refresh_runs AS r WHERE r.run_id = $run")
        case "$state" in
        running\ 0) ;;
        running\ *) break ;;
        queued\ *) ;;
        *) break ;;
        esac
        sleep 0.05
    done
    echo "  run $run: $state blocks done when the partitions change"
    # pg_partman makes three more months ahead; new rows then go there too.
    local parts_before
    parts_before=$(partitions_leaves "$DB" | wc -l)
    q "UPDATE partman.part_config SET premake = premake + 3 WHERE parent_table = 'public.image';
       SELECT partman.run_maintenance('public.image');" >/dev/null
    q "UPDATE ingest_months SET hi = hi + 3"
    echo "maintenance $(run_state) $(($(partitions_leaves "$DB" | wc -l) - parts_before))" >>"$tmp/$1.changes"
    q "SELECT format('ALTER TABLE image ATTACH PARTITION image_attached FOR VALUES FROM (%L) TO (%L)',
                     month_start($ATTACH_MONTH), month_start($ATTACH_MONTH + 1))" | psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null
    echo "attach $(run_state)" >>"$tmp/$1.changes"
    detach_part=$(q "SELECT tableoid::regclass FROM image WHERE created_on >= month_start($DETACH_MONTH)
                     AND created_on < month_start($DETACH_MONTH + 1) LIMIT 1")
    detached_rows=$(q "SELECT count(*) FROM $detach_part")
    q "ALTER TABLE image DETACH PARTITION $detach_part"
    echo "detach $(run_state) $detach_part" >>"$tmp/$1.changes"
    detached=$detach_part
    drop_part=$(q "SELECT tableoid::regclass FROM image WHERE created_on >= month_start($DROP_MONTH)
                   AND created_on < month_start($DROP_MONTH + 1) LIMIT 1")
    # Locked first (as DROP locks: the parent, then the partition), so that the copy holds what
    # the run and the counts saw last (a batch committing between the copy and the DROP would not).
    q "BEGIN; LOCK TABLE ONLY image, $drop_part IN ACCESS EXCLUSIVE MODE;
       CREATE TABLE image_dropped_rows AS SELECT * FROM $drop_part; DROP TABLE $drop_part; COMMIT;"
    dropped_rows=$(q "SELECT count(*) FROM image_dropped_rows")
    echo "drop $(run_state) $drop_part" >>"$tmp/$1.changes"
}

# One case: the job's CALL in the background while pgbench upserts and the partitions change.
run_case() { # id label call existing.sql new.sql
    local id=$1 label=$2 changes n
    detached=
    detached_rows=0
    dropped_rows=0
    last_run=$(q "SELECT coalesce(max(run_id), 0) FROM popularity.refresh_runs")
    : >"$tmp/$id.changes"
    ingest_start "$id" "$DB" "$4" "$5"
    sleep 1
    job_from=$(now)
    psql -X -q -v ON_ERROR_STOP=1 -d "$DB" -c "$3" >"$tmp/$id.out" 2>&1 &
    call_pid=$!
    change_partitions "$id"
    call_rc=0
    wait "$call_pid" || call_rc=$?
    call_pid=
    job_to=$(now)
    ingest_stop
    sed -n 's/^.*NOTICE:  /  /p' "$tmp/$id.out"
    echo "  $label run $run: $(q "SELECT state FROM popularity.refresh_runs WHERE run_id = $run")," \
        "$(awk -v a="$job_from" -v b="$job_to" 'BEGIN { printf "%.1f", b - a }') s;" \
        "partition changes (what, run state after it): $(tr '\n' ';' <"$tmp/$id.changes")"
    ingest_latency "$id" "latency during the $label" "$job_from" "$job_to"
    check "$label: the CALL returned without error" "$call_rc" "exit status" "$(grep -m 2 ERROR "$tmp/$id.out" | tr '\n' ' ')"
    check "$label: the run succeeded" "$([ "$(q "SELECT state FROM popularity.refresh_runs WHERE run_id = $run")" = succeeded ] && echo 0 || echo 1)" \
        "(not succeeded)" "$(q "SELECT state || ': ' || coalesce(error, '') FROM popularity.refresh_runs WHERE run_id = $run")"
    changes=$(awk '$2 != "running"' "$tmp/$id.changes" | wc -l)
    [ "$(wc -l <"$tmp/$id.changes")" = 4 ] || changes=$((changes + 4 - $(wc -l <"$tmp/$id.changes")))
    check "$label: run_maintenance, ATTACH, DETACH and DROP all committed while the run was running" "$changes" "changes not while running"
    check "$label: run_maintenance made 3 partitions" "$(awk '$1 == "maintenance" { print ($3 == 3) ? 0 : 1 }' "$tmp/$id.changes")" \
        "(other than 3)" "$(grep maintenance "$tmp/$id.changes")"
    n=$(q "SELECT count(*) FROM ingest_log WHERE logged_at BETWEEN to_timestamp($job_from) AND to_timestamp($job_to)")
    check "$label: upserts committed while the CALL ran ($n)" "$([ "$n" -gt 0 ] && echo 0 || echo 1)" "(none)"
    echo "  new rows in the partitions run_maintenance made: $(q "SELECT count(*) FROM image WHERE created_on >= month_start($PARTITIONS_PREMAKE + 1)")"
}

# The providers whose counts (popularity.provider_stats) differ from a recount of ROWS (provider,
# meta_data, standardized_popularity, weight w); with PENDING = true, a provider marked for
# reconcile_stats counts as a difference.
counts_diff() { # rows pending [show]
    q "WITH truth AS (
           SELECT t.provider::text AS provider, sum(t.w) AS rows,
                  coalesce(sum(t.w) FILTER (WHERE popularity._metric_status(t.meta_data, m.metric) = 'ok'), 0) AS rows_with_metric,
                  coalesce(sum(t.w) FILTER (WHERE t.standardized_popularity IS NOT NULL), 0) AS rows_scored,
                  coalesce(sum(t.w) FILTER (WHERE popularity._metric_status(t.meta_data, m.metric) = 'invalid'), 0) AS rows_invalid_metric
           FROM ($1) AS t LEFT JOIN popularity.metrics AS m ON m.media_type = 'image' AND m.provider = t.provider::text
           GROUP BY 1),
       counted AS (SELECT * FROM popularity.provider_stats WHERE media_type = 'image')
       SELECT ${3:-count(*)} FROM truth AS t FULL JOIN counted AS c USING (provider)
       WHERE (coalesce(t.rows, 0), coalesce(t.rows_with_metric, 0), coalesce(t.rows_scored, 0), coalesce(t.rows_invalid_metric, 0))
             IS DISTINCT FROM (coalesce(c.rows, 0), coalesce(c.rows_with_metric, 0), coalesce(c.rows_scored, 0), coalesce(c.rows_invalid_metric, 0))
          OR ($2 AND c.reconcile_pending)"
}

# No ingested row lost, the counts, the clients.
check_common() { # id label [filter]
    local id=$1 label=$2 lost count diff marks detached_or_none=${detached:-image_attached_as_attached WHERE false}
    local dropped_or_none='image_attached_as_attached WHERE false'
    [ "$dropped_rows" = 0 ] || dropped_or_none=image_dropped_rows
    lost=$(q "WITH last AS (SELECT DISTINCT ON (identifier) * FROM ingest_log ORDER BY identifier, log_id DESC)
              SELECT count(*) FROM last AS l LEFT JOIN image AS t USING (identifier)
              WHERE t.identifier IS NULL OR t.meta_data IS DISTINCT FROM l.meta_data
                 OR NOT (t.tags IS NOT DISTINCT FROM l.tags
                         OR ('${3:-}' = 'filter' AND t.tags IS NOT DISTINCT FROM popularity.filtered_tags(l.tags, t.provider, 'image')))")
    check "$label: every upsert logged is in the table with its last values ($(q "SELECT count(*) FROM ingest_log") upserts logged)" "$lost"
    count=$(q "SELECT count(*) - $catalog_rows - (SELECT count(DISTINCT identifier) FROM ingest_log WHERE kind = 'new')
                        - $ATTACH_ROWS + $detached_rows + $dropped_rows FROM image")
    check "$label: the tree holds the catalog plus the new keys plus the attached rows minus the detached and dropped ones" "${count#-}" \
        "rows too many or missing" "rows - expected = $count"
    if [ -n "$detached" ]; then
        count=$(q "SELECT count(*) - $detached_rows FROM $detached")
        check "$label: the detached partition $detached still holds its $detached_rows rows" "${count#-}" "rows too many or missing"
    else
        check "$label: the detached partition still holds its rows" 1 "(no partition was detached)"
    fi
    # ATTACH, DETACH and DROP move rows in and out of the tree without a row trigger: the counts cannot
    # see them and must ask for reconcile_stats (stats_marks). Everything else (ingestion, the
    # run's rewrites in every leaf) the triggers count: before any reconcile_stats, the counts
    # equal a recount of the tree plus the detached and dropped rows minus the attached ones (as
    # attached).
    diff=$(counts_diff "SELECT provider, meta_data, standardized_popularity, 1 AS w FROM image
                        UNION ALL SELECT provider, meta_data, standardized_popularity, 1 FROM $detached_or_none
                        UNION ALL SELECT provider, meta_data, standardized_popularity, 1 FROM $dropped_or_none
                        UNION ALL SELECT provider, meta_data, standardized_popularity, -1 FROM image_attached_as_attached" false)
    check "$label: the provider counts (popularity.provider_stats), before reconcile_stats, equal a recount of the tree, ATTACH, DETACH and DROP aside" \
        "$diff" "providers whose counts differ"
    [ "$diff" = 0 ] || counts_diff "SELECT provider, meta_data, standardized_popularity, 1 AS w FROM image
                        UNION ALL SELECT provider, meta_data, standardized_popularity, 1 FROM $detached_or_none
                        UNION ALL SELECT provider, meta_data, standardized_popularity, 1 FROM $dropped_or_none
                        UNION ALL SELECT provider, meta_data, standardized_popularity, -1 FROM image_attached_as_attached" false \
        "'  ' || provider || ': expected ' || concat_ws(' ', t.rows, t.rows_with_metric, t.rows_scored, t.rows_invalid_metric)
         || ', counted ' || concat_ws(' ', c.rows, c.rows_with_metric, c.rows_scored, c.rows_invalid_metric) || ' (rows, with metric, scored, invalid)'"
    marks=$(q "SELECT count(*) FROM popularity.stats_marks WHERE media_type = 'image'")
    check "$label: the partition changes marked the counts for reconcile_stats ($marks marks)" "$([ "$marks" -gt 0 ] && echo 0 || echo 1)" "(none)"
    psql -X -q -v ON_ERROR_STOP=1 -d "$DB" -c "SET client_min_messages = warning" -c "CALL popularity.reconcile_stats('image')" >/dev/null
    diff=$(counts_diff "SELECT provider, meta_data, standardized_popularity, 1 AS w FROM image" true)
    check "$label: after reconcile_stats, the provider counts equal a recount of the tree" "$diff" "providers whose counts differ"
    check_ingestion "$id" "$label"
}

# Refresh ----------------------------------------------------------------------------------------

echo
echo "refresh: every provider's percentile changes, then CALL refresh_popularity('image') while $INGEST_CLIENTS pgbench clients upsert"
[ "$(wrong_scores)" = 0 ] || { echo "FAILED: setup: the catalog's scores are not right" >&2; exit 1; }
q "SELECT popularity.set_metric('image', provider, metric, 0.8) FROM popularity.metrics WHERE media_type = 'image'" >/dev/null
q "CREATE TABLE constants_before AS SELECT provider, constant FROM popularity.metrics WHERE media_type = 'image'"
run_case refresh refresh "CALL refresh_popularity('image')" existing_refresh.sql new_dirty.sql
check "refresh: the CALL changed every provider's constant (the run had every scored row to rewrite)" \
    "$(q "SELECT count(*) FROM popularity.metrics AS m JOIN constants_before AS b USING (provider)
          WHERE m.media_type = 'image' AND m.constant IS NOT DISTINCT FROM b.constant")" \
    "providers whose constant did not change"
n=$(wrong_scores)
check "refresh: every row of every partition is scored under its provider's current constant" "$n" "violating rows" \
    "$([ "$n" = 0 ] || wrong_scores_by_leaf)"
check "refresh: the attached partition's rows were rescored" \
    "$(q "SELECT count(*) FROM image_attached WHERE standardized_popularity = 0.5")" "rows still scored 0.5"
check "refresh: freshness(exact => true) finds no stale row" \
    "$(q "SELECT coalesce(sum(rows_stale), 0) FROM popularity.freshness('image', exact => true)")"
check_common refresh refresh
# Constants over the whole tree: refresh_constants once ingestion has stopped, against
# percentile_disc over every leaf's rows (the detached partition is no longer part of it).
q "SELECT count(*) FROM popularity.refresh_constants('image')" >/dev/null
check "refresh: refresh_constants gives every provider the constant of percentile_disc over the whole tree" \
    "$(q "SELECT count(*) FROM popularity.metrics AS m
          CROSS JOIN LATERAL (SELECT percentile_disc(m.percentile) WITHIN GROUP (ORDER BY popularity_metric_value(t.meta_data, m.metric)) AS v
                              FROM image AS t WHERE t.provider = m.provider) AS p
          WHERE m.media_type = 'image' AND p.v IS NOT NULL
            AND m.constant IS DISTINCT FROM popularity_constant(p.v, m.percentile)")" \
    "providers whose constant differs" \
    "$(q "SELECT string_agg(provider || '=' || constant, ' ' ORDER BY provider) FROM popularity.metrics WHERE media_type = 'image'")"

# Filter -----------------------------------------------------------------------------------------

DB=partitions_filter
echo
echo "filter: CALL filter_tags('image') while $INGEST_CLIENTS pgbench clients upsert (existing rows: meta_data only; new rows with clean tags)"
echo "  rows with tags the rules drop: $(unfiltered)"
run_case filter filter "CALL filter_tags('image')" existing_filter.sql new_clean.sql
n=$(unfiltered)
check "filter: every row's tags in every partition are what the rules keep" "$n" "violating rows" \
    "$([ "$n" = 0 ] || unfiltered_by_leaf)"
check "filter: the attached partition's rows were filtered" \
    "$(q "SELECT count(*) FROM image_attached WHERE tags IS DISTINCT FROM popularity.filtered_tags(tags, provider, 'image')")"
check_common filter filter filter

echo
echo "$passed passed, $failed failed ($((SECONDS - started_at)) s)"
[ "$failed" -eq 0 ]
