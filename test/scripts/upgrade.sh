#!/usr/bin/env bash
# Upgrade in place: a catalog on the frozen 0.1.0 script (registered, refreshed, configured) is
# updated with ALTER EXTENSION popularity UPDATE; its configuration, data, triggers and jobs keep
# working, and the upgraded extension equals a fresh install of the current version object by
# object (test/sql/describe_extension.sql: definitions, privileges, comments, shipped rows).
set -euo pipefail
cd "$(dirname "$0")/../.."

OLD=popularity_upgrade
NEW=popularity_fresh
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

current=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" popularity.control)
psql -X -q -c "DROP DATABASE IF EXISTS $OLD" -c "DROP DATABASE IF EXISTS $NEW" \
    -c "CREATE DATABASE $OLD" -c "CREATE DATABASE $NEW"

catalog_sql() { # the same catalog in both databases
    cat <<'SQL'
CREATE TABLE image (
    identifier uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider varchar(80) NOT NULL, foreign_identifier text NOT NULL, meta_data jsonb, tags jsonb,
    updated_on timestamptz NOT NULL DEFAULT now());
CREATE UNIQUE INDEX ON image (provider, md5(foreign_identifier));
INSERT INTO image (provider, foreign_identifier, meta_data, tags)
SELECT CASE WHEN g % 3 = 0 THEN 'wikimedia' ELSE 'flickr' END, 'f' || g,
       CASE WHEN g % 3 = 0 THEN jsonb_build_object('global_usage_count', g % 7)
            ELSE jsonb_build_object('views', g % 5000) END,
       jsonb_build_array(jsonb_build_object('name', 'cat', 'provider', 'flickr'),
                         jsonb_build_object('name', 'blurry', 'accuracy', 0.5, 'provider', 'clarifai'))
FROM generate_series(1, 6000) AS g;
SELECT popularity.register_media_type('image', 'image') \g /dev/null
SQL
}

# 1. The old version, in use.
psql -X -q -v ON_ERROR_STOP=1 -d "$OLD" -c "CREATE EXTENSION popularity VERSION '0.1.0'"
catalog_sql | psql -X -q -v ON_ERROR_STOP=1 -d "$OLD"
psql -X -q -v ON_ERROR_STOP=1 -d "$OLD" >/dev/null <<'SQL'
SELECT popularity.set_metric('image', 'nappy', 'downloads', percentile => 0.8);
CALL refresh_popularity('image');
SQL
wrong_sql="SELECT count(*) FROM image AS t JOIN popularity.metrics AS m ON m.media_type = 'image' AND m.provider = t.provider
           WHERE t.standardized_popularity IS DISTINCT FROM standardized_popularity(popularity_metric_value(t.meta_data, m.metric), m.constant)"
[ "$(q "$OLD" "$wrong_sql")" = 0 ] || fail "0.1.0: rows wrongly scored after its refresh"
before=$(q "$OLD" "SELECT string_agg(format('%s %s %s %s %s', provider, metric, percentile, val, constant), '; ' ORDER BY provider) FROM popularity.metrics")
scores_before=$(q "$OLD" "SELECT md5(string_agg(identifier::text || coalesce(standardized_popularity::text, '-'), ',' ORDER BY identifier)) FROM image")

# 2. The update.
paths=$(q "$OLD" "SELECT string_agg(path, ' | ') FROM pg_extension_update_paths('popularity') WHERE source = '0.1.0' AND target = '$current'")
[ -n "$paths" ] || fail "no update path from 0.1.0 to $current"
echo "update path: $paths"
q "$OLD" "ALTER EXTENSION popularity UPDATE"
[ "$(q "$OLD" "SELECT extversion FROM pg_extension WHERE extname = 'popularity'")" = "$current" ] ||
    fail "ALTER EXTENSION UPDATE did not reach $current"

