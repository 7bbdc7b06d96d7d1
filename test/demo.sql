-- The demo's SQL, run by test/demo (`psql -v rows=N -v cron_sql=FILE < test/demo.sql`, from the
-- repository's root, on the throwaway server test/demo started): every step prints why, then the
-- exact SQL it sends (ECHO queries), then what the server answers.
--   0 roles      the catalog belongs to a LOGIN role with operator rights, as in the README
--   1 catalog    a sample Openverse-like catalog (test/bench/gen_catalog.sql)
--   2 register   what register_media_type adds
--   3 ingest     an upsert batch
--   4 refresh    CALL refresh_popularity with live progress
--   5 cancel     wait => false, refresh_status, cancel_refresh, resume; Ctrl-C on a waiting CALL
--   6 tags       filter_tags (a job of the background workers): dry run, then in place
--   7 counts     provider_stats and freshness
--   8 pg_cron    the README's "Scheduling with pg_cron" lines, from pg_cron's database
--   9 LISTEN     the JSON notifications of a constant change and of a finished run
\set ON_ERROR_STOP on
\set SHOW_CONTEXT never
\pset footer off

\echo
\echo '=== 0. Roles: who owns and operates the catalog ================================================'
\echo 'The catalog lives in database "catalog", owned by role catalog_owner (LOGIN: refresh workers and'
\echo 'pg_cron jobs run as it). A superuser creates the extension and grants it the operator rights;'
\echo 'everything after this runs as catalog_owner, with no superuser rights.'
\set ECHO queries
CREATE ROLE catalog_owner LOGIN;
CREATE DATABASE catalog OWNER catalog_owner;
\echo '\\c catalog'
\c catalog
CREATE EXTENSION popularity;
SELECT popularity.grant_operator('catalog_owner');
\echo '\\c catalog catalog_owner'
\c catalog catalog_owner
SELECT current_database(), current_user;

\set ECHO none
\echo
\echo '=== 1. A sample catalog ========================================================================'
\echo 'test/bench/gen_catalog.sql creates table "image" shaped like Openverse''s, with' :rows 'rows: 7 providers,'
\echo 'skewed view/download counts in meta_data (some missing or null), and tags of which ~85% of rows'
\echo 'carry one the tag rules drop. (Its SQL is long and not echoed; it also makes a "metrics" table'
\echo 'for benchmarks, which the demo drops: the extension keeps its own.)'
\set tags dirty
\i test/bench/gen_catalog.sql
DROP TABLE metrics;
RESET client_min_messages;
RESET max_parallel_workers_per_gather;
\set ECHO queries

\echo
\echo '=== 2. Register the table ======================================================================'
\echo 'register_media_type checks the table''s columns (provider, meta_data, updated_on), adds the column'
\echo 'standardized_popularity, installs the C++ triggers (scoring at ingestion, per-provider counts) and,'
\echo 'for "image" and "audio", the Openverse default metrics: which meta_data key each provider is scored'
\echo 'by, at which percentile. No constant exists yet: the first refresh computes them.'
SELECT popularity.register_media_type('image', 'image');
SELECT tgname AS trigger_added, CASE WHEN tgtype & 1 = 1 THEN 'per row' ELSE 'per statement' END AS fires
FROM pg_trigger WHERE tgrelid = 'image'::regclass AND NOT tgisinternal ORDER BY tgname;
SELECT provider, metric, percentile, constant FROM popularity.metrics WHERE media_type = 'image' ORDER BY provider;
\echo 'The table already had rows: its per-provider counts start with one reconciliation scan (it returns'
\echo 'how many counts it corrected; its NOTICEs, one per provider, are silenced here).'
SET client_min_messages = warning;
CALL popularity.reconcile_stats('image');
RESET client_min_messages;

\echo
\echo '=== 3. Ingest: one upsert batch ================================================================'
\echo 'A crawler delivers 20000 flickr records: 10000 it delivered before (10 more views each, merged'
\echo 'into the stored meta_data on conflict) and 10000 new ones. The row trigger scores each row as stored,'
\echo 'with the provider''s current constant. There is none yet, so these rows stay unscored (NULL) until'
\echo 'the refresh of step 4; after it, ingestion scores right away (shown there).'
WITH batch (foreign_identifier, views) AS (
    (SELECT foreign_identifier, coalesce(popularity_metric_value(meta_data, 'views'), 0) + 10
     FROM image WHERE provider = 'flickr' ORDER BY url LIMIT 10000)
    UNION ALL
    SELECT 'new-' || g, g % 5000 FROM generate_series(1, 10000) AS g
), upserted AS (
    INSERT INTO image AS old (provider, foreign_identifier, url, meta_data, tags, updated_on)
    SELECT 'flickr', foreign_identifier, 'https://example.org/demo/' || foreign_identifier,
           jsonb_build_object('views', views), '[]', now()
    FROM batch
    ON CONFLICT (provider, md5(foreign_identifier))
    DO UPDATE SET meta_data = old.meta_data || excluded.meta_data, updated_on = now()
    RETURNING xmax = 0 AS inserted, standardized_popularity
)
SELECT count(*) AS upserted, count(*) FILTER (WHERE inserted) AS inserted,
       count(*) FILTER (WHERE NOT inserted) AS merged_on_conflict,
       count(standardized_popularity) AS scored
