#!/usr/bin/env bash
# One notion of a fresh score (issue 13, item 6), on a server of its own (it changes
# popularity.score_tolerance with ALTER SYSTEM): the ingestion trigger, the refresh and
# popularity._score_differs (freshness) judge "must this stored score be rewritten" alike
# (core::score_differs):
#   1. tolerance 0: any score that is not equal to the definition is rewritten by the trigger, but a
#      stored -0.0 where the definition gives 0.0 is equal and left alone;
#   2. tolerance 0.01: an upsert whose new score is within 1% keeps the stored score, one beyond it
#      is rescored; freshness() then finds no stale row and a forced refresh rewrites none;
#   3. back to 0: freshness() and the refresh both find exactly the row the trigger left alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../lib/cluster.sh
source test/lib/cluster.sh

fail() { echo "FAILED: $*" >&2; exit 1; }
q() { psql -X -q -At -v ON_ERROR_STOP=1 -c "$1"; }

trap cluster_destroy EXIT
cluster_start "popularity.database = 'postgres'"

set_tolerance() { # value as SHOW prints it
    q "ALTER SYSTEM SET popularity.score_tolerance = $1"
    q "SELECT pg_reload_conf()" >/dev/null
    # Every new session reads the reloaded file; wait until the postmaster has read it.
    for _ in $(seq 1 100); do
        [ "$(q "SHOW popularity.score_tolerance")" = "$1" ] && return
        sleep 0.1
    done
    fail "popularity.score_tolerance did not become $1"
}
scores() { q "SELECT string_agg(identifier || '=' || standardized_popularity::text, ' ' ORDER BY identifier) FROM image WHERE identifier <= 3"; }
stale() { q "SELECT rows_stale FROM popularity.freshness('image', exact => true) WHERE provider = 'flickr'"; }
refresh_updated() { # rows the last forced refresh rewrote
    q "CALL refresh_popularity('image', force => true)" 2>/dev/null
    q "SELECT rows_updated FROM popularity.refresh_status ORDER BY run_id DESC LIMIT 1"
}

psql -X -q -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
CREATE EXTENSION popularity;
CREATE TABLE image (
    identifier int PRIMARY KEY, provider text NOT NULL, meta_data jsonb,
    updated_on timestamptz NOT NULL DEFAULT now());
SELECT popularity.register_media_type('image', 'image', false);
SELECT popularity.set_metric('image', 'flickr', 'views', 0.5);
-- The median stays 100 through the changes below: the constant is 100 throughout.
INSERT INTO image VALUES (1, 'flickr', '{"views": 100}'), (2, 'flickr', '{"views": 100}'),
                         (3, 'flickr', '{"views": 0}'), (4, 'flickr', '{"views": 100}'),
                         (5, 'flickr', '{"views": 100}');
SELECT count(*) FROM popularity.refresh_constants('image');
UPDATE image SET meta_data = meta_data; -- scored by the trigger
SQL
[ "$(q "SELECT constant FROM popularity.metrics")" = 100 ] || fail "constant: $(q "SELECT constant FROM popularity.metrics")"
[ "$(scores)" = "1=0.5 2=0.5 3=0" ] || fail "initial scores: $(scores)"

# 1. Tolerance 0: the trigger rewrites a score that differs by 0.05%; -0.0 equals 0.0.
q "UPDATE image SET meta_data = '{\"views\": 100.1}' WHERE identifier = 1"
q "UPDATE image SET standardized_popularity = '-0' WHERE identifier = 3"
[ "$(scores)" = "1=0.5002498750624688 2=0.5 3=-0" ] || fail "tolerance 0: $(scores)"
[ "$(stale)" = 0 ] || fail "tolerance 0: freshness finds $(stale) stale rows"
echo "ok: at tolerance 0 the trigger rewrites a 0.05% difference and leaves -0.0 (equal to 0.0)"

# 2. Tolerance 0.01: the trigger keeps a score within 1% of the definition, rescoring one beyond.
set_tolerance 0.01
q "INSERT INTO image VALUES (1, 'flickr', '{\"views\": 101}'), (2, 'flickr', '{\"views\": 150}')
   ON CONFLICT (identifier) DO UPDATE SET meta_data = excluded.meta_data"
[ "$(scores)" = "1=0.5002498750624688 2=0.6 3=-0" ] || fail "tolerance 0.01: $(scores)"
[ "$(stale)" = 0 ] || fail "tolerance 0.01: freshness finds $(stale) stale rows the trigger kept"
[ "$(refresh_updated)" = 0 ] || fail "tolerance 0.01: the refresh rewrote rows the trigger kept"
echo "ok: at tolerance 0.01 the trigger keeps a score within 1% (101 views: 0.50025 for 0.50249), and freshness and the refresh agree"

# 3. Back to 0: freshness and the refresh find the one row the trigger left within tolerance.
set_tolerance 0
[ "$(stale)" = 1 ] || fail "tolerance 0: freshness finds $(stale) stale rows, not 1"
[ "$(refresh_updated)" = 1 ] || fail "tolerance 0: the refresh did not rewrite exactly one row"
[ "$(scores)" = "1=0.5024875621890548 2=0.6 3=-0" ] || fail "after the refresh: $(scores)"
[ "$(stale)" = 0 ] || fail "after the refresh: $(stale) stale rows"
[ "$(q "SELECT constant FROM popularity.metrics")" = 100 ] || fail "the constant changed: $(q "SELECT constant FROM popularity.metrics")"
echo "ok: at tolerance 0 freshness and the refresh both find exactly that row"
