-- popularity_percentile: exactly percentile_disc, by selection; parallel aggregation.
CREATE FUNCTION pg_temp.try(statement text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE statement;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

-- Reference vectors.
SELECT popularity_percentile(v, 0.5) FROM unnest(ARRAY[0, 50, 75, 150]::float8[]) AS v;
SELECT popularity_percentile(v, 0.8) FROM unnest(ARRAY[10, 50]::float8[]) AS v;
SELECT popularity_percentile(v, 0.8) FROM unnest(ARRAY[0, 0, 0, 0, 10]::float8[]) AS v;
SELECT popularity_constant(popularity_percentile(v, 0.8), 0.8) FROM unnest(ARRAY[0, 0, 0, 0, 10]::float8[]) AS v;

-- NULL values are ignored; no values (or a NULL percentile) give NULL, like percentile_disc.
SELECT popularity_percentile(v, 0.5) AS with_nulls FROM unnest(ARRAY[NULL, 3, NULL, 1, 2]::float8[]) AS v;
SELECT popularity_percentile(v, 0.5) AS only_nulls FROM unnest(ARRAY[NULL, NULL]::float8[]) AS v;
SELECT popularity_percentile(v, 0.5) AS no_rows FROM unnest(ARRAY[]::float8[]) AS v;
SELECT popularity_percentile(v, NULL) AS null_fraction, percentile_disc(NULL) WITHIN GROUP (ORDER BY v)
FROM unnest(ARRAY[1, 2]::float8[]) AS v;
-- Edges of the fraction, special values ordered as float8 sorts them (NaN last).
SELECT p, popularity_percentile(v, p) AS ours, percentile_disc(p) WITHIN GROUP (ORDER BY v) AS theirs
FROM unnest(ARRAY[3, 'NaN', 1, '-Infinity', 'Infinity', 2]::float8[]) AS v,
     unnest(ARRAY[0, 0.2, 0.5, 0.8, 0.9, 1]::float8[]) AS p
GROUP BY p ORDER BY p;

-- Errors: the fraction must be within [0, 1] and the same on every row of a group.
SELECT pg_temp.try('SELECT popularity_percentile(v, 1.5) FROM generate_series(1, 3) v');
SELECT pg_temp.try('SELECT popularity_percentile(v, -0.1) FROM generate_series(1, 3) v');
SELECT pg_temp.try($$SELECT popularity_percentile(v, 'NaN') FROM generate_series(1, 3) v$$);
SELECT pg_temp.try('SELECT popularity_percentile(v, v / 10.0) FROM generate_series(1, 3) v');

-- Many distributions, many fractions, ties: identical to percentile_disc in every group.
CREATE TABLE samples AS
SELECT g % 40 AS grp,
       CASE (g % 40) % 8
           WHEN 0 THEN floor(random() * 4)                       -- heavy ties
           WHEN 1 THEN floor(exp(random() * 12))                 -- skewed counts
           WHEN 2 THEN 7                                          -- all equal
           WHEN 3 THEN CASE WHEN random() < 0.1 THEN NULL ELSE random() END
           WHEN 4 THEN -g                                         -- descending
           WHEN 5 THEN round(random() * 100) / 10                 -- decimals with ties
           WHEN 6 THEN CASE WHEN g % 97 = 0 THEN 'NaN'::float8 ELSE g END
           ELSE (g * 7919) % 1000                                 -- permutation-like
       END::float8 AS v
FROM generate_series(1, 40 * 997) AS g;
SELECT count(*) AS comparisons,
       count(*) FILTER (WHERE ours IS DISTINCT FROM theirs) AS mismatches
FROM (
    SELECT grp, p, popularity_percentile(v, p) AS ours, percentile_disc(p) WITHIN GROUP (ORDER BY v) AS theirs
    FROM samples, unnest(ARRAY[0, 0.001, 0.1, 0.25, 0.5, 0.75, 0.85, 0.9, 0.99, 0.999, 1]::float8[]) AS p
    GROUP BY grp, p
) AS compared;
-- Small groups, where ceil(p * n) rounding matters most.
SELECT count(*) AS comparisons,
       count(*) FILTER (WHERE ours IS DISTINCT FROM theirs) AS mismatches
FROM (
    SELECT n, p, popularity_percentile(v, p) AS ours, percentile_disc(p) WITHIN GROUP (ORDER BY v) AS theirs
    FROM generate_series(1, 60) AS n, generate_series(1, n) AS v,
         generate_series(0, 100) AS pct, LATERAL (SELECT pct / 100.0::float8 AS p) AS f
    GROUP BY n, p
) AS compared;

-- A forced parallel plan: workers build partial states that are serialized, deserialized and
-- combined. The plan shows Partial and Finalize Aggregate, and the result is still exact.
CREATE TABLE big_sample AS
SELECT floor(exp(random() * 14))::float8 AS v FROM generate_series(1, 300000);
ANALYZE big_sample;
SET max_parallel_workers_per_gather = 2;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET parallel_leader_participation = off;
EXPLAIN (COSTS OFF) SELECT popularity_percentile(v, 0.85) FROM big_sample;
SELECT popularity_percentile(v, 0.85) = (SELECT percentile_disc(0.85) WITHIN GROUP (ORDER BY v) FROM big_sample)
       AS parallel_result_exact
FROM big_sample;
-- The workers really ran (Workers Launched) and combined their partial states.
CREATE FUNCTION pg_temp.workers_launched(query text) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    plan json;
BEGIN
    EXECUTE 'EXPLAIN (ANALYZE, FORMAT JSON) ' || query INTO plan;
    RETURN (SELECT sum((node->>'Workers Launched')::int)
            FROM jsonb_path_query(plan::jsonb, 'strict $.**') AS node
            WHERE jsonb_typeof(node) = 'object' AND node ? 'Workers Launched');
END $$;
SELECT pg_temp.workers_launched('SELECT popularity_percentile(v, 0.85) FROM big_sample') > 0 AS workers_ran;
-- Grouped parallel aggregation too.
EXPLAIN (COSTS OFF)
SELECT (v::bigint % 3) AS g, popularity_percentile(v, 0.5) FROM big_sample GROUP BY 1;
SELECT count(*) AS groups, count(*) FILTER (WHERE ours IS DISTINCT FROM theirs) AS mismatches
FROM (SELECT (v::bigint % 3) AS g, popularity_percentile(v, 0.5) AS ours,
             percentile_disc(0.5) WITHIN GROUP (ORDER BY v) AS theirs
      FROM big_sample GROUP BY 1) AS compared;
-- Partial states above popularity.percentile_compact_threshold values travel as sorted runs of
-- equal values (what keeps a huge provider's state under the 1 GB limit of a bytea); the result
-- is still exact, here with a threshold low enough to use runs in every worker.
SET popularity.percentile_compact_threshold = 1000;
SELECT pg_temp.workers_launched('SELECT popularity_percentile(v, 0.85) FROM big_sample') > 0 AS workers_ran;
EXPLAIN (COSTS OFF) SELECT popularity_percentile(v, 0.85) FROM big_sample;
SELECT popularity_percentile(v, 0.85) = (SELECT percentile_disc(0.85) WITHIN GROUP (ORDER BY v) FROM big_sample)
       AS exact_with_runs
FROM big_sample;
SELECT popularity_percentile(v, 0) = (SELECT min(v) FROM big_sample) AS exact_min,
       popularity_percentile(v, 1) = (SELECT max(v) FROM big_sample) AS exact_max
FROM big_sample;
SELECT count(*) AS groups, count(*) FILTER (WHERE ours IS DISTINCT FROM theirs) AS mismatches
FROM (SELECT (v::bigint % 3) AS g, popularity_percentile(v, 0.5) AS ours,
             percentile_disc(0.5) WITHIN GROUP (ORDER BY v) AS theirs
      FROM big_sample GROUP BY 1) AS compared;
RESET ALL;
DROP TABLE samples, big_sample;
