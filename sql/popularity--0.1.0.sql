-- popularity extension, version 0.1.0 (assembled from sql/install/)
\echo Use "CREATE EXTENSION popularity" to load this file. \quit

-- sql/install/00_schema.sql
-- The extension's own schema.
-- State, configuration and internal routines live in a schema of their own. Public routines are
-- created in the extension's schema (public by default), so they can be called unqualified.
CREATE SCHEMA popularity;
COMMENT ON SCHEMA popularity IS
    'State, configuration and internal routines of the popularity extension';
-- Everyone may look up objects in the schema; each object carries its own privileges.
GRANT USAGE ON SCHEMA popularity TO PUBLIC;


-- sql/install/10_functions.sql
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

-- sql/install/20_media_types.sql
-- Media types: which table holds each media type's rows. Registration routines (catalog issue)
-- fill it; every feature that walks a media table (refresh, tag filter, counts) starts here.
CREATE TABLE popularity.media_types (
    media_type text PRIMARY KEY
        CONSTRAINT media_type_not_empty CHECK (media_type <> ''),
    media_table regclass NOT NULL UNIQUE,
    filter_tags_at_ingestion boolean NOT NULL DEFAULT false,
    registered_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE popularity.media_types IS
    'Registered media types and their tables (one row per media type)';
COMMENT ON COLUMN popularity.media_types.filter_tags_at_ingestion IS
    'When true, the ingestion trigger also applies the tag rules to inserted and updated rows';
SELECT pg_catalog.pg_extension_config_dump('popularity.media_types', '');
GRANT SELECT ON popularity.media_types TO PUBLIC;

-- sql/install/30_catalog.sql
-- Catalog integration: metrics and constants per (media type, provider), registration of media
-- tables, constant recomputation, and the ingestion trigger that scores rows as they are stored.

CREATE TABLE popularity.metrics (
    media_type text NOT NULL REFERENCES popularity.media_types (media_type) ON DELETE CASCADE,
    provider text NOT NULL CONSTRAINT provider_not_empty CHECK (provider <> ''),
    metric text NOT NULL CONSTRAINT metric_not_empty CHECK (metric <> ''),
    percentile double precision NOT NULL DEFAULT 0.85
        CONSTRAINT percentile_in_range CHECK (percentile > 0 AND percentile < 1),
    val double precision
        CONSTRAINT val_usable CHECK (val >= 0 AND val < 'Infinity'),
    constant double precision
        CONSTRAINT constant_usable CHECK (constant > 0 AND constant < 'Infinity'),
    computed_at timestamptz,
    constant_changed_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (media_type, provider)
);
COMMENT ON TABLE popularity.metrics IS
    'Per (media type, provider): the meta_data key scored, the percentile, the percentile value (val) and the constant';
COMMENT ON COLUMN popularity.metrics.val IS
    'The percentile value of the provider''s metric values, with 0 replaced by 1; NULL until computed';
COMMENT ON COLUMN popularity.metrics.constant IS
    '((1 - percentile) / percentile) * val; NULL until computed (rows then score NULL)';
COMMENT ON COLUMN popularity.metrics.computed_at IS 'When refresh_constants last wrote val and constant';
COMMENT ON COLUMN popularity.metrics.constant_changed_at IS 'When the constant last changed value';
SELECT pg_catalog.pg_extension_config_dump('popularity.metrics', '');
GRANT SELECT ON popularity.metrics TO PUBLIC;

-- Every committed change to the metrics makes every backend reload its constants before its next row.
CREATE FUNCTION popularity._config_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'popularity_config_changed'
LANGUAGE C;
COMMENT ON FUNCTION popularity._config_changed() IS
    'Statement trigger on configuration tables: backends reload the named cache after the transaction commits';
CREATE TRIGGER metrics_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON popularity.metrics
    FOR EACH STATEMENT EXECUTE FUNCTION popularity._config_changed('constants');

-- Turning tag filtering at ingestion on or off reaches every backend the same way.
CREATE TRIGGER media_types_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON popularity.media_types
    FOR EACH STATEMENT EXECUTE FUNCTION popularity._config_changed('constants');

CREATE TABLE popularity.default_metrics (
    media_type text NOT NULL,
    provider text NOT NULL,
    metric text NOT NULL,
    percentile double precision NOT NULL DEFAULT 0.85,
    PRIMARY KEY (media_type, provider)
);
COMMENT ON TABLE popularity.default_metrics IS
    'The Openverse default metrics, installed by register_media_type(..., default_metrics => true)';
INSERT INTO popularity.default_metrics (media_type, provider, metric) VALUES
    ('image', 'flickr', 'views'),
    ('image', 'nappy', 'downloads'),
    ('image', 'rawpixel', 'download_count'),
    ('image', 'stocksnap', 'downloads_raw'),
    ('image', 'wikimedia', 'global_usage_count'),
    ('audio', 'jamendo', 'listens'),
    ('audio', 'wikimedia_audio', 'global_usage_count'),
    ('audio', 'freesound', 'num_downloads'),
    ('audio', 'ccmixter', 'upload_num_scores');
GRANT SELECT ON popularity.default_metrics TO PUBLIC;

CREATE FUNCTION popularity._score_trigger()
RETURNS trigger
AS 'MODULE_PATHNAME', 'popularity_score_trigger'
LANGUAGE C;
COMMENT ON FUNCTION popularity._score_trigger() IS
    'Ingestion trigger (BEFORE INSERT OR UPDATE, FOR EACH ROW): sets standardized_popularity from the row as stored, under the current constant';

-- Raises 42704 unless the media type is registered; returns its table.
CREATE FUNCTION popularity._media_table(media_type text)
RETURNS regclass
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    result regclass;
BEGIN
    SELECT m.media_table INTO result FROM popularity.media_types AS m WHERE m.media_type = $1;
    IF result IS NULL THEN
        RAISE EXCEPTION 'media type "%" is not registered', $1
            USING ERRCODE = 'undefined_object',
                  HINT = 'Register it with popularity.register_media_type(media_type, media_table).';
    END IF;
    RETURN result;
END $$;
COMMENT ON FUNCTION popularity._media_table(text) IS
    'The table of a registered media type; raises 42704 for an unknown one';

CREATE FUNCTION popularity.register_media_type(
    media_type text, media_table regclass, default_metrics boolean DEFAULT true)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    required record;
    found_type regtype;
    existing regclass;
BEGIN
    IF media_type IS NULL OR media_type = '' THEN
        RAISE EXCEPTION 'media type must be a non-empty name'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use a name such as ''image'' or ''audio''.';
    END IF;
    IF media_table IS NULL THEN
        RAISE EXCEPTION 'media table must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF (SELECT relkind FROM pg_class WHERE oid = media_table) NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '"%" is not a table', media_table
            USING ERRCODE = 'wrong_object_type', HINT = 'Register an ordinary or partitioned table.';
    END IF;
    -- The columns scoring reads, with the types it reads them as.
    FOR required IN
        SELECT * FROM (VALUES ('provider', ARRAY['text', 'character varying']::regtype[]),
                              ('meta_data', ARRAY['jsonb']::regtype[]),
                              ('updated_on', ARRAY['timestamp with time zone']::regtype[])) AS r(name, types)
    LOOP
        SELECT a.atttypid::regtype INTO found_type FROM pg_attribute AS a
        WHERE a.attrelid = media_table AND a.attname = required.name AND a.attnum > 0 AND NOT a.attisdropped;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'table % has no column "%"', media_table, required.name
                USING ERRCODE = 'undefined_column',
                      HINT = 'A media table needs provider (text or varchar), meta_data (jsonb) and updated_on (timestamptz).';
        ELSIF NOT found_type = ANY (required.types) THEN
            RAISE EXCEPTION 'column "%" of table % has type %, expected %', required.name, media_table,
                found_type, array_to_string(required.types, ' or ')
                USING ERRCODE = 'datatype_mismatch';
        END IF;
    END LOOP;
    SELECT a.atttypid::regtype INTO found_type FROM pg_attribute AS a
    WHERE a.attrelid = media_table AND a.attname = 'standardized_popularity' AND a.attnum > 0
      AND NOT a.attisdropped;
    IF NOT FOUND THEN
        EXECUTE format('ALTER TABLE %s ADD COLUMN standardized_popularity double precision', media_table);
    ELSIF found_type <> 'double precision'::regtype THEN
        RAISE EXCEPTION 'column "standardized_popularity" of table % has type %, expected double precision',
            media_table, found_type
            USING ERRCODE = 'datatype_mismatch';
    END IF;
    -- The registry: one table per media type and one media type per table.
    SELECT m.media_table INTO existing FROM popularity.media_types AS m WHERE m.media_type = $1;
    IF existing IS NOT NULL AND existing <> $2 THEN
        RAISE EXCEPTION 'media type "%" is already registered for table %', $1, existing
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Call popularity.unregister_media_type() first to move it to another table.';
    END IF;
    IF EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_table = $2 AND m.media_type <> $1) THEN
        RAISE EXCEPTION 'table % is already registered as media type "%"', $2,
            (SELECT m.media_type FROM popularity.media_types AS m WHERE m.media_table = $2)
            USING ERRCODE = 'duplicate_object';
    END IF;
    INSERT INTO popularity.media_types AS m (media_type, media_table) VALUES ($1, $2)
    ON CONFLICT ON CONSTRAINT media_types_pkey DO NOTHING;

    -- The ingestion trigger; named to fire after the table's own BEFORE triggers (they fire in
    -- name order), so it scores the row exactly as it will be stored. It fires on every UPDATE: a
    -- row version written after a constant changed then never carries a score from the old one.
    EXECUTE format('CREATE OR REPLACE TRIGGER zz_popularity_score BEFORE INSERT OR UPDATE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION popularity._score_trigger(%L)',
                   media_table, media_type);
    -- The provider counts' delta triggers (60_stats.sql).
    PERFORM popularity._install_stats_triggers(media_type, media_table);

    IF default_metrics THEN
        INSERT INTO popularity.metrics AS m (media_type, provider, metric, percentile)
        SELECT d.media_type, d.provider, d.metric, d.percentile
        FROM popularity.default_metrics AS d WHERE d.media_type = $1
        ON CONFLICT ON CONSTRAINT metrics_pkey DO NOTHING;
    END IF;
END $$;
COMMENT ON FUNCTION popularity.register_media_type(text, regclass, boolean) IS
    'Registers a media table: checks its columns, adds standardized_popularity if absent, installs the '
    'ingestion trigger, and (default_metrics) the Openverse default metrics. Idempotent.';

