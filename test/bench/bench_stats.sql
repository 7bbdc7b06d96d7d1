-- Issue 6 (provider counts) benchmark, SQL part: the setup of the upsert measurement, counts on
-- against counts off (which the driver times, rep by rep, with a VACUUM and a CHECKPOINT between
-- statements; see bench-stats). Both sides run the same Openverse-style upsert on the same table
-- `image` (registered: scoring trigger on both sides); "counts off" disables the four counts
-- triggers inside the timed statement's transaction (rolled back), "counts on" runs an equivalent
-- no-op ALTER TABLE, so both sides pay the same relation-cache invalidation.
-- Needs the catalog from gen_catalog.sql, the extension popularity, and bench_lib.sql.
--   psql -v batch=100000 -f bench_lib.sql -f bench_stats.sql
\set ON_ERROR_STOP on
SET client_min_messages = notice;
SET jit = off;
SELECT (:'batch')::integer AS bench_batch, (:'batch')::integer >= 2 AS bench_args_ok \gset
\if :bench_args_ok
\else
DO $$ BEGIN RAISE EXCEPTION 'bench_stats.sql: need batch >= 2'; END $$;
\endif

-- Registered after the catalog was generated: the counts start with a reconciliation.
SELECT popularity.register_media_type('image', 'image') AS bench_registered \gset
SELECT count(*) AS bench_changed FROM popularity.refresh_constants('image') \gset
CALL popularity.reconcile_stats('image');
SELECT popularity.fold_stats() AS bench_folded \gset

-- The upsert's rows, as in bench_catalog.sql: batch/2 existing rows with a new metric count,
-- batch/2 new rows.
SET client_min_messages = warning;
DROP TABLE IF EXISTS upsert_batch;
SET client_min_messages = notice;
CREATE TABLE upsert_batch AS
WITH existing AS (
    SELECT i.provider, i.foreign_identifier, i.url, i.tags, i.created_on, m.metric,
           row_number() OVER (ORDER BY md5(i.provider || '/' || i.foreign_identifier)) AS n
    FROM image AS i LEFT JOIN metrics AS m USING (provider)
), picked AS (
    SELECT * FROM existing WHERE n <= :bench_batch / 2
)
SELECT provider, foreign_identifier, url, tags, created_on,
       jsonb_build_object('description', 'Synthetic image, updated', 'last_synced', NULL)
           || CASE WHEN metric IS NULL THEN '{}'::jsonb ELSE jsonb_build_object(metric, 1000 + n % 997) END
           AS meta_data
FROM picked
UNION ALL
SELECT provider, 'new-' || n, url || '?new=' || n, tags, created_on,
       jsonb_build_object('description', 'Synthetic image, new', 'last_synced', NULL)
           || CASE WHEN metric IS NULL THEN '{}'::jsonb ELSE jsonb_build_object(metric, n % 5003) END
FROM picked;
ANALYZE upsert_batch;

CREATE TABLE IF NOT EXISTS bench_upsert_statement (side text PRIMARY KEY, tbl text NOT NULL, sql text NOT NULL);
TRUNCATE bench_upsert_statement;
INSERT INTO bench_upsert_statement VALUES
('upsert', 'image', $q$INSERT INTO image AS old (provider, foreign_identifier, url, meta_data, tags,
        updated_on, created_on, removed_from_source)
    SELECT provider, foreign_identifier, url, meta_data, tags, now(), created_on, false FROM upsert_batch
    ON CONFLICT (provider, md5(foreign_identifier)) DO UPDATE
        SET meta_data = jsonb_strip_nulls(old.meta_data || excluded.meta_data), updated_on = now()$q$);

-- Wall time, and the backend's CPU time (user + system, from /proc, 10 ms ticks): on a shared,
-- loaded machine the CPU time is the steadier measure of the work the counts add.
INSERT INTO bench_measurement (measurement, ours, baseline, max_ratio, target)
VALUES (format('upsert %s rows: counts on vs counts off (wall)', :bench_batch), 'counts on', 'counts off', 1.10,
        'at most 1.10x'),
       (format('upsert %s rows: counts on vs counts off (backend CPU)', :bench_batch), 'counts on', 'counts off',
        1.10, 'at most 1.10x');
