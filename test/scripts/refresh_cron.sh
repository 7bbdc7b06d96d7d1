#!/usr/bin/env bash
# pg_cron schedules the refresh: a job `CALL refresh_popularity('image')` runs to success (recorded
# in cron.job_run_details) and leaves every row correctly scored. Needs pg_cron preloaded with
# cron.database_name = 'postgres' (test/run-all's server). pg_cron 1.4 schedules by the minute, so
# this waits for the next minute boundary (up to about 70 s).
set -euo pipefail
cd "$(dirname "$0")/../.."

DB=popularity_cron
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

psql -X -q -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
q postgres "CREATE EXTENSION IF NOT EXISTS pg_cron"
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" <<'SQL'
CREATE EXTENSION popularity;
CREATE TABLE image (
    identifier uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider text NOT NULL, foreign_identifier text NOT NULL, meta_data jsonb,
    updated_on timestamptz NOT NULL DEFAULT now());
INSERT INTO image (provider, foreign_identifier, meta_data)
SELECT 'flickr', 'f' || g, jsonb_build_object('views', g % 5000) FROM generate_series(1, 20000) AS g;
SELECT popularity.register_media_type('image', 'image') \g /dev/null
SQL
[ "$(q "$DB" "SELECT count(standardized_popularity) FROM image")" = 0 ] || fail "rows scored before the refresh"

job=$(q postgres "SELECT cron.schedule_in_database('popularity-image-test', '* * * * *', \$\$CALL refresh_popularity('image')\$\$, '$DB')")
echo "scheduled pg_cron job $job"
status=""
for _ in $(seq 1 900); do
    status=$(q postgres "SELECT status FROM cron.job_run_details WHERE jobid = $job AND status IN ('succeeded', 'failed') ORDER BY runid LIMIT 1")
    [ -n "$status" ] && break
    sleep 0.1
done
q postgres "SELECT cron.unschedule($job)" >/dev/null
details=$(q postgres "SELECT status || ': ' || coalesce(return_message, '') FROM cron.job_run_details WHERE jobid = $job ORDER BY runid LIMIT 1")
[ "$status" = succeeded ] || fail "the pg_cron job did not succeed: ${details:-no run within 90 s}"
wrong=$(q "$DB" "SELECT count(*) FROM image AS t JOIN popularity.metrics AS m ON m.media_type = 'image' AND m.provider = t.provider
                 WHERE t.standardized_popularity IS DISTINCT FROM standardized_popularity(popularity_metric_value(t.meta_data, m.metric), m.constant)")
scored=$(q "$DB" "SELECT count(standardized_popularity) FROM image")
run=$(q "$DB" "SELECT state FROM popularity.refresh_runs ORDER BY run_id DESC LIMIT 1")
[ "$wrong" = 0 ] && [ "$scored" = 20000 ] && [ "$run" = succeeded ] ||
    fail "after the job: $wrong wrong, $scored scored, last run $run"
echo "ok: pg_cron job $details; refresh run $run, $scored rows scored, 0 wrong"
psql -X -q -c "DROP DATABASE $DB WITH (FORCE)"
