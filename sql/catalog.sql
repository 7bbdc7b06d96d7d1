-- Catalog integration: registration, metrics, constants, scores at ingestion (insert and upsert).
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

CREATE TABLE image (
    identifier uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider varchar(80),
    foreign_identifier text NOT NULL,
    meta_data jsonb,
    tags jsonb,
    updated_on timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX image_provider_fid ON image (provider, md5(foreign_identifier));

-- Registration errors, each with its SQLSTATE.
SELECT pg_temp.try($$SELECT popularity.register_media_type('', 'image')$$);
SELECT pg_temp.try($$SELECT popularity.register_media_type(NULL, 'image')$$);
CREATE TABLE no_meta (provider text, updated_on timestamptz);
SELECT pg_temp.try($$SELECT popularity.register_media_type('x', 'no_meta')$$);
CREATE TABLE text_meta (provider text, meta_data text, updated_on timestamptz);
SELECT pg_temp.try($$SELECT popularity.register_media_type('x', 'text_meta')$$);
CREATE TABLE no_updated_on (provider text, meta_data jsonb);
SELECT pg_temp.try($$SELECT popularity.register_media_type('x', 'no_updated_on')$$);
CREATE TABLE int_provider (provider int, meta_data jsonb, updated_on timestamptz);
SELECT pg_temp.try($$SELECT popularity.register_media_type('x', 'int_provider')$$);
CREATE TABLE text_score (provider text, meta_data jsonb, updated_on timestamptz, standardized_popularity text);
SELECT pg_temp.try($$SELECT popularity.register_media_type('x', 'text_score')$$);
CREATE VIEW image_view AS SELECT * FROM image;
SELECT pg_temp.try($$SELECT popularity.register_media_type('x', 'image_view')$$);
SELECT pg_temp.try($$SELECT popularity.register_media_type('x', 'no_such_table')$$);
DROP TABLE no_meta, text_meta, no_updated_on, int_provider, text_score;
DROP VIEW image_view;
SELECT count(*) AS nothing_registered FROM popularity.media_types;

-- Registration: the column is added, the trigger installed, the default metrics inserted.
SELECT popularity.register_media_type('image', 'image');
SELECT popularity.register_media_type('image', 'image'); -- idempotent
SELECT media_type, media_table FROM popularity.media_types;
SELECT atttypid::regtype FROM pg_attribute WHERE attrelid = 'image'::regclass AND attname = 'standardized_popularity';
SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'image'::regclass AND NOT tgisinternal ORDER BY tgname;
SELECT media_type, provider, metric, percentile, val, constant FROM popularity.metrics ORDER BY 1, 2;
-- A media type cannot move tables silently, and a table serves one media type.
CREATE TABLE image2 (LIKE image);
SELECT pg_temp.try($$SELECT popularity.register_media_type('image', 'image2')$$);
SELECT pg_temp.try($$SELECT popularity.register_media_type('picture', 'image')$$);
DROP TABLE image2;

-- set_metric validation.
SELECT pg_temp.try($$SELECT popularity.set_metric('video', 'flickr', 'views')$$);
SELECT pg_temp.try($$SELECT popularity.set_metric('image', '', 'views')$$);
SELECT pg_temp.try($$SELECT popularity.set_metric('image', 'flickr', '')$$);
SELECT pg_temp.try($$SELECT popularity.set_metric('image', 'flickr', 'views', 1)$$);
SELECT pg_temp.try($$SELECT popularity.set_metric('image', 'flickr', 'views', 0)$$);
SELECT pg_temp.try($$SELECT popularity.set_metric('image', 'flickr', 'views', 'NaN')$$);
SELECT pg_temp.try($$SELECT popularity.refresh_constants('video')$$);
SELECT pg_temp.try($$SELECT popularity.refresh_constants('image', ARRAY['flickr', 'nosuch'])$$);

-- Reference vector: views [0, 50, 75, 150], p = 0.5 -> constant 50.
SELECT popularity.set_metric('image', 'flickr', 'views', 0.5);
INSERT INTO image (provider, foreign_identifier, meta_data) VALUES
    ('flickr', 'a', '{"views": 0}'), ('flickr', 'b', '{"views": 50}'),
    ('flickr', 'c', '{"views": 75}'), ('flickr', 'd', '{"views": 150}');
SELECT count(standardized_popularity) AS scored_before_constants FROM image;
SELECT * FROM popularity.refresh_constants('image', ARRAY['flickr']);
-- Nothing changed: nothing written, changed = false.
SELECT provider, new_constant, changed FROM popularity.refresh_constants('image', ARRAY['flickr']);
SELECT provider, val, constant, computed_at IS NOT NULL AS computed FROM popularity.metrics WHERE provider = 'flickr';
-- New rows use the constant at once (this session's cache was reloaded after the commit).
INSERT INTO image (provider, foreign_identifier, meta_data) VALUES
    ('flickr', 'e', '{"views": 50}'), ('flickr', 'f', '{"views": 150}'), ('flickr', 'g', '{"views": 450}'),
    ('flickr', 'h', '{}'), ('flickr', 'i', '{"views": null}'), ('flickr', 'j', NULL),
    ('flickr', 'k', '{"views": "1k"}'), ('flickr', 'l', '{"views": -3}'), ('flickr', 'm', '{"views": "450"}'),
    ('nappy', 'n', '{"downloads": 5}'), ('smithsonian', 'o', '{"views": 5}'), (NULL, 'p', '{"views": 5}');
SELECT foreign_identifier, provider, meta_data, standardized_popularity FROM image ORDER BY foreign_identifier;

-- Upsert (Openverse's ingestion): the merged row is scored. Openverse scores the incoming row and
-- loses the score when the incoming meta_data lacks the key; the score here follows the merge.
INSERT INTO image AS old (provider, foreign_identifier, meta_data) VALUES
    ('flickr', 'a', '{"views": 150}'),          -- conflict: views 0 -> 150
    ('flickr', 'b', '{"description": "x"}'),    -- conflict: no views key in the incoming row
    ('flickr', 'q', '{"views": 50}')            -- new row
ON CONFLICT (provider, md5(foreign_identifier))
DO UPDATE SET meta_data = jsonb_strip_nulls(old.meta_data || excluded.meta_data), updated_on = now();
SELECT foreign_identifier, meta_data, standardized_popularity FROM image
WHERE foreign_identifier IN ('a', 'b', 'q') ORDER BY 1;
-- A provider change rescored with the new provider's constant (none here: NULL).
UPDATE image SET provider = 'smithsonian' WHERE foreign_identifier = 'e';
SELECT foreign_identifier, provider, standardized_popularity FROM image WHERE foreign_identifier = 'e';
-- Every written row version carries the score under the current constant: a hand-set score is
-- replaced, and an update of any other column rescores too.
UPDATE image SET standardized_popularity = 0.123 WHERE foreign_identifier = 'f';
SELECT standardized_popularity FROM image WHERE foreign_identifier = 'f';
UPDATE image SET tags = '[]' WHERE foreign_identifier = 'f';
SELECT standardized_popularity FROM image WHERE foreign_identifier = 'f';

-- Constant change (p = 0.8 with views 0 and 50 -> 12.499999999999996), then new inserts.
DELETE FROM image;
INSERT INTO image (provider, foreign_identifier, meta_data) VALUES ('flickr', 'a', '{"views": 0}'), ('flickr', 'b', '{"views": 50}');
SELECT popularity.set_metric('image', 'flickr', 'views', 0.8);
SELECT provider, old_constant, new_constant, changed FROM popularity.refresh_constants('image', ARRAY['flickr']);
INSERT INTO image (provider, foreign_identifier, meta_data) VALUES ('flickr', 'c', '{"views": 10}'), ('flickr', 'd', '{"views": 20}');
SELECT foreign_identifier, standardized_popularity FROM image WHERE foreign_identifier IN ('c', 'd') ORDER BY 1;
-- p = 0.5 and likes [0] -> val 1, constant 1 (the 0 -> 1 rule).
SELECT popularity.set_metric('image', 'nappy', 'likes', 0.5);
INSERT INTO image (provider, foreign_identifier, meta_data) VALUES ('nappy', 'z', '{"likes": 0}');
SELECT provider, old_val, new_val, new_constant FROM popularity.refresh_constants('image', ARRAY['nappy']);
INSERT INTO image (provider, foreign_identifier, meta_data) VALUES ('nappy', 'y', '{"likes": 3}'), ('nappy', 'x', '{"likes": 1}');
SELECT foreign_identifier, standardized_popularity FROM image WHERE provider = 'nappy' ORDER BY 1;
-- A provider without values keeps its previous constant.
DELETE FROM image WHERE provider = 'nappy';
SELECT provider, old_constant, new_constant, changed FROM popularity.refresh_constants('image', ARRAY['nappy']);
SELECT constant FROM popularity.metrics WHERE provider = 'nappy';

-- Bad metric values: NULL by default; strict mode raises 22P02 naming provider and metric.
SET popularity.strict_metrics = on;
SELECT pg_temp.try($$INSERT INTO image (provider, foreign_identifier, meta_data) VALUES ('flickr', 's1', '{"views": "1k"}')$$);
SELECT pg_temp.try($$INSERT INTO image (provider, foreign_identifier, meta_data) VALUES ('flickr', 's2', '{"views": -1}')$$);
SELECT pg_temp.try($$INSERT INTO image (provider, foreign_identifier, meta_data) VALUES ('flickr', 's3', '{"other": 1}')$$); -- missing is not invalid
RESET popularity.strict_metrics;
SELECT pg_temp.try($$INSERT INTO image (provider, foreign_identifier, meta_data) VALUES ('flickr', 's4', '{"views": "1k"}')$$);
SELECT foreign_identifier, standardized_popularity FROM image WHERE foreign_identifier LIKE 's%' ORDER BY 1;

-- Two media types side by side; a provider name shared by both uses each type's own metric.
CREATE TABLE audio (
    identifier uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider text, foreign_identifier text, meta_data jsonb,
    updated_on timestamptz NOT NULL DEFAULT now(), standardized_popularity double precision);
SELECT popularity.register_media_type('audio', 'audio');
SELECT popularity.set_metric('audio', 'flickr', 'listens', 0.5);
INSERT INTO audio (provider, foreign_identifier, meta_data) VALUES ('flickr', 'a1', '{"listens": 10, "views": 99999}');
SELECT provider, new_constant FROM popularity.refresh_constants('audio', ARRAY['flickr']);
INSERT INTO audio (provider, foreign_identifier, meta_data) VALUES ('flickr', 'a2', '{"listens": 30, "views": 1}');
INSERT INTO image (provider, foreign_identifier, meta_data) VALUES ('flickr', 'i2', '{"listens": 30, "views": 1}');
SELECT 'audio' AS t, foreign_identifier, standardized_popularity FROM audio WHERE foreign_identifier = 'a2'
UNION ALL
SELECT 'image', foreign_identifier, standardized_popularity FROM image WHERE foreign_identifier = 'i2';
SELECT media_type, provider, metric FROM popularity.metrics ORDER BY 1, 2;

-- Names are only ever names: quotes and SQL in media types, providers, metrics and table names.
CREATE TABLE "Odd ""Table""; DROP TABLE image; --" (provider text, meta_data jsonb, updated_on timestamptz NOT NULL DEFAULT now());
SELECT popularity.register_media_type($$x'; DROP TABLE image; --$$, '"Odd ""Table""; DROP TABLE image; --"', false);
SELECT popularity.set_metric($$x'; DROP TABLE image; --$$, $$p'); DROP TABLE image; --$$, $$m"'; --$$, 0.5);
INSERT INTO "Odd ""Table""; DROP TABLE image; --" VALUES ($$p'); DROP TABLE image; --$$, $${"m\"'; --": 4}$$);
SELECT provider, new_constant FROM popularity.refresh_constants($$x'; DROP TABLE image; --$$);
INSERT INTO "Odd ""Table""; DROP TABLE image; --" VALUES ($$p'); DROP TABLE image; --$$, $${"m\"'; --": 12}$$);
SELECT provider, standardized_popularity FROM "Odd ""Table""; DROP TABLE image; --" ORDER BY 2;
SELECT to_regclass('image') IS NOT NULL AS image_still_there;

-- The configuration is dumped by pg_dump.
SELECT unnest(extconfig)::regclass AS dumped FROM pg_extension WHERE extname = 'popularity' ORDER BY 1;

-- Unregistering removes our objects and keeps the data.
SELECT popularity.unregister_media_type('audio');
SELECT count(*) AS audio_triggers FROM pg_trigger WHERE tgrelid = 'audio'::regclass AND NOT tgisinternal;
SELECT count(*) AS audio_metrics FROM popularity.metrics WHERE media_type = 'audio';
SELECT foreign_identifier, standardized_popularity FROM audio ORDER BY 1;
SELECT pg_temp.try($$SELECT popularity.unregister_media_type('audio')$$);
INSERT INTO audio (provider, foreign_identifier, meta_data) VALUES ('flickr', 'a3', '{"listens": 30}');
SELECT foreign_identifier, standardized_popularity FROM audio WHERE foreign_identifier = 'a3';
-- The trigger refuses to run in the wrong place.
CREATE TABLE wrong (provider text, meta_data jsonb, standardized_popularity float8);
CREATE TRIGGER t AFTER INSERT ON wrong FOR EACH ROW EXECUTE FUNCTION popularity._score_trigger('image');
SELECT pg_temp.try($$INSERT INTO wrong VALUES ('flickr', '{}')$$);
-- Tag filtering at ingestion, when turned on for a media type: inserted and upserted rows get
-- the tag rules applied (reference vectors), in the same trigger as the score.
INSERT INTO image (provider, foreign_identifier, meta_data, tags) VALUES
    ('flickr', 't0', '{"views": 1}', '[{"name": "cc0"}, {"name": "valid", "accuracy": 0.99}]');
UPDATE popularity.media_types SET filter_tags_at_ingestion = true WHERE media_type = 'image';
INSERT INTO image (provider, foreign_identifier, meta_data, tags) VALUES
    ('flickr', 't1', '{"views": 1}', '[{"name": "cc0"}, {"name": " cc0"}, {"name": "valid", "accuracy": 0.99}, {"name": "valid_no_accuracy"}, {"name": "garbage:=metacrap"}]'),
    ('flickr', 't2', '{"views": 1}', '[{"name": "inaccurate", "accuracy": 0.5}, {"name": "accurate", "accuracy": 0.999}]'),
    ('flickr', 't3', '{"views": 1}', '[{"name": "valid", "provider": "provider1"}, {"name": "invalid", "provider": "rekognition"}]'),
    ('flickr', 't4', '{"views": 1}', '[{"name": "valid", "accuracy": 0.92}]'),
    ('flickr', 't5', '{"views": 1}', '[{"name": "CC0"}]'),
    ('flickr', 't6', '{"views": 1}', NULL);
INSERT INTO image AS old (provider, foreign_identifier, meta_data, tags) VALUES
    ('flickr', 't0', '{"views": 2}', '[{"name": "cc0"}, {"name": "kept"}]')
ON CONFLICT (provider, md5(foreign_identifier)) DO UPDATE SET tags = excluded.tags, meta_data = excluded.meta_data;
SELECT foreign_identifier, tags, standardized_popularity IS NOT NULL AS scored FROM image
WHERE foreign_identifier LIKE 't_' ORDER BY 1;
UPDATE popularity.media_types SET filter_tags_at_ingestion = false WHERE media_type = 'image';
INSERT INTO image (provider, foreign_identifier, meta_data, tags) VALUES ('flickr', 't7', '{"views": 1}', '[{"name": "cc0"}]');
SELECT foreign_identifier, tags FROM image WHERE foreign_identifier = 't7';

-- The single pass of refresh_constants reads the table in C++ (_metric_percentiles): the same
-- values as the aggregate grouped by provider, for every percentile, with unusable metrics,
-- NULL providers and meta_data, deleted rows and providers without any value.
CREATE TABLE mixed (provider varchar(20), meta_data jsonb, updated_on timestamptz);
INSERT INTO mixed (provider, meta_data)
SELECT (ARRAY['a', 'b', 'c', NULL])[1 + g % 4],
       CASE WHEN g % 13 = 0 THEN NULL
            ELSE jsonb_build_object('m', (ARRAY[to_jsonb(g % 97), to_jsonb((g % 31)::text), to_jsonb(-1),
                                                'null'::jsonb, to_jsonb('x'::text), to_jsonb(g * 0.25),
                                                to_jsonb(' 12 '::text), '[1]'::jsonb])[1 + g % 8]) END
FROM generate_series(1, 5000) AS g;
INSERT INTO mixed (provider, meta_data) VALUES ('d', '{"m": "NaN"}'), ('d', '{"other": 1}');
DELETE FROM mixed WHERE meta_data->>'m' = '7';
SELECT p.fraction,
       popularity._metric_percentiles('mixed', '{a,b,c,d,e}', '{m,m,m,m,m}', ARRAY[p.fraction, p.fraction, p.fraction, p.fraction, p.fraction])
       IS NOT DISTINCT FROM
       (SELECT array_agg(x.v ORDER BY x.provider) FROM (
            SELECT n.provider, (SELECT popularity_percentile(popularity_metric_value(t.meta_data, 'm'), p.fraction)
                                FROM mixed AS t WHERE t.provider = n.provider) AS v
            FROM unnest('{a,b,c,d,e}'::text[]) AS n(provider)) AS x) AS same_as_aggregate
FROM unnest(ARRAY[0, 0.01, 0.5, 0.85, 0.999, 1]::float8[]) AS p(fraction);
-- The same with parallel workers sharing the scan (the table is small: lower the threshold).
CREATE TABLE serial_result AS
SELECT popularity._metric_percentiles('mixed', '{a,b,c,d,e}', '{m,m,m,m,m}', '{0.1,0.5,0.85,0.99,1}') AS v;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
SET client_min_messages = debug1;
SELECT popularity._metric_percentiles('mixed', '{a,b,c,d,e}', '{m,m,m,m,m}', '{0.1,0.5,0.85,0.99,1}')
       = (SELECT v FROM serial_result) AS parallel_same_as_serial;
RESET client_min_messages;
RESET min_parallel_table_scan_size;
RESET max_parallel_workers_per_gather;
SELECT v FROM serial_result;
DROP TABLE serial_result;
SELECT pg_temp.try($$SELECT popularity._metric_percentiles('mixed', '{a,b}', '{m}', '{0.5,0.5}')$$);
SELECT pg_temp.try($$SELECT popularity._metric_percentiles('mixed', '{a,a}', '{m,m}', '{0.5,0.5}')$$);
SELECT pg_temp.try($$SELECT popularity._metric_percentiles('mixed', '{a,NULL}', '{m,m}', '{0.5,0.5}')$$);
SELECT pg_temp.try($$SELECT popularity._metric_percentiles('mixed', '{a}', '{m}', '{1.5}')$$);
CREATE TABLE only_provider (provider text);
SELECT pg_temp.try($$SELECT popularity._metric_percentiles('only_provider', '{a}', '{m}', '{0.5}')$$);
DROP TABLE only_provider;
-- With row-level security enabled, refresh_constants reads through the executor: same constants.
SELECT popularity.register_media_type('mixed', 'mixed', false);
SELECT popularity.set_metric('mixed', 'a', 'm'), popularity.set_metric('mixed', 'b', 'm', 0.5);
SELECT provider, new_val, new_constant FROM popularity.refresh_constants('mixed') ORDER BY 1;
ALTER TABLE mixed ENABLE ROW LEVEL SECURITY;
UPDATE popularity.metrics SET val = NULL, constant = NULL WHERE media_type = 'mixed';
SELECT provider, new_val, new_constant FROM popularity.refresh_constants('mixed') ORDER BY 1;
SELECT popularity.unregister_media_type('mixed');
DROP TABLE mixed;

-- Dropping a registered table unregisters its media type, so it can be registered again.
SELECT media_type FROM popularity.media_types ORDER BY 1;
DROP TABLE wrong, audio, "Odd ""Table""; DROP TABLE image; --", image CASCADE;
SELECT count(*) AS registered_after_drop FROM popularity.media_types;
SELECT count(*) AS metrics_after_drop FROM popularity.metrics;
