-- refresh_popularity: background workers rescore in committed batches; status, cancel, resume.
CREATE FUNCTION pg_temp.try(statement text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    hint text;
BEGIN
    EXECUTE statement;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS hint = PG_EXCEPTION_HINT;
    RETURN SQLSTATE || ': ' || SQLERRM || coalesce(' (hint: ' || nullif(hint, '') || ')', '');
END $$;
-- Waits (up to 60 s) for a run to end; returns its state.
CREATE FUNCTION pg_temp.wait_run(run bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    s text;
BEGIN
    FOR i IN 1..1200 LOOP
        SELECT state INTO s FROM popularity.refresh_runs WHERE run_id = run;
        IF s IN ('succeeded', 'failed', 'cancelled') THEN
            RETURN s;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN 'timed out in state ' || s;
END $$;
-- Rows whose stored score is not the one their provider's current constant gives.
CREATE FUNCTION pg_temp.wrong_scores(tbl regclass, mt text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    EXECUTE format('SELECT count(*) FROM %s AS t LEFT JOIN popularity.metrics AS m
                    ON m.media_type = $1 AND m.provider = t.provider
                    WHERE t.standardized_popularity IS DISTINCT FROM
                          standardized_popularity(popularity_metric_value(t.meta_data, m.metric), m.constant)', tbl)
        INTO n USING mt;
    RETURN n;
END $$;

CREATE TABLE image (
    identifier uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider varchar(80),
    foreign_identifier text,
    meta_data jsonb,
    updated_on timestamptz NOT NULL DEFAULT now()
);
-- 30000 rows loaded before registration: unscored. Constant for flickr views (p 0.85): 850.
INSERT INTO image (provider, foreign_identifier, meta_data, updated_on)
SELECT (ARRAY['flickr', 'wikimedia', 'smithsonian'])[1 + g % 3], 'f' || g,
       jsonb_build_object('views', g % 1000, 'global_usage_count', g % 7, 'title', repeat('x', 200)),
       '2020-01-01'
FROM generate_series(1, 30000) AS g;
SELECT popularity.register_media_type('image', 'image');

-- Errors.
SELECT pg_temp.try($$CALL refresh_popularity('video')$$);
CREATE TABLE nokey (provider text, meta_data jsonb, updated_on timestamptz NOT NULL DEFAULT now());
SELECT popularity.register_media_type('nokey', 'nokey', false);
SELECT pg_temp.try($$CALL refresh_popularity('nokey')$$);
SELECT pg_temp.try($$SELECT popularity.resume_refresh(12345)$$);
DROP TABLE nokey;

-- A full refresh: constants, then every row of the changed providers rescored by the workers.
SELECT pg_temp.wrong_scores('image', 'image') AS wrong_before;
CALL refresh_popularity('image');
SELECT provider, val, constant FROM popularity.metrics WHERE constant IS NOT NULL ORDER BY 1;
-- (rows_scanned can exceed the provider's rows: a rewritten row that lands in a block not yet walked is
-- seen again, already right, and not rewritten.)
SELECT run_id, provider, state, blocks_done = blocks_total AS all_blocks, rows_scanned >= 10000 AS all_scanned, rows_updated,
       rows_skipped_locked, rows_pending_revisit, batches > 0 AS batched, error
FROM popularity.refresh_status ORDER BY run_id, provider;
SELECT pg_temp.wrong_scores('image', 'image') AS wrong_after;
SELECT count(*) FILTER (WHERE updated_on > '2020-01-01') AS touched,
       count(*) FILTER (WHERE provider IN ('flickr', 'wikimedia')) AS scored_providers_rows
FROM image;
SELECT state, count(*) FROM popularity.refresh_tasks GROUP BY 1;

-- Nothing changed: no run work, a notice says so; force rescans but rewrites nothing.
CALL refresh_popularity('image');
CALL refresh_popularity('image', force => true);
SELECT run_id, provider, state, rows_scanned, rows_updated FROM popularity.refresh_status WHERE run_id > 1
ORDER BY run_id, provider;

-- A constant change for one provider rescores only that provider's rows.
SELECT popularity.set_metric('image', 'wikimedia', 'global_usage_count', 0.5);
CALL refresh_popularity('image');
SELECT run_id, provider, state, rows_scanned >= 10000 AS all_scanned, rows_updated FROM popularity.refresh_status WHERE run_id > 3
ORDER BY run_id, provider;
SELECT pg_temp.wrong_scores('image', 'image') AS wrong_after_change;

-- Tolerance: relative changes below popularity.score_tolerance are left alone.
ALTER SYSTEM SET popularity.score_tolerance = 0.01;
SELECT pg_reload_conf();
UPDATE popularity.metrics SET percentile = 0.8500001 WHERE media_type = 'image' AND provider = 'flickr';
CALL refresh_popularity('image', ARRAY['flickr']);
SELECT provider, rows_scanned, rows_updated FROM popularity.refresh_status WHERE run_id = 5;
ALTER SYSTEM RESET popularity.score_tolerance;
SELECT pg_reload_conf();
UPDATE popularity.metrics SET percentile = 0.85 WHERE media_type = 'image' AND provider = 'flickr';
CALL refresh_popularity('image', ARRAY['flickr']);
SELECT pg_temp.wrong_scores('image', 'image') AS wrong_after_tolerance;

-- One active run per media type; without wait the call returns at once with the run queued.
SELECT popularity.set_metric('image', 'flickr', 'views', 0.5);
CALL refresh_popularity('image', wait => false);
SELECT pg_temp.try($$CALL refresh_popularity('image')$$);
SELECT pg_temp.wait_run(7);
SELECT pg_temp.wrong_scores('image', 'image') AS wrong_after_no_wait;

-- It commits between steps, so it refuses to run inside a transaction block.
BEGIN;
SELECT pg_temp.try($$CALL refresh_popularity('image')$$);
ROLLBACK;

-- Cancel stops a run between batches; its progress is kept and resume finishes it.
ALTER SYSTEM SET popularity.batch_blocks = 4;
SELECT pg_reload_conf();
SELECT popularity.set_metric('image', 'flickr', 'views', 0.7);
CALL refresh_popularity('image', wait => false);
SELECT popularity.cancel_refresh(media_type => 'image');
SELECT state, error LIKE 'cancelled by %' AS cancelled_by_someone FROM popularity.refresh_runs WHERE run_id = 8;
-- Workers stop between batches: wait until none holds a task, then no task of the run is running.
DO $$
BEGIN
    FOR i IN 1..600 LOOP
        EXIT WHEN NOT EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'popularity refresh worker');
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT count(*) FILTER (WHERE next_block < end_block) > 0 AS stopped_mid_way FROM popularity.refresh_tasks WHERE run_id = 8;
SELECT popularity.resume_refresh(8);
SELECT pg_temp.wait_run(8);
SELECT pg_temp.wrong_scores('image', 'image') AS wrong_after_resume;
SELECT pg_temp.try($$SELECT popularity.resume_refresh(8)$$);
ALTER SYSTEM RESET popularity.batch_blocks;
SELECT pg_reload_conf();
SELECT count(*) AS cancelled_nothing_active FROM popularity.cancel_refresh();

-- An error in a batch rolls that batch back, is recorded on the run, and makes the waiting CALL
-- raise; once the cause is fixed, resume finishes the run.
CREATE FUNCTION pg_temp.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.foreign_identifier = 'f777' THEN
        RAISE EXCEPTION 'row f777 is frozen' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse BEFORE UPDATE ON image FOR EACH ROW EXECUTE FUNCTION pg_temp.refuse();
SELECT popularity.set_metric('image', 'flickr', 'views', 0.65);
\set VERBOSITY default
\set SHOW_CONTEXT never
CALL refresh_popularity('image');
\set SHOW_CONTEXT errors
SELECT run_id, state, error FROM popularity.refresh_runs ORDER BY run_id DESC LIMIT 1;
SELECT count(*) FILTER (WHERE state = 'failed') > 0 AS a_task_failed FROM popularity.refresh_tasks WHERE run_id = 9;
SELECT standardized_popularity IS DISTINCT FROM standardized_popularity(popularity_metric_value(meta_data, 'views'),
       (SELECT constant FROM popularity.metrics WHERE media_type = 'image' AND provider = 'flickr'))
       AS frozen_row_still_stale
FROM image WHERE foreign_identifier = 'f777';
DROP TRIGGER refuse ON image;
SELECT popularity.resume_refresh(9);
SELECT pg_temp.wait_run(9);
SELECT pg_temp.wrong_scores('image', 'image') AS wrong_after_fix;

-- popularity.batch_statement_timeout bounds each batch: a batch slower than it is cancelled and
-- rolled back, retried (popularity.batch_retries times: here once) and, failing again, recorded as
-- the run's error.
CREATE FUNCTION pg_temp.slow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.foreign_identifier = 'f777' THEN
        PERFORM pg_sleep(2);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER slow BEFORE UPDATE ON image FOR EACH ROW EXECUTE FUNCTION pg_temp.slow();
ALTER SYSTEM SET popularity.batch_statement_timeout = 200;
ALTER SYSTEM SET popularity.batch_retries = 1;
SELECT pg_reload_conf();
SELECT popularity.set_metric('image', 'flickr', 'views', 0.6);
\set SHOW_CONTEXT never
CALL refresh_popularity('image');
\set SHOW_CONTEXT errors
SELECT run_id, state, error FROM popularity.refresh_runs ORDER BY run_id DESC LIMIT 1;
SELECT retries > 0 AS retried, last_error FROM popularity.refresh_status WHERE run_id = 10;
ALTER SYSTEM RESET popularity.batch_statement_timeout;
ALTER SYSTEM RESET popularity.batch_retries;
SELECT pg_reload_conf();
DROP TRIGGER slow ON image;
SELECT popularity.resume_refresh(10);
SELECT pg_temp.wait_run(10);
SELECT pg_temp.wrong_scores('image', 'image') AS wrong_after_timeout;

-- Workers connect as the calling role, which must be able to log in.
CREATE ROLE popularity_nologin NOLOGIN;
SELECT popularity.grant_operator('popularity_nologin');
GRANT SELECT, UPDATE ON image TO popularity_nologin;
SET ROLE popularity_nologin;
SELECT pg_temp.try($$CALL refresh_popularity('image')$$);
RESET ROLE;
-- The queue trusts no caller-written identity: a run is requested by the role that inserts it, for
-- the registered table of its media type, with its providers' current constants (and their
-- versions), whatever the row says; that identity never changes.
BEGIN;
INSERT INTO popularity.refresh_runs (media_type, media_table, key_column, providers, requested_by,
                                     constants, constant_versions)
VALUES ('image', 'pg_class', 'identifier', '{flickr,unknown}', 'popularity_nologin'::regrole,
        '{1,2}', ARRAY[gen_random_uuid(), gen_random_uuid()])
RETURNING media_table, requested_by::regrole,
          constants[1] = (SELECT constant FROM popularity.metrics WHERE media_type = 'image' AND provider = 'flickr')
              AND constants[2] IS NULL AS current_constants,
          constant_versions[1] = (SELECT constant_version FROM popularity.metrics
                                  WHERE media_type = 'image' AND provider = 'flickr')
              AND constant_versions[2] IS NULL AS current_versions;
SAVEPOINT s;
UPDATE popularity.refresh_runs SET requested_by = 'popularity_nologin'::regrole
WHERE run_id = (SELECT max(run_id) FROM popularity.refresh_runs);
ROLLBACK TO s;
UPDATE popularity.refresh_runs SET constant_versions = '{}'
WHERE run_id = (SELECT max(run_id) FROM popularity.refresh_runs);
ROLLBACK TO s;
INSERT INTO popularity.refresh_runs (media_type, media_table, key_column, providers, requested_by)
VALUES ('no such type', 'image', 'identifier', '{flickr}', 10);
ROLLBACK;
-- A role that may not update the table cannot queue a run for it, even with rights on the queue.
REVOKE UPDATE ON image FROM popularity_nologin;
SET ROLE popularity_nologin;
INSERT INTO popularity.refresh_runs (media_type, media_table, key_column, providers, requested_by)
VALUES ('image', 'image', 'identifier', '{flickr}', 10);
RESET ROLE;
-- A role that cannot log in cannot run workers (they would stop at connection, with the reason
-- in the server log only): the scheduler fails the task with the reason, starting no worker.
GRANT SELECT, UPDATE ON image TO popularity_nologin;
SET ROLE popularity_nologin;
INSERT INTO popularity.refresh_runs (media_type, media_table, key_column, providers, requested_by)
VALUES ('image', 'image', 'identifier', '{flickr}', 10) RETURNING run_id AS forged \gset
RESET ROLE;
REVOKE ALL ON image FROM popularity_nologin;
SELECT popularity.revoke_operator('popularity_nologin');
INSERT INTO popularity.refresh_tasks (run_id, segment, first_block, end_block, next_block)
VALUES (:forged, 0, 0, 10, 0);
SELECT popularity._wake_scheduler();
SELECT pg_temp.wait_run(:forged);
SELECT t.attempts, t.error, r.error = t.error AS run_has_the_error
FROM popularity.refresh_tasks AS t JOIN popularity.refresh_runs AS r USING (run_id) WHERE t.run_id = :forged;
DROP ROLE popularity_nologin;

-- Stale state comes from stored state: a constant changed outside a CALL (set_metric, then
-- refresh_constants on its own) leaves its provider stale until a succeeded run rescored it with
-- that constant, so the next CALL rescores it; freshness() reports the same. A constant's version
-- changes with the constant only, whatever an UPDATE says.
SELECT popularity.set_metric('image', 'wikimedia', 'global_usage_count', 0.6);
SELECT provider, changed FROM popularity.refresh_constants('image') WHERE changed;
UPDATE popularity.metrics SET constant_version = gen_random_uuid(), last_error = NULL
WHERE media_type = 'image' AND provider = 'flickr';
SELECT provider, stale, rescored_constant = constant AS rescored_with_current
FROM popularity.rescore_state WHERE media_type = 'image' AND constant IS NOT NULL ORDER BY 1;
SELECT provider, rows_stale > 0 AS rows_stale, rescore_pending
FROM popularity.freshness('image', exact => true) WHERE provider IN ('flickr', 'wikimedia') ORDER BY 1;
CALL refresh_popularity('image');
SELECT provider, stale, rescored_constant = constant AS rescored_with_current
FROM popularity.rescore_state WHERE media_type = 'image' AND constant IS NOT NULL ORDER BY 1;
SELECT provider, rows_stale, rescore_pending
FROM popularity.freshness('image', exact => true) WHERE provider IN ('flickr', 'wikimedia') ORDER BY 1;
SELECT pg_temp.wrong_scores('image', 'image') AS wrong_after_outside_change;
CALL refresh_popularity('image');

-- The history is kept; the status view reads it.
SELECT run_id, media_type, providers, forced, state FROM popularity.refresh_runs ORDER BY run_id;

-- Readers of the table can read the status but not change constants; others see nothing.
CREATE ROLE popularity_reader;
SET ROLE popularity_reader;
SELECT count(*) AS status_rows_of_unreadable_tables FROM popularity.refresh_status;
RESET ROLE;
GRANT SELECT ON image TO popularity_reader;
SET ROLE popularity_reader;
SELECT count(*) > 0 AS can_read_status FROM popularity.refresh_status;
SELECT pg_temp.try($$UPDATE popularity.metrics SET constant = 1$$);
RESET ROLE;
REVOKE ALL ON image FROM popularity_reader;
DROP ROLE popularity_reader;
DROP TABLE image;
