-- filter_tags, the tag filter job of the batch engine, on generated data, as a role that is not a
-- superuser and does not own the table: the result equals the rules applied in SQL
-- (popularity.filtered_tags on a copy), the counters equal a recount per verdict, and the refusals
-- (row-level security, missing rights, a trigger that skips rows) are clear.
SELECT setseed(0.25);
-- Run numbers that do not depend on the tests before this one.
ALTER SEQUENCE popularity.refresh_runs_run_id_seq RESTART WITH 3001;
CREATE FUNCTION pick(options text[]) RETURNS text LANGUAGE sql VOLATILE
AS $$ SELECT options[1 + floor(random() * cardinality(options))::int] $$;
CREATE FUNCTION random_tags() RETURNS jsonb LANGUAGE sql VOLATILE AS $$
    SELECT CASE
        WHEN random() < 0.03 THEN pick(ARRAY['null', '"text"', '{"name": "x"}', '7'])::jsonb
        WHEN random() < 0.30 THEN jsonb_build_array(jsonb_build_object('name', 'clean ' || floor(random() * 100)))
        ELSE (SELECT coalesce(jsonb_agg(t), '[]') FROM (
                  SELECT CASE
                      WHEN random() < 0.05 THEN pick(ARRAY['1', '"dog"', 'null', '{"name": 5}',
                                                           '{"name": "a", "accuracy": "0.99"}'])::jsonb
                      ELSE jsonb_strip_nulls(jsonb_build_object(
                          'name', pick(ARRAY['dog', 'Cat', 'CC0', 'by', 'Uploaded:by=Instagram',
                                             'flickriosapp', 'no person', 'Woman', 'man', 'tree']),
                          'provider', CASE WHEN random() < 0.4
                                           THEN pick(ARRAY['clarifai', 'rekognition', 'flickr']) END,
                          'accuracy', CASE WHEN random() < 0.5
                                           THEN round(random()::numeric, 2) END))
                  END AS t
                  FROM generate_series(1, 1 + floor(random() * 6)::int) AS g(k)
                  WHERE g.k > 0) s)
    END $$;

CREATE TABLE image (identifier uuid PRIMARY KEY, provider varchar(80), tags jsonb,
                    updated_on timestamptz NOT NULL DEFAULT now());
INSERT INTO image (identifier, provider, tags)
SELECT md5(i::text)::uuid, pick(ARRAY['flickr', 'wikimedia', 'clarifai', NULL]),
       CASE WHEN i % 50 = 0 THEN NULL ELSE random_tags() END
