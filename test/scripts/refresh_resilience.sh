#!/usr/bin/env bash
# A refresh is not stopped by what should not stop it, and fails only with its reason (issue 13,
# items 4 and 5), on a server of its own with few background-worker slots:
#   a. a SHARE lock (what CREATE INDEX takes) held longer than popularity.batch_lock_timeout: the
#      batches that time out are retried, refresh_status counts the retries and shows the last
#      error, and the run succeeds;
#   b. a REPEATABLE READ reader (what pg_dump holds) with a snapshot older than the CALL, idle in its
#      transaction: the run finishes while the reader stays open;
#   c. a session in LISTEN popularity; SELECT pg_sleep(...): the same;
#   d. a writer (it inserted into the table before the CALL and stays open): refresh_status shows
#      the run waiting for writers with its pid (so does the CALL's progress), and the run finishes
#      once it commits, with its row rescored;
#   e. no free background-worker slot for a while: the run does not fail, refresh_status says it
#      waits for a worker slot, and it finishes once slots are free;
#   f. errors at worker start-up fail the run with the cause, in refresh_status and in the CALL's
#      error: UPDATE revoked from the role while its workers start; the role can no longer log in.
# Every CALL runs as a role with LOGIN and the operator rights, not a superuser.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../lib/cluster.sh
source test/lib/cluster.sh

DB=resilience
# Four background-worker slots: the popularity launcher, a scheduler and two refresh workers (the
# logical replication launcher, which would take one, is off; so is the launcher's periodic start of
# schedulers, popularity.database: the CALLs start theirs); no parallel query but the one that takes
# slots on purpose (e).
cluster_start "max_worker_processes = 4" "max_logical_replication_workers = 0" \
    "max_parallel_workers_per_gather = 0" "popularity.database = ''" "popularity.naptime = 100" \
    "popularity.batch_blocks = 4" "popularity.batch_lock_timeout = 200" "popularity.max_workers = 2"
tmp=$(mktemp -d)
trap 'exec 7>&- 8>&- 2>/dev/null || true; cluster_destroy; rm -rf "$tmp"' EXIT

q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" -c "$1"; }
fail() { echo "FAILED: $*" >&2; exit 1; }
wait_for() { # sql seconds: polls until the query returns t
    for _ in $(seq 1 $(($2 * 10))); do
        [ "$(q "$1" 2>/dev/null || true)" = t ] && return 0
        sleep 0.1
    done
    return 1
}
# A session fed through a FIFO (it keeps its transaction open between commands): session NAME FD.
session() {
    rm -f "$tmp/$1.fifo"
    mkfifo "$tmp/$1.fifo"
    PGAPPNAME=$1 psql -X -q -v ON_ERROR_STOP=1 -d "$DB" <"$tmp/$1.fifo" >"$tmp/$1.out" 2>&1 &
    eval "exec $2>\"$tmp/$1.fifo\""
}
new_constant() { # a new percentile: the next CALL rescores every row
    q "SELECT popularity.set_metric('image', 'flickr', 'views', $1)" >/dev/null
}
last_run() { q "SELECT max(run_id) FROM popularity.refresh_runs"; }
run_state() { q "SELECT state || coalesce(': ' || error, '') FROM popularity.refresh_runs WHERE run_id = $1"; }
wrong_scores() {
    q "SELECT count(*) FROM image AS t JOIN popularity.metrics AS m ON m.media_type = 'image' AND m.provider = t.provider
       WHERE t.standardized_popularity IS DISTINCT FROM
             standardized_popularity(popularity_metric_value(t.meta_data, m.metric), m.constant)"
}
# Runs the refresh as the maintainer (at most 60 s), its output in $tmp/$1.out.
call_refresh() { # name
    PGOPTIONS="-c popularity.progress_interval=200ms" timeout 60 \
        psql -X -q -v ON_ERROR_STOP=1 -U maintainer -d "$DB" -c "CALL refresh_popularity('image')" \
        >"$tmp/$1.out" 2>&1
}

psql -X -q -c "CREATE DATABASE $DB"
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<'SQL'
CREATE EXTENSION popularity;
CREATE ROLE maintainer LOGIN;
SELECT popularity.grant_operator('maintainer');
CREATE TABLE image (
    identifier uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider text NOT NULL, meta_data jsonb, updated_on timestamptz NOT NULL DEFAULT now());
