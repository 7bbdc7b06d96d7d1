#!/usr/bin/env bash
# Crash and restart tests of the popularity refresh, against the running test server (PGHOST,
# PGPORT, PGUSER and CLUSTER_DIR exported by test/run-all):
#   1. pg_terminate_backend on every refresh worker mid-run: workers are restarted, the run resumes;
#   2. pg_ctl stop -m immediate mid-run, then start: the launcher resumes the run;
#   3. cancelling a run makes the CALL that waits for it fail; resume then finishes it.
# Each time, every row ends with the score of its provider's current constant, and the rows
# updated, summed over batches, equal exactly the rows that were stale: no batch was applied twice
# and none was lost.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../lib/cluster.sh
source test/lib/cluster.sh

DB=popularity_crash
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

psql -X -q -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" <<'SQL'
CREATE EXTENSION popularity;
CREATE TABLE crash (
    identifier uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider text NOT NULL, foreign_identifier text NOT NULL, meta_data jsonb,
    updated_on timestamptz NOT NULL DEFAULT now());
INSERT INTO crash (provider, foreign_identifier, meta_data)
SELECT CASE WHEN g % 5 < 3 THEN 'flickr' WHEN g % 5 = 3 THEN 'wikimedia' ELSE 'met' END, 'f' || g,
       jsonb_build_object('views', floor(exp(random() * 10)), 'global_usage_count', g % 9,
                          'title', repeat('x', 150))
FROM generate_series(1, 200000) AS g;
SELECT popularity.register_media_type('crash', 'crash', false) \g /dev/null
SELECT popularity.set_metric('crash', 'flickr', 'views', 0.85) \g /dev/null
SELECT popularity.set_metric('crash', 'wikimedia', 'global_usage_count', 0.85) \g /dev/null
CREATE FUNCTION wrong_scores() RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM crash AS t JOIN popularity.metrics AS m
           ON m.media_type = 'crash' AND m.provider = t.provider
    WHERE t.standardized_popularity IS DISTINCT FROM
          standardized_popularity(popularity_metric_value(t.meta_data, m.metric), m.constant) $$;
SQL
# Small batches, so that a run lasts long enough to be interrupted.
psql -X -q -c "ALTER SYSTEM SET popularity.batch_blocks = 8" -c "SELECT pg_reload_conf()" >/dev/null

# New constants, committed before the run (so the stale set is fixed), then a forced run.
start_run() { # percentile
    q "SELECT popularity.set_metric('crash', 'flickr', 'views', $1)"
    q "SELECT count(*) FROM popularity.refresh_constants('crash')" >/dev/null
    expected=$(q "SELECT wrong_scores()")
    [ "$expected" -gt 10000 ] || fail "setup: only $expected stale rows"
    q "CALL refresh_popularity('crash', wait => false, force => true)" 2>/dev/null
    run=$(q "SELECT max(run_id) FROM popularity.refresh_runs")
}

check_run() { # label
    wait_for "SELECT state = 'succeeded' FROM popularity.refresh_runs WHERE run_id = $run" 180 ||
        fail "$1: run $run did not succeed: $(q "SELECT state || ' ' || coalesce(error, '') FROM popularity.refresh_runs WHERE run_id = $run")"
    local wrong updated
    wrong=$(q "SELECT wrong_scores()")
    updated=$(q "SELECT sum(x.rows_updated) FROM popularity.refresh_progress AS x JOIN popularity.refresh_tasks AS t USING (task_id) WHERE t.run_id = $run")
    [ "$wrong" = 0 ] || fail "$1: $wrong rows with a wrong score"
    [ "$updated" = "$expected" ] || fail "$1: rows updated $updated, stale rows were $expected"
    echo "ok: $1 (run $run: $expected stale rows, $updated updated, 0 wrong)"
}

# 1. Terminate the workers mid-run.
start_run 0.8
wait_for "SELECT sum(batches) >= 10 FROM popularity.refresh_tasks WHERE run_id = $run" 60 || fail "no progress"
killed=$(q "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE backend_type = 'popularity refresh worker'")
[ "$killed" -gt 0 ] || fail "no worker to terminate"
echo "terminated $killed workers mid-run"
check_run "workers terminated mid-run"

# 2. Immediate shutdown mid-run; the launcher resumes runs of the databases in popularity.database.
q "ALTER SYSTEM SET popularity.database = 'postgres, $DB'"
cluster_stop fast
cluster_restart_start
start_run 0.75
wait_for "SELECT sum(batches) >= 10 FROM popularity.refresh_tasks WHERE run_id = $run" 60 || fail "no progress"
done_before=$(q "SELECT sum(batches) FROM popularity.refresh_tasks WHERE run_id = $run")
[ "$(q "SELECT state FROM popularity.refresh_runs WHERE run_id = $run")" = running ] ||
    fail "the run finished before the crash could interrupt it"
cluster_stop immediate
cluster_restart_start
echo "stopped with -m immediate after about $done_before batches, restarted"
check_run "immediate shutdown mid-run"

# 3. Cancelling a run makes the waiting CALL fail; resume finishes it.
q "SELECT popularity.set_metric('crash', 'flickr', 'views', 0.7)"
q "SELECT count(*) FROM popularity.refresh_constants('crash')" >/dev/null
expected=$(q "SELECT wrong_scores()")
log=$(mktemp)
psql -X -q -d "$DB" -c "CALL refresh_popularity('crash', force => true)" >"$log" 2>&1 &
caller=$!
wait_for "SELECT count(*) = 1 FROM popularity.refresh_runs WHERE state = 'running'" 30 || fail "run did not start"
run=$(q "SELECT max(run_id) FROM popularity.refresh_runs")
q "SELECT popularity.cancel_refresh($run)" >/dev/null
if wait "$caller"; then
    fail "the waiting CALL succeeded although its run was cancelled"
fi
grep -q "refresh run $run was cancelled" "$log" || fail "unexpected CALL output: $(cat "$log")"
echo "ok: the waiting CALL failed: $(grep ERROR "$log")"
q "SELECT popularity.resume_refresh($run)"
check_run "cancelled, then resumed"
rm -f "$log"

q "ALTER SYSTEM RESET popularity.batch_blocks"
q "SELECT pg_reload_conf()" >/dev/null
psql -X -q -c "DROP DATABASE $DB WITH (FORCE)"
