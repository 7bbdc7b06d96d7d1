-- Synthetic Openverse-like image catalog, generated set-based (no row-by-row loop).
--
--   psql -v rows=2000000 [-v seed=0.42] [-v tags=steady|dirty] [-v invalid_fraction=0] -f gen_catalog.sql
--
-- Creates (dropping any previous copy, in the current schema):
--   image    shaped like Openverse's media table (reference page, section 1), with its unique indexes;
--   metrics  provider -> metric key inside meta_data, percentile (0.85): join it in benchmarks.
-- Variables:
--   rows              number of image rows (required).
--   seed              setseed() argument in [-1, 1]; the same seed gives the same rows (identifiers
--                     excepted: gen_random_uuid() is not seeded). Default 0.42.
--   tags              steady: ~10% of rows carry at least one tag the default tag rules drop;
--                     dirty: ~85% do (a catalog before its first cleanup). Default steady.
--   invalid_fraction  fraction of rows whose metric value is not usable ("1k"-style text or a
--                     negative number). Default 0, so that the Openverse SQL (which casts
--                     meta_data->>metric to float and fails on "1k") can run over the catalog.
-- Metric values: skewed integers (lognormal counts, many zeros and ties), ~4% of rows without the
-- metric key, ~0.2% with JSON null, ~1% as numeric strings such as "123" (valid), the rest JSON
-- numbers. Providers smithsonian and met have no metric configured.
\set ON_ERROR_STOP on
\if :{?rows}
\else
DO $$ BEGIN RAISE EXCEPTION 'gen_catalog.sql: set the row count, e.g. psql -v rows=100000 -f gen_catalog.sql'; END $$;
\endif
\if :{?seed}
\else
\set seed 0.42
\endif
\if :{?tags}
\else
\set tags steady
\endif
\if :{?invalid_fraction}
\else
\set invalid_fraction 0
\endif

SET client_min_messages = warning;
SET max_parallel_workers_per_gather = 0; -- one process, so random() draws come in a fixed order

-- Validate the variables (they are only ever used as typed literals below).
SELECT (:'rows')::bigint AS gen_rows,
       (:'seed')::float8 AS gen_seed,
       (:'invalid_fraction')::float8 AS gen_invalid_fraction,
       CASE :'tags' WHEN 'dirty' THEN 0.85 ELSE 0.10 END::float8 AS gen_dirty_fraction,
       (:'rows')::bigint >= 1 AND (:'seed')::float8 BETWEEN -1 AND 1
           AND (:'invalid_fraction')::float8 BETWEEN 0 AND 0.5
           AND :'tags' IN ('steady', 'dirty') AS gen_args_ok
\gset
\if :gen_args_ok
\else
DO $$ BEGIN RAISE EXCEPTION 'gen_catalog.sql: need rows >= 1, -1 <= seed <= 1, 0 <= invalid_fraction <= 0.5, tags steady or dirty'; END $$;
\endif

DROP TABLE IF EXISTS image, metrics, pg_temp.gen_provider;

-- Providers: share of rows (cumulative bounds lo..hi), metric key, lognormal parameters of the
-- counts (mu, sigma of ln(count)) and an extra share of exact zeros.
CREATE TEMP TABLE gen_provider (provider text, metric text, lo float8, hi float8,
                                mu float8, sigma float8, zeros float8, host text);
INSERT INTO gen_provider VALUES
    ('flickr',      'views',              0.00, 0.55, 4.0, 2.0, 0.08, 'live.staticflickr.com'),
    ('wikimedia',   'global_usage_count', 0.55, 0.70, 0.0, 1.3, 0.30, 'upload.wikimedia.org'),
    ('nappy',       'downloads',          0.70, 0.73, 5.0, 1.5, 0.02, 'images.nappy.co'),
    ('rawpixel',    'download_count',     0.73, 0.81, 3.0, 2.2, 0.15, 'images.rawpixel.com'),
    ('stocksnap',   'downloads_raw',      0.81, 0.84, 6.0, 1.5, 0.01, 'cdn.stocksnap.io'),
    ('smithsonian', NULL,                 0.84, 0.93, 0,   0,   0,    'ids.si.edu'),
    ('met',         NULL,                 0.93, 1.01, 0,   0,   0,    'images.metmuseum.org');

