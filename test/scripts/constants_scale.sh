#!/usr/bin/env bash
# refresh_constants at scale (issue 12, item 5): 10,000 providers whose names have 5,000
# characters (differing only in their last characters, the costliest to compare), against the
# running test server:
#   1. every constant is computed and written; the NOTIFY payload (which used to exceed
#      PostgreSQL's 8000-byte limit and abort everything with 22023) is the summary;
#   2. a provider whose constant cannot be computed is reported, keeps its constant, and the
#      others are computed;
#   3. the time grows linearly: 10,000 providers take well under 40 times as long as 1,000 (a
#      quadratic step, such as looking each provider up in an array, would take about 100 times).
#   4. refresh_popularity refreshes the other providers, warns about the failing one, and keeps
#      its notice short.
set -euo pipefail
cd "$(dirname "$0")/../.."

DB=popularity_scale
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" -c "$1"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

psql -X -q -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<'SQL'
CREATE EXTENSION popularity;
CREATE FUNCTION pname(i int) RETURNS text IMMUTABLE LANGUAGE sql
    AS $$ SELECT repeat('p', 4990) || lpad(i::text, 10, '0') $$;
-- Two media types of the same shape: 1,000 and 10,000 providers, 3 rows each.
CREATE TABLE small (identifier int PRIMARY KEY, provider text, meta_data jsonb,
                    updated_on timestamptz NOT NULL DEFAULT now());
CREATE TABLE big (LIKE small INCLUDING ALL);
INSERT INTO small SELECT g, pname(g % 1000), jsonb_build_object('v', g) FROM generate_series(0, 2999) AS g;
INSERT INTO big SELECT g, pname(g % 10000), jsonb_build_object('v', g) FROM generate_series(0, 29999) AS g;
SELECT popularity.register_media_type('small', 'small', false), popularity.register_media_type('big', 'big', false);
INSERT INTO popularity.metrics (media_type, provider, metric, percentile)
SELECT 'small', pname(g), 'v', 0.5 FROM generate_series(0, 999) AS g;
INSERT INTO popularity.metrics (media_type, provider, metric, percentile)
SELECT 'big', pname(g), 'v', 0.5 FROM generate_series(0, 9999) AS g;
ANALYZE small, big, popularity.metrics;
SQL
[ "$(q "SELECT min(length(provider)) || ' ' || count(*) FROM popularity.metrics WHERE media_type = 'big'")" = "5000 10000" ] ||
    fail "setup"

# Milliseconds of one refresh_constants (all constants reset first, so every provider changes).
timed_refresh() { # media type
    psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" <<SQL
UPDATE popularity.metrics SET val = NULL, constant = NULL WHERE media_type = '$1';
SELECT clock_timestamp() AS t0 \\gset
SELECT count(*) FROM popularity.refresh_constants('$1') \\g /dev/null
SELECT round(extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) * 1000);
SQL
}

# 1. Everything computed, with the summary notification.
out=$(psql -X -At -v ON_ERROR_STOP=1 -d "$DB" 2>&1 <<'SQL'
LISTEN popularity;
SELECT count(*) FILTER (WHERE changed) || ' changed, ' || count(*) FILTER (WHERE error IS NOT NULL) || ' failed'
FROM popularity.refresh_constants('big');
SQL
) || fail "refresh_constants of 10,000 providers: $out"
grep -q '^10000 changed, 0 failed$' <<<"$out" || fail "not every constant was computed: $out"
grep -q '"event" : "constants_changed", "media_type" : "big", "providers" : null, "changed" : 10000, "failed" : 0' <<<"$out" ||
    fail "no summary notification: $out"
[ "$(q "SELECT count(*) FROM popularity.metrics WHERE media_type = 'big' AND constant = val AND last_error IS NULL")" = 10000 ] ||
    fail "constants not stored"
echo "ok: 10,000 providers with 5,000-character names computed; notification: $(grep -o '{.*}' <<<"$out")"

