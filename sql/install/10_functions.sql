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
