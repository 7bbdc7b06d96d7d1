#!/usr/bin/env bash
# Interruption tests of the tag filter job (CALL filter_tags runs in the background workers'
# batch engine). Four identical copies of one table; the first is filtered without interruption
# (the reference), the others are interrupted mid-run:
#   1. kill: pg_terminate_backend on every worker mid-run (a second CALL meanwhile waits for the
#      same run instead of starting one; a dry run is refused while it is active);
#   2. restart: pg_ctl stop -m immediate mid-run, then start: the scheduler resumes the run (its
#      database is in popularity.database);
#   3. cancel: cancelling the waiting CALL cancels the run; what its committed batches did is exactly
#      what their progress says; CALL popularity.resume_refresh(run_id, wait => true) continues it
#      from its progress markers (it does not walk the finished blocks again) and finishes it.
# Each time the run succeeds and every row was filtered exactly once: tags equal the rules' result
# and the reference run's, rows updated = 6000 and the tags dropped per verdict equal the
# reference's (a batch applied twice or lost would change them), and the run recorded each row's
# removed tags once, which restore exactly the original tags.
# Uses the running server of test/run-all (PGHOST, PGPORT, PGUSER, CLUSTER_DIR) and restarts it;
# without CLUSTER_DIR it starts a throwaway server of its own (test/lib/cluster.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../lib/cluster.sh
source test/lib/cluster.sh

DB=popularity_tags_interrupt
ROWS=6000
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" -c "$1"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

# Polls an SQL condition (returns t/f) every 0.1 s for up to $2 seconds.
wait_for() {
    local sql=$1 seconds=$2
    for _ in $(seq 1 $((seconds * 10))); do
        [ "$(q "$sql" 2>/dev/null || true)" = t ] && return 0
        sleep 0.1
    done
    return 1
}

own_cluster=0
if [ -z "${CLUSTER_DIR:-}" ]; then
    cluster_start
    own_cluster=1
