-- Tag filter: accuracies stored as JSON strings, read as Openverse reads them
-- (`float(tag["accuracy"]) < 0.90` in Python): kept, dropped for low accuracy, or, where Python's
-- float() raises (Openverse would fail the whole batch), dropped as malformed and counted.
\set VERBOSITY default
\set SHOW_CONTEXT never

-- Openverse's real shape: Clarifai accuracies as strings.
SELECT popularity.filtered_tags(
    '[{"name": "people", "accuracy": "0.98224", "provider": "clarifai"},
      {"name": "adult", "accuracy": "0.93117", "provider": "clarifai"},
      {"name": "blur", "accuracy": "0.8512", "provider": "clarifai"},
      {"name": "people", "accuracy": 0.98224, "provider": "clarifai"}]') AS clarifai;

-- float()'s grammar, one tag at a time: kept (true), dropped, and why.
SELECT a.accuracy AS accuracy_json,
       popularity.filtered_tags(jsonb_build_array(jsonb_build_object('name', 'dog', 'accuracy', a.accuracy)))
           <> '[]' AS kept,
       popularity._tag_drop_counts(jsonb_build_array(jsonb_build_object('name', 'dog', 'accuracy', a.accuracy)),
                                   NULL, NULL) AS drops
FROM (VALUES (1, '"0.90"'::jsonb), (2, '"0.9"'), (3, '"0.89999"'), (4, '" 0.95\n"'),
             (5, '"\t9.5E-1 "'), (6, '"95e-2"'), (7, '".95"'), (8, '"1."'), (9, '"1"'),
             (10, '"0.8999999999999999999"'), (11, '"0.89999999999999991"'),
             (12, '"1_000.5"'), (13, '"0.9_5"'), (14, '"nan"'), (15, '"-NaN"'), (16, '"inf"'),
             (17, '"-Infinity"'), (18, '"1e999"'), (19, '"-1e999"'), (20, '"1e-999"'),
             (21, '"\u00a00.95\u3000"'), (22, '"٠.٩٥"'), (23, '"０.９５"'),
             (24, '"0.9 5"'), (25, '"1__0"'), (26, '"_1"'), (27, '"1_"'), (28, '"1_.5"'),
             (29, '"1._5"'), (30, '"1e_5"'), (31, '"0x1p0"'), (32, '""'), (33, '" "'),
             (34, '"ninety"'), (35, '"95%"'), (36, '"0,95"'), (37, '"\u001c0.95"'),
             (38, '"infinit"'), (39, '"1e"'), (40, '"."'),
             -- not strings: unchanged (numbers compared exactly, anything else malformed)
             (41, '0.95'), (42, '0.8999999999999999999'), (43, 'null'), (44, 'true'),
             (45, '["0.95"]')) AS a(n, accuracy)
ORDER BY a.n;

-- A configured minimum: strings are compared with the double nearest to it, as Python compares
-- float(accuracy) with a float; numbers exactly.
INSERT INTO popularity.tag_rules (media_type, min_accuracy) VALUES (NULL, 0.7);
SELECT popularity.filtered_tags(
    '[{"name": "a", "accuracy": "0.7"}, {"name": "b", "accuracy": "0.69999999999999999999"},
      {"name": "c", "accuracy": "0.6999999999999999"}, {"name": "d", "accuracy": 0.7},
      {"name": "e", "accuracy": 0.69999999999999999999}]') AS minimum_0_7;
DELETE FROM popularity.tag_rules;

-- Through a real media table with CALL filter_tags: rows change as filtered_tags says, and the
-- run counts strings float() rejects as malformed.
CREATE TABLE image (
    identifier uuid PRIMARY KEY,
    provider varchar(80) NOT NULL,
    tags jsonb
);
INSERT INTO popularity.media_types (media_type, media_table) VALUES ('image', 'image');
INSERT INTO image (identifier, provider, tags) VALUES
    ('00000000-0000-0000-0000-000000000001', 'flickr',
     '[{"name": "people", "accuracy": "0.98224", "provider": "clarifai"},
       {"name": "portrait", "accuracy": "0.91", "provider": "clarifai"}]'),
    ('00000000-0000-0000-0000-000000000002', 'flickr',
     '[{"name": "people", "accuracy": "0.98224", "provider": "clarifai"},
       {"name": "blur", "accuracy": "0.5", "provider": "clarifai"},
       {"name": "sky", "accuracy": "high", "provider": "clarifai"},
       {"name": "tree", "accuracy": "NaN", "provider": "clarifai"},
       {"name": "grass", "accuracy": "1__0", "provider": "clarifai"},
       {"name": "cloud", "accuracy": "-inf", "provider": "clarifai"}]'),
    ('00000000-0000-0000-0000-000000000003', 'flickr',
     '[{"name": "cat", "accuracy": " 9.5e-1 "}, {"name": "dog", "accuracy": ""}]');
SELECT right(identifier::text, 2) AS id, popularity.filtered_tags(tags, provider, 'image') AS filtered,
       popularity._tag_drop_counts(tags, provider, 'image') AS drops
FROM image ORDER BY identifier;
SET client_min_messages = warning; -- (the notices name run numbers that depend on earlier tests)
CALL filter_tags('image', dry_run => true);
CALL filter_tags('image');
RESET client_min_messages;
SELECT right(identifier::text, 2) AS id, tags FROM image ORDER BY identifier;
SELECT dry_run, state, rows_scanned, rows_updated, counters
FROM popularity.refresh_status WHERE job = 'filter_tags' AND media_type = 'image'
ORDER BY run_id DESC LIMIT 2;

DROP TABLE image;
DELETE FROM popularity.media_types;