FROM upserted;

\echo
\echo '=== 4. Refresh, with live progress ============================================================='
\echo 'CALL refresh_popularity computes every provider''s constant exactly (its percentile of the metric,'
\echo 'one pass over the table) and commits them; background workers then rescore the rows of every'
\echo 'provider whose constant changed, in block-range batches of one committed transaction each. The'
\echo 'CALL waits, reporting progress every popularity.progress_interval (5 s by default; 1 s here).'
SET popularity.progress_interval = '1s';
CALL refresh_popularity('image');
SELECT provider, metric, val AS percentile_value, constant FROM popularity.metrics
WHERE media_type = 'image' ORDER BY provider;
SELECT run_id, provider, state, blocks_done, blocks_total, rows_scanned, rows_updated, batches, rows_per_second
FROM popularity.refresh_status ORDER BY run_id, provider;
\echo 'From now on a row is scored as it is stored, with the constant its provider has now:'
INSERT INTO image AS old (provider, foreign_identifier, url, meta_data, tags, updated_on)
VALUES ('flickr', 'new-1', 'https://example.org/demo/new-1', '{"views": 69}', '[]', now()),
       ('flickr', 'new-20001', 'https://example.org/demo/new-20001', '{"views": 500}', '[]', now()),
       ('wikimedia', 'File:Demo.jpg', 'https://example.org/demo/File:Demo.jpg', '{"global_usage_count": 3}', '[]', now())
ON CONFLICT (provider, md5(foreign_identifier))
DO UPDATE SET meta_data = old.meta_data || excluded.meta_data, updated_on = now()
RETURNING provider, foreign_identifier, meta_data, standardized_popularity;

