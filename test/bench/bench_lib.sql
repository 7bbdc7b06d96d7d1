-- Timing helpers shared by the benchmarks: in-server timing with clock_timestamp(), so connection
-- start-up and client round trips are never measured; ours and the baseline interleaved, pair by pair.
\set ON_ERROR_STOP on
SET client_min_messages = warning;

-- One row per measurement (what is compared, and the target), one row per timed run.
DROP TABLE IF EXISTS bench_measurement, bench_sample CASCADE;
CREATE TABLE bench_measurement (
    ord serial PRIMARY KEY,
    measurement text NOT NULL UNIQUE,
    ours text NOT NULL,            -- the query using the extension
    baseline text NOT NULL,        -- the Openverse-style (or plain SQL) query
    max_ratio double precision,    -- target: median(ours ms / baseline ms) <= max_ratio; NULL: none
    target text NOT NULL DEFAULT '-',
    parallel_workers integer,      -- max_parallel_workers_per_gather for both sides; NULL: the session's
    ours_setup text,               -- run (untimed, committed) before each run of ours, warm-up included
    baseline_setup text            -- the same for the baseline
);
CREATE TABLE bench_sample (
    measurement text NOT NULL,
    rep integer NOT NULL,
    side text NOT NULL CHECK (side IN ('ours', 'baseline')),
    ms double precision NOT NULL,
    value text,                    -- the query's single result, as text (float8: shortest exact form)
    PRIMARY KEY (measurement, rep, side)
);

-- Runs one query that returns one value; returns the elapsed milliseconds (planning and execution
-- in this backend, nothing else) and the value as text. float8 values print in their shortest form
-- that reads back bit-identically, so equal text means bit-identical float8.
CREATE OR REPLACE FUNCTION bench_time(query text, OUT ms double precision, OUT value text)
LANGUAGE plpgsql AS $$
DECLARE
    started timestamptz;
BEGIN
    started := clock_timestamp();
    EXECUTE query INTO value;
    ms := 1000 * extract(epoch FROM clock_timestamp() - started);
END $$;

-- Runs a measurement's setup statement (if any) and commits, outside any timing.
CREATE OR REPLACE PROCEDURE bench_setup(setup text)
LANGUAGE plpgsql AS $$
BEGIN
    IF setup IS NOT NULL THEN
        EXECUTE setup;
    END IF;
    COMMIT;
END $$;

-- Warms up (one untimed run of each side), then times ours and the baseline alternately, reps
-- times (ours, baseline, ours, baseline, ...), committing each pair. A measurement's setup
-- statements run untimed (and are committed) before every run of their side; its
-- parallel_workers, if set, is the max_parallel_workers_per_gather of both sides.
CREATE OR REPLACE PROCEDURE bench_run(name text, reps integer)
LANGUAGE plpgsql AS $$
DECLARE
    m bench_measurement;
    a record;
    b record;
    saved_workers text := current_setting('max_parallel_workers_per_gather');
BEGIN
    SELECT * INTO STRICT m FROM bench_measurement WHERE measurement = name;
    IF m.parallel_workers IS NOT NULL THEN
        PERFORM set_config('max_parallel_workers_per_gather', m.parallel_workers::text, false);
    END IF;
    CALL bench_setup(m.ours_setup);
    PERFORM bench_time(m.ours);
    CALL bench_setup(m.baseline_setup);
    PERFORM bench_time(m.baseline);
    FOR rep IN 1 .. reps LOOP
        CALL bench_setup(m.ours_setup);
        SELECT * INTO a FROM bench_time(m.ours);
        CALL bench_setup(m.baseline_setup);
        SELECT * INTO b FROM bench_time(m.baseline);
        INSERT INTO bench_sample VALUES (name, rep, 'ours', a.ms, a.value),
                                        (name, rep, 'baseline', b.ms, b.value);
        RAISE NOTICE '% rep %/%: ours % ms, baseline % ms', name, rep, reps,
            round(a.ms::numeric, 1), round(b.ms::numeric, 1);
        COMMIT;
    END LOOP;
    PERFORM set_config('max_parallel_workers_per_gather', saved_workers, false);
END $$;

-- Every measurement, in order.
CREATE OR REPLACE PROCEDURE bench_run_all(reps integer)
LANGUAGE plpgsql AS $$
DECLARE
    name text;
BEGIN
    RAISE NOTICE 'timing % measurements, % pairs each (ours, then baseline)',
        (SELECT count(*) FROM bench_measurement), reps;
    FOR name IN SELECT measurement FROM bench_measurement ORDER BY ord LOOP
        CALL bench_run(name, reps);
    END LOOP;
END $$;

-- Medians of each side, median of the per-pair ratios ours/baseline, target met, values identical,
-- and a distribution-free confidence interval for the median ratio: the order statistics of the
-- sorted per-pair ratios that bound the median with probability >= 95% (sign test, binomial ranks
-- from popularity.quantile_ranks; NULL with fewer than 6 pairs, too few for any such interval).
CREATE OR REPLACE VIEW bench_report AS
WITH agg AS (
    SELECT m.ord,
           m.measurement,
           count(*)::integer AS reps,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY o.ms) AS ours_ms,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY b.ms) AS baseline_ms,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY o.ms / nullif(b.ms, 0)) AS ratio,
           array_agg(o.ms / nullif(b.ms, 0) ORDER BY o.ms / nullif(b.ms, 0)) AS ratios,
           m.target,
           m.max_ratio,
           bool_and(o.value IS NOT NULL AND o.value = b.value) AS identical,
           min(o.value) FILTER (WHERE o.rep = 1) AS ours_value,
           min(b.value) FILTER (WHERE b.rep = 1) AS baseline_value
    FROM bench_measurement AS m
    JOIN bench_sample AS o ON o.measurement = m.measurement AND o.side = 'ours'
    JOIN bench_sample AS b ON b.measurement = m.measurement AND b.side = 'baseline' AND b.rep = o.rep
    GROUP BY m.ord, m.measurement, m.target, m.max_ratio
)
SELECT a.ord, a.measurement, a.reps, a.ours_ms, a.baseline_ms, a.ratio, a.target,
       CASE WHEN a.max_ratio IS NULL THEN NULL ELSE a.ratio <= a.max_ratio END AS met,
       a.identical, a.ours_value, a.baseline_value,
       a.ratios[q.lower_rank] AS ratio_low,
       a.ratios[q.upper_rank] AS ratio_high,
       CASE WHEN q.lower_rank IS NOT NULL AND q.upper_rank IS NOT NULL THEN q.coverage END
           AS ratio_coverage
FROM agg AS a
LEFT JOIN LATERAL popularity.quantile_ranks(a.reps, 0.5, 0.95) AS q ON true;
