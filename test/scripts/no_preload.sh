#!/usr/bin/env bash
# Without shared_preload_libraries (issue 12, item 4), on a server of its own:
#   1. CREATE EXTENSION works (loading the library used to kill the session with FATAL), even with
#      a popularity.database setting left in postgresql.conf;
#   2. the pure functions, registration, refresh_constants, the ingestion trigger (insert and
#      upsert) and the counts work;
#   3. a constant changed in another session is used by this session's next statement, even
#      inside a transaction, and a rolled-back change is forgotten (PostgreSQL's invalidation
#      queue); so is a tag rule (the same cache and invalidation);
#   4. refresh_popularity raises 55000 with a hint before doing anything;
#   5. after adding the library to the preload list and restarting, sessions and the refresh
#      work; after taking it out again and restarting, ingestion is still scored correctly.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../lib/cluster.sh
source test/lib/cluster.sh

fail() { echo "FAILED: $*" >&2; exit 1; }
q() { psql -X -q -At -v ON_ERROR_STOP=1 -c "$1"; }

# cluster_start preloads popularity; a later line of postgresql.conf wins.
trap cluster_destroy EXIT
cluster_start "shared_preload_libraries = ''" "popularity.database = 'postgres'"
[ "$(q "SHOW shared_preload_libraries")" = "" ] || fail "the library is preloaded"

restart_with_preload() { # value of shared_preload_libraries
    echo "shared_preload_libraries = '$1'" >>"$CLUSTER_DIR/data/postgresql.conf"
    cluster_stop fast
    cluster_restart_start
    [ "$(q "SHOW shared_preload_libraries")" = "$1" ] || fail "restart did not set the preload list to '$1'"
}

# The stored scores all equal the score under the current constants.
wrong_scores() {
    q "SELECT count(*) FROM image AS t JOIN popularity.metrics AS m ON m.media_type = 'image' AND m.provider = t.provider
       WHERE t.standardized_popularity IS DISTINCT FROM
             standardized_popularity(popularity_metric_value(t.meta_data, m.metric), m.constant)"
}

# 1. The extension, in one session that must survive it.
out=$(psql -X -At -v ON_ERROR_STOP=1 2>&1 <<'SQL'
CREATE EXTENSION popularity;
SELECT 'alive', current_setting('popularity.database');
SQL
) || fail "CREATE EXTENSION failed: $out"
grep -q '^alive|postgres$' <<<"$out" || fail "the session did not survive CREATE EXTENSION: $out"
! grep -q FATAL "$CLUSTER_DIR/server.log" || fail "FATAL in the server log: $(grep FATAL "$CLUSTER_DIR/server.log")"

# 2. Pure functions, registration, constants, the trigger and the counts.
[ "$(q "SELECT standardized_popularity(150, 50)")" = 0.75 ] || fail "standardized_popularity"
[ "$(q "SELECT popularity_constant(50, 0.5)")" = 50 ] || fail "popularity_constant"
[ "$(q "SELECT popularity_metric_value('{\"views\": 12}', 'views')")" = 12 ] || fail "popularity_metric_value"
[ "$(q "SELECT popularity_percentile(v, 0.5) FROM unnest('{3,1,2}'::float8[]) AS v")" = 2 ] || fail "popularity_percentile"
psql -X -q -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
CREATE TABLE image (
    identifier int PRIMARY KEY, provider text NOT NULL, meta_data jsonb,
    updated_on timestamptz NOT NULL DEFAULT now());
INSERT INTO image SELECT g, 'flickr', jsonb_build_object('views', g) FROM generate_series(1, 99) AS g;
SELECT popularity.register_media_type('image', 'image', false);
SELECT popularity.set_metric('image', 'flickr', 'views', 0.5);
SELECT count(*) FROM popularity.refresh_constants('image');
SQL
[ "$(q "SELECT constant FROM popularity.metrics WHERE provider = 'flickr'")" = 50 ] || fail "refresh_constants"
q "INSERT INTO image VALUES (1000, 'flickr', '{\"views\": 150}')"
q "INSERT INTO image VALUES (1000, 'flickr', '{\"likes\": 3}')
   ON CONFLICT (identifier) DO UPDATE SET meta_data = image.meta_data || excluded.meta_data"