fi
log=$(mktemp)
databases=
cleanup() {
    rm -f "$log"
    if [ "$own_cluster" = 1 ]; then
        cluster_destroy
        return
    fi
    if [ -n "$databases" ]; then
        psql -X -q -d postgres -c "ALTER SYSTEM SET popularity.database = '$databases'" \
            -c "SELECT pg_reload_conf()" >/dev/null 2>&1 || true
    fi
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
psql -X -q -v ON_ERROR_STOP=1 -v rows="$ROWS" -d "$DB" >/dev/null <<'SQL'
CREATE EXTENSION popularity;
CREATE TABLE source (identifier uuid PRIMARY KEY, provider varchar(80), tags jsonb,
                     updated_on timestamptz NOT NULL DEFAULT now());
SELECT setseed(0.5);
-- Every row loses tags: an exact-denylisted name (every third row), a low or random accuracy, a
-- substring-denylisted name or (every seventh row) a malformed tag.
INSERT INTO source (identifier, provider, tags)
SELECT md5(i::text)::uuid, (ARRAY['flickr', 'wikimedia'])[1 + i % 2],
       jsonb_build_array(jsonb_build_object('name', 'tag ' || i),
                         CASE WHEN i % 3 = 0 THEN jsonb_build_object('name', 'CC0')
                              ELSE jsonb_build_object('name', 'kept ' || i) END,
                         jsonb_build_object('name', 'machine ' || i, 'provider', 'clarifai',
                                            'accuracy', round(random()::numeric, 2)),
                         CASE WHEN i % 7 = 0 THEN '"malformed"'::jsonb
                              ELSE jsonb_build_object('name', 'Uploaded:By=Instagram') END)
FROM generate_series(1, :rows) AS i;
-- Slows every rewrite of the interrupted copies down a little, so that a run lasts long enough to
-- be interrupted mid-way (the workers' UPDATE fires it).
CREATE FUNCTION slow_down() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN PERFORM pg_sleep(0.001); RETURN NEW; END $$;
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['image_ref', 'image_kill', 'image_crash', 'image_cancel'] LOOP
        EXECUTE format('CREATE TABLE %I (LIKE source INCLUDING ALL)', t);
        EXECUTE format('INSERT INTO %I SELECT * FROM source ORDER BY identifier', t);
        INSERT INTO popularity.media_types (media_type, media_table) VALUES (t, t::regclass);
        IF t <> 'image_ref' THEN
            EXECUTE format('CREATE TRIGGER slow_down BEFORE UPDATE ON %I FOR EACH ROW EXECUTE FUNCTION slow_down()', t);
        END IF;
    END LOOP;
END $$;
CREATE TABLE expected AS
SELECT identifier, popularity.filtered_tags(tags, provider, 'image_ref') AS tags FROM source;
-- The latest filter run of a media type.
CREATE FUNCTION run_of(media_type text) RETURNS bigint LANGUAGE sql AS $$
    SELECT max(r.run_id) FROM popularity.refresh_runs AS r
    WHERE r.job = 'filter_tags' AND r.media_type = run_of.media_type $$;
-- What a run did, as the reference run must have done it too: state, rows updated, tags dropped
-- per verdict.
CREATE FUNCTION outcome(run_id bigint) RETURNS text LANGUAGE sql AS $$
    SELECT format('%s, %s rows updated, dropped %s', s.state, s.rows_updated, s.counters)
    FROM popularity.refresh_status AS s WHERE s.run_id = outcome.run_id $$;
-- Rows of a copy whose tags differ from the rules' result, then from the reference run's.
CREATE FUNCTION wrong_rows(tbl text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_expected bigint;
    v_reference bigint;
BEGIN
    EXECUTE format('SELECT count(*) FROM expected e FULL JOIN %I t USING (identifier)
                    WHERE t.tags IS DISTINCT FROM e.tags', tbl) INTO v_expected;
    EXECUTE format('SELECT count(*) FROM image_ref r FULL JOIN %I t USING (identifier)
                    WHERE t.tags IS DISTINCT FROM r.tags', tbl) INTO v_reference;
    RETURN v_expected || ' ' || v_reference;
END $$;
-- The run's record of removed tags: records, distinct rows, and rows whose record does not put
-- the original tags back exactly (a row filtered twice, or recorded twice or partly, shows here).
CREATE FUNCTION record_check(tbl text, run_id bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_records bigint;
    v_rows bigint;
    v_bad bigint;
BEGIN
    SELECT count(*), count(DISTINCT d.row_key) INTO v_records, v_rows
    FROM popularity.tag_filter_removed_rows AS d WHERE d.run_id = record_check.run_id;
    EXECUTE format('SELECT count(*) FROM source s LEFT JOIN %I t USING (identifier)
                    LEFT JOIN popularity.tag_filter_removed_rows d ON d.run_id = $1 AND d.row_key = s.identifier::text
                    WHERE d.row_key IS NULL
                       OR popularity._restored_tags(t.tags, d.removed) IS DISTINCT FROM s.tags', tbl)
        INTO v_bad USING run_id;
    RETURN v_records || ' ' || v_rows || ' ' || v_bad;
END $$;
SQL

blocks=$(q "SELECT pg_relation_size('image_kill') / current_setting('block_size')::int")
echo "copies of $ROWS rows in $blocks blocks each"
databases=$(q "SELECT current_setting('popularity.database')")

# The uninterrupted reference run.
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" -c "SET client_min_messages = warning" \
    -c "CALL filter_tags('image_ref', batch_blocks => 2)"
ref_run=$(q "SELECT run_of('image_ref')")
reference=$(q "SELECT outcome($ref_run)")
echo "reference run $ref_run: $reference"
[ "$reference" = "$(q "SELECT format('succeeded, %s rows updated, dropped %s', $ROWS,
                                     '{\"malformed\": 857, \"low_accuracy\": 5365, \"exact_denylist\": 5143, \"substring_denylist\": 2000}'::jsonb)")" ] ||
    fail "the reference run did not filter every row as expected: $reference"
[ "$(q "SELECT wrong_rows('image_ref')")" = "0 0" ] || fail "the reference run left rows unfiltered"

# A run that was interrupted: it succeeded, and every row was filtered exactly once.
check_run() { # label table run
    local label=$1 tbl=$2 run=$3 wrong outcome record
    wait_for "SELECT state IN ('succeeded', 'failed') FROM popularity.refresh_runs WHERE run_id = $run" 180 ||
        fail "$label: run $run did not end: $(q "SELECT outcome($run)")"
    outcome=$(q "SELECT outcome($run)")
    [ "$outcome" = "$reference" ] ||
        fail "$label: run $run: $outcome ($(q "SELECT error FROM popularity.refresh_runs WHERE run_id = $run")); the reference run: $reference"
    wrong=$(q "SELECT wrong_rows('$tbl')")
    [ "$wrong" = "0 0" ] || fail "$label: rows differing from the rules' result and from the reference run: $wrong"
    record=$(q "SELECT record_check('$tbl', $run)")
    [ "$record" = "$ROWS $ROWS 0" ] ||
        fail "$label: the record of removed tags (records, rows, rows it does not restore exactly) is $record"
    [ "$(q "SELECT count(*) FROM popularity.refresh_runs WHERE media_type = '$tbl'")" = 1 ] ||
        fail "$label: more than one run of $tbl"
    echo "ok: $label (run $run: $outcome; each row filtered and recorded once)"
}

# Starts a run without waiting; sets $run; waits until it has committed some batches mid-way.
start_run() { # table
    q "CALL filter_tags('$1', batch_blocks => 2, wait => false)" 2>/dev/null
    run=$(q "SELECT run_of('$1')")
    wait_for "SELECT sum(batches) >= 5 FROM popularity.refresh_tasks WHERE run_id = $run" 60 ||
        fail "$1: run $run made no progress: $(q "SELECT outcome($run)")"
    [ "$(q "SELECT state FROM popularity.refresh_runs WHERE run_id = $run")" = running ] ||
        fail "$1: run $run finished before it could be interrupted"
}

# 1. Terminate the workers mid-run. Meanwhile a CALL of the same kind waits for this run (it
# starts none), and a dry run is refused.
start_run image_kill
psql -X -q -d "$DB" -c "CALL filter_tags('image_kill', batch_blocks => 2)" >"$log" 2>&1 &
waiter=$!
dry=$(psql -X -q -At -d "$DB" -c "CALL filter_tags('image_kill', dry_run => true)" 2>&1 || true)
grep -q "a filter_tags run of media type \"image_kill\" is in progress (run $run)" <<<"$dry" ||
    fail "a dry run was not refused while a run was active: $dry"
killed=$(q "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
            WHERE backend_type = 'popularity refresh worker' AND datname = current_database()")
[ "$killed" -gt 0 ] || fail "no worker to terminate"
echo "terminated $killed workers after $(q "SELECT sum(batches) FROM popularity.refresh_tasks WHERE run_id = $run") batches"
wait "$waiter" || fail "the second CALL failed: $(cat "$log")"
grep -q "filter_tags run $run of media type \"image_kill\" is in progress: waiting for it" "$log" &&
    grep -q "filter_tags run $run of media type \"image_kill\" succeeded" "$log" ||
    fail "the second CALL did not wait for run $run: $(cat "$log")"
check_run "workers terminated mid-run" image_kill "$run"

# 2. Immediate shutdown mid-run; the scheduler resumes the runs of the databases in
# popularity.database at server start.
q "ALTER SYSTEM SET popularity.database = '$databases, $DB'"
q "SELECT pg_reload_conf()" >/dev/null
start_run image_crash
done_before=$(q "SELECT sum(batches) FROM popularity.refresh_tasks WHERE run_id = $run")
cluster_stop immediate
cluster_restart_start
echo "stopped with -m immediate after about $done_before batches, restarted"
check_run "immediate shutdown mid-run" image_crash "$run"

# 3. Cancel the waiting CALL: the run is cancelled; resume it.
psql -X -q -d "$DB" -c "SET application_name = 'tags_interrupt'" \
    -c "CALL filter_tags('image_cancel', batch_blocks => 2)" >"$log" 2>&1 &
caller=$!
wait_for "SELECT coalesce(sum(t.batches) >= 5, false) FROM popularity.refresh_tasks AS t
          WHERE t.run_id = run_of('image_cancel')" 60 || fail "image_cancel: no progress"
run=$(q "SELECT run_of('image_cancel')")
cancelled=$(q "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity
               WHERE application_name = 'tags_interrupt' AND datname = current_database()")
[ "$cancelled" = 1 ] || fail "no waiting CALL to cancel"
wait "$caller" && fail "the waiting CALL succeeded although it was cancelled: $(cat "$log")"
grep -q "filter_tags run $run cancelled: the statement waiting for it was cancelled" "$log" ||
    fail "unexpected CALL output: $(cat "$log")"
echo "ok: the cancelled CALL failed: $(grep ERROR "$log")"
# The workers stop between batches; then nothing moves.
wait_for "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'popularity refresh worker'
                             AND datname = current_database())" 60 || fail "workers still running after the cancel"
state=$(q "SELECT state || ' ' || (blocks_done > 0) || ' ' || (blocks_done < blocks_total) || ' '
                  || (rows_updated > 0) || ' ' || (rows_updated < $ROWS)
           FROM popularity.refresh_status WHERE run_id = $run")
[ "$state" = "cancelled true true true true" ] || fail "expected a cancelled run part-way, got: $state"
# What the committed batches did is exactly what their progress says: the rows changed are the rows
# counted, each recorded once, and every row in a block a task has finished is filtered.
progress=$(q "SELECT (SELECT rows_updated FROM popularity.refresh_status WHERE run_id = $run) || ' '
                     || (SELECT count(*) FROM source s JOIN image_cancel t USING (identifier)
                         WHERE t.tags IS DISTINCT FROM s.tags) || ' '
                     || (SELECT count(*) FROM popularity.tag_filter_removed_rows WHERE run_id = $run)")
read -r counted changed recorded <<<"$progress"
[ "$counted" = "$changed" ] && [ "$recorded" = "$changed" ] ||
    fail "after the cancel: rows updated by the progress $counted, rows changed $changed, rows recorded $recorded"
bad=$(q "SELECT count(*) FROM image_cancel i JOIN expected e USING (identifier)
         JOIN popularity.refresh_tasks t ON t.run_id = $run
          AND (i.ctid::text::point)[0] >= t.first_block AND (i.ctid::text::point)[0] < t.next_block
         WHERE i.tags IS DISTINCT FROM e.tags")
[ "$bad" = 0 ] || fail "$bad rows in blocks the cancelled run had finished are not filtered"
scanned_before=$(q "SELECT rows_scanned FROM popularity.refresh_status WHERE run_id = $run")
echo "cancelled part-way: $changed rows filtered, $scanned_before scanned"
out=$(psql -X -q -d "$DB" -v ON_ERROR_STOP=1 -c "CALL popularity.resume_refresh($run, wait => true)" 2>&1) ||
    fail "resume_refresh failed: $out"
check_run "cancelled, then resumed" image_cancel "$run"
# Resumed from its progress markers: it did not scan the table again from the start.
scanned=$(q "SELECT rows_scanned FROM popularity.refresh_status WHERE run_id = $run")
[ "$scanned" -lt $((scanned_before + ROWS)) ] ||
    fail "the resumed run scanned $scanned rows in all, $scanned_before before the cancel: it started over"
echo "ok: resumed from its progress ($scanned rows scanned in all, $scanned_before before the cancel)"
echo "ok"