# 2. One provider whose constant cannot be computed (1e308 at p = 0.01 is Infinity), one whose
#    constant changes: the first is reported and kept, the second computed, the others unchanged.
q "UPDATE big SET meta_data = '{\"v\": 1e308}' WHERE provider = pname(7)"
q "UPDATE popularity.metrics SET percentile = 0.01 WHERE media_type = 'big' AND provider = pname(7)"
q "UPDATE big SET meta_data = '{\"v\": 0}' WHERE provider = pname(8)"
out=$(psql -X -At -v ON_ERROR_STOP=1 -d "$DB" 2>&1 <<'SQL'
LISTEN popularity;
SELECT right(provider, 2) || ' ' || changed || ' ' || coalesce(error, '-')
FROM popularity.refresh_constants('big') WHERE changed OR error IS NOT NULL ORDER BY provider;
SQL
) || fail "refresh_constants with a failing provider: $out"
grep -q '^07 false popularity constant is out of range: ((1 - p) / p) \* v is Infinity' <<<"$out" ||
    fail "the failing provider was not reported: $out"
grep -q '^08 true -$' <<<"$out" || fail "the other provider was not computed: $out"
[ "$(grep -c '^[0-9][0-9] ' <<<"$out")" = 2 ] || fail "other providers changed: $out"
grep -q '"providers" : \["p' <<<"$out" || fail "the short provider list was not sent: $out"
grep -q '"changed" : 1, "failed" : 1' <<<"$out" || fail "the counts were not sent: $out"
[ "$(q "SELECT (last_error IS NOT NULL) || ' ' || constant FROM popularity.metrics WHERE media_type = 'big' AND provider = pname(7)")" = "true 10007" ] ||
    fail "the failing provider's status: $(q "SELECT last_error, constant FROM popularity.metrics WHERE provider = pname(7)")"
echo "ok: a provider whose constant cannot be computed is reported and keeps its constant; the others go on"

# 3. Linear time.
small_ms=$(timed_refresh small)
big_ms=$(timed_refresh big)
echo "refresh_constants: 1,000 providers ${small_ms} ms, 10,000 providers ${big_ms} ms"
[ "$big_ms" -lt $((40 * (small_ms + 20))) ] || fail "10,000 providers took ${big_ms} ms, 1,000 took ${small_ms} ms: not linear"
echo "ok: linear"
# 4. refresh_popularity goes on with the other providers, warns about the failing one, and its
#    notice does not list 1,000 names of 5,000 characters (the failing provider keeps its previous
#    constant, with which no run has rescored it yet: it is queued too).
q "UPDATE small SET meta_data = '{\"v\": 5e-324}' WHERE provider = pname(3)"
q "UPDATE popularity.metrics SET percentile = 0.99 WHERE media_type = 'small' AND provider = pname(3)"
q "UPDATE popularity.metrics SET val = NULL, constant = NULL WHERE media_type = 'small' AND provider <> pname(3)"
out=$(psql -X -v ON_ERROR_STOP=1 -d "$DB" -c "CALL refresh_popularity('small')" 2>&1) || fail "refresh_popularity: $out"
grep -q '^WARNING:  could not compute the constant of 1 provider of media type "small"$' <<<"$out" || fail "no warning: $out"
grep -q "^DETAIL:  provider 'p\{80\}\.\.\.p*0000000003': popularity constant is out of range" <<<"$out" ||
    fail "the warning does not name the provider: $out"
grep -q '^NOTICE:  refresh run [0-9]* queued for providers p\{200\}, \.\.\. (1000 providers)$' <<<"$out" ||
    fail "notice: $(cut -c1-400 <<<"$out")"
[ "$(q "SELECT count(*) FROM small AS t JOIN popularity.metrics AS m ON m.media_type = 'small' AND m.provider = t.provider
        WHERE t.standardized_popularity IS DISTINCT FROM
              standardized_popularity(popularity_metric_value(t.meta_data, m.metric), m.constant)")" = 0 ] ||
    fail "rows wrongly scored after the refresh"
echo "ok: refresh_popularity refreshes the other providers and warns: $(grep WARNING <<<"$out")"
psql -X -q -c "DROP DATABASE $DB WITH (FORCE)"
