-- The ingestion trigger's scored row. When standardized_popularity is the table's last column (as
-- register_media_type adds it, and as in Openverse's tables) the trigger builds the new row by
-- copying the old one's bytes and writing the score at the end; otherwise it forms the row again
-- from its columns. Both must read back identically, column by column, and be well-formed heap
-- tuples (amcheck), on insert, update and upsert, whatever the null pattern and the alignment of
-- the end of the row.
CREATE EXTENSION amcheck;
CREATE EXTENSION pageinspect;

-- Score last (added by registration) and score in the middle; otherwise the same columns.
CREATE TABLE tuple_last (id int PRIMARY KEY, provider text, note text, meta_data jsonb,
                         updated_on timestamptz NOT NULL DEFAULT now(), flag boolean, small int2);
CREATE TABLE tuple_mid (id int PRIMARY KEY, provider text, standardized_popularity float8, note text,
                        meta_data jsonb, updated_on timestamptz NOT NULL DEFAULT now(), flag boolean,
                        small int2);
SELECT popularity.register_media_type('tuple_last', 'tuple_last', false);
SELECT popularity.register_media_type('tuple_mid', 'tuple_mid', false);
SELECT attname FROM pg_attribute WHERE attrelid = 'tuple_last'::regclass AND attnum > 0 ORDER BY attnum DESC LIMIT 1;
SELECT popularity.set_metric('tuple_last', 'p', 'views', 0.5);
SELECT popularity.set_metric('tuple_mid', 'p', 'views', 0.5);

-- Constants from views [0, 50, 75, 150] (p = 0.5 -> 50).
INSERT INTO tuple_last (id, provider, note, meta_data)
SELECT -v, 'p', 'seed', jsonb_build_object('views', v) FROM unnest('{0,50,75,150}'::int[]) v;
INSERT INTO tuple_mid (id, provider, note, meta_data)
SELECT -v, 'p', 'seed', jsonb_build_object('views', v) FROM unnest('{0,50,75,150}'::int[]) v;
SELECT provider, new_constant FROM popularity.refresh_constants('tuple_last');
SELECT provider, new_constant FROM popularity.refresh_constants('tuple_mid');
-- The seed rows were inserted before there was a constant: score them now.
UPDATE tuple_last SET note = note WHERE id <= 0;
UPDATE tuple_mid SET note = note WHERE id <= 0;

-- Rows whose data ends at every alignment (note of 0..15 bytes, small present or not), with and
-- without other NULL columns, rows without a score (no metric, other provider, NULL meta_data),
-- and a hand-set score that the trigger replaces.
CREATE TEMP TABLE tuple_rows AS
SELECT i AS id,
       CASE WHEN i % 11 = 10 THEN 'other' ELSE 'p' END AS provider,
       CASE WHEN i % 7 = 6 THEN NULL ELSE repeat('n', i % 16) END AS note,
       CASE WHEN i % 13 = 12 THEN NULL
            WHEN i % 9 = 8 THEN '{"likes": 3}'::jsonb
            ELSE jsonb_build_object('views', (i * 37) % 200) END AS meta_data,
       CASE WHEN i % 5 = 4 THEN NULL ELSE i % 2 = 0 END AS flag,
       CASE WHEN i % 3 = 2 THEN NULL ELSE (i % 1000)::int2 END AS small,
       CASE WHEN i % 17 = 16 THEN 0.123::float8 END AS hand_set
FROM generate_series(1, 120) AS i;
INSERT INTO tuple_last (id, provider, note, meta_data, flag, small, standardized_popularity)
SELECT id, provider, note, meta_data, flag, small, hand_set FROM tuple_rows;
INSERT INTO tuple_mid (id, provider, note, meta_data, flag, small, standardized_popularity)
SELECT id, provider, note, meta_data, flag, small, hand_set FROM tuple_rows;

CREATE FUNCTION pg_temp.differences() RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM tuple_last l FULL JOIN tuple_mid m USING (id)
    WHERE l.id IS NULL OR m.id IS NULL
       OR (l.provider, l.note, l.meta_data, l.flag, l.small, l.standardized_popularity)
          IS DISTINCT FROM (m.provider, m.note, m.meta_data, m.flag, m.small, m.standardized_popularity)
$$;
CREATE FUNCTION pg_temp.wrong_scores(tbl regclass) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    EXECUTE format($q$SELECT count(*) FROM %s t
        LEFT JOIN popularity.metrics m ON m.media_type = %L AND m.provider = t.provider
        WHERE t.standardized_popularity IS DISTINCT FROM
              standardized_popularity(popularity_metric_value(t.meta_data, m.metric), m.constant)$q$,
        tbl, tbl::text) INTO n;
    RETURN n;
END $$;
CREATE FUNCTION pg_temp.check(label text) RETURNS TABLE (step text, rows bigint, differences bigint,
    wrong_last bigint, wrong_mid bigint, corrupt_last bigint, corrupt_mid bigint)
LANGUAGE sql AS $$
    SELECT label, (SELECT count(*) FROM tuple_last), pg_temp.differences(),
           pg_temp.wrong_scores('tuple_last'), pg_temp.wrong_scores('tuple_mid'),
           (SELECT count(*) FROM verify_heapam('tuple_last')),
           (SELECT count(*) FROM verify_heapam('tuple_mid'))
$$;

SELECT * FROM pg_temp.check('insert');
SELECT count(*) FILTER (WHERE standardized_popularity IS NOT NULL) AS scored,
       count(*) FILTER (WHERE standardized_popularity IS NULL) AS unscored
FROM tuple_last;
-- The reference vector through both layouts: 50 -> 0.5, 150 -> 0.75.
SELECT l.id, l.standardized_popularity AS last, m.standardized_popularity AS mid
FROM tuple_last l JOIN tuple_mid m USING (id) WHERE l.id IN (-50, -150) ORDER BY l.id;

-- A row with no NULL column but the score: the byte copy keeps its null bitmap, now all set (the
-- score is no longer NULL); forming the row again leaves the bitmap out. Both read the same.
INSERT INTO tuple_last (id, provider, note, meta_data, flag, small)
VALUES (1000, 'p', 'all set', '{"views": 150}', true, 7);
INSERT INTO tuple_mid (id, provider, note, meta_data, flag, small)
VALUES (1000, 'p', 'all set', '{"views": 150}', true, 7);
SELECT 'tuple_last' AS tbl, t_bits, t_infomask & 1 <> 0 AS has_null_bitmap
FROM heap_page_items(get_raw_page('tuple_last', (SELECT (ctid::text::point)[0]::int FROM tuple_last WHERE id = 1000)))
WHERE lp = (SELECT (ctid::text::point)[1]::int FROM tuple_last WHERE id = 1000)
UNION ALL
SELECT 'tuple_mid', t_bits, t_infomask & 1 <> 0
FROM heap_page_items(get_raw_page('tuple_mid', (SELECT (ctid::text::point)[0]::int FROM tuple_mid WHERE id = 1000)))
WHERE lp = (SELECT (ctid::text::point)[1]::int FROM tuple_mid WHERE id = 1000);
SELECT id, standardized_popularity, note, flag, small FROM tuple_last WHERE id = 1000;
SELECT * FROM pg_temp.check('all columns set');

-- Updates: a new constant (p = 0.8) rescored by an update of another column (score already set:
-- overwritten in place in the copy), scores going to NULL (metric removed), and back.
SELECT popularity.set_metric('tuple_last', 'p', 'views', 0.8);
SELECT popularity.set_metric('tuple_mid', 'p', 'views', 0.8);
SELECT provider, new_constant FROM popularity.refresh_constants('tuple_last');
SELECT provider, new_constant FROM popularity.refresh_constants('tuple_mid');
UPDATE tuple_last SET note = note;
UPDATE tuple_mid SET note = note;
SELECT * FROM pg_temp.check('update, new constant');
UPDATE tuple_last SET meta_data = meta_data - 'views' WHERE id % 4 = 1;
UPDATE tuple_mid SET meta_data = meta_data - 'views' WHERE id % 4 = 1;
SELECT * FROM pg_temp.check('update, score to NULL');
UPDATE tuple_last SET meta_data = jsonb_build_object('views', id) WHERE id % 4 = 1;
UPDATE tuple_mid SET meta_data = jsonb_build_object('views', id) WHERE id % 4 = 1;
SELECT * FROM pg_temp.check('update, score back');
-- An update of a column that does not change the score (scores rewritten as they are).
UPDATE tuple_last SET flag = NOT flag;
UPDATE tuple_mid SET flag = NOT flag;
SELECT * FROM pg_temp.check('update, same scores');

-- Upserts (Openverse's ingestion): half conflicting, merged meta_data.
INSERT INTO tuple_last AS old (id, provider, note, meta_data, small)
SELECT i, 'p', repeat('u', i % 9), jsonb_build_object('views', i % 61, 'x', NULL), (i % 3)::int2
FROM generate_series(60, 180) AS i
ON CONFLICT (id) DO UPDATE SET meta_data = jsonb_strip_nulls(old.meta_data || excluded.meta_data);
INSERT INTO tuple_mid AS old (id, provider, note, meta_data, small)
SELECT i, 'p', repeat('u', i % 9), jsonb_build_object('views', i % 61, 'x', NULL), (i % 3)::int2
FROM generate_series(60, 180) AS i
ON CONFLICT (id) DO UPDATE SET meta_data = jsonb_strip_nulls(old.meta_data || excluded.meta_data);
SELECT * FROM pg_temp.check('upsert');

-- A column added after registration: the score is no longer last, and the stored rows have one
-- column fewer than the table. Both keep working through the general path.
ALTER TABLE tuple_last ADD COLUMN extra text;
ALTER TABLE tuple_mid ADD COLUMN extra text;
UPDATE tuple_last SET meta_data = jsonb_build_object('views', id % 50) WHERE id % 3 = 0;
UPDATE tuple_mid SET meta_data = jsonb_build_object('views', id % 50) WHERE id % 3 = 0;
INSERT INTO tuple_last (id, provider, meta_data, extra) VALUES (2000, 'p', '{"views": 9}', 'e');
INSERT INTO tuple_mid (id, provider, meta_data, extra) VALUES (2000, 'p', '{"views": 9}', 'e');
SELECT * FROM pg_temp.check('column added');
SELECT count(*) AS extra_differences FROM tuple_last l JOIN tuple_mid m USING (id)
WHERE l.extra IS DISTINCT FROM m.extra;

-- Large meta_data values (compressed, or stored out of line once in the table) take the general
-- path where they are external; the rows still read back the same.
UPDATE tuple_last SET meta_data = jsonb_build_object('views', id, 'blob', repeat(md5(id::text), 400))
WHERE id BETWEEN 1 AND 10;
UPDATE tuple_mid SET meta_data = jsonb_build_object('views', id, 'blob', repeat(md5(id::text), 400))
WHERE id BETWEEN 1 AND 10;
UPDATE tuple_last SET note = 'again' WHERE id BETWEEN 1 AND 10;
UPDATE tuple_mid SET note = 'again' WHERE id BETWEEN 1 AND 10;
SELECT * FROM pg_temp.check('large values');

SELECT popularity.unregister_media_type('tuple_last');
SELECT popularity.unregister_media_type('tuple_mid');
DROP TABLE tuple_last, tuple_mid;
DROP EXTENSION pageinspect;
DROP EXTENSION amcheck;
