#!/usr/bin/env bash
# Stale state comes from stored state (issue 13, item 3): refresh_popularity rescores every provider
# whose constant changed since the provider was last rescored, or that never was, whoever changed
# it; freshness() reports the same (rescore_pending). Against the running test server (PGHOST,
# PGPORT and PGUSER exported by test/run-all):
#   1. a provider never rescored is stale; set_metric, then refresh_constants on its own: the next
#      CALL rescores that provider (freshness: every row stale and rescore_pending before, none after);
#   2. a CALL whose session is killed between the commit of its constants and the queueing of its
#      run leaves the new constant committed and no run: the next CALL rescores the provider;
#   3. a constant changed during a run leaves its provider stale after the run succeeded: the next
#      CALL rescores it;
#   4. nothing changed: the CALL says nothing to rescore; force still rescores every configured provider.
set -euo pipefail
cd "$(dirname "$0")/../.."

DB=popularity_stale
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
tmp=$(mktemp -d)
bg=()
cleanup() {
    for pid in "${bg[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

psql -X -q -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" <<'SQL'
CREATE EXTENSION popularity;
CREATE TABLE stale (
    identifier int PRIMARY KEY, provider text NOT NULL, meta_data jsonb,
    updated_on timestamptz NOT NULL DEFAULT now());
INSERT INTO stale
SELECT g, CASE WHEN g % 3 = 0 THEN 'flickr' WHEN g % 3 = 1 THEN 'wikimedia' ELSE 'met' END,
       jsonb_build_object('views', g % 1000, 'global_usage_count', g % 11, 'title', repeat('x', 100))
FROM generate_series(1, 30000) AS g;
SELECT popularity.register_media_type('stale', 'stale', false) \g /dev/null
SELECT popularity.set_metric('stale', 'flickr', 'views', 0.85) \g /dev/null
SELECT popularity.set_metric('stale', 'wikimedia', 'global_usage_count', 0.85) \g /dev/null
CREATE FUNCTION wrong_scores() RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM stale AS t LEFT JOIN popularity.metrics AS m
           ON m.media_type = 'stale' AND m.provider = t.provider
    WHERE t.standardized_popularity IS DISTINCT FROM
          standardized_popularity(popularity_metric_value(t.meta_data, m.metric), m.constant) $$;
CREATE FUNCTION stale_providers() RETURNS text LANGUAGE sql AS $$
    SELECT coalesce(string_agg(provider, ',' ORDER BY provider), '') FROM popularity.rescore_state
    WHERE media_type = 'stale' AND stale $$;
SQL
refresh() { # CALL refresh_popularity with the given arguments; prints its NOTICE lines
    psql -X -v ON_ERROR_STOP=1 -d "$DB" -c "CALL refresh_popularity('stale'$1)" 2>&1 | grep NOTICE || true
}
expect_queued() { # notices expected_providers
    grep -q "queued for providers $2\$" <<<"$1" || fail "expected a run for $2, got: $1"
}
freshness() { # provider: whether some of its rows are stale|rescore_pending, from every row
    q "SELECT format('%s|%s', rows_stale > 0, rescore_pending)
       FROM popularity.freshness('stale', exact => true) WHERE provider = '$1'"
}
last_run() { q "SELECT coalesce(max(run_id), 0) FROM popularity.refresh_runs"; }

# 1. Never rescored, then a constant changed outside a CALL.
q "SELECT count(*) FROM popularity.refresh_constants('stale')" >/dev/null
[ "$(q "SELECT stale_providers()")" = flickr,wikimedia ] ||
    fail "1: providers never rescored are not stale: $(q "SELECT stale_providers()")"
[ "$(q "SELECT count(*) FROM popularity.rescore_state WHERE media_type = 'stale' AND rescored_run IS NULL")" = 2 ] ||
    fail "1: a provider never rescored has a rescoring run"
[ "$(freshness flickr)" = "t|t" ] || fail "1: freshness of an unrefreshed provider: $(freshness flickr)"
out=$(refresh "")
expect_queued "$out" "flickr, wikimedia"
[ "$(q "SELECT wrong_scores()")" = 0 ] || fail "1: rows wrongly scored after the first refresh"
[ "$(q "SELECT stale_providers()")" = "" ] || fail "1: stale after the refresh: $(q "SELECT stale_providers()")"

q "SELECT popularity.set_metric('stale', 'flickr', 'views', 0.7)" >/dev/null
[ "$(q "SELECT string_agg(provider, ',') FROM popularity.refresh_constants('stale') WHERE changed")" = flickr ] ||
    fail "1: refresh_constants did not change flickr's constant"
[ "$(q "SELECT stale_providers()")" = flickr ] || fail "1: a constant changed by refresh_constants is not stale"
[ "$(freshness flickr)" = "t|t" ] || fail "1: freshness before the refresh: $(freshness flickr)"
[ "$(freshness wikimedia)" = "f|f" ] || fail "1: freshness of an untouched provider: $(freshness wikimedia)"
out=$(refresh "")
expect_queued "$out" flickr
[ "$(q "SELECT wrong_scores()")" = 0 ] || fail "1: rows wrongly scored after the refresh"
[ "$(freshness flickr)" = "f|f" ] || fail "1: freshness after the refresh: $(freshness flickr)"
echo "ok: providers never rescored, and a constant changed by refresh_constants alone, are rescored by the next CALL"

# 2. A CALL killed between its two commits. A session holds a SHARE lock on the queue, so the
# CALL computes and commits its constants, then waits to queue its run, and is killed there.
q "SELECT popularity.set_metric('stale', 'flickr', 'views', 0.6)" >/dev/null
before_run=$(last_run)
old_constant=$(q "SELECT constant FROM popularity.metrics WHERE media_type = 'stale' AND provider = 'flickr'")
PGAPPNAME=stale_locker psql -X -q -d "$DB" -c "BEGIN" -c "LOCK TABLE popularity.refresh_runs IN SHARE MODE" \
    -c "SELECT pg_sleep(120)" >/dev/null 2>&1 &
bg+=($!)
wait_for "SELECT EXISTS (SELECT FROM pg_locks AS l JOIN pg_stat_activity AS a USING (pid)
                         WHERE a.application_name = 'stale_locker' AND l.granted AND l.mode = 'ShareLock'
                           AND l.relation = 'popularity.refresh_runs'::regclass)" 30 ||
    fail "2: the locking session did not take its lock"