# 3. Configuration and data survived; ingestion, refresh, tag filter and counts work. 0.1.0 recorded
# no constant versions: every provider that has a constant is stale once (the next refresh rescores
# it), and none is after that refresh.
[ "$(q "$OLD" "SELECT count(*) FILTER (WHERE stale) || '/' || count(*) FILTER (WHERE constant IS NOT NULL) FROM popularity.rescore_state")" = 2/2 ] ||
    fail "after the update, the providers with a constant are not all stale"

[ "$(q "$OLD" "SELECT string_agg(format('%s %s %s %s %s', provider, metric, percentile, val, constant), '; ' ORDER BY provider) FROM popularity.metrics")" = "$before" ] ||
    fail "metrics and constants changed across the update"
[ "$(q "$OLD" "SELECT md5(string_agg(identifier::text || coalesce(standardized_popularity::text, '-'), ',' ORDER BY identifier)) FROM image")" = "$scores_before" ] ||
    fail "scores changed across the update"
q "$OLD" "INSERT INTO image (provider, foreign_identifier, meta_data) VALUES ('flickr', 'new-1', '{\"views\": 123}')
          ON CONFLICT (provider, md5(foreign_identifier)) DO UPDATE SET meta_data = image.meta_data || excluded.meta_data"
[ "$(q "$OLD" "SELECT standardized_popularity IS NOT NULL FROM image WHERE foreign_identifier = 'new-1'")" = t ] ||
    fail "the ingestion trigger does not score after the update"
psql -X -q -v ON_ERROR_STOP=1 -d "$OLD" >/dev/null <<'SQL'
UPDATE popularity.metrics SET percentile = 0.7 WHERE media_type = 'image' AND provider = 'flickr';
CALL refresh_popularity('image');
CALL filter_tags('image');
CALL popularity.reconcile_stats('image');
SQL
[ "$(q "$OLD" "$wrong_sql")" = 0 ] || fail "after the update: rows wrongly scored after a refresh"
[ "$(q "$OLD" "SELECT count(*) FROM popularity.rescore_state WHERE stale")" = 0 ] ||
    fail "after the update: providers still stale after a refresh"
[ "$(q "$OLD" "SELECT count(*) FROM image WHERE tags @> '[{\"name\": \"blurry\"}]'")" = 0 ] ||
    fail "after the update: filter_tags left low-accuracy tags"
filter_run=$(q "$OLD" "SELECT string_agg(format('%s %s %s', state, rows_updated, counters), '; ')
                       FROM popularity.refresh_status WHERE job = 'filter_tags'")
[ "$filter_run" = 'succeeded 6000 {"low_accuracy": 6000}' ] ||
    fail "after the update: the filter run (a job of the workers) is '$filter_run', not one run that succeeded changing 6000 rows, 6000 low-accuracy tags dropped"
[ "$(q "$OLD" "SELECT sum(rows) FROM popularity.provider_stats WHERE media_type = 'image'")" = 6001 ] ||
    fail "after the update: provider counts are not exact"

# 4. The upgraded extension is the fresh one.
psql -X -q -v ON_ERROR_STOP=1 -d "$NEW" -c "CREATE EXTENSION popularity"
catalog_sql | psql -X -q -v ON_ERROR_STOP=1 -d "$NEW"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
psql -X -q -At -v ON_ERROR_STOP=1 -d "$OLD" -f test/sql/describe_extension.sql >"$tmp/upgraded"
psql -X -q -At -v ON_ERROR_STOP=1 -d "$NEW" -f test/sql/describe_extension.sql >"$tmp/fresh"
[ "$(wc -l <"$tmp/fresh")" -gt 100 ] || fail "the description of a fresh install is too short to compare"
if ! diff -u "$tmp/fresh" "$tmp/upgraded" >"$tmp/diff"; then
    head -80 "$tmp/diff"
    fail "the upgraded extension differs from a fresh $current install (diff above: - fresh, + upgraded)"
fi
echo "ok: 0.1.0 -> $current keeps configuration and scores, works, and equals a fresh install ($(wc -l <"$tmp/fresh") description lines)"
psql -X -q -c "DROP DATABASE $OLD WITH (FORCE)" -c "DROP DATABASE $NEW WITH (FORCE)"