CREATE TABLE metrics (
    provider varchar(80) PRIMARY KEY,
    metric text NOT NULL,
    percentile double precision NOT NULL DEFAULT 0.85
);
INSERT INTO metrics (provider, metric) SELECT provider, metric FROM gen_provider WHERE metric IS NOT NULL;

CREATE TABLE image (
    identifier uuid NOT NULL DEFAULT gen_random_uuid(),
    provider varchar(80),
    foreign_identifier text,
    url text,
    meta_data jsonb,
    tags jsonb,
    updated_on timestamptz NOT NULL,
    created_on timestamptz,
    removed_from_source boolean,
    standardized_popularity double precision
);

-- Tag pools, as jsonb arrays inlined into the INSERT below as constants (O(1) element access).
-- Clean tags: kept by the default rules. Provider tags get the row's provider at generation time.
WITH words(w) AS (
    SELECT unnest(ARRAY[
        'sunset', 'mountain', 'river', 'portrait', 'street', 'architecture', 'beach', 'forest',
        'dog', 'cat', 'bird', 'flower', 'city', 'night', 'snow', 'travel', 'food', 'museum',
        'painting', 'sculpture', 'bridge', 'car', 'train', 'boat', 'sky', 'cloud', 'tree', 'lake',
        'garden', 'church', 'castle', 'market', 'festival', 'music', 'dance', 'sport', 'football',
        'wedding', 'family', 'child', 'woman', 'man', 'smile', 'hands', 'coffee', 'book', 'desk',
        'window', 'door', 'road', 'desert', 'ocean', 'island', 'waterfall', 'autumn', 'spring',
        'summer', 'winter', 'macro', 'insect', 'butterfly', 'horse', 'cow', 'farm', 'harbour',
        'lighthouse', 'skyline', 'graffiti', 'neon', 'rain', 'fog', 'reflection', 'shadow',
        'black and white', 'landscape', 'nature', 'animal', 'wildlife', 'vintage', 'film',
        'Café', 'Zürich', 'São Paulo', 'Ñandú', 'straße', 'İstanbul', 'Ελλάδα', 'Москва', '東京',
        'Kraków', 'Łódź', 'Ærø', 'élan', 'piñata', 'naïve art', 'Ōsaka', 'Reykjavík', 'Malmö'])
), provider_tags AS (
    SELECT jsonb_build_object('name', CASE v WHEN 0 THEN w WHEN 1 THEN initcap(w)
                                             WHEN 2 THEN upper(w) ELSE w || ' ' || v END) AS t
    FROM words, generate_series(0, 5) AS v
), machine_tags AS (
    SELECT jsonb_build_object('name', CASE WHEN v % 2 = 0 THEN w ELSE initcap(w) END,
                              'provider', 'clarifai',
                              'accuracy', CASE WHEN v = 0 THEN 0.9 ELSE round((0.9 + v * 0.0166)::numeric, 4) END) AS t
    FROM words, generate_series(0, 5) AS v
)
SELECT jsonb_agg(t ORDER BY t) AS gen_clean_pool, count(*) AS gen_clean_n
FROM (SELECT t FROM provider_tags UNION ALL SELECT t FROM machine_tags) AS pool
\gset

