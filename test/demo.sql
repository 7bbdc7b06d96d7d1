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

\echo '### per-provider 85th percentile and constant (popularity_percentile: exact percentile_disc by selection)'
CREATE TEMP TABLE constants AS
SELECT provider, metric, popularity_percentile(popularity_metric_value(meta_data, metric), 0.85) AS val
FROM image JOIN (VALUES ('flickr', 'views'), ('wikimedia', 'global_usage_count'), ('nappy', 'downloads'),
                        ('stocksnap', 'downloads_raw')) AS m(provider, metric) USING (provider)
GROUP BY provider, metric;
SELECT provider, metric, val, popularity_constant(val, 0.85) AS constant FROM constants ORDER BY provider;

\echo '### scores: standardized_popularity(value, constant) = value / (value + constant)'
UPDATE image i SET standardized_popularity = standardized_popularity(popularity_metric_value(i.meta_data, c.metric),
                                                                     popularity_constant(c.val, 0.85))
FROM constants c WHERE c.provider = i.provider;
SELECT provider, count(standardized_popularity) AS scored, count(*) - count(standardized_popularity) AS unscored,
       round(avg(standardized_popularity)::numeric, 3) AS mean,
       round((percentile_disc(0.5) WITHIN GROUP (ORDER BY standardized_popularity))::numeric, 3) AS median,
       round((percentile_disc(0.85) WITHIN GROUP (ORDER BY standardized_popularity))::numeric, 3) AS p85
FROM image GROUP BY provider ORDER BY provider;
\echo '(the 85th percentile of every scored provider is 0.85 by construction; smithsonian has no metric)'