CREATE FUNCTION popularity.unregister_media_type(media_type text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tbl regclass := popularity._media_table(media_type);
BEGIN
    IF EXISTS (SELECT FROM pg_class WHERE oid = tbl) THEN
        EXECUTE format('DROP TRIGGER IF EXISTS zz_popularity_score ON %s', tbl);
        PERFORM popularity._remove_stats_triggers(tbl);
    END IF;
    DELETE FROM popularity.media_types AS m WHERE m.media_type = $1; -- metrics go with it (cascade)
END $$;
COMMENT ON FUNCTION popularity.unregister_media_type(text) IS
    'Removes a media type''s trigger, registration and metrics; the table and its data (including '
    'standardized_popularity) are left alone';

CREATE FUNCTION popularity.set_metric(
    media_type text, provider text, metric text, percentile double precision DEFAULT 0.85)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM popularity._media_table(media_type);
    IF provider IS NULL OR provider = '' OR metric IS NULL OR metric = '' THEN
        RAISE EXCEPTION 'provider and metric must be non-empty names'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The metric is the key of meta_data holding the provider''s count, e.g. ''views''.';
    END IF;
    IF percentile IS NULL OR NOT (percentile > 0 AND percentile < 1) THEN
        RAISE EXCEPTION 'percentile must be strictly between 0 and 1'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The percentile given was %s.', percentile),
                  HINT = 'Use a fraction such as 0.85 for the 85th percentile.';
    END IF;
    -- Never resets val/constant: rows keep scoring with the current constant until
    -- refresh_constants() computes the new one.
    INSERT INTO popularity.metrics AS m (media_type, provider, metric, percentile)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT ON CONSTRAINT metrics_pkey DO UPDATE
        SET metric = excluded.metric, percentile = excluded.percentile
        WHERE (m.metric, m.percentile) IS DISTINCT FROM (excluded.metric, excluded.percentile);
END $$;
COMMENT ON FUNCTION popularity.set_metric(text, text, text, double precision) IS
    'Sets the metric and percentile of a provider (keeps its current constant until refresh_constants)';

CREATE FUNCTION popularity._metric_percentiles(media_table regclass, providers text[], metrics text[],
                                               percentiles double precision[])
RETURNS double precision[]
AS 'MODULE_PATHNAME', 'popularity_metric_percentiles'
LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION popularity._metric_percentiles(regclass, text[], text[], double precision[]) IS
    'For each provider, the discrete percentile of its metric over its rows (NULL without values), in one '
    'scan of the table read in C++: what popularity_percentile(popularity_metric_value(meta_data, metric), p) '
    'grouped by provider gives';

CREATE FUNCTION popularity.refresh_constants(media_type text, providers text[] DEFAULT NULL)
RETURNS TABLE (provider text, metric text, percentile double precision, old_val double precision,
               new_val double precision, old_constant double precision, new_constant double precision,
               changed boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tbl regclass := popularity._media_table(media_type);
    m record;
    pv double precision;
    changed_providers text[] := '{}';
    single_pass boolean;
    pass_providers text[];
    pass_values double precision[];
BEGIN
    IF providers IS NOT NULL AND EXISTS (
            SELECT FROM unnest(providers) AS p
            WHERE NOT EXISTS (SELECT FROM popularity.metrics AS x WHERE x.media_type = $1 AND x.provider = p)) THEN
        RAISE EXCEPTION 'provider % has no metric for media type "%"',
            (SELECT string_agg(quote_literal(p), ', ') FROM unnest(providers) AS p
             WHERE NOT EXISTS (SELECT FROM popularity.metrics AS x WHERE x.media_type = $1 AND x.provider = p)),
            $1
            USING ERRCODE = 'undefined_object', HINT = 'Configure it with popularity.set_metric().';
    END IF;
    -- Lock the providers' rows first (in key order, so concurrent refreshes cannot deadlock): a
    -- concurrent refresh of the same providers waits instead of computing twice.
    PERFORM FROM popularity.metrics AS x
    WHERE x.media_type = $1 AND (providers IS NULL OR x.provider = ANY (providers))
    ORDER BY x.provider
    FOR UPDATE;
    -- One pass over the table for all providers while all their values fit in memory (8 bytes a
    -- value, bounded by popularity.constants_single_pass_rows); one query per provider above that.
    SELECT CASE WHEN c.reltuples >= 0 THEN c.reltuples ELSE pg_relation_size(c.oid) / 100.0 END
           <= current_setting('popularity.constants_single_pass_rows')::float8
    INTO single_pass FROM pg_class AS c WHERE c.oid = tbl;
    IF single_pass THEN
        IF (SELECT c.relrowsecurity FROM pg_class AS c WHERE c.oid = tbl) THEN
            -- Row-level security: the executor applies the policies.
            EXECUTE format('SELECT coalesce(array_agg(m.provider), ''{}''), coalesce(array_agg(m.pv), ''{}'') FROM ('
                           '  SELECT m.provider, @extschema@.popularity_percentile('
                           '             @extschema@.popularity_metric_value(t.meta_data, m.metric), m.percentile) AS pv'
                           '  FROM %s AS t JOIN popularity.metrics AS m ON m.provider = t.provider'
                           '  WHERE m.media_type = $1 AND ($2::text[] IS NULL OR m.provider = ANY ($2))'
                           '  GROUP BY m.provider) AS m', tbl)
                INTO pass_providers, pass_values USING media_type, providers;
        ELSE
            -- The same values read by one C++ scan of the table, without the executor.
            SELECT coalesce(array_agg(x.provider ORDER BY x.provider), '{}'),
                   popularity._metric_percentiles(tbl, coalesce(array_agg(x.provider ORDER BY x.provider), '{}'),
                                                   coalesce(array_agg(x.metric ORDER BY x.provider), '{}'),
                                                   coalesce(array_agg(x.percentile ORDER BY x.provider), '{}'))
            INTO pass_providers, pass_values
            FROM popularity.metrics AS x
            WHERE x.media_type = $1 AND (providers IS NULL OR x.provider = ANY (providers));
        END IF;
    END IF;
    FOR m IN
        SELECT x.provider, x.metric, x.percentile, x.val, x.constant FROM popularity.metrics AS x
        WHERE x.media_type = $1 AND (providers IS NULL OR x.provider = ANY (providers))
        ORDER BY x.provider
    LOOP
        IF single_pass THEN
            pv := pass_values[array_position(pass_providers, m.provider)];
        ELSE
            EXECUTE format('SELECT @extschema@.popularity_percentile(@extschema@.popularity_metric_value(t.meta_data, $1), $2) '
                           'FROM %s AS t WHERE t.provider = $3', tbl)
                INTO pv USING m.metric, m.percentile, m.provider;
        END IF;
        provider := m.provider;
        metric := m.metric;
        percentile := m.percentile;
        old_val := m.val;
        old_constant := m.constant;
        IF pv IS NULL THEN
            -- No values: keep the previous val and constant.
            new_val := m.val;
            new_constant := m.constant;
        ELSE
            new_val := CASE WHEN pv = 0 THEN 1 ELSE pv END;
            new_constant := @extschema@.popularity_constant(pv, m.percentile);
        END IF;
        changed := (new_val, new_constant) IS DISTINCT FROM (m.val, m.constant);
        IF changed THEN
            UPDATE popularity.metrics AS x
            SET val = new_val, constant = new_constant, computed_at = now(),
                constant_changed_at = CASE WHEN x.constant IS DISTINCT FROM new_constant
                                           THEN now() ELSE x.constant_changed_at END
            WHERE x.media_type = $1 AND x.provider = m.provider;
            changed_providers := changed_providers || m.provider;
        END IF;
        RETURN NEXT;
    END LOOP;
    IF cardinality(changed_providers) > 0 THEN
        PERFORM pg_notify('popularity', json_build_object(
            'event', 'constants_changed', 'media_type', $1, 'providers', changed_providers)::text);
    END IF;
END $$;
COMMENT ON FUNCTION popularity.refresh_constants(text, text[]) IS
    'Recomputes the percentile value and constant of each provider (all, or the given ones) exactly '
    '(popularity_percentile, in one pass over the table for all providers up to '
    'popularity.constants_single_pass_rows rows); writes a provider''s row only when it changed; keeps the old constant '
    'when a provider has no values; returns old and new values per provider and NOTIFYs popularity';

-- Dropping a registered table unregisters its media type (and its metrics), so the registry never
-- points at a table that no longer exists.
CREATE FUNCTION popularity._forget_dropped_tables()
RETURNS event_trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM popularity.media_types AS m
    WHERE m.media_table::oid IN (SELECT d.objid FROM pg_event_trigger_dropped_objects() AS d
                                 WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0);
END $$;
COMMENT ON FUNCTION popularity._forget_dropped_tables() IS
    'Event trigger: unregisters the media types of dropped tables';
CREATE EVENT TRIGGER popularity_forget_dropped_tables ON sql_drop
    EXECUTE FUNCTION popularity._forget_dropped_tables();
COMMENT ON EVENT TRIGGER popularity_forget_dropped_tables IS
    'Unregisters the media types of dropped tables';

-- sql/install/40_tags.sql
-- Tag filter: rules, the per-row functions, and the batch procedure filter_tags.
-- Semantics: shared/reference/openverse-semantics.md, section 5.

-- Rules ----------------------------------------------------------------------------------------------

-- One optional global row (media_type NULL) and optional rows per media type. A NULL column
-- inherits: media type row -> global row -> built-in default (popularity.tag_rule_defaults). The
-- table starts empty, so that pg_dump keeps exactly what the operator wrote.
CREATE TABLE popularity.tag_rules (
    media_type text UNIQUE NULLS NOT DISTINCT
        REFERENCES popularity.media_types (media_type) ON UPDATE CASCADE ON DELETE CASCADE,
    min_accuracy numeric
        CONSTRAINT min_accuracy_between_0_and_1 CHECK (min_accuracy >= 0 AND min_accuracy <= 1),
    filtered_providers text[]
        CONSTRAINT filtered_providers_no_null CHECK (array_position(filtered_providers, NULL) IS NULL),
    exact_denylist text[]
        CONSTRAINT exact_denylist_no_null CHECK (array_position(exact_denylist, NULL) IS NULL),
    substring_denylist text[]
        CONSTRAINT substring_denylist_no_null CHECK (array_position(substring_denylist, NULL) IS NULL),
    machine_labels text[]
        CONSTRAINT machine_labels_no_null CHECK (array_position(machine_labels, NULL) IS NULL)
);
COMMENT ON TABLE popularity.tag_rules IS
    'Tag filter rules: the row with media_type NULL overrides the built-in defaults for every media '
    'type, a media type''s row overrides it for that type; a NULL column inherits. Names are matched '
    'case-insensitively (full Unicode lower-casing), never trimmed';
COMMENT ON COLUMN popularity.tag_rules.media_type IS
    'A registered media type, or NULL for the global rules';
COMMENT ON COLUMN popularity.tag_rules.min_accuracy IS
    'Minimum confidence: a tag whose accuracy is strictly below it is dropped (compared exactly)';
COMMENT ON COLUMN popularity.tag_rules.filtered_providers IS
    'Tags whose provider is one of these are dropped';
COMMENT ON COLUMN popularity.tag_rules.exact_denylist IS
    'Tags whose lower-cased name equals one of these are dropped';
COMMENT ON COLUMN popularity.tag_rules.substring_denylist IS
    'Tags whose lower-cased name contains one of these are dropped';
COMMENT ON COLUMN popularity.tag_rules.machine_labels IS
    'Machine-generated labels to exclude (e.g. demographic labels): dropped when the tag''s name '
    'equals one of these and the tag has a provider that differs from the record''s provider';
SELECT pg_catalog.pg_extension_config_dump('popularity.tag_rules', '');
GRANT SELECT ON popularity.tag_rules TO PUBLIC;

CREATE VIEW popularity.tag_rule_defaults AS
SELECT 0.90::numeric AS min_accuracy,
       ARRAY['rekognition']::text[] AS filtered_providers,
       ARRAY['no person', 'squareformat', 'uploaded:by=flickrmobile', 'uploaded:by=instagram',
             'flickriosapp:filter=flamingo', 'by']::text[] AS exact_denylist,
       ARRAY['flickriosapp', 'uploaded', ':', '=', 'cc0', 'by-nc', 'by-nd', 'by-sa', 'by-nc-nd',
             'by-nc-sa', 'pdm']::text[] AS substring_denylist,
       ARRAY[]::text[] AS machine_labels;
COMMENT ON VIEW popularity.tag_rule_defaults IS
    'Built-in tag rules (the Openverse data refresh rules); override them in popularity.tag_rules';
GRANT SELECT ON popularity.tag_rule_defaults TO PUBLIC;

CREATE VIEW popularity.effective_tag_rules AS
SELECT m.media_type,
       coalesce(t.min_accuracy, g.min_accuracy, d.min_accuracy) AS min_accuracy,
       coalesce(t.filtered_providers, g.filtered_providers, d.filtered_providers) AS filtered_providers,
       coalesce(t.exact_denylist, g.exact_denylist, d.exact_denylist) AS exact_denylist,
       coalesce(t.substring_denylist, g.substring_denylist, d.substring_denylist) AS substring_denylist,
       coalesce(t.machine_labels, g.machine_labels, d.machine_labels) AS machine_labels
FROM (SELECT NULL::text AS media_type
      UNION ALL
      SELECT mt.media_type FROM popularity.media_types mt) AS m
CROSS JOIN popularity.tag_rule_defaults AS d
LEFT JOIN popularity.tag_rules AS g ON g.media_type IS NULL
LEFT JOIN popularity.tag_rules AS t ON t.media_type = m.media_type;
COMMENT ON VIEW popularity.effective_tag_rules IS
    'The tag rules in force: one row for the global rules (media_type NULL) and one per registered '
    'media type';
GRANT SELECT ON popularity.effective_tag_rules TO PUBLIC;

CREATE FUNCTION popularity._tag_rules_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'popularity_tag_rules_changed'
LANGUAGE C;
COMMENT ON FUNCTION popularity._tag_rules_changed() IS
    'Trigger: makes every backend reload its cached tag rules once the change commits (internal)';

CREATE TRIGGER tag_rules_changed
AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON popularity.tag_rules
FOR EACH STATEMENT EXECUTE FUNCTION popularity._tag_rules_changed();
COMMENT ON TRIGGER tag_rules_changed ON popularity.tag_rules IS
    'Invalidates the per-backend cache of compiled tag rules';

-- Per-row functions -------------------------------------------------------------------------------

CREATE FUNCTION popularity.filtered_tags(tags jsonb, record_provider text DEFAULT NULL,
                                         media_type text DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'popularity_filtered_tags'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION popularity.filtered_tags(jsonb, text, text) IS
    'The tags the rules keep (the original objects, in order), or the input itself when nothing is '
    'dropped or when tags is not an array; rules of media_type (raises 42704 if not registered), '
    'or the global rules when it is NULL. Never raises on data';

CREATE FUNCTION popularity._tag_drop_counts(tags jsonb, record_provider text, media_type text)
RETURNS integer[]
AS 'MODULE_PATHNAME', 'popularity_tag_drop_counts'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION popularity._tag_drop_counts(jsonb, text, text) IS
    'NULL when tags is an array that loses nothing; else {not_an_array (0/1), malformed, '
    'low_accuracy, filtered_provider, exact_denylist, substring_denylist, machine_label} (internal)';

-- Runs of filter_tags ---------------------------------------------------------------------------

CREATE TABLE popularity.tag_filter_runs (
    run_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    media_type text NOT NULL
        REFERENCES popularity.media_types (media_type) ON UPDATE CASCADE ON DELETE CASCADE,
    media_table regclass NOT NULL,
    dry_run boolean NOT NULL,
    state text NOT NULL DEFAULT 'running'
        CONSTRAINT tag_filter_run_state CHECK (state IN ('running', 'finished', 'abandoned')),
    total_blocks bigint NOT NULL,
    next_block bigint NOT NULL DEFAULT 0,
    pending uuid[] NOT NULL DEFAULT '{}',
    batches bigint NOT NULL DEFAULT 0,
    rows_scanned bigint NOT NULL DEFAULT 0,
    rows_changed bigint NOT NULL DEFAULT 0,
    rows_malformed bigint NOT NULL DEFAULT 0,
    lock_skips bigint NOT NULL DEFAULT 0,
    dropped_malformed bigint NOT NULL DEFAULT 0,
    dropped_low_accuracy bigint NOT NULL DEFAULT 0,
    dropped_filtered_provider bigint NOT NULL DEFAULT 0,
    dropped_exact_denylist bigint NOT NULL DEFAULT 0,
    dropped_substring_denylist bigint NOT NULL DEFAULT 0,
    dropped_machine_label bigint NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
COMMENT ON SEQUENCE popularity.tag_filter_runs_run_id_seq IS
    'Run numbers of filter_tags (identity of popularity.tag_filter_runs)';
CREATE UNIQUE INDEX tag_filter_runs_one_running
    ON popularity.tag_filter_runs (media_type, dry_run) WHERE state = 'running';
COMMENT ON TABLE popularity.tag_filter_runs IS
    'Runs of filter_tags: progress (committed with each batch, so an interrupted run resumes) and '
    'counts. A dry run counts what a run would change';
COMMENT ON COLUMN popularity.tag_filter_runs.state IS
    'running (or interrupted: the next call resumes it), finished, or abandoned (its media type was '
    're-registered with another table)';
COMMENT ON COLUMN popularity.tag_filter_runs.total_blocks IS
    'Size of the media table in blocks when the run started: the walk covers blocks [0, total_blocks)';
COMMENT ON COLUMN popularity.tag_filter_runs.next_block IS
    'First block of the next batch: blocks below it are done';
COMMENT ON COLUMN popularity.tag_filter_runs.pending IS
    'Identifiers of rows that need filtering but were locked by another transaction: revisited by '
    'the next batches and after the walk until none is left';
COMMENT ON COLUMN popularity.tag_filter_runs.rows_scanned IS 'Rows read by the walk';
COMMENT ON COLUMN popularity.tag_filter_runs.rows_changed IS
    'Rows whose tags were rewritten (dry run: would be)';
COMMENT ON COLUMN popularity.tag_filter_runs.rows_malformed IS
    'Rows whose tags are not an array (left as they are)';
COMMENT ON COLUMN popularity.tag_filter_runs.lock_skips IS
    'Times a row was skipped because another transaction held it';
COMMENT ON COLUMN popularity.tag_filter_runs.dropped_malformed IS
    'Tags dropped because they are not objects, their name is not a string, or their accuracy is not a number';
COMMENT ON COLUMN popularity.tag_filter_runs.dropped_low_accuracy IS 'Tags dropped for low accuracy';
COMMENT ON COLUMN popularity.tag_filter_runs.dropped_filtered_provider IS
    'Tags dropped because of their provider';
COMMENT ON COLUMN popularity.tag_filter_runs.dropped_exact_denylist IS
    'Tags dropped by the exact denylist';
COMMENT ON COLUMN popularity.tag_filter_runs.dropped_substring_denylist IS
    'Tags dropped by the substring denylist';
COMMENT ON COLUMN popularity.tag_filter_runs.dropped_machine_label IS
    'Tags dropped as excluded machine-generated labels';
GRANT SELECT ON popularity.tag_filter_runs TO PUBLIC;

-- The batch procedure -----------------------------------------------------------------------------

-- One main-pass batch in C++ (src/pg/tag_filter_batch.cpp).
CREATE FUNCTION popularity._filter_tags_range(media_table regclass, media_type text,
                                              from_block bigint, to_block bigint, dry_run boolean,
                                              OUT rows_scanned bigint, OUT rows_malformed bigint,
                                              OUT rows_changed bigint, OUT drops bigint[],
                                              OUT unlocked uuid[])
RETURNS record
AS 'MODULE_PATHNAME', 'popularity_filter_tags_range'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION popularity._filter_tags_range(regclass, text, bigint, bigint, boolean) IS
    'One batch of filter_tags over blocks [from_block, to_block): scans them with the caller''s '
    'snapshot, runs the rules once per row, locks the rows that change (skipping rows other '
    'transactions hold) and rewrites them with one UPDATE (dry run: only counts). Returns the '
    'counts, the tags dropped per reason in the changed rows and the identifiers of the rows it '
    'could not lock. Needs SELECT and UPDATE on the table and refuses tables where row-level '
    'security applies (internal)';


-- Walks the media table in ranges of blocks (TID range scans), one committed transaction per batch:
--  1. without locking, finds the rows of the range whose tags lose a tag (the C++ rules engine;
--     a row that keeps everything costs no write, no lock and no allocation);
--  2. locks those rows with SKIP LOCKED and rewrites them with one UPDATE. Steps 1 and 2 are one
--     call of popularity._filter_tags_range (rules run once per row; rows locked and updated by
--     TID). When the caller lacks table-level SELECT (and UPDATE) or row-level security applies,
--     a SQL scan does step 1 instead and step 2 locks the rows by identifier (FOR UPDATE SKIP
--     LOCKED) and re-checks them under the lock. Pending rows are always locked by identifier,
--     re-checked under the lock and rewritten when their tags change;
--  3. rows it could not lock and that still need filtering become `pending`, retried by the next
--     batches; after the walk, each batch waits (at most 1 s, lock_timeout) for the holder of a
--     pending row and retries, until none is left;
--  4. stores its progress and counts in popularity.tag_filter_runs in the same transaction.
-- It runs with the caller's rights (it needs UPDATE on the media table and on
-- popularity.tag_filter_runs) and cannot pin search_path (a procedure with a SET clause cannot
-- commit): every object it uses is schema-qualified, and identifiers reach dynamic SQL quoted.
-- updated_on is deliberately left alone: it drives the popularity refresh (rows updated after its
-- cutoff are skipped), and the tags are not new data.
CREATE PROCEDURE @extschema@.filter_tags(media_type text, dry_run boolean DEFAULT false,
                                         batch_blocks integer DEFAULT 1000)
LANGUAGE plpgsql
AS $procedure$
#variable_conflict use_column
DECLARE
    v_media_type CONSTANT text := filter_tags.media_type;
    v_dry_run CONSTANT boolean := filter_tags.dry_run;
    v_batch CONSTANT integer := filter_tags.batch_blocks;
    v_table regclass;
    v_relkind "char";
    v_run popularity.tag_filter_runs;
    v_run_id bigint;
    v_lo bigint;
    v_hi bigint;
    v_lock_wait CONSTANT text := '1s';
    v_wait_sql text;
    v_scanned bigint;
    v_malformed_rows bigint;
    v_candidates uuid[];
    v_drops bigint[];
    v_locked uuid[];
    v_changed bigint;
    v_pending uuid[];
    v_direct boolean;
    v_direct_changed bigint;
    v_direct_drops bigint[];
    v_unlocked uuid[];
    v_retry uuid[];
    v_missing text;
    v_scan_sql text;
    v_lock_sql text;
    v_recheck_sql text;
BEGIN
    IF v_media_type IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'media type must not be null',
            HINT = 'Pass a media type registered in popularity.media_types.';
    END IF;
    IF v_dry_run IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'dry_run must not be null';
    END IF;
    IF v_batch IS NULL OR v_batch < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = pg_catalog.format('batch_blocks must be at least 1, not %s',
                                        coalesce(v_batch::text, 'NULL')),
            HINT = 'batch_blocks is the number of table blocks (8 kB pages) per committed batch.';
    END IF;

    SELECT mt.media_table, c.relkind INTO v_table, v_relkind
    FROM popularity.media_types mt JOIN pg_catalog.pg_class c ON c.oid = mt.media_table
    WHERE mt.media_type = v_media_type;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_object',
            MESSAGE = pg_catalog.format('unknown media type "%s"', v_media_type),
            DETAIL = pg_catalog.format('Registered media types: %s.',
                coalesce((SELECT pg_catalog.string_agg(pg_catalog.quote_literal(mt.media_type), ', '
                                                       ORDER BY mt.media_type)
                          FROM popularity.media_types mt), 'none')),
            HINT = 'Media types are registered in popularity.media_types.';
    END IF;
    IF v_relkind <> 'r' THEN
        RAISE EXCEPTION USING ERRCODE = 'wrong_object_type',
            MESSAGE = pg_catalog.format('media table %s of media type "%s" is not a plain table',
                                        v_table, v_media_type),
            HINT = 'filter_tags walks the blocks of a heap table; register each partition as a media type.';
    END IF;
    -- The columns it needs, with their types.
    SELECT pg_catalog.string_agg(pg_catalog.format('%I %s', need.name, need.type), ', ')
    INTO v_missing
    FROM (VALUES ('identifier', 'uuid'::regtype), ('tags', 'jsonb'::regtype),
                 ('provider', 'text'::regtype)) AS need(name, type)
    WHERE NOT EXISTS (
        SELECT FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = v_table AND a.attname = need.name AND NOT a.attisdropped AND a.attnum > 0
          AND (a.atttypid = need.type
               OR (need.type = 'text'::regtype AND a.atttypid = 'character varying'::regtype)));
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_column',
            MESSAGE = pg_catalog.format('media table %s lacks columns that filter_tags needs', v_table),
            DETAIL = pg_catalog.format('Missing or of another type: %s.', v_missing),
            HINT = 'A media table has identifier uuid (its key), provider text or varchar, and tags jsonb.';
    END IF;
    -- Fail early on rules that cannot be loaded.
    PERFORM popularity.filtered_tags('[]'::jsonb, NULL, v_media_type);

    -- Resume the unfinished run of this media type, or start one.
    UPDATE popularity.tag_filter_runs r SET state = 'abandoned', updated_at = pg_catalog.now()
    WHERE r.media_type = v_media_type AND r.dry_run = v_dry_run AND r.state = 'running'
      AND r.media_table <> v_table;
    INSERT INTO popularity.tag_filter_runs (media_type, media_table, dry_run, total_blocks)
    VALUES (v_media_type, v_table, v_dry_run,
            pg_catalog.pg_relation_size(v_table)
                / pg_catalog.current_setting('block_size')::bigint)
    ON CONFLICT (media_type, dry_run) WHERE state = 'running' DO NOTHING
    RETURNING run_id INTO v_run_id;
    IF v_run_id IS NULL THEN
        SELECT r.run_id, r.next_block, r.total_blocks INTO v_run_id, v_lo, v_hi
        FROM popularity.tag_filter_runs r
        WHERE r.media_type = v_media_type AND r.dry_run = v_dry_run AND r.state = 'running';
        RAISE NOTICE 'resuming % run % of media type "%" at block % of %',
            CASE WHEN v_dry_run THEN 'dry' ELSE 'tag filter' END, v_run_id, v_media_type, v_lo, v_hi;
    END IF;
    COMMIT;

    v_scan_sql := pg_catalog.format(
        'SELECT pg_catalog.count(*), pg_catalog.count(*) FILTER (WHERE s.c[1] = 1), '
        '       coalesce(pg_catalog.array_agg(s.identifier) FILTER (WHERE s.c[1] = 0), ''{}''), '
        '       ARRAY[coalesce(pg_catalog.sum(s.c[2]), 0), coalesce(pg_catalog.sum(s.c[3]), 0), '
        '             coalesce(pg_catalog.sum(s.c[4]), 0), coalesce(pg_catalog.sum(s.c[5]), 0), '
        '             coalesce(pg_catalog.sum(s.c[6]), 0), coalesce(pg_catalog.sum(s.c[7]), 0)]::bigint[] '
        -- OFFSET 0 keeps the subquery from being flattened: each s.c[i] would otherwise call
        -- _tag_drop_counts again (8 calls a row instead of 1).
        'FROM (SELECT t.identifier, popularity._tag_drop_counts(t.tags, t.provider, $3) AS c '
        '      FROM %s t WHERE t.ctid >= $1 AND t.ctid < $2 OFFSET 0) s', v_table);
    v_lock_sql := pg_catalog.format(
        'WITH locked AS ('
        '    SELECT t.identifier, popularity._tag_drop_counts(t.tags, t.provider, $2) AS c'
        '    FROM %1$s t WHERE t.identifier = ANY ($1) FOR UPDATE OF t SKIP LOCKED'
        '), changed AS ('
        '    UPDATE %1$s t SET tags = popularity.filtered_tags(t.tags, t.provider, $2)'
        '    FROM locked l WHERE t.identifier = l.identifier AND l.c[1] = 0'
        '    RETURNING t.identifier'
        ') '
        'SELECT coalesce(pg_catalog.array_agg(l.identifier), ''{}''), (SELECT pg_catalog.count(*) FROM changed), '
        '       ARRAY[coalesce(pg_catalog.sum(l.c[2]), 0), coalesce(pg_catalog.sum(l.c[3]), 0), '
        '             coalesce(pg_catalog.sum(l.c[4]), 0), coalesce(pg_catalog.sum(l.c[5]), 0), '
        '             coalesce(pg_catalog.sum(l.c[6]), 0), coalesce(pg_catalog.sum(l.c[7]), 0)]::bigint[] '
        'FROM locked l', v_table);
    -- Rows not locked: those that still exist and still need filtering stay pending.
    v_recheck_sql := pg_catalog.format(
        'SELECT coalesce(pg_catalog.array_agg(s.identifier), ''{}'') '
        'FROM (SELECT t.identifier, popularity._tag_drop_counts(t.tags, t.provider, $2) AS c '
        '      FROM %s t WHERE t.identifier = ANY ($1)) s WHERE s.c[1] = 0', v_table);

    v_wait_sql := pg_catalog.format(
        'SELECT FROM %s t WHERE t.identifier = $1 FOR UPDATE OF t', v_table);

    -- Main-pass batches in C++ read the table directly: they need table-level SELECT (and UPDATE)
    -- and a table where no row-level security policy applies; otherwise the SQL scan does them.
    v_direct := pg_catalog.has_table_privilege(v_table, 'SELECT')
                AND (v_dry_run OR pg_catalog.has_table_privilege(v_table, 'UPDATE'))
                AND NOT pg_catalog.row_security_active(v_table);

    LOOP
        -- The run row is the batch's mutex: concurrent calls for the same media type take turns.
        SELECT * INTO v_run FROM popularity.tag_filter_runs r WHERE r.run_id = v_run_id FOR UPDATE;
        EXIT WHEN v_run.state <> 'running';
        IF v_run.next_block >= v_run.total_blocks AND pg_catalog.cardinality(v_run.pending) = 0 THEN
            UPDATE popularity.tag_filter_runs r
            SET state = 'finished', finished_at = pg_catalog.clock_timestamp(),
                updated_at = pg_catalog.clock_timestamp()
            WHERE r.run_id = v_run_id;
            COMMIT;
            EXIT;
        END IF;

        v_lo := v_run.next_block;
        v_hi := least(v_run.next_block + v_batch, v_run.total_blocks);
        v_scanned := 0;
        v_malformed_rows := 0;
        v_candidates := '{}';
        v_drops := '{0,0,0,0,0,0}';
        v_direct_changed := 0;
        v_direct_drops := '{0,0,0,0,0,0}';
        v_unlocked := '{}';
        IF v_lo < v_hi AND v_direct THEN
            -- Scans, locks and rewrites the range's rows that change; returns the ones it could
            -- not lock.
            SELECT f.rows_scanned, f.rows_malformed, f.rows_changed, f.drops, f.unlocked
            INTO v_scanned, v_malformed_rows, v_direct_changed, v_direct_drops, v_unlocked
            FROM popularity._filter_tags_range(v_table, v_media_type, v_lo, v_hi, v_dry_run) f;
        ELSIF v_lo < v_hi THEN
            EXECUTE v_scan_sql INTO v_scanned, v_malformed_rows, v_candidates, v_drops
                USING pg_catalog.format('(%s,0)', v_lo)::tid, pg_catalog.format('(%s,0)', v_hi)::tid,
                      v_media_type;
        END IF;

        IF v_dry_run THEN
            v_changed := pg_catalog.cardinality(v_candidates) + v_direct_changed;
            v_pending := '{}';
        ELSE
            v_candidates := ARRAY(SELECT DISTINCT u FROM pg_catalog.unnest(v_candidates || v_run.pending) u);
            v_locked := '{}';
            v_changed := 0;
            v_drops := '{0,0,0,0,0,0}';
            v_pending := '{}';
            IF v_lo >= v_hi AND pg_catalog.cardinality(v_candidates) > 0 THEN
                -- The walk is over and only rows held by other transactions are left: wait for the
                -- holder of the first one, boundedly (lock_timeout), then lock what is free.
                BEGIN
                    PERFORM pg_catalog.set_config('lock_timeout', v_lock_wait, true);
                    EXECUTE v_wait_sql USING v_candidates[1];
                EXCEPTION WHEN lock_not_available THEN
                    NULL; -- still held: the next batch waits again
                END;
            END IF;
            IF pg_catalog.cardinality(v_candidates) > 0 THEN
                EXECUTE v_lock_sql INTO v_locked, v_changed, v_drops USING v_candidates, v_media_type;
            END IF;
            -- Rows not locked (here or by the C++ batch): those that still exist and still need
            -- filtering stay pending.
            IF pg_catalog.cardinality(v_locked) < pg_catalog.cardinality(v_candidates)
               OR pg_catalog.cardinality(v_unlocked) > 0 THEN
                v_retry := ARRAY(SELECT u FROM pg_catalog.unnest(v_candidates || v_unlocked) u
                                 EXCEPT SELECT u FROM pg_catalog.unnest(v_locked) u);
                IF pg_catalog.cardinality(v_retry) > 0 THEN
                    EXECUTE v_recheck_sql INTO v_pending USING v_retry, v_media_type;
                END IF;
            END IF;
            v_changed := v_changed + v_direct_changed;
        END IF;

        UPDATE popularity.tag_filter_runs r
        SET next_block = v_hi,
            pending = v_pending,
            batches = r.batches + 1,
            rows_scanned = r.rows_scanned + v_scanned,
            rows_changed = r.rows_changed + v_changed,
            rows_malformed = r.rows_malformed + v_malformed_rows,
            lock_skips = r.lock_skips + pg_catalog.cardinality(v_pending),
            dropped_malformed = r.dropped_malformed + v_drops[1] + v_direct_drops[1],
            dropped_low_accuracy = r.dropped_low_accuracy + v_drops[2] + v_direct_drops[2],
            dropped_filtered_provider = r.dropped_filtered_provider + v_drops[3] + v_direct_drops[3],
            dropped_exact_denylist = r.dropped_exact_denylist + v_drops[4] + v_direct_drops[4],
            dropped_substring_denylist = r.dropped_substring_denylist + v_drops[5] + v_direct_drops[5],
            dropped_machine_label = r.dropped_machine_label + v_drops[6] + v_direct_drops[6],
            updated_at = pg_catalog.clock_timestamp()
        WHERE r.run_id = v_run_id;
        COMMIT;
    END LOOP;

    SELECT * INTO v_run FROM popularity.tag_filter_runs r WHERE r.run_id = v_run_id;
    RAISE NOTICE '%', pg_catalog.format(
        '%s run %s of media type "%s" %s: %s rows scanned, %s %s, %s malformed; tags dropped: '
        '%s malformed, %s low_accuracy, %s filtered_provider, %s exact_denylist, '
        '%s substring_denylist, %s machine_label',
        CASE WHEN v_dry_run THEN 'dry' ELSE 'tag filter' END, v_run.run_id, v_media_type, v_run.state,
        v_run.rows_scanned, v_run.rows_changed,
        CASE WHEN v_dry_run THEN 'would change' ELSE 'changed' END, v_run.rows_malformed,
        v_run.dropped_malformed, v_run.dropped_low_accuracy, v_run.dropped_filtered_provider,
        v_run.dropped_exact_denylist, v_run.dropped_substring_denylist, v_run.dropped_machine_label);
END;
$procedure$;
COMMENT ON PROCEDURE @extschema@.filter_tags(text, boolean, integer) IS
    'Applies the tag rules in place to a media type''s table, in committed batches of batch_blocks '
    'blocks that skip rows other transactions hold and revisit them; resumes an interrupted run. '
    'With dry_run it changes no media row and only counts. Progress and counts: '
    'popularity.tag_filter_runs';

-- sql/install/50_refresh.sql
-- Popularity refresh: runs queued by refresh_popularity(), executed by background workers in
-- committed block-range batches (src/worker/). All state lives in these tables, so a crash or
-- restart resumes from the last committed batch.

CREATE TABLE popularity.refresh_runs (
    run_id bigserial PRIMARY KEY,
    media_type text NOT NULL,
    media_table regclass NOT NULL,
    key_column name NOT NULL,
    providers text[] NOT NULL,
    forced boolean NOT NULL DEFAULT false,
    state text NOT NULL DEFAULT 'queued'
        CONSTRAINT state_known CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    requested_by oid NOT NULL,
    -- Transactions in progress when the run was queued (after its constants committed), as
    -- virtual transaction ids: rows they insert may carry the old constants and become visible
    -- only when they commit, so the run is not finished before they end (see refresh_tasks.rewalk).
    writers text[] NOT NULL DEFAULT '{}',
    requested_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at timestamptz,
    finished_at timestamptz,
    error text
);
-- At most one active run per media type.
CREATE UNIQUE INDEX refresh_runs_one_active ON popularity.refresh_runs (media_type)
    WHERE state IN ('queued', 'running');
COMMENT ON SEQUENCE popularity.refresh_runs_run_id_seq IS 'Run identifiers of popularity.refresh_runs';
COMMENT ON TABLE popularity.refresh_runs IS
    'Popularity refresh runs (history is kept): what was requested, by whom, its state and error';

CREATE TABLE popularity.refresh_tasks (
    task_id bigserial PRIMARY KEY,
    run_id bigint NOT NULL REFERENCES popularity.refresh_runs ON DELETE CASCADE,
    segment integer NOT NULL,
    first_block bigint NOT NULL,
    end_block bigint NOT NULL,
    next_block bigint NOT NULL,
    state text NOT NULL DEFAULT 'pending'
        CONSTRAINT state_known CHECK (state IN ('pending', 'running', 'revisiting', 'done', 'failed', 'cancelled')),
    batches bigint NOT NULL DEFAULT 0,
    revisit_passes bigint NOT NULL DEFAULT 0,
    attempts integer NOT NULL DEFAULT 0, -- workers started since the last committed batch
    -- A batch of this task ran while some of the run's writers were in progress: once they have
    -- all ended, the task walks its range once more (rows they inserted were invisible to it).
    rewalk boolean NOT NULL DEFAULT false,
    -- The last task has looked past the table's size at queue time (rows the run's writers
    -- added in new blocks).
    tail_checked boolean NOT NULL DEFAULT false,
    -- The longest batch that locked and wrote rows, from its start to its last statement before
    -- the commit (ingestion waits on a batch's row locks at most about this long).
    longest_batch_ms double precision NOT NULL DEFAULT 0,
    started_at timestamptz,
    finished_at timestamptz,
    error text,
    UNIQUE (run_id, segment)
);
COMMENT ON SEQUENCE popularity.refresh_tasks_task_id_seq IS 'Task identifiers of popularity.refresh_tasks';
COMMENT ON TABLE popularity.refresh_tasks IS
    'A run''s units of work: contiguous block ranges of the media table, each with its progress marker '
    '(next_block) committed in the same transaction as each batch';

CREATE TABLE popularity.refresh_progress (
    task_id bigint NOT NULL REFERENCES popularity.refresh_tasks ON DELETE CASCADE,
    provider text NOT NULL,
    rows_scanned bigint NOT NULL DEFAULT 0,
    rows_updated bigint NOT NULL DEFAULT 0,
    rows_skipped_locked bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, provider)
);
COMMENT ON TABLE popularity.refresh_progress IS
    'Counters per task and provider, written with each batch (so no batch is ever counted twice)';

CREATE TABLE popularity.refresh_skipped (
    task_id bigint NOT NULL REFERENCES popularity.refresh_tasks ON DELETE CASCADE,
    row_key text NOT NULL,
    PRIMARY KEY (task_id, row_key)
);
COMMENT ON TABLE popularity.refresh_skipped IS
    'Rows a batch could not lock (another transaction held them), by primary key, to revisit until none is left';

GRANT SELECT ON popularity.refresh_runs, popularity.refresh_tasks, popularity.refresh_progress TO PUBLIC;

CREATE VIEW popularity.refresh_status AS
SELECT r.run_id, r.media_type, p.provider, r.state, r.forced,
       blocks.done AS blocks_done, blocks.total AS blocks_total,
       coalesce(c.rows_scanned, 0) AS rows_scanned, coalesce(c.rows_updated, 0) AS rows_updated,
       coalesce(c.rows_skipped_locked, 0) AS rows_skipped_locked,
       blocks.pending_revisit AS rows_pending_revisit,
       blocks.batches, blocks.longest_batch_ms,
       round((coalesce(c.rows_scanned, 0)
              / greatest(extract(epoch FROM coalesce(r.finished_at, clock_timestamp()) - r.started_at), 0.001))::numeric)
           AS rows_per_second,
       r.requested_at, r.started_at, r.finished_at, r.error
FROM popularity.refresh_runs AS r
CROSS JOIN LATERAL unnest(r.providers) AS p(provider)
LEFT JOIN LATERAL (
    SELECT sum(x.rows_scanned) AS rows_scanned, sum(x.rows_updated) AS rows_updated,
           sum(x.rows_skipped_locked) AS rows_skipped_locked
    FROM popularity.refresh_progress AS x JOIN popularity.refresh_tasks AS t USING (task_id)
    WHERE t.run_id = r.run_id AND x.provider = p.provider
) AS c ON true
LEFT JOIN LATERAL (
    SELECT sum(t.next_block - t.first_block) AS done, sum(t.end_block - t.first_block) AS total,
           sum(t.batches) AS batches, round(max(t.longest_batch_ms)::numeric, 1) AS longest_batch_ms,
           (SELECT count(*) FROM popularity.refresh_skipped AS s JOIN popularity.refresh_tasks AS u USING (task_id)
            WHERE u.run_id = r.run_id) AS pending_revisit
    FROM popularity.refresh_tasks AS t WHERE t.run_id = r.run_id
) AS blocks ON true;
COMMENT ON VIEW popularity.refresh_status IS
    'Per refresh run and provider: state, blocks done/total, rows scanned, updated and skipped while '
    'locked, batches, the longest batch that wrote rows (ms), rate, times and error (history included)';
GRANT SELECT ON popularity.refresh_status TO PUBLIC;

CREATE FUNCTION popularity._wake_scheduler()
RETURNS void
AS 'MODULE_PATHNAME', 'popularity_wake_scheduler'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION popularity._wake_scheduler() IS
    'Wakes (or starts) the refresh scheduler of this database when the current transaction commits';

CREATE FUNCTION popularity._score_differs(old double precision, new double precision, tolerance double precision)
RETURNS boolean
AS 'MODULE_PATHNAME', 'popularity_score_differs'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION popularity._score_differs(double precision, double precision, double precision) IS
    'Whether a stored score must be rewritten: NULL-ness differs, or the relative difference exceeds the tolerance (Boost.Math)';

CREATE FUNCTION popularity._writers_in_progress()
RETURNS text[]
AS 'MODULE_PATHNAME', 'popularity_writers_in_progress'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION popularity._writers_in_progress() IS
    'Virtual transaction ids of the other transactions of this database that have written or run a statement now';

CREATE FUNCTION popularity._writers_ended(vxids text[])
RETURNS boolean
AS 'MODULE_PATHNAME', 'popularity_writers_ended'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION popularity._writers_ended(text[]) IS
    'Whether all these transactions (from _writers_in_progress) have ended; never waits';

-- The primary key column of a media table (refresh tracks skipped rows by it).
CREATE FUNCTION popularity._key_column(media_table regclass)
RETURNS name
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    result name;
BEGIN
    SELECT a.attname INTO result
    FROM pg_index AS i JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
    WHERE i.indrelid = media_table AND i.indisprimary AND i.indnkeyatts = 1;
    IF result IS NULL THEN
        RAISE EXCEPTION 'table % has no single-column primary key', media_table
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'The refresh revisits rows it could not lock by their primary key; add one (Openverse: identifier).';
    END IF;
    RETURN result;
END $$;
COMMENT ON FUNCTION popularity._key_column(regclass) IS 'The single-column primary key of a media table';

CREATE PROCEDURE @extschema@.refresh_popularity(
    media_type text, providers text[] DEFAULT NULL, wait boolean DEFAULT true, force boolean DEFAULT false)
LANGUAGE plpgsql
AS $$
DECLARE
    tbl regclass := popularity._media_table(media_type);
    key_column name := popularity._key_column(tbl);
    changed_providers text[];
    new_run bigint;
    nblocks bigint;
    segments integer;
    per_segment bigint;
    run_state text;
    run_error text;
BEGIN
    -- It commits between its steps, so it must be called on its own (like VACUUM).
    IF pg_catalog.transaction_timestamp() <> pg_catalog.statement_timestamp() THEN
        RAISE EXCEPTION 'refresh_popularity() cannot run inside a transaction block'
            USING ERRCODE = 'active_sql_transaction',
                  HINT = 'Call it on its own: it commits the new constants before the workers rescore.';
    END IF;
    -- The workers connect as the calling role (so they have exactly its rights); PostgreSQL 15
    -- lets a background worker connect only as a role that can log in.
    IF NOT (SELECT r.rolcanlogin FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'refresh workers run as the calling role, and role "%" cannot log in', current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Call refresh_popularity() as a role with LOGIN that may update the media table.';
    END IF;
    IF (SELECT relkind FROM pg_catalog.pg_class WHERE oid = tbl) <> 'r' THEN
        RAISE EXCEPTION 'refresh of a partitioned table is not supported yet'
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Register and refresh each partition as a media type of its own.';
    END IF;
    IF EXISTS (SELECT FROM popularity.refresh_runs AS r
               WHERE r.media_type = refresh_popularity.media_type AND r.state IN ('queued', 'running')) THEN
        RAISE EXCEPTION 'a refresh of media type "%" is already in progress (run %)', media_type,
            (SELECT r.run_id FROM popularity.refresh_runs AS r
             WHERE r.media_type = refresh_popularity.media_type AND r.state IN ('queued', 'running'))
            USING ERRCODE = 'object_in_use',
                  HINT = 'Wait for it (popularity.refresh_status), or stop it with popularity.cancel_refresh().';
    END IF;

    -- 1. The constants, committed before any row is rescored: from then on ingestion uses them.
    SELECT coalesce(array_agg(c.provider ORDER BY c.provider) FILTER (WHERE c.changed OR force), '{}')
    INTO changed_providers
    FROM popularity.refresh_constants(media_type, providers) AS c;
    COMMIT;

    -- 2. The run and its block-range tasks.
    nblocks := pg_catalog.pg_relation_size(tbl) / pg_catalog.current_setting('block_size')::bigint;
    segments := greatest(1, least(pg_catalog.current_setting('popularity.max_workers')::integer * 4,
                                  (nblocks + 63) / 64));
    per_segment := greatest(1, (nblocks + segments - 1) / segments);
    BEGIN
        INSERT INTO popularity.refresh_runs AS r
            (media_type, media_table, key_column, providers, forced, requested_by, writers, state, finished_at)
        VALUES (media_type, tbl, key_column, changed_providers, force, current_user::text::regrole::oid,
                popularity._writers_in_progress(),
                CASE WHEN cardinality(changed_providers) = 0 THEN 'succeeded' ELSE 'queued' END,
                CASE WHEN cardinality(changed_providers) = 0 THEN pg_catalog.clock_timestamp() END)
        RETURNING r.run_id INTO new_run;
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'a refresh of media type "%" is already in progress', media_type
            USING ERRCODE = 'object_in_use',
                  HINT = 'Wait for it (popularity.refresh_status), or stop it with popularity.cancel_refresh().';
    END;
    IF cardinality(changed_providers) = 0 THEN
        RAISE NOTICE 'refresh run %: no constant changed, nothing to rescore', new_run
            USING HINT = 'Use force => true to rescore every configured provider anyway.';
        PERFORM pg_catalog.pg_notify('popularity', pg_catalog.json_build_object(
            'event', 'refresh_finished', 'run_id', new_run, 'media_type', media_type, 'state', 'succeeded')::text);
        COMMIT;
        RETURN;
    END IF;
    INSERT INTO popularity.refresh_tasks (run_id, segment, first_block, end_block, next_block)
    SELECT new_run, s, s * per_segment, least((s + 1) * per_segment, nblocks), s * per_segment
    FROM generate_series(0, segments - 1) AS s
    WHERE s * per_segment < nblocks OR s = 0;
    PERFORM popularity._wake_scheduler();
    COMMIT;
    RAISE NOTICE 'refresh run % queued for providers %', new_run, array_to_string(changed_providers, ', ');
    IF NOT wait THEN
        RETURN;
    END IF;

    -- 3. Wait, committing between looks so no snapshot is held while the workers run.
    LOOP
        SELECT r.state, r.error INTO run_state, run_error FROM popularity.refresh_runs AS r WHERE r.run_id = new_run;
        EXIT WHEN run_state IN ('succeeded', 'failed', 'cancelled');
        COMMIT;
        PERFORM pg_catalog.pg_sleep(0.1);
    END LOOP;
    IF run_state = 'failed' THEN
        RAISE EXCEPTION 'refresh run % failed: %', new_run, run_error
            USING ERRCODE = 'external_routine_exception',
                  HINT = 'Fix the cause, then resume it with popularity.resume_refresh(' || new_run || ').';
    ELSIF run_state = 'cancelled' THEN
        RAISE EXCEPTION 'refresh run % was cancelled', new_run
            USING ERRCODE = 'query_canceled',
                  HINT = 'Resume it with popularity.resume_refresh(' || new_run || ') or start a new one.';
    END IF;
END $$;
COMMENT ON PROCEDURE @extschema@.refresh_popularity(text, text[], boolean, boolean) IS
    'Recomputes the constants of a media type, then rescoring of every provider whose constant changed '
    '(all with force) runs in background workers; with wait, returns when the run finished and raises '
    'if it failed or was cancelled';

CREATE FUNCTION popularity.cancel_refresh(run_id bigint DEFAULT NULL, media_type text DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE popularity.refresh_runs AS r SET state = 'cancelled', finished_at = clock_timestamp(),
           error = 'cancelled by ' || session_user
    WHERE r.state IN ('queued', 'running')
      AND (cancel_refresh.run_id IS NULL OR r.run_id = cancel_refresh.run_id)
      AND (cancel_refresh.media_type IS NULL OR r.media_type = cancel_refresh.media_type)
    RETURNING r.run_id;
$$;
COMMENT ON FUNCTION popularity.cancel_refresh(bigint, text) IS
    'Stops active runs (all, one run, or one media type''s) between batches; returns the runs cancelled. '
    'Their progress is kept: popularity.resume_refresh() continues them.';

CREATE FUNCTION popularity.resume_refresh(run_id bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE popularity.refresh_runs AS r SET state = 'queued', finished_at = NULL, error = NULL
    WHERE r.run_id = resume_refresh.run_id AND r.state IN ('failed', 'cancelled');
    IF NOT FOUND THEN
        RAISE EXCEPTION 'refresh run % cannot be resumed', run_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Only failed or cancelled runs can be resumed; see popularity.refresh_status.';
    END IF;
    UPDATE popularity.refresh_tasks AS t SET state = 'pending', error = NULL, attempts = 0
    WHERE t.run_id = resume_refresh.run_id AND t.state IN ('failed', 'cancelled', 'running', 'revisiting');
    PERFORM popularity._wake_scheduler();
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'another refresh of the same media type is in progress'
        USING ERRCODE = 'object_in_use', HINT = 'Wait for it to finish, or cancel it first.';
END $$;
COMMENT ON FUNCTION popularity.resume_refresh(bigint) IS
    'Continues a failed or cancelled run from its last committed batch';

-- sql/install/60_stats.sql
-- Provider counts per (media type, provider), maintained by statement-level delta triggers, with a
-- reconciliation backstop; and freshness reports (how many stored scores are stale).
--
-- Counts = the folded base (stats_counts) + the unfolded deltas (stats_journal). Ingestion
-- statements only append to the journal (no index, no unique key: concurrent ingestion
-- transactions never wait on each other because of the counts). fold_stats() moves journal rows
-- into the base in one transaction; reads add both, so they are exact whenever folding runs.

CREATE TABLE popularity.stats_counts (
    media_type text NOT NULL REFERENCES popularity.media_types (media_type) ON DELETE CASCADE,
    provider text,
    rows bigint NOT NULL DEFAULT 0,
    rows_with_metric bigint NOT NULL DEFAULT 0,
    rows_scored bigint NOT NULL DEFAULT 0,
    rows_invalid_metric bigint NOT NULL DEFAULT 0,
    folded_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT stats_counts_key UNIQUE NULLS NOT DISTINCT (media_type, provider)
);
COMMENT ON TABLE popularity.stats_counts IS
    'Folded provider counts (add popularity.stats_journal for the exact value; read popularity.provider_stats)';
GRANT SELECT ON popularity.stats_counts TO PUBLIC;

CREATE TABLE popularity.stats_journal (
    media_type text NOT NULL,
    provider text,
    rows bigint NOT NULL,
    rows_with_metric bigint NOT NULL,
    rows_scored bigint NOT NULL,
    rows_invalid_metric bigint NOT NULL,
    source text NOT NULL DEFAULT 'trigger'
        CONSTRAINT source_known CHECK (source IN ('trigger', 'truncate', 'reconcile')),
    recorded_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE popularity.stats_journal IS
    'Unfolded count deltas, appended by the counts triggers (one row per statement and provider with a '
    'non-zero delta), TRUNCATE and reconcile_stats; moved into stats_counts by fold_stats()';
GRANT SELECT ON popularity.stats_journal TO PUBLIC;

-- Keys whose counts may be wrong until reconcile_stats runs (provider NULL: every provider). Rows
-- are only ever inserted, and reconcile_stats deletes the rows its snapshot saw, so a mark made
-- while it runs survives it.
CREATE TABLE popularity.stats_marks (
    media_type text NOT NULL REFERENCES popularity.media_types (media_type) ON DELETE CASCADE,
    provider text,
    reason text NOT NULL,
    marked_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE popularity.stats_marks IS
    'Counts to verify with reconcile_stats: after TRUNCATE, a metric change, or registration of a '
    'non-empty table (provider NULL: every provider of the media type)';
GRANT SELECT ON popularity.stats_marks TO PUBLIC;

CREATE TABLE popularity.stats_corrections (
    correction_id bigserial PRIMARY KEY,
    reconciled_at timestamptz NOT NULL DEFAULT now(),
    media_type text NOT NULL,
    provider text,
    kind text NOT NULL CONSTRAINT kind_known CHECK (kind IN ('drift', 'missing', 'orphan')),
    rows_before bigint,
    rows_with_metric_before bigint,
    rows_scored_before bigint,
    rows_invalid_metric_before bigint,
    rows_after bigint,
    rows_with_metric_after bigint,
    rows_scored_after bigint,
    rows_invalid_metric_after bigint
);
COMMENT ON TABLE popularity.stats_corrections IS
    'History of reconcile_stats corrections: counted (before) and true (after) values of each key that '
    'drifted (drift), was not counted (missing) or was counted but has no rows (orphan)';
COMMENT ON SEQUENCE popularity.stats_corrections_correction_id_seq IS
    'Identifiers of popularity.stats_corrections';
GRANT SELECT ON popularity.stats_corrections TO PUBLIC;

CREATE VIEW popularity.provider_stats AS
SELECT s.media_type,
       s.provider,
       sum(s.rows)::bigint AS rows,
       sum(s.rows_with_metric)::bigint AS rows_with_metric,
       sum(s.rows_scored)::bigint AS rows_scored,
       sum(s.rows_invalid_metric)::bigint AS rows_invalid_metric,
       (sum(s.rows) - sum(s.rows_with_metric) - sum(s.rows_invalid_metric))::bigint AS rows_missing_metric,
       EXISTS (SELECT FROM popularity.stats_marks AS k
               WHERE k.media_type = s.media_type
                 AND (k.provider IS NULL OR k.provider = s.provider)) AS reconcile_pending
FROM (SELECT c.media_type, c.provider, c.rows, c.rows_with_metric, c.rows_scored, c.rows_invalid_metric
      FROM popularity.stats_counts AS c
      UNION ALL
      SELECT j.media_type, j.provider, j.rows, j.rows_with_metric, j.rows_scored, j.rows_invalid_metric
      FROM popularity.stats_journal AS j) AS s
GROUP BY s.media_type, s.provider
HAVING sum(s.rows) <> 0 OR sum(s.rows_with_metric) <> 0 OR sum(s.rows_scored) <> 0
    OR sum(s.rows_invalid_metric) <> 0;
COMMENT ON VIEW popularity.provider_stats IS
    'Exact counts per (media type, provider): rows, rows whose configured metric is usable, scored rows, '
    'rows whose metric is present but unusable, rows without it; reconcile_pending when a TRUNCATE, a '
    'metric change or a registration asks for reconcile_stats';
GRANT SELECT ON popularity.provider_stats TO PUBLIC;

CREATE FUNCTION popularity._stats_trigger()
RETURNS trigger
AS 'MODULE_PATHNAME', 'popularity_stats_trigger'
LANGUAGE C;
COMMENT ON FUNCTION popularity._stats_trigger() IS
    'Counts trigger (AFTER INSERT/UPDATE/DELETE FOR EACH STATEMENT, with transition tables): appends '
    'delta = f(new) - f(old) per provider to popularity.stats_journal';

CREATE FUNCTION popularity._metric_status(meta_data jsonb, metric text)
RETURNS text
AS 'MODULE_PATHNAME', 'popularity_metric_status'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION popularity._metric_status(jsonb, text) IS
    'ok, missing or invalid: how the counts classify meta_data->>metric';

CREATE FUNCTION popularity.clopper_pearson_lower(
    successes bigint, trials bigint, confidence double precision DEFAULT 0.99)
RETURNS double precision
AS 'MODULE_PATHNAME', 'popularity_clopper_pearson_lower'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION popularity.clopper_pearson_lower(bigint, bigint, double precision) IS
    'Lower bound of the exact (Clopper-Pearson) two-sided confidence interval of a binomial proportion (Boost.Math)';

CREATE FUNCTION popularity.clopper_pearson_upper(
    successes bigint, trials bigint, confidence double precision DEFAULT 0.99)
RETURNS double precision
AS 'MODULE_PATHNAME', 'popularity_clopper_pearson_upper'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION popularity.clopper_pearson_upper(bigint, bigint, double precision) IS
    'Upper bound of the exact (Clopper-Pearson) two-sided confidence interval of a binomial proportion (Boost.Math)';

-- TRUNCATE: every count of the media type becomes 0 (exact under READ COMMITTED: TRUNCATE holds
-- ACCESS EXCLUSIVE, so every writer of the table has finished and its deltas are visible to this
-- statement), and the media type is marked for reconciliation (a TRUNCATE inside a REPEATABLE READ
-- transaction may not see the last deltas).
CREATE FUNCTION popularity._stats_truncated()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM popularity.media_types AS m
                   WHERE m.media_type = TG_ARGV[0] AND m.media_table = TG_RELID) THEN
        RAISE EXCEPTION 'table % is not the registered table of media type "%"', TG_RELID::regclass, TG_ARGV[0]
            USING ERRCODE = 'triggered_action_exception',
                  HINT = 'The counts triggers are installed by popularity.register_media_type().';
    END IF;
    INSERT INTO popularity.stats_journal AS j
        (media_type, provider, rows, rows_with_metric, rows_scored, rows_invalid_metric, source)
    SELECT s.media_type, s.provider, -s.rows, -s.rows_with_metric, -s.rows_scored, -s.rows_invalid_metric,
           'truncate'
    FROM popularity.provider_stats AS s WHERE s.media_type = TG_ARGV[0];
    INSERT INTO popularity.stats_marks (media_type, provider, reason) VALUES (TG_ARGV[0], NULL, 'truncate');
    RETURN NULL;
END $$;
COMMENT ON FUNCTION popularity._stats_truncated() IS
    'Counts trigger (AFTER TRUNCATE): zeroes the media type''s counts and marks it for reconcile_stats';

-- A provider's metric decides which of its rows "have a metric". When it is added, changed or
-- removed, the key's counts were computed with another metric: the key is marked for
-- reconcile_stats (not reconciled on the spot: that would scan all of the provider's rows inside
-- set_metric's transaction).
CREATE FUNCTION popularity._stats_metric_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key_media_type text := CASE TG_OP WHEN 'DELETE' THEN OLD.media_type ELSE NEW.media_type END;
    key_provider text := CASE TG_OP WHEN 'DELETE' THEN OLD.provider ELSE NEW.provider END;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.metric IS NOT DISTINCT FROM OLD.metric
       AND NEW.provider IS NOT DISTINCT FROM OLD.provider THEN
        RETURN NULL;
    END IF;
    -- Only keys with counted rows (and of media types still registered: not during unregistration).
    IF EXISTS (SELECT FROM popularity.provider_stats AS s
               WHERE s.media_type = key_media_type AND s.provider = key_provider)
       AND EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = key_media_type) THEN
        INSERT INTO popularity.stats_marks (media_type, provider, reason)
        VALUES (key_media_type, key_provider, 'metric ' || lower(TG_OP));
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.provider IS DISTINCT FROM OLD.provider
       AND EXISTS (SELECT FROM popularity.provider_stats AS s
                   WHERE s.media_type = OLD.media_type AND s.provider = OLD.provider) THEN
        INSERT INTO popularity.stats_marks (media_type, provider, reason)
        VALUES (OLD.media_type, OLD.provider, 'metric update');
    END IF;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION popularity._stats_metric_changed() IS
    'Trigger on popularity.metrics: marks a key for reconcile_stats when its metric is added, changed or removed';
CREATE TRIGGER stats_metric_changed
    AFTER INSERT OR DELETE OR UPDATE OF metric, provider ON popularity.metrics
    FOR EACH ROW EXECUTE FUNCTION popularity._stats_metric_changed();

-- The journal has no foreign key (it would lock the media type's row from every ingestion
-- statement); its rows go with their media type here.
CREATE FUNCTION popularity._stats_media_type_removed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM popularity.stats_journal AS j WHERE j.media_type = OLD.media_type;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION popularity._stats_media_type_removed() IS
    'Trigger on popularity.media_types: removes the unfolded count deltas of an unregistered media type';
CREATE TRIGGER stats_media_type_removed
    AFTER DELETE ON popularity.media_types
    FOR EACH ROW EXECUTE FUNCTION popularity._stats_media_type_removed();

-- Called by register_media_type: the four counts triggers. A table that already has rows is marked
-- for reconcile_stats (its existing rows were never counted); an empty one is exact from the start
-- (CREATE TRIGGER waits for every writer of the table, so the emptiness check sees all of them).
CREATE FUNCTION popularity._install_stats_triggers(media_type text, media_table regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    installed boolean := EXISTS (SELECT FROM pg_trigger AS t
                                 WHERE t.tgrelid = media_table AND t.tgname = 'zz_popularity_stats_insert');
    has_rows boolean;
BEGIN
    EXECUTE format('CREATE OR REPLACE TRIGGER zz_popularity_stats_insert AFTER INSERT ON %s '
                   'REFERENCING NEW TABLE AS popularity_new '
                   'FOR EACH STATEMENT EXECUTE FUNCTION popularity._stats_trigger(%L)', media_table, media_type);
    EXECUTE format('CREATE OR REPLACE TRIGGER zz_popularity_stats_update AFTER UPDATE ON %s '
                   'REFERENCING OLD TABLE AS popularity_old NEW TABLE AS popularity_new '
                   'FOR EACH STATEMENT EXECUTE FUNCTION popularity._stats_trigger(%L)', media_table, media_type);
    EXECUTE format('CREATE OR REPLACE TRIGGER zz_popularity_stats_delete AFTER DELETE ON %s '
                   'REFERENCING OLD TABLE AS popularity_old '
                   'FOR EACH STATEMENT EXECUTE FUNCTION popularity._stats_trigger(%L)', media_table, media_type);
    EXECUTE format('CREATE OR REPLACE TRIGGER zz_popularity_stats_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION popularity._stats_truncated(%L)', media_table, media_type);
    IF NOT installed THEN
        EXECUTE format('SELECT EXISTS (SELECT FROM %s)', media_table) INTO has_rows;
        IF has_rows THEN
            INSERT INTO popularity.stats_marks AS k (media_type, provider, reason)
            VALUES ($1, NULL, 'registered');
        END IF;
    END IF;
END $$;
COMMENT ON FUNCTION popularity._install_stats_triggers(text, regclass) IS
    'Installs the counts triggers on a media table (called by register_media_type)';

CREATE FUNCTION popularity._remove_stats_triggers(media_table regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    suffix text;
BEGIN
    FOREACH suffix IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'zz_popularity_stats_' || suffix, media_table);
    END LOOP;
END $$;
COMMENT ON FUNCTION popularity._remove_stats_triggers(regclass) IS
    'Removes the counts triggers from a media table (called by unregister_media_type)';

-- Moves the journal into the base, in one transaction: the journal rows are deleted with RETURNING
-- and added to the base in the same statement, so a reader (any snapshot) sees each delta exactly
-- once, and a delta committed meanwhile is simply left for the next fold. Folds are serialized.
CREATE FUNCTION popularity.fold_stats()
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    folded bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('popularity.fold_stats'));
    WITH moved AS (
        DELETE FROM popularity.stats_journal AS j RETURNING j.*
    ), sums AS (
        SELECT m.media_type, m.provider, count(*) AS n, sum(m.rows) AS rows,
               sum(m.rows_with_metric) AS rows_with_metric, sum(m.rows_scored) AS rows_scored,
               sum(m.rows_invalid_metric) AS rows_invalid_metric
        FROM moved AS m GROUP BY m.media_type, m.provider
    ), added AS (
        INSERT INTO popularity.stats_counts AS c
            (media_type, provider, rows, rows_with_metric, rows_scored, rows_invalid_metric)
        SELECT s.media_type, s.provider, s.rows, s.rows_with_metric, s.rows_scored, s.rows_invalid_metric
        FROM sums AS s
        -- deltas of a media type unregistered meanwhile are dropped with it
        WHERE EXISTS (SELECT FROM popularity.media_types AS t WHERE t.media_type = s.media_type)
        ON CONFLICT ON CONSTRAINT stats_counts_key DO UPDATE
            SET rows = c.rows + excluded.rows,
                rows_with_metric = c.rows_with_metric + excluded.rows_with_metric,
                rows_scored = c.rows_scored + excluded.rows_scored,
                rows_invalid_metric = c.rows_invalid_metric + excluded.rows_invalid_metric,
                folded_at = now()
    )
    SELECT coalesce(sum(s.n), 0) INTO folded FROM sums AS s;
    -- Keys whose counts all reached 0 (rows deleted, orphans reconciled) disappear.
    DELETE FROM popularity.stats_counts AS c
    WHERE c.rows = 0 AND c.rows_with_metric = 0 AND c.rows_scored = 0 AND c.rows_invalid_metric = 0;
    RETURN folded;
END $$;
COMMENT ON FUNCTION popularity.fold_stats() IS
    'Moves the count deltas of popularity.stats_journal into popularity.stats_counts in one transaction; '
    'returns the number of journal rows folded. Schedule it (pg_cron), e.g. every minute';

-- Recomputes the counts of a media type (all when NULL) from its table and applies the difference
-- to the current value as a delta. Truth and current value (base + journal) are read by ONE
-- statement, so in one snapshot S; its correction is truth(S) - current(S). A delta committed
-- after S is in the journal but not in current(S), and its rows are not in truth(S): after the
-- correction commits, the value is truth(S) + later deltas = the truth. A transaction still
-- running at S has neither its rows in truth(S) nor its deltas in current(S). The marks seen in S
-- are cleared by the same statement; a mark made later survives. Reconciliations of a media type
-- are serialized (a second one then sees the first one's correction), and need READ COMMITTED.
CREATE PROCEDURE popularity.reconcile_stats(media_type text DEFAULT NULL, INOUT corrections integer DEFAULT NULL)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target record;
    ids bigint[];
    c record;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'reconcile_stats needs the READ COMMITTED isolation level'
            USING ERRCODE = 'invalid_transaction_state',
                  DETAIL = format('The transaction runs at %s.', current_setting('transaction_isolation')),
                  HINT = 'Call it outside an explicit REPEATABLE READ or SERIALIZABLE transaction.';
    END IF;
    IF $1 IS NOT NULL THEN
        PERFORM popularity._media_table($1);
    END IF;
    corrections := 0;
    FOR target IN
        SELECT m.media_type, m.media_table FROM popularity.media_types AS m
        WHERE $1 IS NULL OR m.media_type = $1 ORDER BY m.media_type
    LOOP
        PERFORM pg_advisory_xact_lock(hashtext('popularity.reconcile_stats'), hashtext(target.media_type));
        EXECUTE format($sql$
            WITH metric AS MATERIALIZED (
                SELECT x.provider, x.metric FROM popularity.metrics AS x WHERE x.media_type = $1
            ), truth AS (
                SELECT r.provider, count(*) AS rows,
                       count(*) FILTER (WHERE r.status = 'ok') AS rows_with_metric,
                       count(*) FILTER (WHERE r.scored) AS rows_scored,
                       count(*) FILTER (WHERE r.status = 'invalid') AS rows_invalid_metric
                FROM (SELECT t.provider::text AS provider, t.standardized_popularity IS NOT NULL AS scored,
                             popularity._metric_status(t.meta_data, m.metric) AS status
                      FROM %s AS t LEFT JOIN metric AS m ON m.provider = t.provider::text) AS r
                GROUP BY r.provider
            ), counted AS (
                SELECT s.provider, s.rows, s.rows_with_metric, s.rows_scored, s.rows_invalid_metric
                FROM popularity.provider_stats AS s WHERE s.media_type = $1
            ), paired AS (
                SELECT u.provider, bool_or(u.is_truth) AS in_truth, bool_or(NOT u.is_truth) AS in_counted,
                       sum(u.rows) FILTER (WHERE NOT u.is_truth) AS rows_before,
                       sum(u.rows_with_metric) FILTER (WHERE NOT u.is_truth) AS rows_with_metric_before,
                       sum(u.rows_scored) FILTER (WHERE NOT u.is_truth) AS rows_scored_before,
                       sum(u.rows_invalid_metric) FILTER (WHERE NOT u.is_truth) AS rows_invalid_metric_before,
                       sum(u.rows) FILTER (WHERE u.is_truth) AS rows_after,
                       sum(u.rows_with_metric) FILTER (WHERE u.is_truth) AS rows_with_metric_after,
                       sum(u.rows_scored) FILTER (WHERE u.is_truth) AS rows_scored_after,
                       sum(u.rows_invalid_metric) FILTER (WHERE u.is_truth) AS rows_invalid_metric_after
                FROM (SELECT true AS is_truth, t.* FROM truth AS t
                      UNION ALL SELECT false, c.* FROM counted AS c) AS u
                GROUP BY u.provider
            ), drift AS (
                SELECT * FROM paired AS p
                WHERE (p.rows_before, p.rows_with_metric_before, p.rows_scored_before, p.rows_invalid_metric_before)
                      IS DISTINCT FROM
                      (p.rows_after, p.rows_with_metric_after, p.rows_scored_after, p.rows_invalid_metric_after)
            ), applied AS (
                INSERT INTO popularity.stats_journal
                    (media_type, provider, rows, rows_with_metric, rows_scored, rows_invalid_metric, source)
                SELECT $1, d.provider,
                       coalesce(d.rows_after, 0) - coalesce(d.rows_before, 0),
                       coalesce(d.rows_with_metric_after, 0) - coalesce(d.rows_with_metric_before, 0),
                       coalesce(d.rows_scored_after, 0) - coalesce(d.rows_scored_before, 0),
                       coalesce(d.rows_invalid_metric_after, 0) - coalesce(d.rows_invalid_metric_before, 0),
                       'reconcile'
                FROM drift AS d
            ), history AS (
                INSERT INTO popularity.stats_corrections
                    (media_type, provider, kind, rows_before, rows_with_metric_before, rows_scored_before,
                     rows_invalid_metric_before, rows_after, rows_with_metric_after, rows_scored_after,
                     rows_invalid_metric_after)
                SELECT $1, d.provider,
                       CASE WHEN NOT d.in_counted THEN 'missing' WHEN NOT d.in_truth THEN 'orphan' ELSE 'drift' END,
                       d.rows_before, d.rows_with_metric_before, d.rows_scored_before, d.rows_invalid_metric_before,
                       d.rows_after, d.rows_with_metric_after, d.rows_scored_after, d.rows_invalid_metric_after
                FROM drift AS d
                RETURNING correction_id
            ), cleared AS (
                DELETE FROM popularity.stats_marks AS k WHERE k.media_type = $1 RETURNING k.media_type
            )
            -- (data-modifying WITH queries always run to completion, read or not)
            SELECT coalesce(array_agg(h.correction_id ORDER BY h.correction_id), '{}') FROM history AS h
            $sql$, target.media_table)
            INTO ids USING target.media_type;
        FOR c IN
            SELECT * FROM popularity.stats_corrections AS h WHERE h.correction_id = ANY (ids)
            ORDER BY h.provider NULLS FIRST
        LOOP
            RAISE NOTICE 'corrected % counts of provider % of media type "%": rows % -> %, with metric % -> %, scored % -> %, invalid metric % -> %',
                c.kind, coalesce(quote_literal(c.provider), 'NULL'), c.media_type,
                coalesce(c.rows_before, 0), coalesce(c.rows_after, 0),
                coalesce(c.rows_with_metric_before, 0), coalesce(c.rows_with_metric_after, 0),
                coalesce(c.rows_scored_before, 0), coalesce(c.rows_scored_after, 0),
                coalesce(c.rows_invalid_metric_before, 0), coalesce(c.rows_invalid_metric_after, 0);
            corrections := corrections + 1;
        END LOOP;
    END LOOP;
END $$;
COMMENT ON PROCEDURE popularity.reconcile_stats(text, integer) IS
    'Recomputes the counts of a media type (all when NULL) from its table in one snapshot and applies only '
    'the differences, as deltas (concurrent ingestion loses nothing); reports each correction (NOTICE, '
    'popularity.stats_corrections) and clears the marks; returns the number of corrections. Schedulable with pg_cron';

-- The sampling methods of freshness() and estimate_percentile(). bernoulli (the default) draws rows
-- independently, which the intervals assume; it reads every block but evaluates only the sampled
-- rows. system draws whole blocks and reads only those: much faster on a huge table, but rows of
-- one block are alike (a provider's rows are loaded together, a refresh rescores block ranges), so
-- its intervals are too narrow: an indication, not a guarantee.
CREATE FUNCTION popularity._check_sampling(sampling text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF sampling IS NULL OR sampling NOT IN ('bernoulli', 'system') THEN
        RAISE EXCEPTION 'unknown sampling method "%"', sampling
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use bernoulli (independent rows: valid intervals) or system (whole blocks: fast, approximate).';
    END IF;
END $$;
COMMENT ON FUNCTION popularity._check_sampling(text) IS
    'Raises 22023 unless the sampling method is bernoulli or system';

-- Freshness: per provider, the fraction of rows whose stored score differs from the score under the
-- current constant (beyond popularity.score_tolerance, as the refresh judges it), estimated from a
-- sample of about sample_rows rows with an exact 99% Clopper-Pearson interval; exact => true (or a
-- sample that would cover the table) scans every row, and the interval is then the value itself.
CREATE FUNCTION popularity.freshness(
    media_type text, sample_rows integer DEFAULT 10000, exact boolean DEFAULT false,
    seed double precision DEFAULT NULL, sampling text DEFAULT 'bernoulli')
RETURNS TABLE (provider text, metric text, constant double precision, method text, rows_counted bigint,
               rows_examined bigint, rows_stale bigint, stale_fraction double precision,
               stale_lower double precision, stale_upper double precision, estimated_stale_rows bigint,
               constant_changed_at timestamptz, last_refresh_finished_at timestamptz)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tbl regclass := popularity._media_table($1);
    total double precision;
    percent double precision;
    sample_clause text := '';
BEGIN
    IF sample_rows IS NULL OR sample_rows < 1 THEN
        RAISE EXCEPTION 'sample_rows must be a positive number of rows'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The value given was %s.', coalesce(sample_rows::text, 'NULL')),
                  HINT = 'Use e.g. 10000, or exact => true to scan every row.';
    END IF;
    PERFORM popularity._check_sampling(sampling);
    -- The exact row count from the counts; the planner's estimate when nothing is counted.
    total := (SELECT sum(s.rows) FROM popularity.provider_stats AS s WHERE s.media_type = $1);
    IF total IS NULL OR total <= 0 THEN
        total := (SELECT greatest(c.reltuples, 0) FROM pg_class AS c WHERE c.oid = tbl);
    END IF;
    percent := 100.0 * sample_rows / greatest(total, 1);
    IF NOT coalesce(exact, false) AND percent < 100 THEN
        sample_clause := format(' TABLESAMPLE %s (%s)%s', upper(sampling), percent,
                                CASE WHEN seed IS NOT NULL THEN format(' REPEATABLE (%s)', seed) ELSE '' END);
    END IF;
    RETURN QUERY EXECUTE format($sql$
        WITH cfg AS MATERIALIZED (
            SELECT x.provider, x.metric, x.constant, x.constant_changed_at
            FROM popularity.metrics AS x WHERE x.media_type = $1
        ), examined AS (
            SELECT t.provider::text AS provider, count(*) AS n,
                   count(*) FILTER (WHERE popularity._score_differs(
                       t.standardized_popularity,
                       CASE WHEN m.constant IS NOT NULL THEN
                           @extschema@.standardized_popularity(
                               @extschema@.popularity_metric_value(t.meta_data, m.metric), m.constant)
                       END,
                       current_setting('popularity.score_tolerance')::double precision)) AS stale
            FROM %s AS t %s LEFT JOIN cfg AS m ON m.provider = t.provider::text
            GROUP BY 1
        ), keys AS (
            SELECT e.provider FROM examined AS e
            UNION SELECT s.provider FROM popularity.provider_stats AS s WHERE s.media_type = $1
            UNION SELECT m.provider FROM cfg AS m
        )
        SELECT k.provider, m.metric, m.constant, $2, coalesce(s.rows, 0),
               coalesce(e.n, 0), coalesce(e.stale, 0),
               e.stale::double precision / e.n,
               -- exact: the value itself (NULL without rows); sample: [0, 1] without rows
               CASE WHEN $2 = 'exact' THEN e.stale::double precision / e.n
                    ELSE popularity.clopper_pearson_lower(coalesce(e.stale, 0), coalesce(e.n, 0), 0.99) END,
               CASE WHEN $2 = 'exact' THEN e.stale::double precision / e.n
                    ELSE popularity.clopper_pearson_upper(coalesce(e.stale, 0), coalesce(e.n, 0), 0.99) END,
               round(s.rows * (e.stale::double precision / e.n))::bigint,
               m.constant_changed_at,
               (SELECT max(r.finished_at) FROM popularity.refresh_runs AS r
                WHERE r.media_type = $1 AND r.state = 'succeeded' AND k.provider = ANY (r.providers))
        FROM keys AS k
        LEFT JOIN examined AS e ON e.provider IS NOT DISTINCT FROM k.provider
        LEFT JOIN cfg AS m ON m.provider = k.provider
        LEFT JOIN popularity.provider_stats AS s ON s.media_type = $1 AND s.provider IS NOT DISTINCT FROM k.provider
        ORDER BY k.provider NULLS FIRST
        $sql$, tbl, sample_clause)
        USING $1, CASE WHEN sample_clause = '' THEN 'exact' ELSE 'sample' END;
END $$;
COMMENT ON FUNCTION popularity.freshness(text, integer, boolean, double precision, text) IS
    'Per provider: the fraction of rows whose stored score differs from the score under the current constant, '
    'from a sample of about sample_rows rows (bernoulli, or system: blocks, approximate) with an exact 99% '
    'Clopper-Pearson interval (exact => true scans every row), the exact row count, when the constant last '
    'changed and when the last successful refresh of the provider finished; seed makes the sample repeatable';

-- Percentiles from a sample, with distribution-free bounds (order statistics): for huge providers,
-- what refresh_constants would compute, without reading every row. refresh_constants itself stays
-- exact.
CREATE FUNCTION popularity.quantile_ranks(
    n bigint, percentile double precision, confidence double precision DEFAULT 0.99,
    OUT estimate_rank bigint, OUT lower_rank bigint, OUT upper_rank bigint, OUT coverage double precision)
AS 'MODULE_PATHNAME', 'popularity_quantile_ranks'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION popularity.quantile_ranks(bigint, double precision, double precision) IS
    'Ranks (1-based, in a sorted sample of n values) of percentile_disc''s estimate and of distribution-free '
    'bounds on the percentile holding with probability coverage >= confidence (Boost.Math binomial); a bound is '
    'NULL when the sample is too small';

CREATE FUNCTION popularity.estimate_percentile(
    media_type text, providers text[] DEFAULT NULL, sample_rows integer DEFAULT 10000,
    confidence double precision DEFAULT 0.99, seed double precision DEFAULT NULL,
    sampling text DEFAULT 'bernoulli')
RETURNS TABLE (provider text, metric text, percentile double precision, method text, sample_values bigint,
               estimate double precision, lower_bound double precision, upper_bound double precision,
               coverage double precision, constant_estimate double precision, constant_lower double precision,
               constant_upper double precision, current_constant double precision)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tbl regclass := popularity._media_table($1);
    m record;
    r record;
    total double precision;
    percent double precision;
    sample_clause text;
    vals double precision[];
    n bigint;
BEGIN
    IF sample_rows IS NULL OR sample_rows < 1 THEN
        RAISE EXCEPTION 'sample_rows must be a positive number of rows'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The value given was %s.', coalesce(sample_rows::text, 'NULL'));
    END IF;
    PERFORM popularity._check_sampling(sampling);
    FOR m IN
        SELECT x.provider, x.metric, x.percentile, x.constant FROM popularity.metrics AS x
        WHERE x.media_type = $1 AND ($2 IS NULL OR x.provider = ANY ($2)) ORDER BY x.provider
    LOOP
        -- The sampling rate that gives about sample_rows values of this provider (from its exact
        -- count of usable values); the whole provider when that is all of it.
        total := (SELECT s.rows_with_metric FROM popularity.provider_stats AS s
                  WHERE s.media_type = $1 AND s.provider = m.provider);
        percent := 100.0 * sample_rows / greatest(coalesce(total, 0), 1);
        sample_clause := CASE WHEN percent < 100 THEN
            format(' TABLESAMPLE %s (%s)%s', upper(sampling), percent,
                   CASE WHEN seed IS NOT NULL THEN format(' REPEATABLE (%s)', seed) ELSE '' END)
            ELSE '' END;
        EXECUTE format('SELECT array_agg(v.x ORDER BY v.x) FROM (SELECT @extschema@.popularity_metric_value(t.meta_data, $1) AS x '
                       'FROM %s AS t%s WHERE t.provider = $2) AS v WHERE v.x IS NOT NULL', tbl, sample_clause)
            INTO vals USING m.metric, m.provider;
        n := coalesce(cardinality(vals), 0);
        provider := m.provider;
        metric := m.metric;
        percentile := m.percentile;
        method := CASE WHEN sample_clause = '' THEN 'exact' ELSE 'sample' END;
        sample_values := n;
        current_constant := m.constant;
        estimate := NULL; lower_bound := NULL; upper_bound := NULL; coverage := NULL;
        constant_estimate := NULL; constant_lower := NULL; constant_upper := NULL;
        IF n > 0 THEN
            SELECT * INTO r FROM popularity.quantile_ranks(n, m.percentile, confidence);
            estimate := vals[r.estimate_rank];
            lower_bound := vals[r.lower_rank];
            upper_bound := vals[r.upper_rank];
            coverage := r.coverage;
            -- The constant grows with the percentile value, so the bounds carry over.
            constant_estimate := @extschema@.popularity_constant(estimate, m.percentile);
            constant_lower := @extschema@.popularity_constant(lower_bound, m.percentile);
            constant_upper := @extschema@.popularity_constant(upper_bound, m.percentile);
        END IF;
        RETURN NEXT;
    END LOOP;
END $$;
COMMENT ON FUNCTION popularity.estimate_percentile(text, text[], integer, double precision, double precision, text) IS
    'Per provider: the percentile value and constant estimated from a sample of about sample_rows values '
    '(the exact percentile_disc when the sample would cover the provider), with distribution-free order-statistic '
    'bounds holding with probability >= confidence, beside the current constant; refresh_constants stays exact';

-- sql/install/90_guard_selftest.sql
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