-- Dirty tags: each is dropped by the default rules (denylisted names, matching substrings, low
-- accuracy machine tags, the filtered provider rekognition). Case and spacing variants included.
SELECT jsonb_agg(t) AS gen_dirty_pool, count(*) AS gen_dirty_n
FROM (
    SELECT jsonb_build_object('name', n) AS t
    FROM unnest(ARRAY[
        'no person', 'No Person', 'squareformat', 'SquareFormat', 'uploaded:by=flickrmobile',
        'uploaded:by=instagram', 'Uploaded:by=Instagram', 'flickriosapp:filter=flamingo', 'by', 'BY',
        'cc0', ' cc0', 'CC0', 'CC0 public domain', 'license by-nc-sa', 'by-nd', 'BY-SA 2.0', 'by-nc',
        'by-nc-nd', 'pdm', 'PDM 1.0', 'geo:lat=51.5074', 'camera:make=canon', 'foursquare:venue=4b0588',
        'uploaded from phone', 'flickriosapp', 'garbage:=metacrap', 'machine:tag', 'key=value',
        'Zürich:altstadt', 'Café=Paris', '東京:タワー']) AS n
    UNION ALL
    SELECT jsonb_build_object('name', w, 'provider', 'clarifai', 'accuracy', a)
    FROM unnest(ARRAY['person', 'Outdoors', 'Nature', 'people', 'Adult', 'no person']) AS w,
         unnest(ARRAY[0.31, 0.55, 0.8, 0.8999]) AS a
    UNION ALL
    SELECT jsonb_build_object('name', w, 'provider', 'rekognition', 'accuracy', a)
    FROM unnest(ARRAY['Person', 'Human', 'Outdoors', 'Nature', 'Boy', 'Bride']) AS w,
         unnest(ARRAY[0.75, 0.95, 0.99]) AS a
) AS pool
\gset

SELECT setseed(:gen_seed) AS gen_setseed \gset

-- One pass: s draws every random number of a row (in a fixed order), p is the row's provider.
INSERT INTO image (provider, foreign_identifier, url, meta_data, tags, updated_on, created_on,
                   removed_from_source)
SELECT p.provider,
       CASE p.provider WHEN 'wikimedia' THEN 'File:Image_' || s.i || '.jpg'
                       WHEN 'met' THEN 'met-' || s.i ELSE s.i::text END,
       'https://' || p.host || '/' || s.i || '/' || to_hex(s.tagbase) || '.jpg',
       jsonb_build_object(
           'license_url', 'https://creativecommons.org/licenses/' ||
               (ARRAY['by/2.0', 'by-sa/4.0', 'by-nc/2.0', 'cc0/1.0'])[1 + s.i % 4] || '/',
           'pub_date', 1262304000 + s.i % 400000000,
           'description', 'Synthetic image ' || s.i
       ) || CASE
           WHEN p.metric IS NULL THEN '{}'::jsonb
           WHEN s.r_kind < 0.04 THEN '{}'::jsonb                                  -- key missing
           WHEN s.r_kind < 0.042 THEN jsonb_build_object(p.metric, NULL)          -- JSON null
           WHEN s.r_kind < 0.042 + :gen_invalid_fraction / 2
               THEN jsonb_build_object(p.metric, (1 + m.count / 1000) || 'k')    -- invalid text
           WHEN s.r_kind < 0.042 + :gen_invalid_fraction
               THEN jsonb_build_object(p.metric, -1 - m.count)                   -- invalid negative
           WHEN s.r_kind < 0.052 + :gen_invalid_fraction
               THEN jsonb_build_object(p.metric, m.count::text)                  -- valid "123"
           ELSE jsonb_build_object(p.metric, m.count)                            -- JSON number
       END,
       CASE WHEN s.r_tags_null < 0.02 THEN NULL ELSE (
           SELECT coalesce(jsonb_agg(x.e || CASE WHEN x.e ? 'provider' THEN '{}'::jsonb
                                                 ELSE jsonb_build_object('provider', p.provider) END
                                     ORDER BY g.k), '[]'::jsonb)
           FROM generate_series(1, s.ntags) AS g(k),
                LATERAL (SELECT CASE
                    WHEN (g.k + s.shift) % s.ntags < s.ndirty
                        THEN :'gen_dirty_pool'::jsonb
                             -> ((hashint8(s.tagbase * 16 + g.k) & 2147483647) % :gen_dirty_n)::int
                    ELSE :'gen_clean_pool'::jsonb
                             -> ((hashint8(s.tagbase * 16 + g.k) & 2147483647) % :gen_clean_n)::int
                    END AS e) AS x)
       END,
       timestamptz '2024-06-01 00:00:00+00' - s.r_updated * interval '1000 days',
       timestamptz '2024-06-01 00:00:00+00' - s.r_updated * interval '1000 days'
           - s.r_created * interval '3000 days',
       s.r_removed < 0.02