INSERT INTO image (provider, meta_data)
SELECT 'flickr', jsonb_build_object('views', g % 7919, 'pad', repeat('x', 300)) FROM generate_series(1, 4000) AS g;
SELECT popularity.register_media_type('image', 'image', false);
SELECT popularity.set_metric('image', 'flickr', 'views', 0.85);
GRANT SELECT, INSERT, UPDATE ON image TO maintainer;
SQL
call_refresh first || { cat "$tmp/first.out"; fail "the first refresh failed"; }

# a. A SHARE lock held longer than the batches' lock timeout (200 ms): retried, not failed.
new_constant 0.8
session locker 7
echo "BEGIN; LOCK TABLE image IN SHARE MODE; SELECT 'locked';" >&7
wait_for "SELECT count(*) = 1 FROM pg_locks AS l JOIN pg_stat_activity AS a USING (pid)
          WHERE a.application_name = 'locker' AND l.mode = 'ShareLock' AND l.granted" 10 ||
    fail "a: the SHARE lock was not taken"
call_refresh locked &
caller=$!
wait_for "SELECT coalesce(sum(retries), 0) >= 3 FROM popularity.refresh_tasks
          WHERE run_id = (SELECT max(run_id) FROM popularity.refresh_runs)" 30 ||
    fail "a: no batch was retried while the SHARE lock was held: $(run_state "$(last_run)")"
run=$(last_run)
[ "$(q "SELECT state FROM popularity.refresh_runs WHERE run_id = $run")" = running ] ||
    fail "a: run $run is not running while the lock is held: $(run_state "$run")"
echo "COMMIT;" >&7
exec 7>&-
wait "$caller" || { cat "$tmp/locked.out"; fail "a: the CALL failed after the SHARE lock was released"; }
[ "$(q "SELECT state FROM popularity.refresh_runs WHERE run_id = $run")" = succeeded ] || fail "a: $(run_state "$run")"
retries=$(q "SELECT retries FROM popularity.refresh_status WHERE run_id = $run")
last_error=$(q "SELECT last_error FROM popularity.refresh_status WHERE run_id = $run")
[ "$retries" -ge 3 ] || fail "a: refresh_status shows $retries retries"
[[ $last_error == *"lock timeout"* ]] || fail "a: refresh_status shows the last error '$last_error'"
grep -q "waiting [0-9]* s for retry" "$tmp/locked.out" || { cat "$tmp/locked.out"; fail "a: the CALL never said it waited to retry"; }
[ "$(wrong_scores)" = 0 ] || fail "a: rows wrong after the run"
echo "ok: a. a SHARE lock held past the lock timeout: $retries batches retried ($last_error), run $run succeeded"

# b. A REPEATABLE READ reader with a snapshot older than the CALL, idle in its transaction.
new_constant 0.75
session reader 7
echo "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM image;" >&7
wait_for "SELECT backend_xmin IS NOT NULL AND state = 'idle in transaction' FROM pg_stat_activity
          WHERE application_name = 'reader'" 10 || fail "b: the reader holds no snapshot"
call_refresh reader_open || { cat "$tmp/reader_open.out"; fail "b: the refresh did not finish while a REPEATABLE READ reader was open: $(run_state "$(last_run)")"; }
[ "$(q "SELECT backend_xmin IS NOT NULL AND state = 'idle in transaction' FROM pg_stat_activity
        WHERE application_name = 'reader'")" = t ] || fail "b: the reader ended before the run"
[ "$(q "SELECT state FROM popularity.refresh_runs WHERE run_id = $(last_run)")" = succeeded ] || fail "b: $(run_state "$(last_run)")"
echo "COMMIT;" >&7
exec 7>&-
[ "$(wrong_scores)" = 0 ] || fail "b: rows wrong after the run"
echo "ok: b. run $(last_run) finished while a REPEATABLE READ reader stayed open"

# c. A session listening and sleeping in a statement.
new_constant 0.7
PGAPPNAME=sleeper psql -X -q -d "$DB" -c "LISTEN popularity" -c "SELECT pg_sleep(120)" >/dev/null 2>&1 &
sleeper=$!
wait_for "SELECT backend_xmin IS NOT NULL FROM pg_stat_activity WHERE application_name = 'sleeper'
          AND query LIKE '%pg_sleep%'" 10 || fail "c: the sleeper is not sleeping"
