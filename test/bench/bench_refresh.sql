-- Issue 4 (refresh) benchmark, SQL part: the source tables every measurement copies, and the
-- routines the driver (bench-refresh) calls. Needs the catalog from gen_catalog.sql (table image),
-- the extension popularity and bench_lib.sql. Variable: ingest_rows (rows of each ingestion upsert).
--   psql -v ingest_rows=10000 -f bench_lib.sql -f bench_refresh.sql
\set ON_ERROR_STOP on
SET client_min_messages = notice;
SET jit = off;
SELECT (:'ingest_rows')::integer AS bench_ingest_rows, (:'ingest_rows')::integer >= 1 AS bench_args_ok
\gset
\if :bench_args_ok
\else
DO $$ BEGIN RAISE EXCEPTION 'bench_refresh.sql: need ingest_rows >= 1'; END $$;
\endif

-- The constants of the catalog (register, compute); every copy is scored against them.
SELECT popularity.register_media_type('image', 'image') AS bench_registered \gset
SELECT count(*) AS bench_changed FROM popularity.refresh_constants('image') \gset

-- The Openverse side: its constants table (the same constants: bench-catalog shows they are
-- bit-identical to percentile_disc's) and its SQL lookup function, which scores a stored row.
SET client_min_messages = warning;
DROP TABLE IF EXISTS ov_image_popularity_metrics, src_stale, src_fresh, ingest_batch CASCADE;
SET client_min_messages = notice;
CREATE TABLE ov_image_popularity_metrics AS
SELECT provider, metric, percentile, val, constant FROM popularity.metrics WHERE media_type = 'image';
ALTER TABLE ov_image_popularity_metrics ADD PRIMARY KEY (provider);

CREATE OR REPLACE FUNCTION ov_standardized_image_popularity(provider text, meta_data jsonb)
RETURNS double precision
LANGUAGE sql STABLE RETURNS NULL ON NULL INPUT AS $$
    SELECT ($2 ->> metric)::float / (($2 ->> metric)::float + constant)
    FROM ov_image_popularity_metrics WHERE provider = $1
$$;

-- Sources. src_stale: every row of a provider with a metric carries a stale score, so that a
-- refresh changes every one of them: the score under a constant 1.5x the current one, and 0.5
-- where that is 0 or NULL (value 0 scores 0, and a row without a value scores NULL, under any
-- constant). src_fresh: every row already has its current score (a completed refresh). Both in
-- the catalog's physical order.
CREATE TABLE src_stale (LIKE image INCLUDING DEFAULTS);
CREATE TABLE src_fresh (LIKE image INCLUDING DEFAULTS);
INSERT INTO src_stale (identifier, provider, foreign_identifier, url, meta_data, tags, updated_on,
                       created_on, removed_from_source, standardized_popularity)
SELECT i.identifier, i.provider, i.foreign_identifier, i.url, i.meta_data, i.tags, i.updated_on,
       i.created_on, i.removed_from_source,
       (SELECT coalesce(nullif(standardized_popularity(popularity_metric_value(i.meta_data, m.metric),
                                                       m.constant * 1.5), 0), 0.5)
        FROM popularity.metrics AS m WHERE m.media_type = 'image' AND m.provider = i.provider)
FROM image AS i;
INSERT INTO src_fresh (identifier, provider, foreign_identifier, url, meta_data, tags, updated_on,
                       created_on, removed_from_source, standardized_popularity)
SELECT i.identifier, i.provider, i.foreign_identifier, i.url, i.meta_data, i.tags, i.updated_on,
       i.created_on, i.removed_from_source,
       (SELECT standardized_popularity(popularity_metric_value(i.meta_data, m.metric), m.constant)
        FROM popularity.metrics AS m WHERE m.media_type = 'image' AND m.provider = i.provider)
FROM image AS i;

-- The ingestion upserts: 40 sets of flickr rows (1-20: the baseline without a refresh, 21-40:
-- during the refresh), each ingest_rows existing rows spread over the whole table, with a new view
-- count (every row conflicts: it is re-ingested).
CREATE TABLE ingest_batch AS
SELECT (n - 1) / :bench_ingest_rows + 1 AS try, provider, foreign_identifier, url, tags, created_on,
       jsonb_build_object('views', 5000 + n % 1009, 'last_synced', NULL) AS meta_data
FROM (SELECT provider, foreign_identifier, url, tags, created_on,
             row_number() OVER (ORDER BY md5(foreign_identifier)) AS n
      FROM image WHERE provider = 'flickr') AS f
WHERE n <= 40 * :bench_ingest_rows;
CREATE INDEX ON ingest_batch (try);
ANALYZE ingest_batch;
SELECT count(DISTINCT try) AS bench_ingest_sets FROM ingest_batch \gset
\echo ingestion sets of :bench_ingest_rows flickr rows: :bench_ingest_sets (40 wanted)

DROP TABLE image; -- unregisters media type image (event trigger); copies are registered instead

-- A fresh copy of a source: same rows in the same physical order, the catalog's indexes. The driver
-- then runs VACUUM ANALYZE and CHECKPOINT, untimed.
CREATE OR REPLACE FUNCTION bench_copy(src text, dst text) RETURNS void
LANGUAGE plpgsql SET client_min_messages = warning AS $$
BEGIN
    EXECUTE format('DROP TABLE IF EXISTS %I', dst);
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS)', dst, src);
    EXECUTE format('INSERT INTO %I SELECT * FROM %I', dst, src);
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I PRIMARY KEY (identifier)', dst, dst || '_pkey');
    EXECUTE format('CREATE UNIQUE INDEX %I ON %I (provider, md5(foreign_identifier))', dst || '_provider_fid_key', dst);
    EXECUTE format('CREATE UNIQUE INDEX %I ON %I (url)', dst || '_url_key', dst);
