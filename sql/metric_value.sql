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

-- Same double as (meta_data->>metric)::float8 at the edges of the exact fast path (2^53) and of
-- 64-bit arithmetic (2^64), for integers, scaled integers and fractions.
SELECT n, popularity_metric_value(jsonb_build_object('v', n), 'v') = (jsonb_build_object('v', n)->>'v')::float8 AS same
FROM unnest(ARRAY[9007199254740991, 9007199254740992, 9007199254740993, 9007199254740994,
                  18446744073709551615, 18446744073709551616, 18455279839733200000, 18447349730028900000,
                  1e16, 1e17, 1e19, 1e20, 99999999999999999999, 123456789012345678901234567890,
                  900719925474099.3, 0.9007199254740993, 1e-22, 1.5e-23, 0.1, 0.3, 2.675,
                  9007199254740993e10, 0.0001, 0.00000001]::numeric[]) AS n;

-- The same over many random numbers (seeded, so a failure can be reproduced): integers of every
-- size, decimals, exponents, long fractions (the exact fast path and the text fallback both).
SELECT setseed(0.25) \g /dev/null
WITH numbers AS (
    SELECT (CASE g % 6
        WHEN 0 THEN floor(random() * 1e6)::numeric
        WHEN 1 THEN floor(exp(random() * 45))::numeric
        WHEN 2 THEN round((random() * 1e4)::numeric, (g % 9))
        WHEN 3 THEN (random() * 1e-3)::numeric
        WHEN 4 THEN round(random()::numeric * (10::numeric ^ (g % 30)), 3)
        ELSE floor(random() * 1e17)::numeric / (10::numeric ^ (g % 25)) END) AS n
    FROM generate_series(1, 100000) AS g
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