call_refresh sleeper_open || { cat "$tmp/sleeper_open.out"; fail "c: the refresh did not finish while a session slept in LISTEN/pg_sleep: $(run_state "$(last_run)")"; }
[ "$(q "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sleeper' AND query LIKE '%pg_sleep%'")" = 1 ] ||
    fail "c: the sleeper ended before the run"
q "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'sleeper'" >/dev/null
wait "$sleeper" || true
[ "$(wrong_scores)" = 0 ] || fail "c: rows wrong after the run"
echo "ok: c. run $(last_run) finished while a session slept after LISTEN popularity"

# d. A writer in progress when the run is queued: waited for, and shown.
session writer 7
echo "BEGIN; INSERT INTO image (provider, meta_data) VALUES ('flickr', '{\"views\": 4242}');" >&7
wait_for "SELECT backend_xid IS NOT NULL FROM pg_stat_activity WHERE application_name = 'writer'" 10 ||
    fail "d: the writer has not written"
writer_pid=$(q "SELECT pid FROM pg_stat_activity WHERE application_name = 'writer'")
new_constant 0.65
call_refresh writer_open &
caller=$!
wait_for "SELECT waiting_for LIKE '%writers%' AND $writer_pid = ANY (waiting_pids) AND waiting_since IS NOT NULL
          FROM popularity.refresh_status WHERE run_id = (SELECT max(run_id) FROM popularity.refresh_runs)
            AND state = 'running'" 30 ||
    fail "d: refresh_status never showed the run waiting for writer $writer_pid: $(q "SELECT waiting_for || ' ' || coalesce(waiting_pids::text, '') FROM popularity.refresh_status WHERE run_id = (SELECT max(run_id) FROM popularity.refresh_runs)")"
run=$(last_run)
[ "$(q "SELECT writers <> '{}' FROM popularity.refresh_runs WHERE run_id = $run")" = t ] || fail "d: the run records no writer"
sleep 1 # the run goes on waiting while the writer is open
[ "$(q "SELECT state FROM popularity.refresh_runs WHERE run_id = $run")" = running ] || fail "d: $(run_state "$run") with the writer open"
echo "COMMIT;" >&7
exec 7>&-
wait "$caller" || { cat "$tmp/writer_open.out"; fail "d: the CALL failed"; }
grep -q "for writers (pid $writer_pid)" "$tmp/writer_open.out" || { cat "$tmp/writer_open.out"; fail "d: the CALL's progress never named the writer"; }
[ "$(q "SELECT state FROM popularity.refresh_runs WHERE run_id = $run")" = succeeded ] || fail "d: $(run_state "$run")"
[ "$(wrong_scores)" = 0 ] || fail "d: rows wrong after the run (the writer's row included)"
echo "ok: d. run $run waited for writer $writer_pid (shown in refresh_status and the CALL's progress) and finished once it committed"

# e. No free background-worker slot: two parallel workers sleep in the slots the refresh would use.
new_constant 0.6
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<'SQL'
CREATE TABLE hog (id int, pad text) WITH (fillfactor = 10, parallel_workers = 2);
ALTER TABLE hog ALTER pad SET STORAGE PLAIN;
INSERT INTO hog SELECT g, repeat('x', 1500) FROM generate_series(1, 2) AS g; -- one row a page
CREATE FUNCTION hog_sleep(seconds float8) RETURNS boolean LANGUAGE plpgsql PARALLEL SAFE
AS $$ BEGIN PERFORM pg_sleep(seconds); RETURN true; END $$;
SQL
wait_for "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type LIKE 'popularity refresh worker'
          OR backend_type = 'popularity scheduler'" 20 || fail "e: a scheduler or worker is still running"
PGAPPNAME=hog psql -X -q -d "$DB" -c "SET max_parallel_workers_per_gather = 2" -c "SET parallel_setup_cost = 0" \
    -c "SET parallel_tuple_cost = 0" -c "SET min_parallel_table_scan_size = 0" \
    -c "SET parallel_leader_participation = off" -c "SELECT count(*) FROM hog WHERE hog_sleep(6)" >/dev/null 2>&1 &
hog=$!
wait_for "SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'parallel worker'" 10 ||
    fail "e: the parallel workers that take the slots did not start"
call_refresh no_slot &
caller=$!
saw_slot=no
while [ "$(q "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'parallel worker'")" = 2 ]; do
    # The run, what refresh_status says it waits for, and whether a task waits for a worker slot
    # with no attempt counted.
    status=$(q "SELECT r.state || ' ' || coalesce(s.waiting_for, '-') || ' ' ||
                       EXISTS (SELECT FROM popularity.refresh_tasks AS t WHERE t.run_id = r.run_id
                               AND t.waiting_for = 'worker slot' AND t.attempts = 0)
                FROM popularity.refresh_runs AS r LEFT JOIN popularity.refresh_status AS s USING (run_id)
                WHERE r.run_id = (SELECT max(run_id) FROM popularity.refresh_runs)")
    case $status in
    failed*) fail "e: the run failed while no worker slot was free: $(run_state "$(last_run)")" ;;
    "running worker slot true") saw_slot=yes ;;
    esac
    sleep 0.2
