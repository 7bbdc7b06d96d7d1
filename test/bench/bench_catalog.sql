-- Issue 3 (catalog integration) benchmark, SQL part: constants (refresh_constants against the
-- Openverse percentile_disc queries) and the setup of the upsert measurement (which the driver
-- times, rep by rep, with a VACUUM and a CHECKPOINT between statements; see bench-catalog).
-- Needs the catalog from gen_catalog.sql (tables image, metrics), the extension popularity, and
-- bench_lib.sql. Variables: reps (timed pairs per constants measurement), batch (rows of the upsert
-- statement; half of them conflict with existing rows).
--   psql -v reps=5 -v batch=100000 -f bench_lib.sql -f bench_catalog.sql
\set ON_ERROR_STOP on
SET client_min_messages = notice;
SET jit = off;
SELECT (:'reps')::integer AS bench_reps, (:'batch')::integer AS bench_batch,
       (:'reps')::integer >= 1 AND (:'batch')::integer >= 2 AS bench_args_ok
\gset
\if :bench_args_ok
\else
DO $$ BEGIN RAISE EXCEPTION 'bench_catalog.sql: need reps >= 1 and batch >= 2'; END $$;
\endif
SELECT boot_val::integer AS bench_default_workers FROM pg_settings
WHERE name = 'max_parallel_workers_per_gather'
\gset

-- Ours: the catalog table registered as media type image (trigger, default metrics, which are the
-- generator's metrics: flickr/views, wikimedia/global_usage_count, nappy/downloads,
-- rawpixel/download_count, stocksnap/downloads_raw, percentile 0.85).
SELECT popularity.register_media_type('image', 'image') AS bench_registered \gset
DO $$
BEGIN
    IF EXISTS (SELECT provider, metric, percentile FROM metrics
               EXCEPT SELECT provider, metric, percentile FROM popularity.metrics WHERE media_type = 'image')
       OR EXISTS (SELECT provider, metric, percentile FROM popularity.metrics WHERE media_type = 'image'
                  EXCEPT SELECT provider, metric, percentile FROM metrics) THEN
        RAISE EXCEPTION 'the generated metrics differ from the default metrics of media type image';
    END IF;
END $$;

-- The Openverse way: its constants table, and one percentile_disc query per provider (metric and
-- provider formatted in as literals, as Openverse's SQL does), then val (0 -> 1) and
-- constant = ((1 - p) / p) * val written back. Returns provider=constant,... like ours below.
SET client_min_messages = warning;
DROP TABLE IF EXISTS ov_image_popularity_metrics CASCADE;
SET client_min_messages = notice;
CREATE TABLE ov_image_popularity_metrics (
    provider text PRIMARY KEY,
    metric text NOT NULL,
    percentile double precision NOT NULL,
    val double precision,
    constant double precision
);
INSERT INTO ov_image_popularity_metrics (provider, metric, percentile)
SELECT provider, metric, percentile FROM metrics;

CREATE OR REPLACE FUNCTION ov_refresh_constants() RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    m record;
    pv double precision;
    v double precision;
    result text := '';
BEGIN
    FOR m IN SELECT provider, metric, percentile FROM ov_image_popularity_metrics ORDER BY provider
             FOR UPDATE LOOP
        EXECUTE format('SELECT percentile_disc(%s) WITHIN GROUP (ORDER BY (meta_data->>%L)::float) '
                       'FROM image WHERE provider = %L', m.percentile, m.metric, m.provider) INTO pv;
        IF pv IS NOT NULL THEN
            v := CASE WHEN pv = 0 THEN 1 ELSE pv END;
            UPDATE ov_image_popularity_metrics
            SET val = v, constant = ((1 - m.percentile) / m.percentile) * v
            WHERE provider = m.provider;
        END IF;
        result := result || CASE WHEN result = '' THEN '' ELSE ',' END || m.provider || '='
                  || (SELECT constant FROM ov_image_popularity_metrics WHERE provider = m.provider);
    END LOOP;
    RETURN result;
END $$;

-- refresh_constants writes a provider's row only when something changed: each run (ours and the
-- baseline alike) starts from NULL val/constant, reset untimed, so every timed run computes and
-- writes all five providers.
INSERT INTO bench_measurement (measurement, ours, baseline, max_ratio, target, parallel_workers,
                               ours_setup, baseline_setup)
