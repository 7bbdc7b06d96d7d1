-- Tag filter: popularity.filtered_tags, the rules tables and their cache, and CALL filter_tags
-- through a real media table (reference vectors: openverse-semantics.md, section 5).
\set VERBOSITY default
\set SHOW_CONTEXT never
-- Run numbers that do not depend on the tests before this one.
ALTER SEQUENCE popularity.refresh_runs_run_id_seq RESTART WITH 2001;

-- A media table and its registration (registration routines belong to the catalog feature).
CREATE TABLE image (
    identifier uuid PRIMARY KEY,
    provider varchar(80) NOT NULL,
    foreign_identifier text,
    tags jsonb,
    updated_on timestamptz NOT NULL DEFAULT '2024-01-01 00:00:00+00'
);
INSERT INTO popularity.media_types (media_type, media_table) VALUES ('image', 'image');

-- The reference vectors, plus bad input, as rows.
INSERT INTO image (identifier, provider, tags) VALUES
    ('00000000-0000-0000-0000-000000000001', 'flickr', '[{"name": "valid", "accuracy": 0.92}]'),
    ('00000000-0000-0000-0000-000000000002', 'flickr',
     '[{"name": "cc0"}, {"name": " cc0"}, {"name": "valid", "accuracy": 0.99},
       {"name": "valid_no_accuracy"}, {"name": "garbage:=metacrap"}]'),
    ('00000000-0000-0000-0000-000000000003', 'flickr',
     '[{"name": "inaccurate", "accuracy": 0.5}, {"name": "accurate", "accuracy": 0.999}]'),
    ('00000000-0000-0000-0000-000000000004', 'flickr',
     '[{"name": "valid", "provider": "provider1"}, {"name": "invalid", "provider": "rekognition"}]'),
    ('00000000-0000-0000-0000-000000000005', 'flickr', '[{"name": "CC0"}, {"name": "By"}]'),
    ('00000000-0000-0000-0000-000000000006', 'flickr', '[]'),
    ('00000000-0000-0000-0000-000000000007', 'flickr', '{"name": "not an array"}'),
    ('00000000-0000-0000-0000-000000000008', 'flickr', '"a string"'),
    ('00000000-0000-0000-0000-000000000009', 'flickr', '42'),
    ('00000000-0000-0000-0000-00000000000a', 'flickr', 'null'),
    ('00000000-0000-0000-0000-00000000000b', 'flickr', NULL),
    ('00000000-0000-0000-0000-00000000000c', 'flickr',
     '[1, "dog", null, [], {"name": 5}, {"accuracy": 0.99}, {"name": "cat", "accuracy": "0.99"},
       {"name": "cow", "accuracy": null}, {"name": "kept", "accuracy": 1, "extra": [1, {"a": 2}]}]'),
    ('00000000-0000-0000-0000-00000000000d', 'flickr',
     '[{"name": "edge", "accuracy": 0.9}, {"name": "edge2", "accuracy": 0.8999999999999999999999},
       {"name": "edge3", "accuracy": 0.90000000000000000001}, {"name": "zero", "accuracy": 0}]');

-- Row by row, before any change.
SELECT right(identifier::text, 2) AS id, popularity.filtered_tags(tags, provider) AS filtered,
       popularity._tag_drop_counts(tags, provider, 'image') AS drops
FROM image ORDER BY identifier;

-- Nothing dropped: the same value comes back (here, the same bytes).
SELECT popularity.filtered_tags(tags)::text = tags::text AS same_value
FROM image WHERE identifier = '00000000-0000-0000-0000-000000000001';

-- A dry run counts and changes nothing.
CREATE TABLE image_before AS SELECT * FROM image;
CALL filter_tags('image', dry_run => true);
SELECT count(*) AS rows_differing FROM image i JOIN image_before b USING (identifier)
WHERE i.tags IS DISTINCT FROM b.tags OR i.ctid <> b.ctid;
SELECT count(*) AS rows_rewritten FROM image WHERE xmin <> (SELECT xmin FROM image LIMIT 1);