FROM (
    SELECT i, r_prov, r_kind, r_zero, u1, u2, r_tags_null, r_updated, r_created, r_removed, tagbase,
           ntags, ndirty, shift
    FROM (
        SELECT i,
               random() AS r_prov, random() AS r_kind, random() AS r_zero,
               random() AS u1, random() AS u2, random() AS r_tags_null,
               random() AS r_updated, random() AS r_created, random() AS r_removed,
               floor(random() * 1e9)::bigint AS tagbase,
               random() AS r_ntags, random() AS r_dirty, random() AS r_ndirty, random() AS r_shift
        FROM generate_series(1, :gen_rows) AS i
    ) AS raw,
    LATERAL (SELECT CASE WHEN r_dirty < :gen_dirty_fraction
                         THEN 1 + floor(r_ntags * 15)::int       -- a dirty row has 1..15 tags
                         ELSE floor(r_ntags * 16)::int END AS ntags) AS nt,
    LATERAL (SELECT CASE WHEN r_dirty < :gen_dirty_fraction
                         THEN least(ntags, 1 + floor(r_ndirty * 2)::int) ELSE 0 END AS ndirty,
                    floor(r_shift * 16)::int AS shift) AS nd
    OFFSET 0
) AS s
JOIN gen_provider AS p ON s.r_prov >= p.lo AND s.r_prov < p.hi,
LATERAL (SELECT CASE WHEN s.r_zero < p.zeros THEN 0
                     ELSE floor(exp(p.mu + p.sigma * sqrt(-2 * ln(1 - s.u1)) * cos(2 * pi() * s.u2)))
                END::bigint AS count) AS m;

ALTER TABLE image ADD PRIMARY KEY (identifier);
CREATE UNIQUE INDEX image_provider_fid_key ON image (provider, md5(foreign_identifier));
CREATE UNIQUE INDEX image_url_key ON image (url);
VACUUM (FREEZE, ANALYZE) image;
VACUUM ANALYZE metrics;

-- What was generated (the default Openverse tag rules, written in SQL, count droppable tags).
CREATE OR REPLACE FUNCTION pg_temp.tag_dropped(t jsonb) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT NOT (
        jsonb_typeof(t) = 'object' AND jsonb_typeof(t -> 'name') = 'string'
        AND (NOT t ? 'accuracy' OR (t ->> 'accuracy')::float8 >= 0.90)
        AND coalesce(t ->> 'provider', '') <> 'rekognition'
        AND lower(t ->> 'name') NOT IN ('no person', 'squareformat', 'uploaded:by=flickrmobile',
                                        'uploaded:by=instagram', 'flickriosapp:filter=flamingo', 'by')
        AND lower(t ->> 'name') !~ '(flickriosapp|uploaded|:|=|cc0|by-nc|by-nd|by-sa|pdm)')
$$;
SELECT count(*) AS rows,
       round(100.0 * count(*) FILTER (WHERE provider IN (SELECT provider FROM metrics)) / count(*), 1)
           AS pct_with_metric_config,
       round(100.0 * count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM jsonb_array_elements(tags) AS t WHERE pg_temp.tag_dropped(t))) / count(*), 1)
           AS pct_rows_with_tag_to_drop,
       round(avg(jsonb_array_length(tags)), 2) AS avg_tags,
       pg_size_pretty(pg_total_relation_size('image')) AS total_size
FROM image;
SELECT i.provider, count(*) AS rows, m.metric,
       count(*) FILTER (WHERE m.metric IS NOT NULL AND NOT i.meta_data ? m.metric) AS key_missing,
       count(*) FILTER (WHERE jsonb_typeof(i.meta_data -> m.metric) = 'null') AS json_null,
       count(*) FILTER (WHERE jsonb_typeof(i.meta_data -> m.metric) = 'string') AS strings,
       count(*) FILTER (WHERE (i.meta_data ->> m.metric) ~ '^-|k$') AS invalid,
       count(*) FILTER (WHERE i.meta_data ->> m.metric = '0') AS zeros,
       count(DISTINCT i.meta_data ->> m.metric) AS distinct_values
FROM image AS i LEFT JOIN metrics AS m USING (provider)
GROUP BY i.provider, m.metric ORDER BY count(*) DESC;
