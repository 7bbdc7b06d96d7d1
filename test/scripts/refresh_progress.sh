#!/usr/bin/env bash
# A long CALL is not silent and Ctrl-C means what it says:
#   1. CALL refresh_popularity reports progress (NOTICE every popularity.progress_interval: share of
#      blocks, rows scanned, rows/s, time left);
#   2. cancelling the statement that waits (what psql's Ctrl-C sends) cancels the run: the CALL fails
#      with 57014 naming the run and how to resume it, the run is 'cancelled';
#   3. CALL popularity.resume_refresh(run, wait => true) finishes it and returns when it has: every row
#      right; inside a transaction block it refuses (25001).
set -euo pipefail
cd "$(dirname "$0")/../.."

DB=popularity_progress
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" -c "$1"; }
fail() { echo "FAILED: $*" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; psql -X -q -c "ALTER SYSTEM RESET popularity.batch_blocks" -c "SELECT pg_reload_conf()" >/dev/null' EXIT

psql -X -q -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<'SQL'
CREATE EXTENSION popularity;
CREATE TABLE image (
    identifier uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider text NOT NULL, meta_data jsonb, updated_on timestamptz NOT NULL DEFAULT now());
INSERT INTO image (provider, meta_data)
SELECT 'flickr', jsonb_build_object('views', g % 7919, 'pad', repeat('x', 300)) FROM generate_series(1, 120000) AS g;
SELECT popularity.register_media_type('image', 'image', false);
SELECT popularity.set_metric('image', 'flickr', 'views', 0.85);
CREATE FUNCTION wrong_scores() RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM image AS t JOIN popularity.metrics AS m ON m.media_type = 'image' AND m.provider = t.provider
    WHERE t.standardized_popularity IS DISTINCT FROM
          standardized_popularity(popularity_metric_value(t.meta_data, m.metric), m.constant) $$;
SQL
# Small batches: a run lasts a few seconds.
psql -X -q -c "ALTER SYSTEM SET popularity.batch_blocks = 2" -c "SELECT pg_reload_conf()" >/dev/null

# 1. Progress.
PGOPTIONS="-c popularity.progress_interval=300ms" psql -X -q -v ON_ERROR_STOP=1 -d "$DB" \
    -c "CALL refresh_popularity('image')" >"$tmp/progress.out" 2>&1 || { cat "$tmp/progress.out"; fail "the refresh failed"; }
grep -E 'NOTICE:  refresh run [0-9]+: [0-9.]+% of [0-9]+ blocks, [0-9]+ rows scanned \([0-9]+ rows/s\), ' "$tmp/progress.out" |
    head -3 || { cat "$tmp/progress.out"; fail "no progress NOTICE"; }
[ "$(q "SELECT wrong_scores()")" = 0 ] || fail "rows wrong after the first refresh"
PGOPTIONS="-c popularity.progress_interval=0" psql -X -q -d "$DB" -c "CALL refresh_popularity('image', force => true)" \
    >"$tmp/quiet.out" 2>&1
! grep -q '% of ' "$tmp/quiet.out" || fail "progress reported with popularity.progress_interval = 0"

# 2. Ctrl-C: cancel the statement that waits.
q "SELECT popularity.set_metric('image', 'flickr', 'views', 0.6)"
psql -X -q -d "$DB" -c "SET application_name = 'waiting_call'" -c "CALL refresh_popularity('image')" >"$tmp/cancel.out" 2>&1 &
caller=$!
for _ in $(seq 1 100); do
    [ "$(q "SELECT count(*) FROM popularity.refresh_runs WHERE state = 'running'")" = 1 ] && break
    sleep 0.1
done
run=$(q "SELECT run_id FROM popularity.refresh_runs WHERE state = 'running'")
[ -n "$run" ] || fail "the run did not start"
sleep 0.5
q "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'waiting_call'" >/dev/null
wait "$caller" && fail "the cancelled CALL succeeded"
cat "$tmp/cancel.out"
grep -q "refresh run $run cancelled: the statement waiting for it was cancelled" "$tmp/cancel.out" ||
    fail "the CALL's error does not say the run was cancelled"
grep -q "resume_refresh($run, wait => true)" "$tmp/cancel.out" || fail "the error does not say how to resume"
[ "$(q "SELECT state FROM popularity.refresh_runs WHERE run_id = $run")" = cancelled ] ||
    fail "the run is $(q "SELECT state FROM popularity.refresh_runs WHERE run_id = $run") after the CALL was cancelled"
sleep 1
done_before=$(q "SELECT sum(next_block - first_block) FROM popularity.refresh_tasks WHERE run_id = $run")
sleep 1
[ "$(q "SELECT sum(next_block - first_block) FROM popularity.refresh_tasks WHERE run_id = $run")" = "$done_before" ] ||
    fail "the cancelled run kept walking"

# 3. Resume and wait.
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" -c "BEGIN" -c "CALL popularity.resume_refresh($run, wait => true)" \
    >"$tmp/block.out" 2>&1 && fail "resume_refresh with wait ran inside a transaction block"
grep -q "cannot run inside a transaction block" "$tmp/block.out" || { cat "$tmp/block.out"; fail "no 25001"; }
q "CALL popularity.resume_refresh($run, wait => true)"
[ "$(q "SELECT state FROM popularity.refresh_runs WHERE run_id = $run")" = succeeded ] || fail "the resumed run did not succeed"
[ "$(q "SELECT wrong_scores()")" = 0 ] || fail "rows wrong after the resumed run"
echo "ok: progress reported (and silenced), Ctrl-C cancelled run $run, resume_refresh(wait => true) finished it"
psql -X -q -c "DROP DATABASE $DB WITH (FORCE)"
