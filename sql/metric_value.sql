-- popularity_metric_value: reads meta_data->>metric as double precision, never raising on data.
SELECT left(m::text, 30) AS meta_data, popularity_metric_value(m, 'views') AS views
FROM (VALUES
    ('{"views": 150}'::jsonb),
    ('{"views": "150"}'),
    ('{"views": " 42 "}'),
    ('{"views": 12.5}'),
    ('{"views": 0}'),
    ('{"views": -0}'),
    ('{"views": "-0"}'),
    ('{"views": 1e3}'),
    ('{"views": 12345678901234567}'),
    ('{"views": 0.1}'),
    ('{"views": "1k"}'),
    ('{"views": ""}'),
    ('{"views": "NaN"}'),
    ('{"views": "Infinity"}'),
    ('{"views": -5}'),
    ('{"views": "-5"}'),
    ('{"views": 1e400}'),
    ('{"views": true}'),
    ('{"views": [1]}'),
    ('{"views": {"n": 1}}'),
    ('{"views": null}'),
    ('{"downloads": 3}'),
    ('{}'),
    ('[1, 2]'),
    ('"views"'),
    ('17')
) AS t(m);
SELECT popularity_metric_value(NULL, 'views') AS null_meta, popularity_metric_value('{"views": 1}', NULL) AS null_key;
-- Keys are matched exactly (case, spaces, unicode, quotes).
SELECT popularity_metric_value('{"Views": 1, "views ": 2, "vïews": 3, "it''s": 4}', k) AS v, k
FROM unnest(ARRAY['views', 'Views', 'views ', 'vïews', 'it''s']) AS k;

-- Same double as (meta_data->>metric)::float8 for every number the cast accepts: integers of every
-- size, decimals, exponents, long fractions (the exact fast path and the text fallback both).
WITH numbers AS (
    SELECT (CASE g % 6
        WHEN 0 THEN floor(random() * 1e6)::numeric
        WHEN 1 THEN floor(exp(random() * 45))::numeric
        WHEN 2 THEN round((random() * 1e4)::numeric, (g % 9))
        WHEN 3 THEN (random() * 1e-3)::numeric
        WHEN 4 THEN round(random()::numeric * (10::numeric ^ (g % 30)), 3)
        ELSE floor(random() * 1e17)::numeric / (10::numeric ^ (g % 25)) END) AS n
    FROM generate_series(1, 30000) AS g
), docs AS (
    SELECT jsonb_build_object('views', n) AS number_doc, jsonb_build_object('views', n::text) AS text_doc
    FROM numbers
)
SELECT count(*) AS compared,
       count(*) FILTER (WHERE popularity_metric_value(number_doc, 'views') IS DISTINCT FROM
                              (number_doc->>'views')::float8) AS number_mismatches,
       count(*) FILTER (WHERE popularity_metric_value(text_doc, 'views') IS DISTINCT FROM
                              (text_doc->>'views')::float8) AS text_mismatches
FROM docs;