PGAPPNAME=stale_victim psql -X -d "$DB" -c "CALL refresh_popularity('stale')" >"$tmp/victim.out" 2>&1 &
bg+=($!)
wait_for "SELECT EXISTS (SELECT FROM pg_locks AS l JOIN pg_stat_activity AS a USING (pid)
                         WHERE a.application_name = 'stale_victim' AND NOT l.granted
                           AND l.relation = 'popularity.refresh_runs'::regclass)" 60 ||
    fail "2: the CALL never waited to queue its run: $(cat "$tmp/victim.out")"
new_constant=$(q "SELECT constant FROM popularity.metrics WHERE media_type = 'stale' AND provider = 'flickr'")
[ "$new_constant" != "$old_constant" ] || fail "2: the CALL had not committed flickr's new constant"
q "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'stale_victim'" >/dev/null
wait_for "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE application_name = 'stale_victim')" 30 ||
    fail "2: the CALL's session did not end"
q "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'stale_locker'" >/dev/null
wait_for "SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE application_name = 'stale_locker')" 30 ||
    fail "2: the locking session did not end"
[ "$(last_run)" = "$before_run" ] || fail "2: the killed CALL queued a run"
[ "$(q "SELECT stale_providers()")" = flickr ] || fail "2: the committed constant is not stale"
[ "$(freshness flickr | cut -d'|' -f2)" = t ] || fail "2: freshness does not report flickr pending: $(freshness flickr)"
out=$(refresh "")
expect_queued "$out" flickr
[ "$(q "SELECT wrong_scores()")" = 0 ] || fail "2: rows wrongly scored after the next refresh"
[ "$(q "SELECT stale_providers()")" = "" ] || fail "2: stale after the next refresh"
echo "ok: a CALL killed after committing its constants leaves them stale, and the next CALL rescores them"

