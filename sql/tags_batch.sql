-- filter_tags' main-pass batch in C++ (popularity._filter_tags_range) against its SQL scan, on
-- generated data: the same table contents and the same counters. The SQL scan runs where
-- row-level security applies: image_sql has a policy that shows every row, and the runs are made
-- by a role that is not a superuser and does not own the tables.
SELECT setseed(0.25);
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
CREATE TABLE image_sql (LIKE image INCLUDING ALL);
INSERT INTO image_sql SELECT * FROM image;
CREATE TABLE image_before AS SELECT identifier, tags FROM image;
ALTER TABLE image_sql ENABLE ROW LEVEL SECURITY;
CREATE POLICY every_row ON image_sql USING (true);
CREATE ROLE tags_batch_user;
GRANT SELECT, UPDATE ON image, image_sql TO tags_batch_user;
SELECT popularity.grant_operator('tags_batch_user');
INSERT INTO popularity.media_types (media_type, media_table)
VALUES ('image', 'image'), ('image_sql', 'image_sql');
-- Machine-generated labels too (they depend on the record's provider).
INSERT INTO popularity.tag_rules (media_type, machine_labels) VALUES (NULL, ARRAY['woman', 'man']);
CREATE VIEW run_counts AS
SELECT media_type, dry_run, state, pending, rows_changed, rows_malformed, lock_skips,
       dropped_malformed, dropped_low_accuracy, dropped_filtered_provider, dropped_exact_denylist,
       dropped_substring_denylist, dropped_machine_label
FROM popularity.tag_filter_runs;

SET ROLE tags_batch_user;
SELECT pg_relation_size('image') / current_setting('block_size')::int > 20 AS several_batches,
       row_security_active('image') AS rls_image, row_security_active('image_sql') AS rls_image_sql;

SET client_min_messages = warning;
CALL filter_tags('image', dry_run => true, batch_blocks => 3);
CALL filter_tags('image_sql', dry_run => true, batch_blocks => 3);
CALL filter_tags('image', batch_blocks => 3);
CALL filter_tags('image_sql', batch_blocks => 3);
RESET client_min_messages;
-- The direct batch refuses a table where row-level security applies.
SELECT * FROM popularity._filter_tags_range('image_sql', 'image_sql', 0, 1, true, 0);
RESET ROLE;

-- The same counters (rows_scanned aside: rows rewritten into blocks the walk has not reached yet
-- are read again, and the two UPDATEs may place new versions differently) ...
SELECT dry_run, count(DISTINCT (rows_changed, rows_malformed, lock_skips, dropped_malformed,
                                dropped_low_accuracy, dropped_filtered_provider,
                                dropped_exact_denylist, dropped_substring_denylist,
                                dropped_machine_label)) AS distinct_counts,
       bool_and(state = 'finished' AND pending = '{}') AS finished,
       min(rows_changed) > 1000 AS many_changed, min(dropped_machine_label) > 0 AS machine_labels
FROM run_counts GROUP BY dry_run ORDER BY dry_run;
SELECT bool_and(rows_scanned >= 3000) AS scanned_all FROM popularity.tag_filter_runs;
-- ... the rows that changed ...
SELECT (SELECT rows_changed FROM run_counts WHERE media_type = 'image' AND NOT dry_run)
       = (SELECT count(*) FROM image i JOIN image_before b USING (identifier)
          WHERE i.tags IS DISTINCT FROM b.tags) AS changed_ok;
-- ... and the same tags.
SELECT count(*) AS rows_differing
FROM image i FULL JOIN image_sql s USING (identifier)
WHERE i.tags IS DISTINCT FROM s.tags OR i.identifier IS NULL OR s.identifier IS NULL;
SELECT count(*) FILTER (WHERE tags IS DISTINCT FROM popularity.filtered_tags(tags, provider, 'image'))
           AS rows_left_to_filter
FROM image;

-- Called directly: one range, counts and the rows it could not lock.
UPDATE image SET tags = '[{"name": "cc0"}, {"name": "kept"}]'
WHERE identifier IN (md5('1')::uuid, md5('2')::uuid);
SELECT rows_scanned > 0 AS scanned, rows_malformed > 0 AS malformed, rows_changed, drops, unlocked
FROM popularity._filter_tags_range('image', 'image', 0, pg_relation_size('image') / current_setting('block_size')::int, true, 0);
SELECT rows_changed, drops, unlocked
FROM popularity._filter_tags_range('image', 'image', 0, pg_relation_size('image') / current_setting('block_size')::int, false, 0);
SELECT tags FROM image WHERE identifier IN (md5('1')::uuid, md5('2')::uuid);
SELECT rows_scanned, rows_changed FROM popularity._filter_tags_range('image', 'image', 5, 5, false, 0);
-- A BEFORE UPDATE trigger that skips rows: they are not counted as changed (as in the SQL scan).
CREATE FUNCTION skip_update() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
UPDATE image SET tags = '[{"name": "cc0"}]' WHERE identifier = md5('3')::uuid;
CREATE TRIGGER skip_update BEFORE UPDATE ON image FOR EACH ROW EXECUTE FUNCTION skip_update();
SELECT rows_changed, drops
FROM popularity._filter_tags_range('image', 'image', 0, pg_relation_size('image') / current_setting('block_size')::int, false, 0);
DROP TRIGGER skip_update ON image;
DROP FUNCTION skip_update();

-- Refusals.
SELECT * FROM popularity._filter_tags_range('image', 'image', 3, 2, true, 0);
SELECT * FROM popularity._filter_tags_range('image', 'video', 0, 1, true, 0);
SELECT * FROM popularity._filter_tags_range('run_counts', 'image', 0, 1, true, 0);
CREATE ROLE tags_batch_reader;
GRANT SELECT ON image TO tags_batch_reader;
GRANT EXECUTE ON FUNCTION popularity._filter_tags_range(regclass, text, bigint, bigint, boolean, bigint) TO tags_batch_reader;
SET ROLE tags_batch_reader;
SELECT rows_changed FROM popularity._filter_tags_range('image', 'image', 0, 1, true, 0);
SELECT * FROM popularity._filter_tags_range('image', 'image', 0, 1, false, 0);
RESET ROLE;
REVOKE ALL ON image FROM tags_batch_reader;
REVOKE ALL ON FUNCTION popularity._filter_tags_range(regclass, text, bigint, bigint, boolean, bigint) FROM tags_batch_reader;
DROP ROLE tags_batch_reader;
SELECT popularity.revoke_operator('tags_batch_user');

DROP VIEW run_counts;
DROP TABLE image, image_sql, image_before;
DROP ROLE tags_batch_user;
DELETE FROM popularity.tag_rules;
DELETE FROM popularity.media_types;
DROP FUNCTION random_tags(), pick(text[]);