SELECT format('constants, 5 providers (%s)', label),
       $q$SELECT string_agg(provider || '=' || new_constant, ',' ORDER BY provider)
          FROM popularity.refresh_constants('image') WHERE changed$q$,
       'SELECT ov_refresh_constants()',
       1.0 / 3, '>= 3x faster', workers,
       $q$UPDATE popularity.metrics SET val = NULL, constant = NULL WHERE media_type = 'image'$q$,
       'UPDATE ov_image_popularity_metrics SET val = NULL, constant = NULL'
FROM (VALUES (1, 'default parallel', :bench_default_workers), (2, 'single core', 0)) AS s(n, label, workers)
ORDER BY n;

-- The plans of one provider's percentile with the default parallel settings, once.
SET max_parallel_workers_per_gather = :bench_default_workers;
\echo plan of ours for flickr (default parallel settings), as refresh_constants runs it:
EXPLAIN (COSTS OFF) SELECT popularity_percentile(popularity_metric_value(t.meta_data, 'views'), 0.85)
FROM image AS t WHERE t.provider = 'flickr';
\echo plan of the Openverse query for flickr (default parallel settings):
EXPLAIN (COSTS OFF) SELECT percentile_disc(0.85) WITHIN GROUP (ORDER BY (meta_data->>'views')::float)
FROM image WHERE provider = 'flickr';
-- refresh_constants runs its percentile queries through PL/pgSQL EXECUTE: show, once, the plans
-- they really get (auto_explain, statements of 1 ms or more; constants reset first so it computes
-- and writes them).
\echo refresh_constants('image') once under auto_explain (default parallel settings):
UPDATE popularity.metrics SET val = NULL, constant = NULL WHERE media_type = 'image';
LOAD 'auto_explain';
SET auto_explain.log_level = notice;
SET auto_explain.log_nested_statements = on;
SET auto_explain.log_min_duration = 1;
SELECT count(*) AS providers_changed FROM popularity.refresh_constants('image') WHERE changed;
SET auto_explain.log_min_duration = -1;
SET max_parallel_workers_per_gather = 0;

CALL bench_run(format('constants, 5 providers (%s)', 'default parallel'), :bench_reps);
CALL bench_run(format('constants, 5 providers (%s)', 'single core'), :bench_reps);

-- Bit-identical constants, compared as float8 (val and constant), after the last runs.
SELECT count(*) AS bench_constants_compared,
       count(*) FILTER (WHERE NOT (m.val = o.val AND m.constant = o.constant)) AS bench_constants_differ
FROM popularity.metrics AS m JOIN ov_image_popularity_metrics AS o USING (provider)
WHERE m.media_type = 'image'
\gset
\echo constants compared as float8: :bench_constants_compared providers, :bench_constants_differ differ
SELECT m.provider, m.val, m.constant, o.val AS openverse_val, o.constant AS openverse_constant,
       m.val = o.val AND m.constant = o.constant AS identical
FROM popularity.metrics AS m JOIN ov_image_popularity_metrics AS o USING (provider)
WHERE m.media_type = 'image' ORDER BY m.provider;
CREATE TABLE IF NOT EXISTS bench_check (name text PRIMARY KEY, ok boolean NOT NULL, detail text);
INSERT INTO bench_check VALUES ('constants bit-identical (float8 =)',
    :bench_constants_compared = 5 AND :bench_constants_differ = 0,
    format('%s providers compared, %s differ', :bench_constants_compared, :bench_constants_differ))
ON CONFLICT (name) DO UPDATE SET ok = excluded.ok, detail = excluded.detail;