-- The real run: one block per batch.
CALL filter_tags('image', batch_blocks => 1);
SELECT right(identifier::text, 2) AS id, tags FROM image ORDER BY identifier;
-- Only rows whose tags changed were written (a new row version, a new xmin).
SELECT right(i.identifier::text, 2) AS id
FROM image i JOIN image_before b USING (identifier)
WHERE i.xmin <> (SELECT xmin FROM image WHERE identifier = '00000000-0000-0000-0000-000000000001')
ORDER BY 1;
-- updated_on is left alone.
SELECT count(*) AS updated_on_changed FROM image i JOIN image_before b USING (identifier)
WHERE i.updated_on <> b.updated_on;
-- Both runs in the engine's status: rows scanned, changed (a dry run: would change), and the tags
-- dropped per verdict by name.
SELECT job, media_type, provider, dry_run, state, blocks_done = blocks_total AS walked,
       rows_pending_revisit, batches > 0 AS batched, rows_scanned, rows_updated,
       rows_skipped_locked, counters, finished_at IS NOT NULL AS finished
FROM popularity.refresh_status WHERE job = 'filter_tags' ORDER BY run_id;
-- The dry run recorded nothing; the real run recorded what each changed row lost.
SELECT r.dry_run, count(d.*) AS rows_recorded
FROM popularity.refresh_runs r LEFT JOIN popularity.tag_filter_removed_rows d USING (run_id)
WHERE r.job = 'filter_tags' GROUP BY r.run_id, r.dry_run ORDER BY r.run_id;

-- A second run finds nothing to do and writes nothing.
CREATE TABLE image_after AS SELECT identifier, xmin::text::bigint AS x FROM image;
CALL filter_tags('image');
SELECT count(*) AS rewritten FROM image i JOIN image_after a USING (identifier)
WHERE i.xmin::text::bigint <> a.x;

-- Unicode case: full lower-casing, whatever the database's collation.
SELECT name, popularity.filtered_tags(jsonb_build_array(jsonb_build_object('name', name))) = '[]' AS dropped
FROM (VALUES ('CC0'), ('cC0'), ('ＣＣ0'), ('PDM' || U&'\0301'), ('BY-NC-SA'), ('UPLOADED'),
             ('Straße'), ('İ'), ('NO PERSON'), ('no  person'), ('no person ')) AS t(name);

-- Rules per media type, editable with plain SQL; the cache follows committed changes.
CREATE TABLE audio (identifier uuid PRIMARY KEY, provider varchar(80), tags jsonb,
                    updated_on timestamptz NOT NULL DEFAULT now());
INSERT INTO popularity.media_types (media_type, media_table) VALUES ('audio', 'audio');
SELECT popularity.filtered_tags('[{"name": "Bride", "provider": "clarifai", "accuracy": 0.95},
                                  {"name": "Adult", "provider": "jamendo"},
                                  {"name": "low", "accuracy": 0.6}]', 'jamendo', 'audio') AS before;
INSERT INTO popularity.tag_rules (media_type, machine_labels) VALUES ('audio', ARRAY['adult', 'BRIDE']);
INSERT INTO popularity.tag_rules (media_type, min_accuracy) VALUES (NULL, 0.5);
SELECT popularity.filtered_tags('[{"name": "Bride", "provider": "clarifai", "accuracy": 0.95},
                                  {"name": "Adult", "provider": "jamendo"},
                                  {"name": "low", "accuracy": 0.6}]', 'jamendo', 'audio') AS after;
-- The image rules did not get the audio labels; they got the global minimum.
SELECT popularity.filtered_tags('[{"name": "Bride", "provider": "clarifai", "accuracy": 0.95},
                                  {"name": "low", "accuracy": 0.6}]', 'flickr', 'image') AS image;
