-- standardized_popularity, popularity_constant: reference vectors, edge cases, errors.
-- Reports an error as "SQLSTATE: message (hint)" so that every failure path is asserted.
CREATE FUNCTION pg_temp.try(statement text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    hint text;
BEGIN
    EXECUTE statement;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS hint = PG_EXCEPTION_HINT;
    RETURN SQLSTATE || ': ' || SQLERRM || coalesce(' (hint: ' || nullif(hint, '') || ')', '');
END $$;

-- The objects and their properties.
SELECT p.proname, p.provolatile, p.proisstrict, p.proparallel, n.nspname = current_schema AS in_ext_schema
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE p.proname IN ('standardized_popularity', 'popularity_constant', 'popularity_metric_value',
                    'popularity_percentile')
ORDER BY 1;
-- Every object of the extension has a comment.
SELECT pg_describe_object(classid, objid, 0) AS object_without_comment
FROM pg_depend d
WHERE refclassid = 'pg_extension'::regclass
  AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'popularity')
  AND deptype = 'e'
  AND obj_description(objid, (SELECT relname FROM pg_class WHERE oid = classid)) IS NULL;

-- Reference vectors (docs/semantics.md, "Reference values"), printed exactly.
SELECT popularity_constant(50, 0.5) AS views_median_constant;
SELECT popularity_constant(50, 0.8) AS comments80_constant;                 -- 12.499999999999996
SELECT popularity_constant(0, 0.8) AS zero_becomes_one;                     -- 0.24999999999999994
SELECT c AS constant, standardized_popularity(150, c) AS s150, standardized_popularity(0, c) AS s0
FROM popularity_constant(150, 0.8) AS c;                                    -- 37.49999999999999, 0.8, 0
SELECT c AS constant, standardized_popularity(50, c) AS s50, standardized_popularity(150, c) AS s150,
       standardized_popularity(450, c) AS s450
FROM popularity_constant(50, 0.5) AS c;
SELECT c AS constant, standardized_popularity(3, c) AS s3, standardized_popularity(1, c) AS s1
FROM popularity_constant(0, 0.5) AS c;
SELECT c AS constant, standardized_popularity(10, c) AS s10, standardized_popularity(20, c) AS s20
FROM popularity_constant(50, 0.8) AS c;                        -- 0.44444444444444453, 0.6153846153846154
SELECT popularity_constant(1, 0.85) AS wikimedia_2020;                      -- 0.17647058823529416

-- Bit-identical to the SQL formulas over many values (float8 = compares exactly).
SELECT count(*) AS rows_compared,
       count(*) FILTER (WHERE standardized_popularity(v, c) <> v / (v + c)) AS score_mismatches,
       count(*) FILTER (WHERE popularity_constant(v, p) <> ((1 - p) / p) * (CASE WHEN v = 0 THEN 1 ELSE v END))
           AS constant_mismatches
FROM (SELECT floor(exp(random() * 20)) AS v, random() * 1000 + 1e-6 AS c,
             (random() * 0.98 + 0.01) AS p
      FROM generate_series(1, 20000)) AS samples;

-- Bad values never abort a statement: NULL score.
SELECT standardized_popularity(-1, 10) AS negative, standardized_popularity('NaN', 10) AS nan,
       standardized_popularity('Infinity', 10) AS inf, standardized_popularity('-Infinity', 10) AS ninf,
       standardized_popularity(NULL, 10) AS null_value, standardized_popularity(5, NULL) AS null_constant,
       standardized_popularity('-0', 10) AS negative_zero;
SELECT standardized_popularity(1e308, 1e308) AS overflow_safe;

-- A constant that is not finite and positive is an error with a hint.
SELECT pg_temp.try('SELECT standardized_popularity(1, 0)');
SELECT pg_temp.try('SELECT standardized_popularity(1, -2)');
SELECT pg_temp.try($$SELECT standardized_popularity(1, 'NaN')$$);
SELECT pg_temp.try($$SELECT standardized_popularity(1, 'Infinity')$$);
-- The percentile must lie strictly inside (0, 1); the percentile value must be usable.
SELECT pg_temp.try('SELECT popularity_constant(10, 0)');
SELECT pg_temp.try('SELECT popularity_constant(10, 1)');
SELECT pg_temp.try('SELECT popularity_constant(10, 1.5)');
SELECT pg_temp.try($$SELECT popularity_constant(10, 'NaN')$$);
SELECT pg_temp.try('SELECT popularity_constant(-1, 0.85)');
SELECT pg_temp.try($$SELECT popularity_constant('Infinity', 0.85)$$);
-- A result that is not a finite positive number (overflow, underflow to 0) is 22023 too: never a
-- constant of 0 or Infinity, which would then fail every row (and the metrics CHECK).
SELECT pg_temp.try($$SELECT popularity_constant(1e308, 0.01)$$);
SELECT pg_temp.try($$SELECT popularity_constant(5e-324, 0.99)$$);
SELECT popularity_constant(1e308, 0.5) AS largest_usable, popularity_constant(5e-324, 0.5) AS smallest_usable;

-- Usable in generated columns and indexes (IMMUTABLE).
CREATE TABLE scored (v double precision, c double precision,
                     s double precision GENERATED ALWAYS AS (standardized_popularity(v, c)) STORED);
CREATE INDEX ON scored (standardized_popularity(v, c));
INSERT INTO scored (v, c) VALUES (150, 37.49999999999999), (-3, 1), (0, 1);
SELECT v, c, s FROM scored ORDER BY v;
DROP TABLE scored;