done
wait "$hog" || true
[ "$saw_slot" = yes ] || fail "e: refresh_status never showed a task waiting for a worker slot (no attempt counted)"
wait "$caller" || { cat "$tmp/no_slot.out"; fail "e: the CALL failed: $(run_state "$(last_run)")"; }
[ "$(q "SELECT state FROM popularity.refresh_runs WHERE run_id = $(last_run)")" = succeeded ] || fail "e: $(run_state "$(last_run)")"
[ "$(wrong_scores)" = 0 ] || fail "e: rows wrong after the run"
echo "ok: e. run $(last_run) waited for a worker slot (not a failed attempt) and finished once slots were free"

# f1. UPDATE revoked while the workers start (they wait on a SHARE lock, retrying).
new_constant 0.55
session locker 7
echo "BEGIN; LOCK TABLE image IN SHARE MODE; SELECT 'locked';" >&7
wait_for "SELECT count(*) = 1 FROM pg_locks AS l JOIN pg_stat_activity AS a USING (pid)
          WHERE a.application_name = 'locker' AND l.mode = 'ShareLock' AND l.granted" 10 ||
    fail "f: the SHARE lock was not taken"
call_refresh revoked &
caller=$!
wait_for "SELECT coalesce(sum(retries), 0) > 0 FROM popularity.refresh_tasks
          WHERE run_id = (SELECT max(run_id) FROM popularity.refresh_runs)" 30 || fail "f: no worker started"
run=$(last_run)
q "REVOKE UPDATE ON image FROM maintainer"
echo "COMMIT;" >&7
exec 7>&-
wait "$caller" && fail "f: the CALL succeeded without UPDATE on the table"
grep -q "refresh run $run failed: permission denied for table public.image" "$tmp/revoked.out" ||
    { cat "$tmp/revoked.out"; fail "f: the CALL's error does not name the cause"; }
[[ $(q "SELECT DISTINCT state || ': ' || error FROM popularity.refresh_status WHERE run_id = $run") == "failed: permission denied for table public.image"* ]] ||
    fail "f: refresh_status says $(run_state "$run")"
echo "ok: f. UPDATE revoked: run $run failed with '$(q "SELECT error FROM popularity.refresh_runs WHERE run_id = $run")'"

# f2. The role can no longer log in when the workers start (run cancelled, then resumed).
q "GRANT UPDATE ON image TO maintainer"
new_constant 0.5
session locker 7
echo "BEGIN; LOCK TABLE image IN SHARE MODE; SELECT 'locked';" >&7
wait_for "SELECT count(*) = 1 FROM pg_locks AS l JOIN pg_stat_activity AS a USING (pid)
          WHERE a.application_name = 'locker' AND l.mode = 'ShareLock' AND l.granted" 10 ||
    fail "f: the SHARE lock was not taken"
psql -X -q -U maintainer -d "$DB" -c "CALL refresh_popularity('image', wait => false)" 2>/dev/null
run=$(last_run)
[ "$(q "SELECT count(*) FROM popularity.cancel_refresh($run)")" = 1 ] || fail "f: run $run could not be cancelled"
echo "COMMIT;" >&7
exec 7>&-
wait_for "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'popularity refresh worker'" 20 ||
    fail "f: the workers of the cancelled run did not stop"
q "ALTER ROLE maintainer NOLOGIN"
timeout 60 psql -X -q -v ON_ERROR_STOP=1 -d "$DB" -c "CALL popularity.resume_refresh($run, wait => true)" \
    >"$tmp/nologin.out" 2>&1 && fail "f: the resumed run succeeded with a role that cannot log in"
grep -q "refresh run $run failed: role maintainer cannot log in" "$tmp/nologin.out" ||
    { cat "$tmp/nologin.out"; fail "f: the CALL's error does not name the cause"; }
[[ $(q "SELECT DISTINCT error FROM popularity.refresh_status WHERE run_id = $run") == "role maintainer cannot log in"* ]] ||
    fail "f: refresh_status says $(run_state "$run")"
echo "ok: f. the role lost LOGIN: run $run failed with '$(q "SELECT error FROM popularity.refresh_runs WHERE run_id = $run")'"
