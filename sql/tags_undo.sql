-- Undoing a run of filter_tags (issue 13, item 8): what a run removes is recorded per row in the
-- batch's transaction, undo_filter_tags puts it back on the rows not changed since and reports the others;
-- dry runs and runs without a record are refused; old records are purged; and the filter runs on
-- a copy of a table, leaving the original alone.
SELECT setseed(0.5);
-- Run numbers that do not depend on the tests before this one.
ALTER SEQUENCE popularity.refresh_runs_run_id_seq RESTART WITH 1001;
CREATE FUNCTION pick(options text[]) RETURNS text LANGUAGE sql VOLATILE
AS $$ SELECT options[1 + floor(random() * cardinality(options))::int] $$;
CREATE TABLE image (identifier uuid PRIMARY KEY, provider varchar(80), tags jsonb,
                    updated_on timestamptz NOT NULL DEFAULT now());
INSERT INTO image (identifier, provider, tags)
SELECT md5(i::text)::uuid, pick(ARRAY['flickr', 'wikimedia']),
       CASE WHEN i % 40 = 0 THEN NULL
            WHEN i % 55 = 0 THEN '"not an array"'::jsonb
            ELSE (SELECT coalesce(jsonb_agg(t), '[]') FROM (
                      SELECT CASE WHEN random() < 0.05 THEN pick(ARRAY['1', 'null', '"x"', '[1]'])::jsonb
                                  ELSE jsonb_strip_nulls(jsonb_build_object(
                                      'name', pick(ARRAY['dog', 'cat', 'tree', 'tree', 'sky', 'CC0', 'by']),
                                      'provider', CASE WHEN random() < 0.3 THEN 'rekognition' END,
                                      'accuracy', CASE WHEN random() < 0.5 THEN round(random()::numeric, 2) END))
                             END AS t
                      FROM generate_series(1, 1 + floor(random() * 5)::int) AS g(k) WHERE g.k > 0) s)
       END
FROM generate_series(1, 2000) AS i;
CREATE TABLE image_before AS SELECT identifier, tags FROM image;
CREATE ROLE tags_undo_user LOGIN;
CREATE ROLE tags_undo_reader LOGIN;
GRANT SELECT, UPDATE, DELETE ON image TO tags_undo_user;
GRANT SELECT ON image TO tags_undo_reader;
SELECT popularity.grant_operator('tags_undo_user');
SELECT popularity.grant_operator('tags_undo_reader');
INSERT INTO popularity.media_types (media_type, media_table)
VALUES ('image', 'image');
GRANT SELECT ON image_before TO tags_undo_user;

SET ROLE tags_undo_user;
SET client_min_messages = warning;
CALL filter_tags('image', dry_run => true, batch_blocks => 3);
CALL filter_tags('image', batch_blocks => 3);
RESET client_min_messages;
-- Every changed row has a record (keyed by its primary key as text), and the records describe the
-- change exactly: the tags before the run are the tags after it with the removed ones put back.
SELECT r.run_id, r.media_type, r.dry_run, r.records_removed, s.rows_updated,
       (SELECT count(*) FROM popularity.tag_filter_removed_rows d WHERE d.run_id = r.run_id) AS records
FROM popularity.refresh_runs r JOIN popularity.refresh_status s USING (run_id) ORDER BY r.run_id;
SELECT count(*) AS changed,
       count(*) FILTER (WHERE popularity._restored_tags(i.tags, d.removed) = b.tags) AS restorable
FROM popularity.tag_filter_removed_rows d JOIN image i ON i.identifier::text = d.row_key
JOIN image_before b USING (identifier)
WHERE d.run_id = 1002;
SELECT count(*) AS unchanged_rows_without_record
FROM image i JOIN image_before b USING (identifier)
WHERE i.tags IS NOT DISTINCT FROM b.tags
  AND NOT EXISTS (SELECT FROM popularity.tag_filter_removed_rows d WHERE d.row_key = i.identifier::text);
-- The record is compact: positions and the removed tags only.
SELECT removed FROM popularity.tag_filter_removed_rows
WHERE run_id = 1002 ORDER BY jsonb_array_length(removed) DESC, row_key LIMIT 1;

-- Rows changed or deleted after the run are reported and left alone.
UPDATE image SET tags = tags || '[{"name": "added later"}]'
WHERE identifier IN (SELECT row_key::uuid FROM popularity.tag_filter_removed_rows WHERE run_id = 1002
                     ORDER BY row_key LIMIT 2);
DELETE FROM image
WHERE identifier IN (SELECT row_key::uuid FROM popularity.tag_filter_removed_rows WHERE run_id = 1002
                     ORDER BY row_key OFFSET 2 LIMIT 1);
CREATE TEMP TABLE changed_later AS
SELECT identifier, tags FROM image
WHERE identifier IN (SELECT row_key::uuid FROM popularity.tag_filter_removed_rows WHERE run_id = 1002
                     ORDER BY row_key LIMIT 3);