END $$;

-- The scores of a table, as one checksum (float8 text is its shortest exact form).
CREATE OR REPLACE FUNCTION bench_scores(tbl text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    result text;
BEGIN
    EXECUTE format($q$SELECT count(standardized_popularity) || ' scores, md5 '
                          || md5(string_agg(coalesce(standardized_popularity::text, 'null'), ',' ORDER BY identifier))
                      FROM %I$q$, tbl) INTO result;
    RETURN result;
END $$;

-- The one set-based UPDATE: every row whose score changes, rewritten with the plain SQL score.
CREATE OR REPLACE FUNCTION bench_set_update_sql(tbl text) RETURNS text
LANGUAGE sql AS $$
    SELECT format($q$UPDATE %I AS t
        SET standardized_popularity = (t.meta_data ->> c.metric)::float / ((t.meta_data ->> c.metric)::float + c.constant),
            updated_on = now()
        FROM ov_image_popularity_metrics AS c
        WHERE c.provider = t.provider
          AND t.standardized_popularity IS DISTINCT FROM
              (t.meta_data ->> c.metric)::float / ((t.meta_data ->> c.metric)::float + c.constant)$q$, tbl)
$$;

-- The Openverse way (its popularity refresh DAG): per provider, a table of the ids of the
-- provider's rows updated before the cutoff, numbered; then batches of 10,000 row numbers, each an
-- UPDATE of the media table whose rows are fetched by identifier IN (...), scored by the SQL
-- lookup function, updated_on = now(), each batch committed on its own with a 5-minute statement
-- timeout. Every row is rewritten, changed or not.
CREATE OR REPLACE PROCEDURE ov_refresh(tbl text, batch integer DEFAULT 10000)
LANGUAGE plpgsql AS $$
DECLARE
    p record;
    n bigint;
    cutoff timestamptz := now();
BEGIN
    FOR p IN SELECT provider FROM ov_image_popularity_metrics ORDER BY provider LOOP
        IF to_regclass('ov_ids') IS NOT NULL THEN
            DROP TABLE ov_ids;
        END IF;
        EXECUTE format('CREATE TABLE ov_ids AS SELECT row_number() OVER () AS row_id, identifier '
                       'FROM %I WHERE provider = %L AND updated_on < %L', tbl, p.provider, cutoff);
        CREATE INDEX ON ov_ids (row_id);
        SELECT count(*) INTO n FROM ov_ids;
        COMMIT;
        FOR i IN 0 .. (n - 1) / batch LOOP
            SET LOCAL statement_timeout = '5min';
            EXECUTE format('UPDATE %I SET updated_on = now(), '
                           'standardized_popularity = ov_standardized_image_popularity(provider, meta_data) '
                           'WHERE identifier IN (SELECT identifier FROM ov_ids WHERE row_id > $1 AND row_id <= $2 '
                           'FOR UPDATE SKIP LOCKED)', tbl)
                USING i::bigint * batch, (i + 1)::bigint * batch;
            COMMIT;
        END LOOP;
    END LOOP;
    IF to_regclass('ov_ids') IS NOT NULL THEN
        DROP TABLE ov_ids;
    END IF;
END $$;

-- Ingestion tries: each the Openverse upsert of one set of ingest_batch rows into tbl, its own
-- transaction, timed statement by statement.
CREATE TABLE IF NOT EXISTS bench_ingest (phase text, try integer, started timestamptz, ms double precision,
                                         rows bigint, PRIMARY KEY (phase, try));
CREATE OR REPLACE PROCEDURE bench_ingest_tries(tbl text, phase text, first_try integer, last_try integer)
LANGUAGE plpgsql AS $$
DECLARE
    started timestamptz;
    ms double precision;
    n bigint;
BEGIN
    FOR t IN first_try .. last_try LOOP
        started := clock_timestamp();
        EXECUTE format($q$INSERT INTO %I AS old (provider, foreign_identifier, url, meta_data, tags,
                                                 updated_on, created_on, removed_from_source)
            SELECT provider, foreign_identifier, url, meta_data, tags, now(), created_on, false
            FROM ingest_batch WHERE try = $1
            ON CONFLICT (provider, md5(foreign_identifier)) DO UPDATE
                SET meta_data = jsonb_strip_nulls(old.meta_data || excluded.meta_data), updated_on = now()$q$, tbl)
            USING t;
        GET DIAGNOSTICS n = ROW_COUNT;
        ms := 1000 * extract(epoch FROM clock_timestamp() - started);
        INSERT INTO bench_ingest VALUES (phase, t, started, ms, n);
        COMMIT;
    END LOOP;
END $$;

-- Lock waits of the ingestion session (from the server log: log_lock_waits).
CREATE TABLE IF NOT EXISTS bench_lock_wait (at timestamptz, ms double precision);

-- Statistics of each refresh run measured.
CREATE TABLE IF NOT EXISTS bench_run_stats (label text PRIMARY KEY, run_id bigint);
CREATE OR REPLACE VIEW bench_refresh_stats AS
SELECT b.label, r.run_id, r.state, array_to_string(r.providers, ',') AS providers,
       s.rows_scanned, s.rows_updated, s.rows_skipped_locked, s.batches, s.rows_per_second,
       round((1000 * extract(epoch FROM r.finished_at - r.started_at))::numeric) AS run_ms,
       t.tasks, t.workers_batch_ms, t.total_ms_per_batch, t.longest_batch_ms
FROM bench_run_stats AS b
JOIN popularity.refresh_runs AS r USING (run_id)
CROSS JOIN LATERAL (
    SELECT sum(x.rows_scanned) AS rows_scanned, sum(x.rows_updated) AS rows_updated,
           sum(x.rows_skipped_locked) AS rows_skipped_locked, max(x.batches) AS batches,
           sum(x.rows_per_second) AS rows_per_second
    FROM popularity.refresh_status AS x WHERE x.run_id = r.run_id) AS s
CROSS JOIN LATERAL (
    -- Mean duration of one batch as a worker runs it (task time / task batches), and the run's
    -- wall time divided by its batches (workers overlap, so this is the shorter one).
    SELECT count(*) AS tasks, round(max(k.longest_batch_ms)::numeric, 1) AS longest_batch_ms,
           round((1000 * extract(epoch FROM sum(k.finished_at - k.started_at)) / nullif(sum(k.batches), 0))::numeric, 1)
               AS workers_batch_ms,
           round((1000 * extract(epoch FROM r.finished_at - r.started_at) / nullif(sum(k.batches), 0))::numeric, 1)
               AS total_ms_per_batch
    FROM popularity.refresh_tasks AS k WHERE k.run_id = r.run_id) AS t;

INSERT INTO bench_measurement (measurement, ours, baseline, max_ratio, target) VALUES
('full rescore: refresh_popularity vs one set-based UPDATE', $$CALL refresh_popularity('image')$$,
 'UPDATE (set-based, same rows)', 0.85, 'at most 0.85x'),
('full rescore: refresh_popularity vs Openverse batches', $$CALL refresh_popularity('image')$$,
 $$CALL ov_refresh(...)$$, 0.6, 'at most 0.6x'),
('no constant changed, force: refresh_popularity vs Openverse batches',
 $$CALL refresh_popularity('image', force => true)$$, $$CALL ov_refresh(...)$$, 0.05, 'at most 0.05x');