# 3. A constant changed during a run. A transaction that has written to the table since before the
# run was queued keeps the run from finishing (it may commit rows scored with the old constant),
# so the change certainly lands while the run is active.
q "SELECT popularity.set_metric('stale', 'flickr', 'views', 0.5)" >/dev/null
PGAPPNAME=stale_writer psql -X -q -d "$DB" -c "BEGIN" \
    -c "INSERT INTO stale VALUES (0, 'nobody', '{}')" -c "SELECT pg_sleep(120)" >/dev/null 2>&1 &
bg+=($!)
wait_for "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE application_name = 'stale_writer'
                         AND backend_xid IS NOT NULL AND query LIKE '%pg_sleep%')" 30 ||
    fail "3: the writing session did not write"
out=$(refresh ", wait => false")
expect_queued "$out" flickr
run=$(last_run)
queued_constant=$(q "SELECT constants[1] FROM popularity.refresh_runs WHERE run_id = $run")
[ "$queued_constant" = "$(q "SELECT constant FROM popularity.metrics WHERE media_type = 'stale' AND provider = 'flickr'")" ] ||
    fail "3: the run did not record flickr's constant"
q "SELECT popularity.set_metric('stale', 'flickr', 'views', 0.4)" >/dev/null
[ "$(q "SELECT string_agg(provider, ',') FROM popularity.refresh_constants('stale', ARRAY['flickr']) WHERE changed")" = flickr ] ||
    fail "3: refresh_constants did not change flickr's constant"
[ "$(q "SELECT state IN ('queued', 'running') FROM popularity.refresh_runs WHERE run_id = $run")" = t ] ||
    fail "3: the run ended before the constant changed: $(q "SELECT state FROM popularity.refresh_runs WHERE run_id = $run")"
q "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'stale_writer'" >/dev/null
wait_for "SELECT state = 'succeeded' FROM popularity.refresh_runs WHERE run_id = $run" 120 ||
    fail "3: the run did not succeed: $(q "SELECT state || ' ' || coalesce(error, '') FROM popularity.refresh_runs WHERE run_id = $run")"
[ "$(q "SELECT format('%s %s %s', stale, rescored_run = $run, rescored_constant = $queued_constant AND constant <> rescored_constant)
        FROM popularity.rescore_state WHERE media_type = 'stale' AND provider = 'flickr'")" = "t t t" ] ||
    fail "3: after a run during which its constant changed, flickr is not stale: $(q "SELECT * FROM popularity.rescore_state WHERE provider = 'flickr'")"
[ "$(freshness flickr | cut -d'|' -f2)" = t ] || fail "3: freshness does not report flickr pending"
out=$(refresh "")
expect_queued "$out" flickr
[ "$(q "SELECT wrong_scores()")" = 0 ] || fail "3: rows wrongly scored after the next refresh"
[ "$(q "SELECT stale_providers()")" = "" ] || fail "3: stale after the next refresh"
echo "ok: a constant changed during a run leaves its provider stale, and the next CALL rescores it"

# 4. Nothing changed: nothing to rescore (a run without providers); force rescores every provider.
out=$(refresh "")
grep -q "nothing to rescore" <<<"$out" || fail "4: the CALL did not say nothing to rescore: $out"
[ "$(q "SELECT providers = '{}' AND state = 'succeeded' FROM popularity.refresh_runs WHERE run_id = $(last_run)")" = t ] ||
    fail "4: the run of nothing has providers or did not succeed"
q "SELECT popularity.set_metric('stale', 'met', 'views', 0.85)" >/dev/null
q "SELECT count(*) FROM popularity.refresh_constants('stale', ARRAY['met'])" >/dev/null
out=$(refresh ", providers => ARRAY['flickr', 'wikimedia'], force => true")
expect_queued "$out" "flickr, wikimedia"
[ "$(q "SELECT stale_providers()")" = met ] || fail "4: a provider outside the forced run is not stale any more"
out=$(refresh ", force => true")
expect_queued "$out" "flickr, met, wikimedia"
[ "$(q "SELECT wrong_scores()")" = 0 ] || fail "4: rows wrongly scored after the forced refresh"
[ "$(q "SELECT stale_providers()")" = "" ] || fail "4: stale after the forced refresh"
echo "ok: nothing changed says nothing to rescore; force rescores every configured provider"

psql -X -q -c "DROP DATABASE $DB WITH (FORCE)"
