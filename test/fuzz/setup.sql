-- Fuzzing database: the extension, an Openverse-shaped `image` catalog registered as media type
-- `image`, a private `secret` catalog the plain role must not read, a plain LOGIN role
-- `fuzz_user`, and one object of every relkind for the targeted fuzzer's regclass arguments.
-- Run as a superuser in a fresh database: psql -v ON_ERROR_STOP=1 -v rows=3000 -f setup.sql
\if :{?rows}
\else
\set rows 3000
\endif
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS popularity;

DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'fuzz_user') THEN
        CREATE ROLE fuzz_user LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
    END IF;
END $$;
GRANT CREATE ON SCHEMA public TO fuzz_user;

-- The catalog ---------------------------------------------------------------------------------------
CREATE TABLE image (
    identifier uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider varchar(80),
    foreign_identifier text,
    meta_data jsonb,
    tags jsonb,
    updated_on timestamptz NOT NULL DEFAULT now(),
    standardized_popularity float8
);
CREATE INDEX image_provider_idx ON image (provider);
INSERT INTO image (provider, foreign_identifier, meta_data, tags)
SELECT p.provider, 'f' || g,
       CASE
           WHEN g % 97 = 0 THEN NULL
           WHEN g % 89 = 0 THEN jsonb_build_object(p.metric, '1k')
           WHEN g % 83 = 0 THEN jsonb_build_object(p.metric, -5)
           WHEN g % 79 = 0 THEN '[1, 2]'::jsonb
           ELSE jsonb_build_object(p.metric, floor(exp(random() * 12)), 'title', 'image ' || g)
       END,
       jsonb_build_array(
           jsonb_build_object('name', 'cat', 'accuracy', round(random()::numeric, 3), 'provider', 'clarifai'),
           jsonb_build_object('name', 'uploaded:by=flickrmobile'),
           jsonb_build_object('name', 'Ünïcödé ' || g % 7, 'accuracy', 0.95),
           jsonb_build_object('name', 'dog', 'provider', 'rekognition', 'accuracy', 0.99))
FROM generate_series(1, :rows) AS g
CROSS JOIN LATERAL (SELECT (ARRAY['flickr', 'wikimedia', 'stocksnap', 'met', 'nappy', NULL])[1 + g % 6] AS provider) AS pp
CROSS JOIN LATERAL (SELECT pp.provider,
                           CASE pp.provider WHEN 'flickr' THEN 'views' WHEN 'wikimedia' THEN 'global_usage_count'
                                            WHEN 'stocksnap' THEN 'downloads' ELSE 'views' END AS metric) AS p;
SELECT popularity.register_media_type('image', 'image') \gset
SELECT popularity.set_metric('image', 'stocksnap', 'downloads', 0.85) \gset
SELECT popularity.set_metric('image', 'met', 'views', 0.5) \gset
SELECT count(*) FROM popularity.refresh_constants('image') \gset
INSERT INTO image (provider, meta_data) SELECT 'flickr', jsonb_build_object('views', g) FROM generate_series(1, 20) AS g; -- counts journal rows
GRANT SELECT ON image TO fuzz_user;