SELECT media_type, min_accuracy, machine_labels FROM popularity.effective_tag_rules ORDER BY media_type NULLS FIRST;
-- A rolled-back change is forgotten.
BEGIN;
UPDATE popularity.tag_rules SET min_accuracy = 0.99 WHERE media_type IS NULL;
SELECT popularity.filtered_tags('[{"name": "low", "accuracy": 0.6}]') AS inside_transaction;
ROLLBACK;
SELECT popularity.filtered_tags('[{"name": "low", "accuracy": 0.6}]') AS after_rollback;
DELETE FROM popularity.tag_rules;
SELECT popularity.filtered_tags('[{"name": "low", "accuracy": 0.6}]') AS defaults_again;
-- Bad rules are refused by the table.
INSERT INTO popularity.tag_rules (media_type, min_accuracy) VALUES (NULL, 1.5);
INSERT INTO popularity.tag_rules (media_type, exact_denylist) VALUES (NULL, ARRAY['a', NULL]);
INSERT INTO popularity.tag_rules (media_type) VALUES ('video');
INSERT INTO popularity.tag_rules (media_type) VALUES (NULL), (NULL);

-- Errors on parameters (never on data).
SELECT popularity.filtered_tags('[]', NULL, 'video');
CALL filter_tags('video');
CALL filter_tags(NULL);
CALL filter_tags('image', batch_blocks => 0);
CREATE TABLE bad_media (identifier text PRIMARY KEY, tags json);
INSERT INTO popularity.media_types (media_type, media_table) VALUES ('bad', 'bad_media');
CALL filter_tags('bad');
DELETE FROM popularity.media_types WHERE media_type = 'bad';
BEGIN;
CALL filter_tags('image');
ROLLBACK;

-- NULL in, NULL out; the record provider may be NULL.
SELECT popularity.filtered_tags(NULL) IS NULL AS null_tags,
       popularity._tag_drop_counts(NULL, NULL, NULL) IS NULL AS null_counts;

-- Large arrays: 10,000 tags, every third one kept.
SELECT jsonb_array_length(popularity.filtered_tags(a)) AS kept,
       popularity.filtered_tags(a) = (SELECT jsonb_agg(e ORDER BY n) FROM jsonb_array_elements(a) WITH ORDINALITY AS x(e, n)
                                      WHERE n % 3 = 1) AS same_objects_same_order
FROM (SELECT jsonb_agg(CASE i % 3 WHEN 0 THEN jsonb_build_object('name', 'tag ' || i, 'accuracy', 0.95)
                               WHEN 1 THEN jsonb_build_object('name', 'cc0 ' || i)
                               ELSE jsonb_build_object('name', 'low ' || i, 'accuracy', 0.5) END
                       ORDER BY i) AS a
      FROM generate_series(0, 9999) AS i) AS t;

-- The verdicts and the built-in rules have one definition, in the library: the names in order
-- (kept first), the defaults as the view shows them, and _tag_drop_counts keyed by the verdicts
-- (element k >= 2 counts the k-th verdict; element 1 says "not an array").
SELECT n, v AS verdict FROM popularity._tag_verdicts() WITH ORDINALITY AS x(v, n);
SELECT * FROM popularity.tag_rule_defaults;
SELECT (SELECT row(d.*) FROM popularity.tag_rule_defaults AS d) =
       (SELECT row(r.min_accuracy, r.filtered_providers, r.exact_denylist, r.substring_denylist, r.machine_labels)
        FROM popularity.effective_tag_rules AS r WHERE r.media_type IS NULL) AS global_rules_are_the_defaults;
SELECT x.v AS verdict, c[x.n] AS dropped
FROM popularity._tag_drop_counts('[{"name": "no person"}, 3, {"name": "a", "accuracy": 0.1}, {"name": "cc0 x"},
                                   {"name": "b", "provider": "rekognition"}, {"name": "BY"}, {"name": "ok"}]',
                                 NULL, NULL) AS c,
     popularity._tag_verdicts() WITH ORDINALITY AS x(v, n)
WHERE x.n >= 2 ORDER BY x.n;

-- Works in parallel workers too.
SET force_parallel_mode = on;
SELECT popularity.filtered_tags('[{"name": "cc0"}, {"name": "dog"}]') AS parallel;
RESET force_parallel_mode;

DROP TABLE image, image_before, image_after, audio, bad_media CASCADE;
DELETE FROM popularity.media_types;
SELECT count(*) AS runs_active FROM popularity.refresh_runs WHERE state IN ('queued', 'running');
