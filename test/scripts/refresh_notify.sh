#!/usr/bin/env bash
# API caches learn about new scores through NOTIFY popularity: one JSON payload when constants
# change (refresh_constants) and one when a refresh run finishes.
set -euo pipefail
cd "$(dirname "$0")/../.."
DB=popularity_notify
fail() { echo "FAILED: $*" >&2; exit 1; }

psql -X -q -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" <<'SQL'
CREATE EXTENSION popularity;
CREATE TABLE image (identifier int PRIMARY KEY, provider text, meta_data jsonb,
                    updated_on timestamptz NOT NULL DEFAULT now());
INSERT INTO image SELECT g, 'flickr', jsonb_build_object('views', g) FROM generate_series(1, 5000) AS g;
SELECT popularity.register_media_type('image', 'image') \g /dev/null
SQL
out=$(psql -X -v ON_ERROR_STOP=1 -d "$DB" 2>&1 <<'SQL'
LISTEN popularity;
CALL refresh_popularity('image');
SELECT pg_sleep(0.5);
SQL
)
grep "Asynchronous notification" <<<"$out" || true
grep -q '"event" : "constants_changed", "media_type" : "image", "providers" : \["flickr"\]' <<<"$out" ||
    fail "no constants_changed notification: $out"
grep -q '"event" : "refresh_finished", "run_id" : 1, "media_type" : "image", "state" : "succeeded"' <<<"$out" ||
    fail "no refresh_finished notification: $out"
echo "ok: both notifications received"
psql -X -q -c "DROP DATABASE $DB WITH (FORCE)"
