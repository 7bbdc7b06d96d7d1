-- popularity extension, version 0.1.0
\echo Use "CREATE EXTENSION popularity" to load this file. \quit

-- State, configuration and internal routines live in a schema of their own. Public routines are
-- created in the extension's schema (public by default), so they can be called unqualified.
CREATE SCHEMA popularity;
COMMENT ON SCHEMA popularity IS
    'State, configuration and internal routines of the popularity extension';
-- Everyone may look up objects in the schema; each object carries its own privileges.
GRANT USAGE ON SCHEMA popularity TO PUBLIC;

-- Scores -------------------------------------------------------------------------------------------

CREATE FUNCTION @extschema@.standardized_popularity(value double precision, constant double precision)
RETURNS double precision
AS 'MODULE_PATHNAME', 'standardized_popularity'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.standardized_popularity(double precision, double precision) IS
    'value / (value + constant), bit-identical to the SQL expression; NULL for a negative, NaN or '
    'infinite value; raises 22023 unless the constant is finite and positive';

CREATE FUNCTION @extschema@.popularity_constant(percentile_value double precision, percentile double precision)
RETURNS double precision
AS 'MODULE_PATHNAME', 'popularity_constant'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.popularity_constant(double precision, double precision) IS
    '((1 - p) / p) * v in double precision, with v = 1 when the percentile value is 0; raises 22023 '
    'unless 0 < p < 1 and v is finite and not negative';

CREATE FUNCTION @extschema@.popularity_metric_value(meta_data jsonb, metric text)
RETURNS double precision
AS 'MODULE_PATHNAME', 'popularity_metric_value'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.popularity_metric_value(jsonb, text) IS
    'meta_data->>metric as double precision, read without a text round trip for numbers; NULL for a '
    'missing key, JSON null, non-object meta_data, and for values that are not usable metrics '
    '(non-numeric text such as ''1k'', arrays, objects, booleans, negative, NaN or infinite values)';

-- Percentile aggregate ---------------------------------------------------------------------------

CREATE FUNCTION popularity._percentile_transition(internal, double precision, double precision)
RETURNS internal
AS 'MODULE_PATHNAME', 'popularity_percentile_transition'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION popularity._percentile_transition(internal, double precision, double precision) IS
    'Transition function of popularity_percentile (internal)';

CREATE FUNCTION popularity._percentile_final(internal)
RETURNS double precision
AS 'MODULE_PATHNAME', 'popularity_percentile_final'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION popularity._percentile_final(internal) IS
    'Final function of popularity_percentile (internal)';

CREATE FUNCTION popularity._percentile_combine(internal, internal)
RETURNS internal
AS 'MODULE_PATHNAME', 'popularity_percentile_combine'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION popularity._percentile_combine(internal, internal) IS
    'Combine function of popularity_percentile (internal)';

CREATE FUNCTION popularity._percentile_serialize(internal)
RETURNS bytea
AS 'MODULE_PATHNAME', 'popularity_percentile_serialize'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION popularity._percentile_serialize(internal) IS
    'Serialize function of popularity_percentile (internal)';

CREATE FUNCTION popularity._percentile_deserialize(bytea, internal)
RETURNS internal
AS 'MODULE_PATHNAME', 'popularity_percentile_deserialize'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION popularity._percentile_deserialize(bytea, internal) IS
    'Deserialize function of popularity_percentile (internal)';

CREATE AGGREGATE @extschema@.popularity_percentile(value double precision, percentile double precision) (
    SFUNC = popularity._percentile_transition,
    STYPE = internal,
    FINALFUNC = popularity._percentile_final,
    FINALFUNC_MODIFY = READ_ONLY,
    COMBINEFUNC = popularity._percentile_combine,
    SERIALFUNC = popularity._percentile_serialize,
    DESERIALFUNC = popularity._percentile_deserialize,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE @extschema@.popularity_percentile(double precision, double precision) IS
    'percentile_disc(percentile) WITHIN GROUP (ORDER BY value), computed by linear-time selection: '
    'the k-th smallest non-null value with k = max(1, ceil(percentile * n)); NULL when there is no '
    'value; parallel safe';

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
