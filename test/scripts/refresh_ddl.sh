#!/usr/bin/env bash
# DDL on the media table while a refresh runs never crashes a worker: every batch looks its
# columns up again (with their types) under its own lock, so a column retyped or renamed between
# two batches fails the task with a message naming the column, the run fails (and says why), the
# server keeps running, and once the table is fixed the run resumes and finishes with every row
# right. Also: a column retyped to another type the score can be read from keeps working.
set -euo pipefail
cd "$(dirname "$0")/../.."

DB=popularity_ddl
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" -c "$1"; }
fail() { echo "FAILED: $*" >&2; exit 1; }
wait_for() { # sql seconds: polls until the query returns t
    for _ in $(seq 1 $(($2 * 10))); do
        [ "$(q "$1" 2>/dev/null || true)" = t ] && return 0
        sleep 0.1
    done
    return 1
}

started=$(psql -X -At -c "SELECT pg_postmaster_start_time()")
psql -X -q -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" <<'SQL'
CREATE EXTENSION popularity;
CREATE TABLE ddl (
    identifier uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider text NOT NULL, meta_data jsonb, spare_provider text,
    updated_on timestamptz NOT NULL DEFAULT now());
INSERT INTO ddl (provider, meta_data, spare_provider)
SELECT 'flickr', jsonb_build_object('views', g % 1000, 'pad', repeat('x', 200)), 'flickr'
FROM generate_series(1, 60000) AS g;
SELECT popularity.register_media_type('ddl', 'ddl', false) \g /dev/null
SELECT popularity.set_metric('ddl', 'flickr', 'views', 0.85) \g /dev/null
CREATE FUNCTION wrong_scores() RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM ddl AS t JOIN popularity.metrics AS m ON m.media_type = 'ddl' AND m.provider = t.provider::text
    WHERE t.standardized_popularity IS DISTINCT FROM
          standardized_popularity(popularity_metric_value(t.meta_data, m.metric), m.constant) $$;
SQL
psql -X -q -c "ALTER SYSTEM SET popularity.batch_blocks = 4" -c "SELECT pg_reload_conf()" >/dev/null
trap 'psql -X -q -c "ALTER SYSTEM RESET popularity.batch_blocks" -c "SELECT pg_reload_conf()" >/dev/null' EXIT

# 1. provider swapped for an integer column between batches: the run fails, naming the column.
q "CALL refresh_popularity('ddl', wait => false)" 2>/dev/null
run=$(q "SELECT max(run_id) FROM popularity.refresh_runs")
wait_for "SELECT sum(rows_updated) > 0 FROM popularity.refresh_status WHERE run_id = $run" 60 ||
    fail "the run did not start"
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" <<'SQL'
BEGIN;
ALTER TABLE ddl RENAME COLUMN provider TO provider_text;
ALTER TABLE ddl ADD COLUMN provider integer NOT NULL DEFAULT 7;
COMMIT;
SQL
wait_for "SELECT state = 'failed' FROM popularity.refresh_runs WHERE run_id = $run" 60 ||
    fail "the run did not fail after provider became an integer: $(q "SELECT state FROM popularity.refresh_runs WHERE run_id = $run")"
error=$(q "SELECT error FROM popularity.refresh_runs WHERE run_id = $run")
echo "run $run failed: $error"
grep -q 'column "provider"' <<<"$error" || fail "the run's error does not name the column: $error"
[ "$(psql -X -At -c "SELECT pg_postmaster_start_time()")" = "$started" ] || fail "the server restarted"

# 2. Fixed, resumed: it finishes with every row right.
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" <<'SQL'
BEGIN;
ALTER TABLE ddl DROP COLUMN provider;
ALTER TABLE ddl RENAME COLUMN provider_text TO provider;
COMMIT;
SQL
q "SELECT popularity.resume_refresh($run)"
wait_for "SELECT state = 'succeeded' FROM popularity.refresh_runs WHERE run_id = $run" 120 ||
    fail "the resumed run did not succeed: $(q "SELECT state || ' ' || coalesce(error, '') FROM popularity.refresh_runs WHERE run_id = $run")"
[ "$(q "SELECT wrong_scores()")" = 0 ] || fail "rows left wrongly scored after the resumed run"

# 3. provider retyped text -> varchar (a type the refresh reads; no rewrite) during a run: it
#    just finishes. 4. A rewrite (VACUUM FULL) during a run fails it, since rows moved across the walk.
q "SELECT popularity.set_metric('ddl', 'flickr', 'views', 0.6)"
q "CALL refresh_popularity('ddl', wait => false)" 2>/dev/null
run=$(q "SELECT max(run_id) FROM popularity.refresh_runs")
wait_for "SELECT coalesce(sum(rows_updated), 0) > 0 FROM popularity.refresh_status WHERE run_id = $run" 60 || true
q "ALTER TABLE ddl ALTER COLUMN provider TYPE varchar"
wait_for "SELECT state IN ('succeeded', 'failed') FROM popularity.refresh_runs WHERE run_id = $run" 120 ||
    fail "the run did not end"
[ "$(q "SELECT state FROM popularity.refresh_runs WHERE run_id = $run")" = succeeded ] ||
    fail "the run failed after a compatible retype: $(q "SELECT error FROM popularity.refresh_runs WHERE run_id = $run")"
[ "$(q "SELECT wrong_scores()")" = 0 ] || fail "rows left wrongly scored after the compatible retype"

# 4. A rewrite during a run: the run fails and says so; a new forced run leaves every row right.
q "SELECT popularity.set_metric('ddl', 'flickr', 'views', 0.7)"
q "CALL refresh_popularity('ddl', wait => false)" 2>/dev/null
run=$(q "SELECT max(run_id) FROM popularity.refresh_runs")
wait_for "SELECT coalesce(sum(rows_updated), 0) > 0 FROM popularity.refresh_status WHERE run_id = $run" 60 ||
    fail "the run did not start"
q "VACUUM FULL ddl"
wait_for "SELECT state IN ('succeeded', 'failed') FROM popularity.refresh_runs WHERE run_id = $run" 120 ||
    fail "the run did not end after VACUUM FULL"
state=$(q "SELECT state || ': ' || coalesce(error, '') FROM popularity.refresh_runs WHERE run_id = $run")
echo "run $run after VACUUM FULL: $state"
case "$state" in
    "failed: "*"was rewritten"*) ;;
    succeeded*) [ "$(q "SELECT wrong_scores()")" = 0 ] || fail "a run that finished after a rewrite left rows wrong" ;;
    *) fail "unexpected end of the run after VACUUM FULL: $state" ;;
esac
q "CALL refresh_popularity('ddl', force => true)" 2>/dev/null
[ "$(q "SELECT wrong_scores()")" = 0 ] || fail "rows left wrongly scored after the new run"

[ "$(psql -X -At -c "SELECT pg_postmaster_start_time()")" = "$started" ] || fail "the server restarted"
! grep -q "terminated by signal" "$CLUSTER_DIR/server.log" || fail "the server log shows a crash"
echo "ok: DDL during a refresh fails the run cleanly, resume finishes it, a compatible retype is fine, a rewrite fails the run"
psql -X -q -c "DROP DATABASE $DB WITH (FORCE)"