SELECT rows_restored > 0 AS restored_some, rows_not_restored, cardinality(not_restored)
FROM popularity.undo_filter_tags(1002);
-- Restored exactly, except the three rows reported (two changed since, one deleted).
SELECT count(*) FILTER (WHERE i.tags IS NOT DISTINCT FROM b.tags) = count(*) - 2 AS restored_exactly,
       count(*) AS rows
FROM image i JOIN image_before b USING (identifier);
SELECT count(*) AS untouched FROM changed_later c JOIN image i USING (identifier) WHERE i.tags = c.tags;
SELECT count(*) AS records_left FROM popularity.tag_filter_removed_rows WHERE run_id = 1002;
SELECT state, undone_at IS NOT NULL AS undone FROM popularity.refresh_runs WHERE run_id = 1002;

-- Refused: a dry run, a run undone already, an unknown run, NULL, a run that is not a filter run.
\set VERBOSITY default
SELECT * FROM popularity.undo_filter_tags(1001);
SELECT * FROM popularity.undo_filter_tags(1002);
SELECT * FROM popularity.undo_filter_tags(999);
SELECT * FROM popularity.undo_filter_tags(NULL);
INSERT INTO popularity.refresh_runs (media_type, media_table, key_column, providers, requested_by, state)
VALUES ('image', 'image', 'identifier', '{}', 0, 'succeeded') RETURNING run_id AS refresh_run \gset
SELECT * FROM popularity.undo_filter_tags(:refresh_run);
-- A role that may only read the table cannot undo.
RESET ROLE;
SET ROLE tags_undo_reader;
SELECT * FROM popularity.undo_filter_tags(1002);
RESET ROLE;
\set VERBOSITY terse

-- Without a record (popularity.tag_filter_undo off) a run cannot be undone.
SET ROLE tags_undo_user;
SET popularity.tag_filter_undo = off;
SET client_min_messages = warning;
CALL filter_tags('image', batch_blocks => 3);
RESET client_min_messages;
RESET popularity.tag_filter_undo;
SELECT r.run_id, r.records_removed, s.rows_updated > 0 AS changed,
       (SELECT count(*) FROM popularity.tag_filter_removed_rows d WHERE d.run_id = r.run_id) AS records
FROM popularity.refresh_runs r JOIN popularity.refresh_status s USING (run_id) WHERE r.run_id = 1004;
SELECT * FROM popularity.undo_filter_tags(1004);

-- Retention: the records of runs that ended longer ago than the retention are purged (the next
-- filter_tags of the media type purges them too), and such a run can no longer be undone.
UPDATE image SET tags = b.tags FROM image_before b WHERE b.identifier = image.identifier;
SET client_min_messages = warning;
CALL filter_tags('image', batch_blocks => 3);
RESET client_min_messages;
SELECT popularity.purge_filter_undo() AS purged_with_default_retention;
SHOW popularity.tag_filter_undo_retention;
SELECT popularity.purge_filter_undo('image', interval '0') > 0 AS purged;
SELECT run_id, state, records_purged_at IS NOT NULL AS purged,
       (SELECT count(*) FROM popularity.tag_filter_removed_rows d WHERE d.run_id = r.run_id) AS records
FROM popularity.refresh_runs r WHERE run_id = 1005;
SELECT * FROM popularity.undo_filter_tags(1005);
RESET ROLE;

-- The filter on a copy: the copy is registered as its own media type and filtered; the original
-- keeps its tags (the copy would then be swapped in, as a data refresh does).
UPDATE image SET tags = b.tags FROM image_before b WHERE b.identifier = image.identifier;
CREATE TABLE image_copy (LIKE image INCLUDING ALL);
INSERT INTO image_copy SELECT * FROM image;
INSERT INTO popularity.media_types (media_type, media_table) VALUES ('image_copy', 'image_copy');
SET client_min_messages = warning;
CALL filter_tags('image_copy', batch_blocks => 3);
RESET client_min_messages;
SELECT count(*) FILTER (WHERE c.tags IS DISTINCT FROM i.tags) > 0 AS copy_filtered,
       (SELECT count(*) FROM image i2 JOIN image_before b USING (identifier)
        WHERE i2.tags IS DISTINCT FROM b.tags) AS original_rows_changed
FROM image_copy c JOIN image i USING (identifier);
SELECT count(*) AS copy_rows_equal_to_filtered_original
FROM image_copy c JOIN image i USING (identifier)
WHERE c.tags IS NOT DISTINCT FROM popularity.filtered_tags(i.tags, i.provider, 'image');

-- The helpers.
SELECT popularity._removed_tags('[{"name": "dog"}, {"name": "cc0"}, 7, {"name": "cat"}]', NULL, NULL);
SELECT popularity._restored_tags('[{"name": "dog"}, {"name": "cat"}]', '[[1, {"name": "cc0"}], [2, 7]]');
SELECT popularity._restored_tags('[]', '[[1, 7]]');
SELECT popularity._restored_tags('{}', '[]');

DROP TABLE image, image_copy, image_before, changed_later;
DROP FUNCTION pick(text[]);
SELECT popularity.revoke_operator('tags_undo_user');
SELECT popularity.revoke_operator('tags_undo_reader');
DROP ROLE tags_undo_user;
DROP ROLE tags_undo_reader;