[ "$(q "SELECT standardized_popularity FROM image WHERE identifier = 1000")" = 0.75 ] ||
    fail "the upserted row is not scored: $(q "SELECT standardized_popularity FROM image WHERE identifier = 1000")"
q "CALL popularity.reconcile_stats('image')" >/dev/null 2>&1 # the rows from before the registration
[ "$(q "SELECT rows || '/' || rows_scored FROM popularity.provider_stats WHERE provider = 'flickr'")" = 100/1 ] ||
    fail "provider counts: $(q "SELECT * FROM popularity.provider_stats")"

# 3. Another session changes the constant between this session's statements (one backend, one
#    transaction); then this session's own rolled-back change.
out=$(psql -X -At -v ON_ERROR_STOP=1 2>&1 <<'SQL'
INSERT INTO image VALUES (1001, 'flickr', '{"views": 50}');
BEGIN;
INSERT INTO image VALUES (1002, 'flickr', '{"views": 50}');
\! psql -X -q -c "UPDATE popularity.metrics SET constant = 150 WHERE provider = 'flickr'"
INSERT INTO image VALUES (1003, 'flickr', '{"views": 50}');
COMMIT;
INSERT INTO image VALUES (1004, 'flickr', '{"views": 50}');
BEGIN;
UPDATE popularity.metrics SET constant = 50 WHERE provider = 'flickr';
INSERT INTO image VALUES (1005, 'flickr', '{"views": 50}');
ROLLBACK;
INSERT INTO image VALUES (1006, 'flickr', '{"views": 50}');
SELECT string_agg(identifier || '=' || standardized_popularity, ' ' ORDER BY identifier)
FROM image WHERE identifier > 1000;
SQL
) || fail "session: $out"
[ "$(tail -1 <<<"$out")" = "1001=0.5 1002=0.5 1003=0.25 1004=0.25 1006=0.25" ] ||
    fail "a session scored with a stale constant: $out"
# Within one statement: its second row waits (advisory lock) for another session to commit a new
# constant; no relation lock is taken in between, so only the trigger's own look at the
# invalidation queue can make that row use it.
psql -X -q -v ON_ERROR_STOP=1 >/dev/null <<'SQL' &
BEGIN;
SELECT pg_advisory_xact_lock(42);
UPDATE popularity.metrics SET constant = 50 WHERE provider = 'flickr';
SELECT pg_sleep(0.5);
COMMIT;
SQL
changer=$!
for _ in $(seq 1 100); do
    [ "$(q "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 42 AND granted")" = 1 ] && break
    sleep 0.1
done
q "INSERT INTO image SELECT 1006 + g, 'flickr', '{\"views\": 50}' FROM generate_series(1, 2) AS g
   WHERE g = 1 OR pg_advisory_lock(42) IS NOT NULL"
wait "$changer"
[ "$(q "SELECT string_agg(identifier || '=' || standardized_popularity, ' ' ORDER BY identifier) FROM image WHERE identifier > 1006")" = "1007=0.25 1008=0.5" ] ||
    fail "within a statement, a row after the change used the old constant: $(q "SELECT * FROM image WHERE identifier > 1006")"
echo "ok: without preloading, the trigger sees constants changed by other sessions (by its next row) and forgets rolled-back ones"

