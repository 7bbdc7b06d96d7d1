-- A provider whose constant cannot be computed (the percentile value overflows or underflows the
-- formula) is reported on its own and keeps its previous constant; the other providers are
-- computed and written, by each of the three ways refresh_constants reads the table.
CREATE TABLE ce (identifier int PRIMARY KEY, provider text, meta_data jsonb,
                 updated_on timestamptz NOT NULL DEFAULT now());
SELECT popularity.register_media_type('ce', 'ce', false);
SELECT popularity.set_metric('ce', 'huge', 'v', 0.01), popularity.set_metric('ce', 'tiny', 'v', 0.99),
       popularity.set_metric('ce', 'ok', 'v', 0.5), popularity.set_metric('ce', 'empty', 'v', 0.5);
-- First usable values, so that each provider has a constant to keep.
INSERT INTO ce VALUES (1, 'huge', '{"v": 1}'), (2, 'tiny', '{"v": 1}'), (3, 'ok', '{"v": 4}');
SELECT provider, new_constant, changed, error FROM popularity.refresh_constants('ce') ORDER BY 1;
-- Then the extreme values: 1e308 at p = 0.01 gives Infinity, 5e-324 at p = 0.99 gives 0.
UPDATE ce SET meta_data = '{"v": 1e308}' WHERE provider = 'huge';
UPDATE ce SET meta_data = '{"v": 5e-324}' WHERE provider = 'tiny';
INSERT INTO ce VALUES (4, 'ok', '{"v": 2}');
SELECT popularity_metric_value(meta_data, 'v') AS v FROM ce WHERE identifier IN (1, 2) ORDER BY identifier;
SELECT provider, old_constant, new_constant, changed, error FROM popularity.refresh_constants('ce') ORDER BY 1;
-- The status: the error per provider, the previous val and constant kept.
SELECT provider, val, constant, last_error FROM popularity.metrics WHERE media_type = 'ce' ORDER BY 1;
-- Rows keep scoring with the kept constants; the computed provider uses its new one.
INSERT INTO ce VALUES (5, 'huge', '{"v": 3}'), (6, 'tiny', '{"v": 3}'), (7, 'ok', '{"v": 3}');
SELECT provider, standardized_popularity FROM ce WHERE identifier >= 5 ORDER BY 1;
DELETE FROM ce WHERE identifier >= 5;

-- The same results when the table is read once per provider, and through the executor (RLS).
CREATE TEMP TABLE single_pass AS
SELECT * FROM popularity.refresh_constants('ce') ORDER BY provider;
SET popularity.constants_single_pass_rows = 0;
SELECT count(*) AS per_provider_differs FROM (
    (SELECT * FROM popularity.refresh_constants('ce') EXCEPT SELECT * FROM single_pass)
    UNION ALL
    (SELECT * FROM single_pass EXCEPT SELECT * FROM popularity.refresh_constants('ce'))) AS d;
RESET popularity.constants_single_pass_rows;
ALTER TABLE ce ENABLE ROW LEVEL SECURITY;
SELECT count(*) AS rls_differs FROM (
    (SELECT * FROM popularity.refresh_constants('ce') EXCEPT SELECT * FROM single_pass)
    UNION ALL
    (SELECT * FROM single_pass EXCEPT SELECT * FROM popularity.refresh_constants('ce'))) AS d;
ALTER TABLE ce DISABLE ROW LEVEL SECURITY;
SELECT provider, error IS NOT NULL AS failed FROM single_pass ORDER BY 1;

-- Fixing the percentile clears the error at the next refresh.
SELECT popularity.set_metric('ce', 'huge', 'v', 0.5), popularity.set_metric('ce', 'tiny', 'v', 0.5);
SELECT provider, new_val, new_constant, changed, error FROM popularity.refresh_constants('ce') ORDER BY 1;
SELECT count(*) AS errors_left FROM popularity.metrics WHERE media_type = 'ce' AND last_error IS NOT NULL;

-- Many changed providers with long names: the NOTIFY payload stays under PostgreSQL's limit
-- (the provider list is left out), where it used to fail with "payload string too long".
INSERT INTO popularity.metrics (media_type, provider, metric, percentile)
SELECT 'ce', 'provider-' || lpad(g::text, 5, '0'), 'v', 0.5 FROM generate_series(1, 600) AS g;
INSERT INTO ce SELECT 100 + g, 'provider-' || lpad(g::text, 5, '0'), jsonb_build_object('v', g)
FROM generate_series(1, 600) AS g;
SELECT count(*) FILTER (WHERE changed) AS changed, count(*) FILTER (WHERE error IS NOT NULL) AS failed
FROM popularity.refresh_constants('ce');

SELECT popularity.unregister_media_type('ce');
DROP TABLE ce;
