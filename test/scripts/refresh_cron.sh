#!/usr/bin/env bash
# pg_cron schedules the jobs exactly as the README's "Scheduling with pg_cron" says: this script
# takes the README's SQL block itself (so the documented lines are the tested ones), changes only
# the schedules to every minute, and runs it on a server of its own configured as the README's
# comment lines say, socket-only (no TCP listener: Debian's pg_cron 1.4 then needs
# cron.use_background_workers). The refresh job must succeed (cron.job_run_details) and leave every
# row correctly scored; the fold and reconcile jobs must succeed too. The jobs run as a
# non-superuser LOGIN role with operator rights that owns the catalog. pg_cron schedules by the
# minute, so this waits for the next minute boundary (up to about 70 s).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../lib/cluster.sh
source test/lib/cluster.sh

fail() { echo "FAILED: $*" >&2; exit 1; }

# The README's block, and the postgresql.conf lines of its comments.
block=$(awk '/^### Scheduling with pg_cron/ {s = 1} s && /^```sql/ {b = 1; next} b && /^```/ {exit} b {print}' README.md)
[ -n "$block" ] || fail "README.md has no SQL block under 'Scheduling with pg_cron'"
conf=$(sed -n 's/^-- *\(postgresql.conf: *\)\{0,1\}\([a-z_.]* = .*\)$/\2/p' <<<"$block" | sed 's/ *--.*$//')
grep -q "cron.use_background_workers = on" <<<"$conf" || fail "the README block no longer sets cron.use_background_workers"
schedule_sql=$(grep -E '^SELECT cron\.schedule_in_database' <<<"$block" | sed -E "s/'(@monthly|@daily)'/'* * * * *'/")
[ "$(wc -l <<<"$schedule_sql")" -eq 3 ] || fail "expected the README's three cron.schedule_in_database lines"

mapfile -t conf_lines <<<"$conf"
cluster_start "${conf_lines[@]}" "listen_addresses = ''"
trap cluster_destroy EXIT
[ -z "$(psql -X -At -c "SHOW listen_addresses")" ] || fail "the server listens on TCP"

q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$1" -c "$2"; }
psql -X -q -v ON_ERROR_STOP=1 <<'SQL'
CREATE ROLE catalog_owner LOGIN;
CREATE DATABASE catalog OWNER catalog_owner;
CREATE EXTENSION pg_cron;
SQL
psql -X -q -v ON_ERROR_STOP=1 -d catalog <<'SQL'
CREATE EXTENSION popularity;
SELECT popularity.grant_operator('catalog_owner') \g /dev/null
SET ROLE catalog_owner;
CREATE TABLE image (
    identifier uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider text NOT NULL, foreign_identifier text NOT NULL, meta_data jsonb,
    updated_on timestamptz NOT NULL DEFAULT now());
INSERT INTO image (provider, foreign_identifier, meta_data)
SELECT 'flickr', 'f' || g, jsonb_build_object('views', g % 5000) FROM generate_series(1, 20000) AS g;
SELECT popularity.register_media_type('image', 'image') \g /dev/null
SQL
[ "$(q catalog "SELECT count(standardized_popularity) FROM image")" = 0 ] || fail "rows scored before the refresh"

# The README's lines, from pg_cron's database.
psql -X -q -At -v ON_ERROR_STOP=1 -c "$schedule_sql" >/dev/null
jobs=$(q postgres "SELECT string_agg(jobid::text || ':' || jobname, ' ' ORDER BY jobid) FROM cron.job")
echo "scheduled: $jobs"
status_of() { # job name: the first finished run's status
    q postgres "SELECT d.status FROM cron.job_run_details AS d JOIN cron.job AS j USING (jobid)
                WHERE j.jobname = '$1' AND d.status IN ('succeeded', 'failed') ORDER BY d.runid LIMIT 1"
}
for _ in $(seq 1 900); do
    [ -n "$(status_of popularity-image)" ] && [ -n "$(status_of popularity-fold)" ] &&
        [ -n "$(status_of popularity-reconcile)" ] && break
    sleep 0.1
done
details=$(q postgres "SELECT string_agg(j.jobname || ' ' || d.status || ': ' || coalesce(d.return_message, ''), '; ' ORDER BY d.runid)
                      FROM cron.job_run_details AS d JOIN cron.job AS j USING (jobid)")
for job in popularity-image popularity-fold popularity-reconcile; do
    [ "$(status_of "$job")" = succeeded ] || fail "job $job did not succeed: ${details:-no run within 90 s}"
done
q postgres "SELECT cron.unschedule(jobid) FROM cron.job" >/dev/null
wrong=$(q catalog "SELECT count(*) FROM image AS t JOIN popularity.metrics AS m ON m.media_type = 'image' AND m.provider = t.provider
                   WHERE t.standardized_popularity IS DISTINCT FROM standardized_popularity(popularity_metric_value(t.meta_data, m.metric), m.constant)")
scored=$(q catalog "SELECT count(standardized_popularity) FROM image")
run=$(q catalog "SELECT state || ' as ' || requested_by::regrole FROM popularity.refresh_runs ORDER BY run_id DESC LIMIT 1")
[ "$wrong" = 0 ] && [ "$scored" = 20000 ] && [ "$run" = "succeeded as catalog_owner" ] ||
    fail "after the jobs: $wrong wrong, $scored scored, last run $run"
echo "ok: the README's pg_cron lines ran on a socket-only server ($details); $scored rows scored, 0 wrong"