# 3b. The tag rules share that cache and its invalidation: a rule committed by another session
#     applies to this session's next row, even inside a transaction; its own rolled-back rule is
#     forgotten.
q "ALTER TABLE image ADD COLUMN tags jsonb"
q "UPDATE popularity.media_types SET filter_tags_at_ingestion = true WHERE media_type = 'image'"
out=$(psql -X -At -v ON_ERROR_STOP=1 2>&1 <<'SQL'
INSERT INTO image (identifier, provider, meta_data, tags) VALUES (4001, 'flickr', '{}', '[{"name": "cat"}, {"name": "dog"}]');
BEGIN;
INSERT INTO image (identifier, provider, meta_data, tags) VALUES (4002, 'flickr', '{}', '[{"name": "cat"}, {"name": "dog"}]');
\! psql -X -q -c "INSERT INTO popularity.tag_rules (media_type, exact_denylist) VALUES ('image', ARRAY['cat'])"
INSERT INTO image (identifier, provider, meta_data, tags) VALUES (4003, 'flickr', '{}', '[{"name": "cat"}, {"name": "dog"}]');
COMMIT;
BEGIN;
UPDATE popularity.tag_rules SET exact_denylist = ARRAY['dog'] WHERE media_type = 'image';
INSERT INTO image (identifier, provider, meta_data, tags) VALUES (4004, 'flickr', '{}', '[{"name": "cat"}, {"name": "dog"}]');
SELECT 'own', tags->0->>'name' FROM image WHERE identifier = 4004;
ROLLBACK;
INSERT INTO image (identifier, provider, meta_data, tags) VALUES (4005, 'flickr', '{}', '[{"name": "cat"}, {"name": "dog"}]');
SELECT string_agg(identifier || '=' || (SELECT string_agg(e->>'name', ',') FROM jsonb_array_elements(tags) AS e), ' ' ORDER BY identifier)
FROM image WHERE identifier > 4000;
SQL
) || fail "tag rules session: $out"
grep -q '^own|cat$' <<<"$out" || fail "the session's own uncommitted rule was not used: $out"
[ "$(tail -1 <<<"$out")" = "4001=cat,dog 4002=cat,dog 4003=dog 4005=dog" ] ||
    fail "a session filtered tags with stale rules: $out"
q "UPDATE popularity.media_types SET filter_tags_at_ingestion = false WHERE media_type = 'image'"
echo "ok: without preloading, the trigger filters tags with rules changed by other sessions and forgets rolled-back ones"

# 4. The refresh needs the background workers: 55000 and a hint, before anything is done.
q "SELECT popularity.set_metric('image', 'flickr', 'views', 0.8)" >/dev/null
out=$(psql -X -v VERBOSITY=verbose -c "CALL refresh_popularity('image')" 2>&1) && fail "refresh_popularity ran: $out"
grep -q "ERROR:  55000: popularity is not in shared_preload_libraries" <<<"$out" || fail "no 55000: $out"
grep -q "HINT:  Add 'popularity' to shared_preload_libraries" <<<"$out" || fail "no hint: $out"
[ "$(q "SELECT count(*) FROM popularity.refresh_runs")" = 0 ] || fail "a run was queued"
[ "$(q "SELECT constant FROM popularity.metrics WHERE provider = 'flickr'")" = 50 ] ||
    fail "refresh_popularity computed constants before raising"
echo "ok: refresh_popularity raises 55000 at once: $(grep ERROR <<<"$out")"

# 5. Preloaded after a restart: sessions and the refresh work.
restart_with_preload popularity
q "INSERT INTO image VALUES (2000, 'flickr', '{\"views\": 7}')"
q "CALL refresh_popularity('image')" 2>/dev/null
[ "$(q "SELECT state FROM popularity.refresh_runs")" = succeeded ] || fail "the refresh did not succeed"
[ "$(wrong_scores)" = 0 ] || fail "after the refresh, $(wrong_scores) rows are wrongly scored"
echo "ok: preloaded after a restart, the refresh runs"

# ... and taken out again: sessions load the library on demand and score correctly.
restart_with_preload ''
q "INSERT INTO image VALUES (3000, 'flickr', '{\"views\": 7}')"
out=$(psql -X -At -v ON_ERROR_STOP=1 2>&1 <<'SQL'
INSERT INTO image VALUES (3001, 'flickr', '{"views": 30}');
\! psql -X -q -c "UPDATE popularity.metrics SET constant = 30 WHERE provider = 'flickr'"
INSERT INTO image VALUES (3002, 'flickr', '{"views": 30}');
SELECT standardized_popularity FROM image WHERE identifier = 3002;
SQL
) || fail "session after taking the library out of the preload list: $out"
[ "$(tail -1 <<<"$out")" = 0.5 ] || fail "stale constant after taking the library out: $out"
q "CALL refresh_popularity('image')" 2>/dev/null && fail "refresh_popularity ran without the preloaded library"
! grep -q FATAL "$CLUSTER_DIR/server.log" || fail "FATAL in the server log: $(grep FATAL "$CLUSTER_DIR/server.log")"
echo "ok: taken out of the preload list again, ingestion sessions work and score with the current constant"
