-- Error-boundary self-test (used by the regression suite) -----------------------------------------

CREATE FUNCTION popularity._guard_selftest(kind text)
RETURNS integer
AS 'MODULE_PATHNAME', 'popularity_guard_selftest'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION popularity._guard_selftest(text) IS
    'Raises an error of the given kind from C++ (none, core_error, std_exception, bad_alloc, unknown, '
    'pg_error) to test the C++/PostgreSQL error boundary; returns the tracked C++ objects left alive';

CREATE FUNCTION popularity._guard_live_objects()
RETURNS integer
AS 'MODULE_PATHNAME', 'popularity_guard_live_objects'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION popularity._guard_live_objects() IS
    'Number of self-test C++ objects alive in this backend (0 unless an error skipped a destructor)';

REVOKE ALL ON FUNCTION popularity._guard_selftest(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION popularity._guard_live_objects() FROM PUBLIC;
