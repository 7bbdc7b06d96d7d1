#!/usr/bin/env bash
# pg_dump -Fc / pg_restore into a fresh database tells the truth: scores, metrics and constants,
# tag rules and the provider counts come back as they were (the counts are dumped with the data, in
# the same snapshot), every restored media type is marked for reconcile_stats (provider_stats says
# reconcile_pending), reconciling finds nothing to correct and clears the marks, and ingestion, a
# refresh and the tag filter work in the restored database.
set -euo pipefail
cd "$(dirname "$0")/../.."

SRC=popularity_dump_src
DST=popularity_dump_dst
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }
fail() { echo "FAILED: $*" >&2; exit 1; }
tmp=$(mktemp -d)
chmod 777 "$tmp"
trap 'rm -rf "$tmp"' EXIT

psql -X -q -c "DROP DATABASE IF EXISTS $SRC" -c "DROP DATABASE IF EXISTS $DST" -c "CREATE DATABASE $SRC" -c "CREATE DATABASE $DST"
psql -X -q -v ON_ERROR_STOP=1 -d "$SRC" >/dev/null <<'SQL'
CREATE EXTENSION popularity;
CREATE TABLE image (
    identifier uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider varchar(80) NOT NULL, foreign_identifier text NOT NULL, meta_data jsonb, tags jsonb,
    updated_on timestamptz NOT NULL DEFAULT now());
SELECT popularity.register_media_type('image', 'image');
INSERT INTO image (provider, foreign_identifier, meta_data, tags)
SELECT (ARRAY['flickr', 'wikimedia', 'nappy', 'met'])[1 + g % 4], 'f' || g,
       jsonb_build_object('views', g % 997, 'global_usage_count', g % 13, 'downloads', CASE WHEN g % 50 = 0 THEN '"1k"'::jsonb ELSE to_jsonb(g % 77) END),
       jsonb_build_array(jsonb_build_object('name', 'cat'), jsonb_build_object('name', 'blurry', 'accuracy', 0.5))
FROM generate_series(1, 8000) AS g;
SELECT popularity.set_metric('image', 'flickr', 'views', 0.8);
INSERT INTO popularity.tag_rules (media_type, min_accuracy, exact_denylist) VALUES ('image', 0.7, ARRAY['cat']);
CALL refresh_popularity('image');
CALL filter_tags('image');
SELECT popularity.fold_stats();
DELETE FROM image WHERE foreign_identifier LIKE 'f1%';
SQL
snapshot() { # db: the state a restore must reproduce
    q "$1" "SELECT md5(string_agg(identifier::text || ':' || coalesce(standardized_popularity::text, '-') || ':' || coalesce(tags::text, '-'), ',' ORDER BY identifier)) FROM image"
    q "$1" "SELECT string_agg(format('%s %s %s %s %s', provider, metric, percentile, val, constant), '; ' ORDER BY provider) FROM popularity.metrics"
    q "$1" "SELECT string_agg(format('%s %s %s', media_type, min_accuracy, exact_denylist), '; ') FROM popularity.tag_rules"
    q "$1" "SELECT string_agg(format('%s %s %s %s %s', provider, rows, rows_with_metric, rows_scored, rows_invalid_metric), '; ' ORDER BY provider) FROM popularity.provider_stats"
}
before=$(snapshot "$SRC")
[ "$(q "$SRC" "SELECT bool_or(reconcile_pending) FROM popularity.provider_stats")" = f ] ||
    q "$SRC" "CALL popularity.reconcile_stats('image')" >/dev/null
[ "$(q "$SRC" "SELECT bool_or(reconcile_pending) FROM popularity.provider_stats")" = f ] || fail "source: counts still pending"
before=$(snapshot "$SRC")

runuser -u postgres -- pg_dump -Fc -h "$PGHOST" -p "$PGPORT" -d "$SRC" -f "$tmp/catalog.dump"
runuser -u postgres -- pg_restore -h "$PGHOST" -p "$PGPORT" -d "$DST" --exit-on-error "$tmp/catalog.dump"

after=$(snapshot "$DST")
if [ "$before" != "$after" ]; then
    diff <(echo "$before") <(echo "$after") || true
    fail "the restored database differs (scores/tags, metrics, tag rules or counts)"
fi
[ "$(q "$DST" "SELECT bool_and(reconcile_pending) FROM popularity.provider_stats WHERE media_type = 'image'")" = t ] ||
    fail "the restored counts are not marked for reconciliation"
corrections=$(q "$DST" "CALL popularity.reconcile_stats('image')")
[ "$corrections" = 0 ] || fail "reconciling the restored counts corrected $corrections keys"
[ "$(q "$DST" "SELECT bool_or(reconcile_pending) FROM popularity.provider_stats")" = f ] || fail "marks left after reconcile_stats"

# The restored database works: ingestion scores and counts, a refresh and the tag filter run.
psql -X -q -v ON_ERROR_STOP=1 -d "$DST" >/dev/null <<'SQL'
INSERT INTO image (provider, foreign_identifier, meta_data, tags)
VALUES ('flickr', 'after restore', '{"views": 500}', '[{"name": "cat"}, {"name": "dog"}]');
SELECT popularity.set_metric('image', 'flickr', 'views', 0.6);
CALL refresh_popularity('image');
CALL filter_tags('image');
SQL
wrong=$(q "$DST" "SELECT count(*) FROM image AS t JOIN popularity.metrics AS m ON m.media_type = 'image' AND m.provider = t.provider
                   WHERE t.standardized_popularity IS DISTINCT FROM standardized_popularity(popularity_metric_value(t.meta_data, m.metric), m.constant)")
[ "$wrong" = 0 ] || fail "$wrong rows wrongly scored after a refresh in the restored database"
[ "$(q "$DST" "SELECT tags FROM image WHERE foreign_identifier = 'after restore'")" = '[{"name": "dog"}]' ] ||
    fail "the restored tag rules were not applied"
# The filter run of the restored database (a job of its background workers) changed that row only.
filter_run=$(q "$DST" "SELECT format('%s %s %s', state, rows_updated, counters) FROM popularity.refresh_status
                       WHERE job = 'filter_tags' ORDER BY run_id DESC LIMIT 1")
[ "$filter_run" = 'succeeded 1 {"exact_denylist": 1}' ] ||
    fail "the filter run of the restored database: $filter_run (expected: succeeded, 1 row changed, 1 tag dropped)"
[ "$(q "$DST" "SELECT count(*) FROM image")" = "$(q "$DST" "SELECT sum(rows) FROM popularity.provider_stats")" ] ||
    fail "counts are not exact after ingestion in the restored database"
echo "ok: pg_dump -Fc / pg_restore keeps scores, tags, metrics, rules and counts; counts marked and reconciled with 0 corrections; refresh and filter work"
psql -X -q -c "DROP DATABASE $SRC WITH (FORCE)" -c "DROP DATABASE $DST WITH (FORCE)"
