-- Property test: popularity.filtered_tags (C++) against an independent plain-SQL implementation of
-- the same rules, on thousands of generated tag arrays (deterministic: seeded), then CALL
-- filter_tags through a real table in many small batches against the same reference.
-- Lower-casing in SQL uses the ICU root collation, which maps case as the C++ engine does.

-- Python's float() of each string accuracy generated below (NULL: float() raises ValueError).
CREATE TABLE python_floats (text text PRIMARY KEY, value float8);
INSERT INTO python_floats VALUES
    ('0.95', 0.95), ('0.5', 0.5), (' 0.9 ', 0.9), ('0.8999999999999999999', 0.9),
    ('0.89999999999999991', 0.89999999999999991), ('NaN', 'NaN'), ('-inf', '-Infinity'),
    ('1e999', 'Infinity'), ('9_5e-2', 0.95), (U&'\0660.\0669\0669', 0.99), ('', NULL),
    ('high', NULL), ('1__0', NULL), (U&'\001C0.95', NULL);

CREATE FUNCTION tags_reference(tags jsonb, record_provider text, mt text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN jsonb_typeof(tags) IS DISTINCT FROM 'array' THEN tags ELSE
        coalesce((
            SELECT jsonb_agg(x.e ORDER BY x.n)
            FROM jsonb_array_elements(tags) WITH ORDINALITY AS x(e, n),
                 LATERAL (SELECT * FROM popularity.effective_tag_rules r
                          WHERE r.media_type IS NOT DISTINCT FROM mt) AS r,
                 LATERAL (SELECT CASE WHEN jsonb_typeof(x.e) = 'object'
                                       AND jsonb_typeof(x.e -> 'name') = 'string'
                                      THEN lower((x.e ->> 'name') COLLATE "und-x-icu") END AS name,
                                 CASE WHEN jsonb_typeof(x.e) = 'object'
                                       AND jsonb_typeof(x.e -> 'provider') = 'string'
                                      THEN lower((x.e ->> 'provider') COLLATE "und-x-icu") END AS provider
                         ) AS low
            WHERE low.name IS NOT NULL
              AND (NOT x.e ? 'accuracy'
                   OR (jsonb_typeof(x.e -> 'accuracy') = 'number'
                       AND (x.e ->> 'accuracy')::numeric >= r.min_accuracy)
                   -- a string: Python's float() of it (NULL where it raises), compared as Python
                   -- compares floats (float8 NaN < x is false too)
                   OR (jsonb_typeof(x.e -> 'accuracy') = 'string'
                       AND (SELECT p.value < r.min_accuracy::float8
                            FROM python_floats p WHERE p.text = x.e ->> 'accuracy') IS FALSE))
              AND (low.provider IS NULL OR low.provider <> ALL (
                       SELECT lower(p COLLATE "und-x-icu") FROM unnest(r.filtered_providers) p))
              AND low.name <> ALL (SELECT lower(d COLLATE "und-x-icu") FROM unnest(r.exact_denylist) d)
              AND NOT EXISTS (SELECT FROM unnest(r.substring_denylist) s
                              WHERE strpos(low.name, lower(s COLLATE "und-x-icu")) > 0)
              AND NOT (low.provider IS NOT NULL AND record_provider IS NOT NULL
                       AND low.provider <> lower(record_provider COLLATE "und-x-icu")
                       AND low.name = ANY (SELECT lower(l COLLATE "und-x-icu")
                                           FROM unnest(r.machine_labels) l))
        ), '[]')
    END
$$;

CREATE FUNCTION pick(choices text[]) RETURNS text LANGUAGE sql VOLATILE AS
    $$ SELECT choices[1 + floor(random() * cardinality(choices))::int] $$;

CREATE FUNCTION random_tag() RETURNS jsonb LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN random() < 0.05
        THEN pick(ARRAY['1', '"dog"', 'null', '[]', '{"name": 5}', '{"accuracy": 0.99}',
                        '{"name": null}', '{"name": ["cc0"]}'])::jsonb
        ELSE jsonb_build_object('name', pick(ARRAY[
                 'dog', 'Cat', 'CC0', 'cc0 license', 'by', 'BY', 'By-Nc', 'by nc', 'no person',
                 'No Person', 'no person ', 'squareformat', 'SquareFormat', 'uploaded:by=instagram',
                 'a:b', 'x=y', 'PDM', 'pdm-ish', 'İstanbul', 'İSTANBUL', 'istanbul', 'ß', 'STRASSE',
                 'Straße', 'STRAẞE', 'Ünïcödé', 'café', 'CAFÉ', 'CAFE' || U&'\0301', 'Adult', 'ADULT',
                 'BRIDE', 'bridegroom', ' cc0', 'cc0 ', 'flickriosapp', 'FlickrIOSApp', 'Σίσυφος',
                 'ΣΊΣΥΦΟΣ', U&'\01C5', U&'\01C6', U&'\212A' || '9', 'k9', '', ' ', 'ＣＣ0', 'Ⓒⓒ0']))
             || CASE floor(random() * 5)::int
                    WHEN 0 THEN jsonb_build_object('provider', pick(ARRAY[
                        'flickr', 'Flickr', 'clarifai', 'CLARIFAI', 'rekognition', 'Rekognition',
                        'provider1', 'FLİCKR']))
                    WHEN 1 THEN pick(ARRAY['{"provider": 5}', '{"provider": null}'])::jsonb
                    ELSE '{}' END
             || CASE floor(random() * 5)::int
                    WHEN 0 THEN jsonb_build_object('accuracy',
                        round(random()::numeric, 1 + floor(random() * 4)::int))
                    WHEN 1 THEN pick(ARRAY['{"accuracy": 0.9}', '{"accuracy": 0.90}',
                        '{"accuracy": 0.89999999999999999999}', '{"accuracy": 0.90000000000000000001}',
                        '{"accuracy": "0.95"}', '{"accuracy": null}', '{"accuracy": true}',
                        '{"accuracy": 1}', '{"accuracy": -1}', '{"accuracy": 1e-3}'])::jsonb
                    WHEN 2 THEN jsonb_build_object('accuracy', (SELECT p.text FROM python_floats p
                        ORDER BY p.text COLLATE "C" OFFSET floor(random() * 14)::int LIMIT 1))
                    ELSE '{}' END
             || CASE WHEN random() < 0.1 THEN '{"extra": {"nested": [1, 2]}}'::jsonb ELSE '{}' END
    END
$$;

CREATE FUNCTION random_tags() RETURNS jsonb LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN random() < 0.03
        THEN pick(ARRAY['{"name": "cc0"}', '"cc0"', '3', 'null', 'true'])::jsonb
        ELSE (SELECT coalesce(jsonb_agg(random_tag()), '[]') FROM generate_series(1, floor(random() * 13)::int))
    END
$$;

CREATE TABLE image (
    identifier uuid PRIMARY KEY,
    provider varchar(80),
    tags jsonb,
    updated_on timestamptz NOT NULL DEFAULT now()
);
INSERT INTO popularity.media_types (media_type, media_table) VALUES ('image', 'image');
INSERT INTO popularity.tag_rules (media_type, exact_denylist, substring_denylist, machine_labels)
SELECT 'image', d.exact_denylist || ARRAY['İSTANBUL', 'straße', U&'\01C5'],
       d.substring_denylist || ARRAY['É', 'Σ'], ARRAY['Adult', 'BRIDE', 'K9']
FROM popularity.tag_rule_defaults d;

SELECT setseed(0.4242);
INSERT INTO image (identifier, provider, tags)
SELECT md5(i::text)::uuid,
       pick(ARRAY['flickr', 'Flickr', 'clarifai', 'wikimedia', NULL]),
       random_tags()
FROM generate_series(1, 4000) AS i;

-- The generated data exercises every rule (counts per reason over all rows, image rules).
SELECT count(*) AS rows,
       count(*) FILTER (WHERE popularity._tag_drop_counts(tags, provider, 'image') IS NOT NULL) AS rows_with_drops,
       sum(c[1]) AS not_arrays, sum(c[2]) AS malformed, sum(c[3]) AS low_accuracy,
       sum(c[4]) AS filtered_provider, sum(c[5]) AS exact_denylist,
       sum(c[6]) AS substring_denylist, sum(c[7]) AS machine_label
FROM (SELECT tags, provider, popularity._tag_drop_counts(tags, provider, 'image') AS c FROM image) s;

-- The property, with the media type's rules and with the global rules, with and without the
-- record's provider: no row differs.
SELECT count(*) FILTER (WHERE popularity.filtered_tags(tags, provider, 'image')
                            IS DISTINCT FROM tags_reference(tags, provider, 'image')) AS image_rules,
       count(*) FILTER (WHERE popularity.filtered_tags(tags, provider)
                            IS DISTINCT FROM tags_reference(tags, provider, NULL)) AS global_rules,
       count(*) FILTER (WHERE popularity.filtered_tags(tags)
                            IS DISTINCT FROM tags_reference(tags, NULL, NULL)) AS no_provider
FROM image;
-- The comparison can fail: the image rules differ from the global rules on many rows.
SELECT count(*) FILTER (WHERE popularity.filtered_tags(tags, provider, 'image')
                            IS DISTINCT FROM tags_reference(tags, provider, NULL)) > 100 AS rules_matter
FROM image;
-- Kept tags keep their order and content: every kept element is an element of the input.
SELECT count(*) AS rows_not_subsequence
FROM image, LATERAL (SELECT popularity.filtered_tags(tags, provider, 'image') AS f) f
WHERE jsonb_typeof(tags) = 'array' AND NOT (tags @> f.f AND jsonb_array_length(f.f) <= jsonb_array_length(tags));
-- The counts agree with the arrays: kept + dropped = length.
SELECT count(*) AS rows_count_mismatch
FROM image, LATERAL (SELECT popularity._tag_drop_counts(tags, provider, 'image') AS c) c
WHERE jsonb_typeof(tags) = 'array'
  AND jsonb_array_length(popularity.filtered_tags(tags, provider, 'image'))
      + coalesce(c.c[2] + c.c[3] + c.c[4] + c.c[5] + c.c[6] + c.c[7], 0) <> jsonb_array_length(tags);

-- Through the table, in batches of 2 blocks: the same result as the reference, row by row, and
-- counts that add up.
CREATE TABLE expected AS
SELECT identifier, tags_reference(tags, provider, 'image') AS tags,
       tags_reference(tags, provider, 'image') IS DISTINCT FROM tags AS changes,
       popularity._tag_drop_counts(tags, provider, 'image') AS c
FROM image;
SELECT pg_relation_size('image') / current_setting('block_size')::int > 10 AS several_batches;
SET client_min_messages = warning;
CALL filter_tags('image', batch_blocks => 2);
RESET client_min_messages;
SELECT count(*) AS rows_differing FROM image i JOIN expected e USING (identifier)
WHERE i.tags IS DISTINCT FROM e.tags;
SELECT r.batches > 10 AS several_batches,
       -- (a row rewritten into a block the walk has not reached yet is read again)
       r.rows_scanned >= (SELECT count(*) FROM expected) AS scanned_all,
       r.rows_updated = (SELECT count(*) FROM expected WHERE changes) AS changed_ok,
       coalesce((r.counters ->> 'rows_not_an_array')::bigint, 0)
           = (SELECT coalesce(sum(c[1]), 0) FROM expected) AS malformed_rows_ok,
       ARRAY[coalesce((r.counters ->> 'malformed')::bigint, 0),
             coalesce((r.counters ->> 'low_accuracy')::bigint, 0),
             coalesce((r.counters ->> 'filtered_provider')::bigint, 0),
             coalesce((r.counters ->> 'exact_denylist')::bigint, 0),
             coalesce((r.counters ->> 'substring_denylist')::bigint, 0),
             coalesce((r.counters ->> 'machine_label')::bigint, 0)]
       = (SELECT ARRAY[sum(c[2]), sum(c[3]), sum(c[4]), sum(c[5]), sum(c[6]), sum(c[7])]::bigint[]
          FROM expected) AS drops_ok
FROM popularity.refresh_status r
WHERE r.job = 'filter_tags' AND r.media_type = 'image' AND NOT r.dry_run
ORDER BY r.run_id DESC LIMIT 1;

DROP TABLE image, expected;
DELETE FROM popularity.media_types;
DROP FUNCTION tags_reference(jsonb, text, text), random_tags(), random_tag(), pick(text[]);
DROP TABLE python_floats;
