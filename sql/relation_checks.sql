-- Every entry that takes a relation checks its kind and the caller's rights before it reads a row
-- (no relation of another kind ever reaches a table scan), and the column positions the ingestion
-- trigger caches follow ALTER TABLE, even inside one transaction of one session.
\set VERBOSITY default
SET client_min_messages = warning;
CREATE TABLE rc_image (
    identifier uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider text NOT NULL, meta_data jsonb, tags jsonb, extra jsonb,
    updated_on timestamptz NOT NULL DEFAULT now());
SELECT popularity.register_media_type('rc_image', 'rc_image', default_metrics => false);
SELECT popularity.set_metric('rc_image', 'flickr', 'views', percentile => 0.5);
INSERT INTO rc_image (provider, meta_data) SELECT 'flickr', jsonb_build_object('views', g) FROM generate_series(1, 10) AS g;
SELECT provider, new_val, new_constant FROM popularity.refresh_constants('rc_image');

-- Relations of every other kind.
CREATE VIEW rc_view AS SELECT * FROM rc_image;
CREATE MATERIALIZED VIEW rc_matview AS SELECT * FROM rc_image;
CREATE TABLE rc_parted (LIKE rc_image) PARTITION BY LIST (provider);
CREATE TABLE rc_parted_flickr PARTITION OF rc_parted FOR VALUES IN ('flickr');
CREATE SEQUENCE rc_sequence;
CREATE INDEX rc_index ON rc_image (provider);
CREATE TYPE rc_composite AS (a int);
CREATE FOREIGN DATA WRAPPER rc_fdw;
CREATE SERVER rc_server FOREIGN DATA WRAPPER rc_fdw;
CREATE FOREIGN TABLE rc_foreign (provider text, meta_data jsonb) SERVER rc_server;
RESET client_min_messages;

-- The constants scan: each is refused with 42809 (42P01 for an OID that is no relation), but the
-- partitioned table (its leaves are scanned).
DO $$
DECLARE
    rel text;
BEGIN
    FOREACH rel IN ARRAY ARRAY['rc_view', 'rc_matview', 'rc_parted', 'rc_sequence', 'rc_index',
                               'rc_composite', 'rc_foreign', 'pg_stat_activity', 'pg_class',
                               'pg_toast.pg_toast_1255'] LOOP
        BEGIN
            PERFORM popularity._metric_percentiles(rel::regclass, ARRAY['x'], ARRAY['y'], ARRAY[0.5]);
            RAISE NOTICE '%: no error', rel;
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE '%: % %', rel, SQLSTATE, SQLERRM;
        END;
    END LOOP;
END $$;
SELECT popularity._metric_percentiles(4000000000::oid::regclass, ARRAY['x'], ARRAY['y'], ARRAY[0.5]);
SELECT popularity._metric_percentiles('rc_parted', ARRAY['x'], ARRAY['y'], ARRAY[0.5]);
INSERT INTO rc_parted (identifier, provider, meta_data, updated_on) VALUES (gen_random_uuid(), 'flickr', '{"views": 7}', now());
SELECT popularity._metric_percentiles('rc_parted', ARRAY['flickr'], ARRAY['views'], ARRAY[0.5]);
DELETE FROM rc_parted;
DROP VIEW rc_view;
DROP MATERIALIZED VIEW rc_matview;
-- The real table still works.
SELECT popularity._metric_percentiles('rc_image', ARRAY['flickr'], ARRAY['views'], ARRAY[0.5]) AS vals;

-- A partitioned media table's constants come from the executor, over every partition.
SELECT popularity.register_media_type('rc_parted', 'rc_parted', default_metrics => false);
-- (filter_tags walks the blocks of one heap table: it refuses a partitioned one, before queueing.)
CALL filter_tags('rc_parted');
SELECT popularity.set_metric('rc_parted', 'flickr', 'views', percentile => 0.5);
INSERT INTO rc_parted (identifier, provider, meta_data, updated_on)
SELECT gen_random_uuid(), 'flickr', jsonb_build_object('views', g), now() FROM generate_series(1, 9) AS g;
SELECT provider, new_val, new_constant FROM popularity.refresh_constants('rc_parted');
SELECT popularity.unregister_media_type('rc_parted');

-- Rights: a role that may not read the table is refused before anything is opened or locked.
CREATE ROLE rc_stranger;
GRANT EXECUTE ON FUNCTION popularity._metric_percentiles(regclass, text[], text[], double precision[]) TO rc_stranger;
SET ROLE rc_stranger;
SELECT popularity._metric_percentiles('rc_image', ARRAY['flickr'], ARRAY['views'], ARRAY[0.5]);
SELECT popularity._metric_percentiles('pg_stat_activity', ARRAY['x'], ARRAY['y'], ARRAY[0.5]);
RESET ROLE;
GRANT SELECT ON rc_image TO rc_stranger;
SET ROLE rc_stranger;
SELECT popularity._metric_percentiles('rc_image', ARRAY['flickr'], ARRAY['views'], ARRAY[0.5]) AS vals;
RESET ROLE;
-- A direct scan cannot apply row-level security: where a policy applies to the role, it refuses.
ALTER TABLE rc_image ENABLE ROW LEVEL SECURITY;
CREATE POLICY every_row ON rc_image USING (true);
SET ROLE rc_stranger;
SELECT popularity._metric_percentiles('rc_image', ARRAY['flickr'], ARRAY['views'], ARRAY[0.5]);
RESET ROLE;
DROP POLICY every_row ON rc_image;
ALTER TABLE rc_image DISABLE ROW LEVEL SECURITY;

-- The ingestion trigger follows the table's definition within one transaction: after meta_data and
-- another jsonb column swap names (same number of columns, so the same descriptor shape), the next
-- row is scored from the new meta_data; a provider
-- retyped to a type it cannot read is an error, never a misread datum.
BEGIN;
INSERT INTO rc_image (provider, meta_data) VALUES ('flickr', '{"views": 5}') RETURNING standardized_popularity;
ALTER TABLE rc_image RENAME COLUMN meta_data TO meta_old;
ALTER TABLE rc_image RENAME COLUMN extra TO meta_data;
INSERT INTO rc_image (provider, meta_old, meta_data) VALUES ('flickr', '{"views": 5}', '{"views": 15}')
RETURNING standardized_popularity;
ROLLBACK;
BEGIN;
INSERT INTO rc_image (provider, meta_data) VALUES ('flickr', '{"views": 5}') RETURNING standardized_popularity;
ALTER TABLE rc_image ALTER COLUMN provider TYPE integer USING length(provider);
INSERT INTO rc_image (provider, meta_data) VALUES (6, '{"views": 5}');
ROLLBACK;
INSERT INTO rc_image (provider, meta_data) VALUES ('flickr', '{"views": 5}') RETURNING standardized_popularity;

SET client_min_messages = warning;
SELECT popularity.unregister_media_type('rc_image');
DROP TABLE rc_image, rc_parted CASCADE;
DROP SEQUENCE rc_sequence;
DROP TYPE rc_composite;
DROP FOREIGN TABLE rc_foreign;
DROP SERVER rc_server;
DROP FOREIGN DATA WRAPPER rc_fdw;
REVOKE ALL ON FUNCTION popularity._metric_percentiles(regclass, text[], text[], double precision[]) FROM rc_stranger;
DROP ROLE rc_stranger;