FROM generate_series(1, 3000) AS i;
CREATE TABLE image_before AS SELECT identifier, provider, tags FROM image;
CREATE TABLE image_rls (LIKE image INCLUDING ALL);
INSERT INTO image_rls SELECT * FROM image WHERE identifier < md5('100')::uuid;
ALTER TABLE image_rls ENABLE ROW LEVEL SECURITY;
CREATE POLICY every_row ON image_rls USING (true);
CREATE ROLE tags_batch_user LOGIN;
CREATE ROLE tags_batch_reader LOGIN;
GRANT SELECT, UPDATE ON image, image_rls TO tags_batch_user;
GRANT SELECT ON image TO tags_batch_reader;
SELECT popularity.grant_operator('tags_batch_user'), popularity.grant_operator('tags_batch_reader');
INSERT INTO popularity.media_types (media_type, media_table)
VALUES ('image', 'image'), ('image_rls', 'image_rls');
-- Machine-generated labels too (they depend on the record's provider).
INSERT INTO popularity.tag_rules (media_type, machine_labels) VALUES (NULL, ARRAY['woman', 'man']);
-- What the rules drop, recounted in SQL per verdict from the removed tags of each row.
CREATE VIEW expected_counts AS
SELECT count(*) FILTER (WHERE b.tags IS DISTINCT FROM popularity.filtered_tags(b.tags, b.provider, 'image')) AS rows_changing,
       count(*) FILTER (WHERE jsonb_typeof(b.tags) <> 'array') AS rows_not_an_array,
       sum(jsonb_array_length(b.tags) - jsonb_array_length(popularity.filtered_tags(b.tags, b.provider, 'image')))
           FILTER (WHERE jsonb_typeof(b.tags) = 'array') AS tags_dropped
FROM image_before b;

SET ROLE tags_batch_user;
SELECT pg_relation_size('image') / current_setting('block_size')::int > 20 AS several_batches;
SET client_min_messages = warning;
CALL filter_tags('image', dry_run => true, batch_blocks => 3);
CALL filter_tags('image', batch_blocks => 3);
RESET client_min_messages;
-- A table where row-level security applies is refused, with the reason (the workers read the table
-- directly: a policy would apply to their UPDATE but not to their scan).
CALL filter_tags('image_rls', batch_blocks => 3);
RESET ROLE;

-- The counters of both runs equal the recount; the dry run changed nothing, the run everything.
SELECT s.dry_run, s.state, s.rows_scanned >= 3000 AS scanned_all,
       s.rows_updated = e.rows_changing AS changed_ok,
       (s.counters ->> 'rows_not_an_array')::bigint = e.rows_not_an_array AS not_array_ok,
       (SELECT sum(v::bigint) FROM jsonb_each_text(s.counters - 'rows_not_an_array') AS x(k, v)) = e.tags_dropped
           AS dropped_ok,
       (s.counters ->> 'machine_label')::bigint > 0 AS machine_labels,
       e.rows_changing > 1000 AS many_changed
FROM popularity.refresh_status s, expected_counts e
WHERE s.job = 'filter_tags' AND s.media_type = 'image' AND s.run_id >= 3001 ORDER BY s.run_id;
-- The rows that changed are those the rules change, and they now hold exactly the rules' result.
SELECT count(*) FILTER (WHERE i.tags IS DISTINCT FROM b.tags) AS rows_changed,
       count(*) FILTER (WHERE i.tags IS DISTINCT FROM popularity.filtered_tags(b.tags, b.provider, 'image'))
           AS rows_differing_from_rules
FROM image i JOIN image_before b USING (identifier);

-- A dry run needs only SELECT; a real run needs UPDATE too, said before anything runs.
SET ROLE tags_batch_reader;
SET client_min_messages = warning;
CALL filter_tags('image', dry_run => true);
RESET client_min_messages;
CALL filter_tags('image');
RESET ROLE;
SELECT dry_run, state, rows_updated FROM popularity.refresh_status
WHERE job = 'filter_tags' AND media_type = 'image' ORDER BY run_id DESC LIMIT 1;

-- A BEFORE UPDATE trigger that skips rows stops the run with an error that says so.
CREATE FUNCTION skip_update() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
UPDATE image SET tags = '[{"name": "cc0"}]' WHERE identifier = md5('3')::uuid;
CREATE TRIGGER skip_update BEFORE UPDATE ON image FOR EACH ROW EXECUTE FUNCTION skip_update();
SET ROLE tags_batch_user;
CALL filter_tags('image');
RESET ROLE;
DROP TRIGGER skip_update ON image;
DROP FUNCTION skip_update();
SELECT count(*) AS runs_still_active FROM popularity.cancel_refresh(media_type => 'image');

SELECT popularity.revoke_operator('tags_batch_user'), popularity.revoke_operator('tags_batch_reader');
DROP VIEW expected_counts;
DROP TABLE image, image_rls, image_before;
REVOKE ALL ON SCHEMA public FROM tags_batch_user, tags_batch_reader;
DROP ROLE tags_batch_user;
DROP ROLE tags_batch_reader;
DELETE FROM popularity.tag_rules;
DELETE FROM popularity.media_types;
DROP FUNCTION random_tags(), pick(text[]);