-- The CPU time of this backend so far, in ms (utime + stime of /proc/<pid>/stat).
CREATE OR REPLACE FUNCTION bench_backend_cpu_ms() RETURNS double precision LANGUAGE sql AS $$
    SELECT (f[14]::bigint + f[15]::bigint) * 10.0
    FROM (SELECT string_to_array(split_part(pg_read_file('/proc/' || pg_backend_pid() || '/stat'), ') ', 2), ' ')
                 AS g) AS s,
         LATERAL (SELECT ARRAY['pid', 'comm'] || g AS f) AS x $$;
CREATE TABLE IF NOT EXISTS bench_check (name text PRIMARY KEY, ok boolean NOT NULL, detail text);

-- One timed upsert, rolled back. Untimed inside the transaction: the ALTER TABLE of the side, and
-- (rep 1, counts on) a check that the counts equal a count of the table after the statement.
CREATE OR REPLACE PROCEDURE bench_stats_upsert(counts boolean, rep integer, batch integer)
LANGUAGE plpgsql AS $$
DECLARE
    s bench_upsert_statement;
    started timestamptz;
    ms double precision;
    cpu double precision;
    n bigint;
    journal bigint;
    drift bigint;
    t text;
BEGIN
    SELECT * INTO STRICT s FROM bench_upsert_statement WHERE side = 'upsert';
    FOREACH t IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate'] LOOP
        EXECUTE format('ALTER TABLE image %s TRIGGER %I', CASE WHEN counts THEN 'ENABLE' ELSE 'DISABLE' END,
                       'zz_popularity_stats_' || t);
    END LOOP;
    cpu := bench_backend_cpu_ms();
    started := clock_timestamp();
    EXECUTE s.sql;
    ms := 1000 * extract(epoch FROM clock_timestamp() - started);
    cpu := bench_backend_cpu_ms() - cpu;
    GET DIAGNOSTICS n = ROW_COUNT;
    SELECT count(*) INTO journal FROM popularity.stats_journal WHERE media_type = 'image';
    IF counts AND rep = 1 THEN
        SELECT count(*) INTO drift FROM (
            (SELECT provider, rows, rows_with_metric, rows_scored FROM popularity.provider_stats
             WHERE media_type = 'image'
             EXCEPT
             SELECT i.provider, count(*), count(popularity_metric_value(i.meta_data, m.metric)),
                    count(i.standardized_popularity)
             FROM image AS i LEFT JOIN metrics AS m USING (provider) GROUP BY i.provider)
            UNION ALL
            (SELECT i.provider, count(*), count(popularity_metric_value(i.meta_data, m.metric)),
                    count(i.standardized_popularity)
             FROM image AS i LEFT JOIN metrics AS m USING (provider) GROUP BY i.provider
             EXCEPT
             SELECT provider, rows, rows_with_metric, rows_scored FROM popularity.provider_stats
             WHERE media_type = 'image')) AS d;
    END IF;
    ROLLBACK;
    RAISE NOTICE 'upsert % rows, counts %, rep %: % ms, backend CPU % ms (% rows, % journal rows)', batch,
        CASE WHEN counts THEN 'on' ELSE 'off' END, rep, round(ms::numeric, 1), round(cpu::numeric), n, journal;
    IF drift IS NOT NULL THEN
        INSERT INTO bench_check VALUES ('counts exact after the upsert', drift = 0,
                                        format('%s keys differ from a count of the table', drift))
        ON CONFLICT (name) DO UPDATE SET ok = excluded.ok, detail = excluded.detail;
    END IF;
    IF rep > 0 THEN
        INSERT INTO bench_sample (measurement, rep, side, ms, value)
        SELECT m.measurement, rep, CASE WHEN counts THEN 'ours' ELSE 'baseline' END,
               CASE WHEN m.measurement LIKE '%(wall)' THEN ms ELSE cpu END, n || ' rows'
        FROM bench_measurement AS m WHERE m.measurement LIKE 'upsert %counts on vs counts off%';
    END IF;
    COMMIT;
END $$;