\echo
\echo '=== 5. Cancel and resume ======================================================================='
\echo 'An operator changes flickr''s percentile from 0.85 to 0.80: flickr''s constant changes, so its rows'
\echo 'must be rescored. This time the CALL does not wait (wait => false): the run goes on in the'
\echo 'background whatever happens to this session, and popularity.refresh_status follows it.'
SELECT popularity.set_metric('image', 'flickr', 'views', 0.80);
CALL refresh_popularity('image', wait => false);
SELECT max(run_id) AS run FROM popularity.refresh_runs WHERE media_type = 'image' \gset
\echo '-- \\gset: run =' :run
SELECT pg_sleep(1.5);
SELECT run_id, provider, state, blocks_done, blocks_total, rows_scanned, rows_updated
FROM popularity.refresh_status WHERE run_id = :run;
\echo 'cancel_refresh stops it between two batches (it returns the runs it cancelled). Every committed'
\echo 'batch stays done, and blocks_done stops moving:'
SELECT popularity.cancel_refresh(:run);
SELECT pg_sleep(1);
SELECT run_id, provider, state, blocks_done, blocks_total, rows_updated, error
FROM popularity.refresh_status WHERE run_id = :run;
\set ECHO none
SELECT state = 'cancelled' AS cancelled FROM popularity.refresh_runs WHERE run_id = :run \gset
\set ECHO queries
\if :cancelled
\echo 'resume_refresh continues it from its last committed batch; with wait => true the CALL waits like'
\echo 'refresh_popularity. Cancelling a waiting CALL (psql''s Ctrl-C) cancels its run too: whoever waited'
\echo 'gave up on it. Here a second session sends, 2 s after the CALL starts, the same cancel request'
\echo 'as Ctrl-C, for the session whose application_name is demo_ctrl_c:'
\echo '    SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = ''demo_ctrl_c'' AND state = ''active'';'
SET application_name = 'demo_ctrl_c';
\! (sleep 2; psql -X -q -At -d catalog -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'demo_ctrl_c' AND state = 'active' AND query LIKE 'CALL popularity.resume_refresh%'") >/dev/null 2>&1 &
\set ON_ERROR_STOP off
CALL popularity.resume_refresh(:run, wait => true);
\set ON_ERROR_STOP on
RESET application_name;
\set ECHO none
SELECT state = 'cancelled' AS cancelled FROM popularity.refresh_runs WHERE run_id = :run \gset
\set ECHO queries
\if :cancelled
SELECT run_id, provider, state, blocks_done, blocks_total, rows_updated, error
FROM popularity.refresh_status WHERE run_id = :run;
\echo 'As the error''s hint says, resume it and let it finish:'
CALL popularity.resume_refresh(:run, wait => true);
\endif
\else
\echo '(the run finished before it could be cancelled: the catalog is small)'
\endif
SELECT run_id, provider, state, blocks_done, blocks_total, rows_scanned, rows_updated, batches
FROM popularity.refresh_status WHERE run_id = :run;

\echo
\echo '=== 6. Filter tags ============================================================================='
\echo 'The tag rules (Openverse''s: minimum accuracy 0.90, exact and substring denylists, filtered tag'
\echo 'providers, machine labels) drop tags from the "tags" column. filter_tags is the second job of the'
\echo 'refresh''s background workers: the same block-range batches of one committed transaction each, rows'
\echo 'that ingestion holds skipped and revisited, the same status view, cancel and resume. Like'
\echo 'refresh_popularity, the CALL waits and reports progress. A dry run counts what the rules would'
\echo 'drop, per rule (verdict), without writing:'
CALL filter_tags('image', dry_run => true);
SELECT run_id, job, dry_run, state, rows_scanned, rows_updated AS rows_that_would_change,
       counters AS tags_dropped_per_verdict
FROM popularity.refresh_status WHERE job = 'filter_tags' ORDER BY run_id DESC LIMIT 1;
\echo 'Then in place, writing only the rows that change. Each batch also records, in its own transaction,'
\echo 'what it removed from each row (popularity.tag_filter_removed): popularity.undo_filter_tags(run_id)'
\echo 'would put those tags back on every row not changed since.'
CALL filter_tags('image');
SELECT run_id, dry_run, state, blocks_done, blocks_total, rows_scanned, rows_updated, batches, counters
FROM popularity.refresh_status WHERE job = 'filter_tags' ORDER BY run_id;
SELECT run_id, count(*) AS rows_recorded, sum(jsonb_array_length(removed)) AS tags_recorded
FROM popularity.tag_filter_removed_rows GROUP BY run_id;

\echo
\echo '=== 7. Counts and freshness ===================================================================='
\echo 'Per-provider counts are kept by statement triggers that append deltas to a journal; fold_stats'
\echo '(pg_cron runs it every minute, step 8) folds the journal into the counts. Reading them never'
\echo 'scans the table; the second query is the scan they spare, for comparison:'
SELECT popularity.fold_stats();
SELECT provider, rows, rows_with_metric, rows_scored, rows_invalid_metric, rows_missing_metric, reconcile_pending
FROM popularity.provider_stats WHERE media_type = 'image' ORDER BY provider;
SELECT provider, count(*) AS rows_by_scan, count(standardized_popularity) AS scored_by_scan
FROM image GROUP BY provider ORDER BY provider;
\echo 'Freshness: per provider, the fraction of rows whose stored score differs from the score under the'
\echo 'current constant, estimated from a ~10000-row sample with exact 99% (Clopper-Pearson) bounds:'
SELECT provider, rows_counted, rows_examined, rows_stale, round(stale_upper::numeric, 4) AS stale_upper_99
FROM popularity.freshness('image', seed => 0.5) ORDER BY provider;
\echo 'refresh_constants alone recomputes constants without rescoring (ingestion uses them at once).'
\echo 'After changing nappy''s percentile that way, nappy''s stored scores are stale, and freshness says so:'
SELECT popularity.set_metric('image', 'nappy', 'downloads', 0.80);
SELECT provider, old_constant, new_constant, changed FROM popularity.refresh_constants('image', ARRAY['nappy']);
SELECT provider, rows_examined, rows_stale, round(stale_lower::numeric, 4) AS stale_lower_99,
       round(stale_upper::numeric, 4) AS stale_upper_99, estimated_stale_rows
FROM popularity.freshness('image', seed => 0.5) WHERE provider IN ('nappy', 'flickr') ORDER BY provider;

\echo
\echo '=== 8. Schedule with pg_cron ==================================================================='
\echo 'pg_cron keeps its jobs in one database (cron.database_name = ''postgres'' on this server) and runs'
\echo 'each in the database it names, as the role it names. So, as the README says, a superuser'
\echo 'schedules them from that database with cron.schedule_in_database. These are the README''s lines'
\echo '("Scheduling with pg_cron"), read from README.md: a monthly refresh, folding the counts every'
\echo 'minute, a daily reconciliation.'
\echo '\\c postgres postgres'
\c postgres postgres
CREATE EXTENSION pg_cron;
\i :cron_sql
SELECT jobid, jobname, schedule, database, username, command FROM cron.job ORDER BY jobid;
\echo '(test/demo looks at the first run of popularity-fold in cron.job_run_details at the end)'

\echo
\echo '=== 9. LISTEN for notifications ================================================================'
\echo 'The extension sends NOTIFY popularity with a JSON payload when constants change and when a run'
\echo 'ends. psql prints a notification after the command during which it arrived. This session'
\echo 'listens, puts nappy''s percentile back to 0.85 and refreshes: one constants_changed, then one'
\echo 'refresh_finished (sent by the background worker that finished the run).'
\echo '\\c catalog catalog_owner'
\c catalog catalog_owner
SET popularity.progress_interval = '1s';
LISTEN popularity;
SELECT popularity.set_metric('image', 'nappy', 'downloads', 0.85);
CALL refresh_popularity('image');
SELECT run_id, provider, state, rows_scanned, rows_updated FROM popularity.refresh_status
WHERE run_id = (SELECT max(run_id) FROM popularity.refresh_runs);
SELECT provider, rows_examined, rows_stale, round(stale_upper::numeric, 4) AS stale_upper_99
FROM popularity.freshness('image', seed => 0.5) WHERE provider = 'nappy';
UNLISTEN popularity;
\set ECHO none