-- A catalog the plain role has no right on: nothing of it may reach fuzz_user.
CREATE TABLE secret (LIKE image INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
ALTER TABLE secret ADD PRIMARY KEY (identifier);
INSERT INTO secret (provider, foreign_identifier, meta_data, tags)
SELECT 'flickr', 'TOPSECRET' || g, jsonb_build_object('views', 7770000 + g, 'title', 'TOPSECRET'),
       jsonb_build_array(jsonb_build_object('name', 'TOPSECRET', 'accuracy', 0.99),
                         jsonb_build_object('name', 'TOPSECRET ' || g, 'accuracy', 0.1))
FROM generate_series(1, 500) AS g;
SELECT popularity.register_media_type('secret', 'secret') \gset
SELECT popularity.set_metric('secret', 'flickr', 'views', 0.85) \gset
SELECT count(*) FROM popularity.refresh_constants('secret') \gset
REVOKE ALL ON secret FROM PUBLIC;

-- A table the plain role owns (it may legitimately act on it).
SET ROLE fuzz_user;
CREATE TABLE user_image (LIKE image INCLUDING DEFAULTS);
ALTER TABLE user_image ADD PRIMARY KEY (identifier);
INSERT INTO user_image SELECT * FROM image WHERE foreign_identifier LIKE 'f1%';
RESET ROLE;

-- Objects of every relkind --------------------------------------------------------------------------
CREATE VIEW image_view AS SELECT * FROM image;
CREATE MATERIALIZED VIEW image_matview AS SELECT * FROM image;
CREATE TABLE image_part (LIKE image INCLUDING DEFAULTS) PARTITION BY LIST (provider);
CREATE TABLE image_part_flickr PARTITION OF image_part FOR VALUES IN ('flickr');
CREATE TABLE image_part_other PARTITION OF image_part DEFAULT;
ALTER TABLE image_part ADD PRIMARY KEY (identifier, provider);
INSERT INTO image_part SELECT * FROM image WHERE provider IS NOT NULL;
CREATE SEQUENCE fuzz_seq;
CREATE TYPE fuzz_composite AS (provider text, meta_data jsonb);
CREATE UNLOGGED TABLE image_unlogged (LIKE image INCLUDING ALL);
INSERT INTO image_unlogged SELECT * FROM image LIMIT 100;
CREATE TEMP TABLE IF NOT EXISTS dummy_temp (x int); -- (session-local; not usable by the fuzzer)
CREATE TABLE image_empty (LIKE image INCLUDING ALL);
CREATE TABLE image_nopk (provider text, meta_data jsonb, tags jsonb, updated_on timestamptz NOT NULL DEFAULT now());
INSERT INTO image_nopk (provider, meta_data) SELECT provider, meta_data FROM image LIMIT 200;
-- provider/meta_data with the wrong types, for register_media_type and the scans
CREATE TABLE image_badtypes (identifier uuid PRIMARY KEY, provider int, meta_data text, tags text,
                             updated_on timestamptz NOT NULL DEFAULT now(), standardized_popularity text);
INSERT INTO image_badtypes SELECT gen_random_uuid(), g, '{"views": 1}', '[]' FROM generate_series(1, 50) AS g;
-- a wide table whose metric columns are not where the fast paths expect them
CREATE TABLE image_wide (standardized_popularity float8, identifier uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                         c1 text, c2 text, provider text, c3 int, meta_data jsonb, tags jsonb,
                         updated_on timestamptz NOT NULL DEFAULT now());
INSERT INTO image_wide (c1, provider, meta_data, tags) SELECT repeat('w', 3000), provider, meta_data, tags FROM image LIMIT 300;
ALTER TABLE image_wide DROP COLUMN c2;
-- a foreign table (file_fdw when contrib is installed, else a foreign-data wrapper without handler)
DO $$ BEGIN
    BEGIN
        CREATE EXTENSION file_fdw;
        CREATE SERVER fuzz_files FOREIGN DATA WRAPPER file_fdw;
        CREATE FOREIGN TABLE image_foreign (provider text, meta_data jsonb, tags jsonb,
                                            updated_on timestamptz, identifier uuid, standardized_popularity float8)
            SERVER fuzz_files OPTIONS (program 'echo', format 'csv');
    EXCEPTION WHEN OTHERS THEN
        CREATE FOREIGN DATA WRAPPER fuzz_dummy_fdw;
        CREATE SERVER fuzz_files FOREIGN DATA WRAPPER fuzz_dummy_fdw;
        CREATE FOREIGN TABLE image_foreign (provider text, meta_data jsonb, tags jsonb,
                                            updated_on timestamptz, identifier uuid, standardized_popularity float8)
            SERVER fuzz_files;
    END;
END $$;
GRANT SELECT ON image_view, image_matview, image_part, image_foreign, image_wide TO fuzz_user;

-- A registered partitioned table (refresh works on plain tables; everything else must refuse it cleanly).
DO $$ BEGIN
    PERFORM popularity.register_media_type('audio', 'image_part');
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'register_media_type(audio, image_part): %', SQLERRM;
END $$;

-- Tag rules of the catalog
INSERT INTO popularity.tag_rules (media_type, min_accuracy, exact_denylist, machine_labels)
VALUES ('image', 0.9, ARRAY['dog'], ARRAY['cat']);

-- The regclass arguments of the targeted fuzzer, one per relkind and oddity
CREATE TABLE fuzz_relations (label text PRIMARY KEY, rel oid);
INSERT INTO fuzz_relations
SELECT c.relname, c.oid FROM pg_class AS c
WHERE c.relnamespace = 'public'::regnamespace
  AND c.relname IN ('image', 'secret', 'user_image', 'image_view', 'image_matview', 'image_part',
                    'image_part_flickr', 'fuzz_seq', 'fuzz_composite', 'image_unlogged', 'image_empty',
                    'image_nopk', 'image_badtypes', 'image_wide', 'image_foreign', 'image_pkey',
                    'image_part_pkey', 'image_provider_idx');
INSERT INTO fuzz_relations VALUES
    ('toast', (SELECT reltoastrelid FROM pg_class WHERE oid = 'image'::regclass)),
    ('pg_stat_activity', 'pg_stat_activity'::regclass), ('pg_class', 'pg_class'::regclass),
    ('popularity.metrics', 'popularity.metrics'::regclass),
    ('popularity.refresh_status', 'popularity.refresh_status'::regclass),
    ('oid0', 0), ('oid_missing', 999999), ('oid_max', 4294967295);
GRANT SELECT ON fuzz_relations TO PUBLIC;
VACUUM ANALYZE;

-- Runs of both jobs for the run_id arguments (resume, cancel, undo): a refresh, a dry run of the
-- tag filter on the catalog, and a filter run on `secret` that recorded what it removed (the
-- plain role must neither see nor undo it).
CALL refresh_popularity('image', force => true);
CALL filter_tags('image', dry_run => true);
CALL filter_tags('secret');