-- Upsert setup. Openverse's score at ingestion: a SQL function that looks the constant up by
-- provider and scores the incoming meta_data (like Openverse's standardized_popularity function).
CREATE OR REPLACE FUNCTION ov_standardized_image_popularity(provider text, meta_data jsonb)
RETURNS double precision
LANGUAGE sql STABLE RETURNS NULL ON NULL INPUT AS $$
    SELECT ($2 ->> metric)::float / (($2 ->> metric)::float + constant)
    FROM ov_image_popularity_metrics WHERE provider = $1
$$;

-- A copy of the catalog table image without any trigger: same content, same physical order, same
-- indexes; `extra` (a column definition) adds a column after image's, NULL in every row.
CREATE OR REPLACE PROCEDURE bench_copy_image(copy text, extra text DEFAULT NULL)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TABLE IF EXISTS %I', copy);
    EXECUTE format('CREATE TABLE %I (LIKE image INCLUDING DEFAULTS)', copy);
    IF extra IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %I ADD COLUMN %s', copy, extra);
    END IF;
    EXECUTE format('INSERT INTO %I SELECT * FROM image', copy);
    EXECUTE format('ALTER TABLE %I ADD PRIMARY KEY (identifier)', copy);
    EXECUTE format('CREATE UNIQUE INDEX %I ON %I (provider, md5(foreign_identifier))',
                   copy || '_provider_fid_key', copy);
    EXECUTE format('CREATE UNIQUE INDEX %I ON %I (url)', copy || '_url_key', copy);
END $$;

-- Two copies of the catalog, without our trigger: one upserted without any score, one with the
-- lookup function in the statement.
SET client_min_messages = warning;
DROP TABLE IF EXISTS upsert_batch;
CALL bench_copy_image('image_plain');
CALL bench_copy_image('image_ov');
-- A third copy registered as a media type of its own, with our scoring trigger but without the
-- provider-count triggers (issue 6): the scoring trigger's own cost.
CALL bench_copy_image('image_score');
SET client_min_messages = notice;
SELECT popularity.register_media_type('image_score', 'image_score', false) AS bench_score_registered \gset
INSERT INTO popularity.metrics (media_type, provider, metric, percentile)
SELECT 'image_score', provider, metric, percentile FROM popularity.metrics WHERE media_type = 'image';
DROP TRIGGER zz_popularity_stats_insert ON image_score;
DROP TRIGGER zz_popularity_stats_update ON image_score;
DROP TRIGGER zz_popularity_stats_delete ON image_score;
DROP TRIGGER zz_popularity_stats_truncate ON image_score;

-- The upsert's rows: batch/2 existing rows (spread over the table, every provider) with a new
-- metric count, and batch/2 new rows; the incoming meta_data always holds the metric key, so the
-- merged row and the incoming row score the same (ours scores the merged row, Openverse the
-- incoming one) and the two sides' scores can be compared. A JSON null in the incoming meta_data
-- exercises jsonb_strip_nulls.
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
       jsonb_build_object('description', 'Synthetic image, new', 'last_synced', NULL,
                          'license_url', 'https://creativecommons.org/licenses/by/2.0/')
           || CASE WHEN metric IS NULL THEN '{}'::jsonb ELSE jsonb_build_object(metric, n % 5003) END
FROM picked;
ANALYZE upsert_batch;

-- Make the constants current for the upsert (ours: popularity.metrics; Openverse: its table).
SELECT count(*) AS bench_changed FROM popularity.refresh_constants('image') \gset
SELECT count(*) AS bench_score_changed FROM popularity.refresh_constants('image_score') \gset
SELECT ov_refresh_constants() AS bench_ov_constants \gset

-- The upsert statements. %1$I: the table; ours and "no score" are the same statement text.
CREATE TABLE IF NOT EXISTS bench_upsert_statement (side text PRIMARY KEY, tbl text NOT NULL, sql text NOT NULL);
TRUNCATE bench_upsert_statement;
INSERT INTO bench_upsert_statement VALUES
('ours', 'image', format($q$INSERT INTO %1$I AS old (provider, foreign_identifier, url, meta_data, tags,
        updated_on, created_on, removed_from_source)
    SELECT provider, foreign_identifier, url, meta_data, tags, now(), created_on, false FROM upsert_batch
    ON CONFLICT (provider, md5(foreign_identifier)) DO UPDATE
        SET meta_data = jsonb_strip_nulls(old.meta_data || excluded.meta_data), updated_on = now()$q$, 'image')),
('plain', 'image_plain', format($q$INSERT INTO %1$I AS old (provider, foreign_identifier, url, meta_data, tags,
        updated_on, created_on, removed_from_source)
    SELECT provider, foreign_identifier, url, meta_data, tags, now(), created_on, false FROM upsert_batch
    ON CONFLICT (provider, md5(foreign_identifier)) DO UPDATE
        SET meta_data = jsonb_strip_nulls(old.meta_data || excluded.meta_data), updated_on = now()$q$, 'image_plain')),
('score', 'image_score', format($q$INSERT INTO %1$I AS old (provider, foreign_identifier, url, meta_data, tags,
        updated_on, created_on, removed_from_source)
    SELECT provider, foreign_identifier, url, meta_data, tags, now(), created_on, false FROM upsert_batch
    ON CONFLICT (provider, md5(foreign_identifier)) DO UPDATE
        SET meta_data = jsonb_strip_nulls(old.meta_data || excluded.meta_data), updated_on = now()$q$, 'image_score')),
('lookup', 'image_ov', format($q$INSERT INTO %1$I AS old (provider, foreign_identifier, url, meta_data, tags,
        updated_on, created_on, removed_from_source, standardized_popularity)
    SELECT provider, foreign_identifier, url, meta_data, tags, now(), created_on, false,
           ov_standardized_image_popularity(provider, meta_data) FROM upsert_batch
    ON CONFLICT (provider, md5(foreign_identifier)) DO UPDATE
        SET meta_data = jsonb_strip_nulls(old.meta_data || excluded.meta_data), updated_on = now(),
            standardized_popularity = excluded.standardized_popularity$q$, 'image_ov'));

INSERT INTO bench_measurement (measurement, ours, baseline, max_ratio, target)
SELECT format('upsert %s rows: ours vs no score', :bench_batch),
       (SELECT sql FROM bench_upsert_statement WHERE side = 'ours'),
       (SELECT sql FROM bench_upsert_statement WHERE side = 'plain'), 1.08, 'at most 1.08x'
UNION ALL
SELECT format('upsert %s rows: scoring trigger only (no count triggers) vs no score', :bench_batch),
       (SELECT sql FROM bench_upsert_statement WHERE side = 'score'),
       (SELECT sql FROM bench_upsert_statement WHERE side = 'plain'), 1.08, 'at most 1.08x'
UNION ALL
SELECT format('upsert %s rows: ours vs SQL lookup function', :bench_batch),
       (SELECT sql FROM bench_upsert_statement WHERE side = 'ours'),
       (SELECT sql FROM bench_upsert_statement WHERE side = 'lookup'), 1.0, 'faster (ratio <= 1)'
UNION ALL
SELECT format('upsert %s rows: SQL lookup function vs no score (info)', :bench_batch),
       (SELECT sql FROM bench_upsert_statement WHERE side = 'lookup'),
       (SELECT sql FROM bench_upsert_statement WHERE side = 'plain'), NULL, '- (info)';

-- One timed upsert, rolled back: runs the statement of a side (timed: planning and execution,
-- in this backend), then, untimed, a checksum of the scores of the batch's rows as stored, then
-- rolls back and records the sample under every measurement the side takes part in (rep 0: the
-- warm-up, not recorded). The driver VACUUMs the table and CHECKPOINTs after each call, so every
-- statement starts from the same rows, with the dead tuples of the rolled-back one removed.
CREATE OR REPLACE PROCEDURE bench_upsert(which text, rep integer, batch integer)
LANGUAGE plpgsql AS $$
DECLARE
    s bench_upsert_statement;
    started timestamptz;
    ms double precision;
    n bigint;
    checksum text;
BEGIN
    SELECT * INTO STRICT s FROM bench_upsert_statement WHERE side = which;
    started := clock_timestamp();
    EXECUTE s.sql;
    ms := 1000 * extract(epoch FROM clock_timestamp() - started);
    GET DIAGNOSTICS n = ROW_COUNT;
    EXECUTE format($q$SELECT $1 || ' rows, scores md5 ' || md5(string_agg(coalesce(t.standardized_popularity::text, 'null'), ','
                                                           ORDER BY t.provider, t.foreign_identifier))
                      FROM upsert_batch AS b JOIN %I AS t
                        ON t.provider = b.provider AND md5(t.foreign_identifier) = md5(b.foreign_identifier)
                                                   AND t.foreign_identifier = b.foreign_identifier$q$, s.tbl)
        INTO checksum USING n;
    ROLLBACK;
    RAISE NOTICE 'upsert % rows, % rep %: % ms (%)', batch, which, rep, round(ms::numeric, 1), checksum;
    IF rep > 0 THEN
        -- ours vs no score compares the row counts (no score has none); the others the scores.
        INSERT INTO bench_sample (measurement, rep, side, ms, value)
        SELECT m.measurement, rep, x.side, ms,
               CASE WHEN m.measurement LIKE '%vs no score%' THEN split_part(checksum, ',', 1) ELSE checksum END
        FROM bench_measurement AS m
        CROSS JOIN LATERAL (VALUES ('ours', m.ours), ('baseline', m.baseline)) AS x(side, sql)
        WHERE m.measurement LIKE 'upsert %' AND x.sql = s.sql;
    END IF;
    COMMIT;
END $$;
