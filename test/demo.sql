-- The demo's SQL: a sample catalog, its constants and its scores.
\pset footer off
CREATE EXTENSION popularity;

\echo '### a sample catalog of' :rows 'images from five providers'
SELECT setseed(0.42) \g /dev/null
CREATE TABLE image (
    identifier uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider varchar(80) NOT NULL,
    foreign_identifier text NOT NULL,
    url text NOT NULL,
    meta_data jsonb,
    tags jsonb,
    updated_on timestamptz NOT NULL DEFAULT now(),
    created_on timestamptz NOT NULL DEFAULT now(),
    removed_from_source boolean NOT NULL DEFAULT false,
    standardized_popularity double precision
);
CREATE UNIQUE INDEX ON image (provider, md5(foreign_identifier));
INSERT INTO image (provider, foreign_identifier, url, meta_data)
SELECT p.provider, 'fid-' || g, 'https://example.org/' || p.provider || '/' || g,
       CASE WHEN random() < 0.04 THEN '{}'::jsonb
            ELSE jsonb_build_object(p.metric, floor(exp(random() * p.spread))::bigint) END
FROM generate_series(1, :rows) AS g
CROSS JOIN LATERAL (
    SELECT * FROM (VALUES ('flickr', 'views', 12.0, 0.0), ('wikimedia', 'global_usage_count', 3.0, 0.55),
                          ('nappy', 'downloads', 8.0, 0.7), ('stocksnap', 'downloads_raw', 9.0, 0.8),
                          ('smithsonian', 'none', 1.0, 0.9)) AS v(provider, metric, spread, threshold)
    WHERE v.threshold <= (g % 1000) / 1000.0 + 0.0 ORDER BY v.threshold DESC LIMIT 1
) AS p;
SELECT provider, count(*) AS rows FROM image GROUP BY 1 ORDER BY 2 DESC;

\echo '### registering the table: adds standardized_popularity, the ingestion trigger, the default metrics'
SELECT popularity.register_media_type('image', 'image');
SELECT provider, metric, percentile FROM popularity.metrics WHERE media_type = 'image' ORDER BY provider;

\echo '### recomputing the constants (exact 85th percentile by selection, per provider)'
SELECT provider, metric, new_val AS percentile_value, new_constant AS constant, changed
FROM popularity.refresh_constants('image') ORDER BY provider;

\echo '### ingestion scores rows as they are stored: one upsert batch of 20000 rows, new and conflicting ones'
INSERT INTO image AS old (provider, foreign_identifier, url, meta_data)
SELECT 'flickr', 'fid-' || (g * 2), 'https://example.org/new/' || g,
       jsonb_build_object('views', floor(exp(random() * 12))::bigint, 'title', 'image ' || g)
FROM generate_series(1, 20000) AS g
ON CONFLICT (provider, md5(foreign_identifier))
DO UPDATE SET meta_data = jsonb_strip_nulls(old.meta_data || excluded.meta_data), updated_on = now();
SELECT count(*) FILTER (WHERE standardized_popularity IS NOT NULL) AS upserted_rows_scored
FROM image WHERE meta_data ? 'title';

\echo '### scores of the rows loaded before registration are computed by rewriting them once'
UPDATE image SET meta_data = meta_data WHERE standardized_popularity IS NULL AND NOT meta_data ? 'title';
SELECT provider, count(standardized_popularity) AS scored, count(*) - count(standardized_popularity) AS unscored,
       round(avg(standardized_popularity)::numeric, 3) AS mean,
       round((percentile_disc(0.5) WITHIN GROUP (ORDER BY standardized_popularity))::numeric, 3) AS median,
       round((percentile_disc(0.85) WITHIN GROUP (ORDER BY standardized_popularity))::numeric, 3) AS p85
FROM image GROUP BY provider ORDER BY provider;
\echo '(unscored: rows without the metric; smithsonian has no metric configured)'
