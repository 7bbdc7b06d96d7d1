-- The C++ / PostgreSQL error boundary: every kind of failure raised in C++ becomes a clean SQL
-- error with its SQLSTATE; a PostgreSQL error raised under live C++ objects unwinds them (their
-- destructors run); the backend keeps working afterwards.
\set VERBOSITY default
SELECT popularity._guard_selftest('none') AS live_after_success;
SELECT popularity._guard_selftest('core_error');
SELECT popularity._guard_selftest('std_exception');
SELECT popularity._guard_selftest('bad_alloc');
SELECT popularity._guard_selftest('unknown');
SELECT popularity._guard_selftest('pg_error');
SELECT popularity._guard_selftest('no such kind');

-- The SQLSTATE of each.
DO $$
DECLARE
    kind text;
BEGIN
    FOREACH kind IN ARRAY ARRAY['core_error', 'std_exception', 'bad_alloc', 'unknown', 'pg_error'] LOOP
        BEGIN
            PERFORM popularity._guard_selftest(kind);
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE '% -> %', kind, SQLSTATE;
        END;
    END LOOP;
END $$;

-- Nothing leaked: every C++ object created before the errors was destroyed.
SELECT popularity._guard_live_objects() AS live_objects;
-- The backend still works, in the same session, and inside a transaction after a savepoint.
BEGIN;
SAVEPOINT s;
SELECT popularity._guard_selftest('pg_error');
ROLLBACK TO s;
SELECT standardized_popularity(150, 37.49999999999999) AS still_working;
COMMIT;
SELECT popularity._guard_live_objects() AS live_objects;
-- Ordinary users cannot call the self-test.
CREATE ROLE popularity_guard_user;
SET ROLE popularity_guard_user;
SELECT popularity._guard_selftest('none');
RESET ROLE;
DROP ROLE popularity_guard_user;

-- A PostgreSQL error raised inside the C-style table scan (here: a statement timeout, raised by
-- CHECK_FOR_INTERRUPTS in the scan loop, serial and with parallel workers) unwinds cleanly: the
-- scan runs no pg_call and nothing in it throws, so the longjmp skips no C++ object; the backend
-- goes on and the same scan then succeeds.
CREATE TABLE guard_scan AS
SELECT CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END AS provider, jsonb_build_object('m', g % 1000) AS meta_data
FROM generate_series(1, 400000) AS g;
ANALYZE guard_scan;
SET max_parallel_workers_per_gather = 0;
SET statement_timeout = '10ms';
SELECT popularity._metric_percentiles('guard_scan', ARRAY['a', 'b'], ARRAY['m', 'm'], ARRAY[0.5, 0.9]);
RESET statement_timeout;
RESET max_parallel_workers_per_gather;
SET statement_timeout = '10ms';
SELECT popularity._metric_percentiles('guard_scan', ARRAY['a', 'b'], ARRAY['m', 'm'], ARRAY[0.5, 0.9]);
RESET statement_timeout;
SELECT popularity._guard_live_objects() AS live_objects;
SELECT popularity._metric_percentiles('guard_scan', ARRAY['a', 'b'], ARRAY['m', 'm'], ARRAY[0.5, 0.9]) AS vals;
DROP TABLE guard_scan;
