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
    last_error text,
    -- A new value whenever the constant changes (popularity._metrics_constant_version): a run records
    -- the versions it rescores with (refresh_runs.constant_versions), see popularity.rescore_state.
    constant_version uuid NOT NULL DEFAULT gen_random_uuid(),
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
COMMENT ON COLUMN popularity.metrics.last_error IS
    'Why refresh_constants could not compute the constant the last time it tried (the previous val and constant are kept); NULL when it could';
COMMENT ON COLUMN popularity.metrics.constant_version IS
    'Identifies the current value of the constant: a new random one whenever the constant changes, whoever changes it '
    '(never reused, so a value seen again means the constant has not changed since)';
SELECT pg_catalog.pg_extension_config_dump('popularity.metrics', '');
GRANT SELECT ON popularity.metrics TO PUBLIC;

-- The version of the constant: a new one for a new row and whenever the constant changes (by
-- refresh_constants or any UPDATE), never one the statement chose, so that a version recorded by a
-- refresh run and found again means the constant has not changed since (popularity.rescore_state).
CREATE FUNCTION popularity._metrics_constant_version()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_RELID <> 'popularity.metrics'::regclass OR TG_LEVEL <> 'ROW' OR TG_WHEN <> 'BEFORE' THEN
        RAISE EXCEPTION 'popularity._metrics_constant_version() versions popularity.metrics only'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'INSERT' OR NEW.constant IS DISTINCT FROM OLD.constant THEN
        NEW.constant_version := gen_random_uuid();
    ELSE
        NEW.constant_version := OLD.constant_version;
    END IF;
    RETURN NEW;
END $$;
COMMENT ON FUNCTION popularity._metrics_constant_version() IS
    'Trigger on popularity.metrics: a new constant_version for a new row and whenever the constant changes; '
    'otherwise the version is kept, whatever the statement says';
CREATE TRIGGER metrics_constant_version BEFORE INSERT OR UPDATE ON popularity.metrics
    FOR EACH ROW EXECUTE FUNCTION popularity._metrics_constant_version();

-- Every configuration table (metrics, media_types, tag_rules) has this statement trigger: each
-- committed change makes every backend reload its cached configuration (constants, tag rules)
-- before it next uses it, through PostgreSQL's invalidation queue (src/pg/config_cache.hpp).
CREATE FUNCTION popularity._config_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'popularity_config_changed'
LANGUAGE C;
COMMENT ON FUNCTION popularity._config_changed() IS
    'Statement trigger on every configuration table: backends reload their cached configuration once the change is visible to them (internal)';
CREATE TRIGGER metrics_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON popularity.metrics
    FOR EACH STATEMENT EXECUTE FUNCTION popularity._config_changed();

-- Registering a media type, or turning tag filtering at ingestion on or off.
CREATE TRIGGER media_types_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON popularity.media_types
    FOR EACH STATEMENT EXECUTE FUNCTION popularity._config_changed();

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

-- Registering and configuring a media type is for the owner of its table (or a member of the
-- owning role): raises 42501 otherwise, naming what was refused.
CREATE FUNCTION popularity._require_owner(media_table regclass, action text)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT coalesce(pg_has_role((SELECT c.relowner FROM pg_class AS c WHERE c.oid = media_table), 'USAGE'),
                    false) THEN
        RAISE EXCEPTION 'permission denied to % for table %', action, media_table
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Only the table''s owner (or a member of the owning role) registers and configures its media type.';
    END IF;
END $$;
COMMENT ON FUNCTION popularity._require_owner(regclass, text) IS
    'Raises 42501 unless the current role owns the media table (or is a member of its owner)';

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
    citus_triggers text;
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
    PERFORM popularity._require_owner(media_table, 'register a media type');
    -- A foreign partition would break ingestion of the whole tree (see _refuse_foreign_partitions).
    IF EXISTS (SELECT FROM pg_partition_tree(media_table) AS p JOIN pg_class AS c ON c.oid = p.relid
               WHERE c.relkind = 'f') THEN
        RAISE EXCEPTION 'media table % has a foreign partition', media_table
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = (SELECT format('Foreign: %s.', string_agg(p.relid::regclass::text, ', ' ORDER BY p.relid::regclass::text))
                            FROM pg_partition_tree(media_table) AS p JOIN pg_class AS c ON c.oid = p.relid
                            WHERE c.relkind = 'f'),
                  HINT = 'Rows routed to a foreign partition could not be counted (no transition tables for foreign partitions) nor rescored: detach it first.';
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
    -- (A Citus distributed table: Citus creates the triggers on every shard, 65_citus.sql.)
    citus_triggers := popularity._citus_allow_triggers(media_table);
    EXECUTE format('CREATE OR REPLACE TRIGGER zz_popularity_score BEFORE INSERT OR UPDATE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION popularity._score_trigger(%L)',
                   media_table, media_type);
    -- The provider counts' delta triggers (60_stats.sql).
    PERFORM popularity._install_stats_triggers(media_type, media_table);
    PERFORM popularity._citus_triggers_done(citus_triggers);

    -- Scoring at ingestion needs no key, but the refresh does: say so now, not at the first refresh.
    IF NOT EXISTS (SELECT FROM pg_index AS i WHERE i.indrelid = media_table AND i.indisprimary) THEN
        RAISE WARNING 'table % has no primary key: refresh_popularity() and filter_tags() will refuse it', media_table
            USING HINT = 'Add one (Openverse: identifier uuid PRIMARY KEY; a partitioned table''s includes the partition key); ingestion scores rows without it.';
    END IF;

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
    citus_triggers text;
BEGIN
    PERFORM popularity._require_owner(tbl, 'unregister media type "' || media_type || '"');
    IF EXISTS (SELECT FROM pg_class WHERE oid = tbl) THEN
        citus_triggers := popularity._citus_allow_triggers(tbl);
        EXECUTE format('DROP TRIGGER IF EXISTS zz_popularity_score ON %s', tbl);
        PERFORM popularity._remove_stats_triggers(tbl);
        PERFORM popularity._citus_triggers_done(citus_triggers);
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
    PERFORM popularity._require_owner(popularity._media_table(media_type),
                                      'configure the metrics of media type "' || media_type || '"');
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
               changed boolean, error text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tbl regclass := popularity._media_table(media_type);
    m record;
    single_pass boolean;
    distributed boolean;
    source text;
    -- The rows to write (changed, or whose error changed), written by one UPDATE at the end.
    write_providers text[] := '{}';
    write_vals double precision[] := '{}';
    write_constants double precision[] := '{}';
    write_errors text[] := '{}';
    write_changed boolean[] := '{}';
    changed_providers text[] := '{}';
    changed_bytes bigint := 0;
    failed bigint := 0;
    payload text;
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
    -- Each way is one query giving every provider with its percentile value (NULL without values),
    -- in provider order.
    -- (The rows of the table, or of all the leaves of a partitioned one.)
    SELECT coalesce(sum(CASE WHEN c.reltuples >= 0 THEN c.reltuples ELSE pg_relation_size(c.oid) / 100.0 END)
                    <= current_setting('popularity.constants_single_pass_rows')::float8, true)
    INTO single_pass FROM popularity._media_leaves(tbl) AS l(leaf) JOIN pg_class AS c ON c.oid = l.leaf;
    -- A Citus distributed table, on the coordinator: one distributed query over every shard on
    -- every worker, whatever the table's size (popularity._citus_metric_percentiles, the same
    -- results as the C++ scan).
    distributed := popularity._citus_distributed(tbl) AND popularity._citus_coordinator();
    IF single_pass AND NOT distributed AND (SELECT c.relrowsecurity FROM pg_class AS c WHERE c.oid = tbl) THEN
        -- Row-level security: the executor applies the policies.
        source := format('SELECT x.provider, x.metric, x.percentile, x.val, x.constant, x.last_error,'
                         '       @extschema@.popularity_percentile('
                         '           @extschema@.popularity_metric_value(t.meta_data, x.metric), x.percentile) AS pv'
                         ' FROM popularity.metrics AS x LEFT JOIN %s AS t ON t.provider = x.provider'
                         ' WHERE x.media_type = $1 AND ($2::text[] IS NULL OR x.provider = ANY ($2))'
                         ' GROUP BY x.media_type, x.provider ORDER BY x.provider', tbl);
    ELSIF single_pass OR distributed THEN
        -- The same values read by one C++ scan of the table (of each leaf of a partitioned one,
        -- gathered per provider), without the executor; its result is
        -- in the order of its input arrays, which unnest zips with them (the arrays are aligned,
        -- being aggregated from the same rows; sorted once, as a provider name may be long).
        source := 'SELECT u.* FROM ('
                  '  SELECT array_agg(x.provider) AS p, array_agg(x.metric) AS mt, array_agg(x.percentile) AS pc,'
                  '         array_agg(x.val) AS v, array_agg(x.constant) AS c, array_agg(x.last_error) AS e'
                  '  FROM (SELECT x.provider, x.metric, x.percentile, x.val, x.constant, x.last_error'
                  '        FROM popularity.metrics AS x'
                  '        WHERE x.media_type = $1 AND ($2::text[] IS NULL OR x.provider = ANY ($2))'
                  '        ORDER BY x.provider) AS x) AS a,'
                  ' LATERAL unnest(a.p, a.mt, a.pc, a.v, a.c, a.e, '
                  || CASE WHEN distributed THEN 'popularity._citus_metric_percentiles'
                          ELSE 'popularity._metric_percentiles' END
                  || '($3, a.p, a.mt, a.pc))'
                  '     AS u(provider, metric, percentile, val, constant, last_error, pv)';
    ELSE
        source := format('SELECT x.provider, x.metric, x.percentile, x.val, x.constant, x.last_error,'
                         '       (SELECT @extschema@.popularity_percentile('
                         '                   @extschema@.popularity_metric_value(t.meta_data, x.metric), x.percentile)'
                         '        FROM %s AS t WHERE t.provider = x.provider) AS pv'
                         ' FROM popularity.metrics AS x'
                         ' WHERE x.media_type = $1 AND ($2::text[] IS NULL OR x.provider = ANY ($2))'
                         ' ORDER BY x.provider', tbl);
    END IF;
    FOR m IN EXECUTE source USING media_type, providers, tbl LOOP
        provider := m.provider;
        metric := m.metric;
        percentile := m.percentile;
        old_val := m.val;
        old_constant := m.constant;
        -- No values, or a constant that cannot be computed: keep the previous val and constant.
        new_val := m.val;
        new_constant := m.constant;
        error := NULL;
        IF m.pv IS NOT NULL THEN
            BEGIN
                new_constant := @extschema@.popularity_constant(m.pv, m.percentile);
                new_val := CASE WHEN m.pv = 0 THEN 1 ELSE m.pv END;
            EXCEPTION WHEN invalid_parameter_value THEN
                -- Reported for this provider alone; the others go on.
                GET STACKED DIAGNOSTICS error = PG_EXCEPTION_DETAIL;
                error := SQLERRM || coalesce(': ' || nullif(error, ''), '');
            END;
        END IF;
        changed := (new_val, new_constant) IS DISTINCT FROM (m.val, m.constant);
        IF changed OR error IS DISTINCT FROM m.last_error THEN
            write_providers := write_providers || m.provider;
            write_vals := write_vals || new_val;
            write_constants := write_constants || new_constant;
            write_errors := write_errors || error;
            write_changed := write_changed || changed;
        END IF;
        IF changed THEN
            changed_providers := changed_providers || m.provider;
            changed_bytes := changed_bytes + octet_length(m.provider);
        END IF;
        IF error IS NOT NULL THEN
            failed := failed + 1;
        END IF;
        RETURN NEXT;
    END LOOP;
    UPDATE popularity.metrics AS x
    SET val = w.val, constant = w.constant, last_error = w.error,
        computed_at = CASE WHEN w.changed THEN now() ELSE x.computed_at END,
        constant_changed_at = CASE WHEN x.constant IS DISTINCT FROM w.constant
                                   THEN now() ELSE x.constant_changed_at END
    FROM unnest(write_providers, write_vals, write_constants, write_errors, write_changed)
         AS w(provider, val, constant, error, changed)
    WHERE x.media_type = $1 AND x.provider = w.provider;
    IF cardinality(changed_providers) > 0 THEN
        -- PostgreSQL refuses NOTIFY payloads of 8000 bytes or more: the providers go along only
        -- when they fit; listeners otherwise read popularity.metrics (constant_changed_at).
        IF changed_bytes < 8000 THEN
            payload := json_build_object('event', 'constants_changed', 'media_type', $1,
                                         'providers', changed_providers,
                                         'changed', cardinality(changed_providers), 'failed', failed)::text;
        END IF;
        IF payload IS NULL OR octet_length(payload) >= 8000 THEN
            payload := json_build_object('event', 'constants_changed', 'media_type', $1, 'providers', NULL,
                                         'changed', cardinality(changed_providers), 'failed', failed)::text;
        END IF;
        IF octet_length(payload) >= 8000 THEN -- a media type name of nearly 8000 bytes
            payload := json_build_object('event', 'constants_changed', 'media_type', NULL, 'providers', NULL,
                                         'changed', cardinality(changed_providers), 'failed', failed)::text;
        END IF;
        PERFORM pg_notify('popularity', payload);
    END IF;
END $$;
COMMENT ON FUNCTION popularity.refresh_constants(text, text[]) IS
    'Recomputes the percentile value and constant of each provider (all, or the given ones) exactly '
    '(popularity_percentile, in one pass over the table for all providers up to '
    'popularity.constants_single_pass_rows rows); writes a provider''s row only when it changed; keeps the old constant '
    'when a provider has no values, or when its constant cannot be computed (reported in error and '
    'popularity.metrics.last_error; the other providers go on); returns old and new values per provider and '
    'NOTIFYs popularity (the provider list only when it fits the payload limit)';

-- Dropping a registered table unregisters its media type (and its metrics), so the registry never
-- points at a table that no longer exists. With the extension owner's rights: the dropped table's
-- owner can no longer be looked up for the registry's row-level security, and it only removes the
-- rows of relations this very command dropped.
CREATE FUNCTION popularity._forget_dropped_tables()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM popularity.media_types AS m
    WHERE m.media_table::oid IN (SELECT d.objid FROM pg_event_trigger_dropped_objects() AS d
                                 WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0);
    -- A partition with the counts triggers dropped (a table, not just its triggers): its rows left a
    -- registered table without a row trigger firing. Which one is gone with it (the triggers'
    -- arguments), so the counts of every registered partitioned table are marked for
    -- reconcile_stats (but Citus-distributed ones: Citus manages their partitions).
    IF EXISTS (SELECT FROM pg_event_trigger_dropped_objects() AS d
               WHERE d.object_type = 'trigger' AND d.object_identity LIKE 'zz\_popularity\_stats\_insert on %')
       AND EXISTS (SELECT FROM pg_event_trigger_dropped_objects() AS d WHERE d.object_type = 'table') THEN
        INSERT INTO popularity.stats_marks (media_type, provider, reason)
        SELECT m.media_type, NULL, 'partition dropped'
        FROM popularity.media_types AS m JOIN pg_class AS c ON c.oid = m.media_table
        WHERE c.relkind = 'p' AND NOT popularity._citus_distributed(m.media_table);
    END IF;
END $$;
COMMENT ON FUNCTION popularity._forget_dropped_tables() IS
    'Event trigger: unregisters the media types of dropped tables; a dropped partition marks the counts of '
    'the partitioned media tables for reconcile_stats';
CREATE EVENT TRIGGER popularity_forget_dropped_tables ON sql_drop
    EXECUTE FUNCTION popularity._forget_dropped_tables();
COMMENT ON EVENT TRIGGER popularity_forget_dropped_tables IS
    'Unregisters the media types of dropped tables';

-- A foreign partition under a registered table would break ingestion of every partition: the
-- provider counts' statement triggers collect transition tables, which PostgreSQL cannot do for a
-- foreign partition ("cannot collect transition tuples from child foreign tables"), and the batch
-- engine cannot walk its blocks. register_media_type refuses such a tree, and this event trigger
-- refuses the DDL that would put a foreign table under a registered one (ATTACH PARTITION, CREATE
-- FOREIGN TABLE ... PARTITION OF), before it commits. It reads the registry with the extension
-- owner's rights (the registry's row-level security must not hide a table from the check) and
-- names only the tables this command touched.
CREATE FUNCTION popularity._refuse_foreign_partitions()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found record;
BEGIN
    SELECT m.media_type, m.media_table, p.relid AS partition INTO found
    FROM pg_event_trigger_ddl_commands() AS d
    JOIN pg_class AS c ON c.oid = d.objid AND d.classid = 'pg_class'::regclass
    CROSS JOIN LATERAL pg_partition_ancestors(c.oid) AS a(relid)
    JOIN popularity.media_types AS m ON m.media_table = a.relid
    CROSS JOIN LATERAL pg_partition_tree(m.media_table) AS p
    JOIN pg_class AS f ON f.oid = p.relid AND f.relkind = 'f'
    LIMIT 1;
    IF found.media_type IS NOT NULL THEN
        RAISE EXCEPTION 'a foreign table cannot be a partition of media table % (media type "%")',
            found.media_table, found.media_type
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = pg_catalog.format('%s is a foreign table: rows routed to it could not be counted '
                                             '(no transition tables for foreign partitions) nor rescored.',
                                             found.partition),
                  HINT = 'Keep foreign data in a table of its own, or unregister the media type first.';
    END IF;
END $$;
COMMENT ON FUNCTION popularity._refuse_foreign_partitions() IS
    'Event trigger: refuses a foreign partition under a registered media table (ATTACH PARTITION, '
    'CREATE FOREIGN TABLE ... PARTITION OF)';
CREATE EVENT TRIGGER popularity_refuse_foreign_partitions ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE FOREIGN TABLE')
    EXECUTE FUNCTION popularity._refuse_foreign_partitions();
COMMENT ON EVENT TRIGGER popularity_refuse_foreign_partitions IS
    'Refuses a foreign partition under a registered media table';

-- The four counts triggers on one relation of a media table's tree (statement-level triggers are
-- not inherited: each partition, and each partitioned table between, gets its own, which fire only
-- for statements that name that relation, so no row is counted twice).
CREATE FUNCTION popularity._install_stats_triggers_on(media_type text, rel regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE format('CREATE OR REPLACE TRIGGER zz_popularity_stats_insert AFTER INSERT ON %s '
                   'REFERENCING NEW TABLE AS popularity_new '
                   'FOR EACH STATEMENT EXECUTE FUNCTION popularity._stats_trigger(%L)', rel, media_type);
    EXECUTE format('CREATE OR REPLACE TRIGGER zz_popularity_stats_update AFTER UPDATE ON %s '
                   'REFERENCING OLD TABLE AS popularity_old NEW TABLE AS popularity_new '
                   'FOR EACH STATEMENT EXECUTE FUNCTION popularity._stats_trigger(%L)', rel, media_type);
    EXECUTE format('CREATE OR REPLACE TRIGGER zz_popularity_stats_delete AFTER DELETE ON %s '
                   'REFERENCING OLD TABLE AS popularity_old '
                   'FOR EACH STATEMENT EXECUTE FUNCTION popularity._stats_trigger(%L)', rel, media_type);
    EXECUTE format('CREATE OR REPLACE TRIGGER zz_popularity_stats_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION popularity._stats_truncated(%L)', rel, media_type);
END $$;
COMMENT ON FUNCTION popularity._install_stats_triggers_on(text, regclass) IS
    'Installs the four counts triggers on one relation of a media table''s tree';

-- The four counts triggers off one relation.
CREATE FUNCTION popularity._remove_stats_triggers_on(rel regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    suffix text;
BEGIN
    FOREACH suffix IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'zz_popularity_stats_' || suffix, rel);
    END LOOP;
END $$;
COMMENT ON FUNCTION popularity._remove_stats_triggers_on(regclass) IS
    'Removes the four counts triggers from one relation';

-- The relations of a media table's tree: the table, and every partition below it (partitioned
-- ones included: a statement may name any of them). Foreign partitions are refused elsewhere.
CREATE FUNCTION popularity._media_tree(media_table regclass)
RETURNS SETOF regclass
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT media_table
    UNION
    SELECT t.relid FROM pg_partition_tree(media_table) AS t JOIN pg_class AS c ON c.oid = t.relid
    WHERE c.relkind IN ('r', 'p')
$$;
COMMENT ON FUNCTION popularity._media_tree(regclass) IS
    'The media table and every partition below it';

CREATE FUNCTION popularity._attaches_or_detaches(command pg_ddl_command)
RETURNS boolean
AS 'MODULE_PATHNAME', 'popularity_attaches_or_detaches'
LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION popularity._attaches_or_detaches(pg_ddl_command) IS
    'Whether an ALTER TABLE command (from pg_event_trigger_ddl_commands) attaches or detaches a partition';

-- Partitions under a registered media table, as they come and go (CREATE TABLE ... PARTITION OF,
-- ATTACH PARTITION, DETACH PARTITION):
-- - a new member of the tree gets the counts triggers (statement-level triggers are not inherited,
--   and a statement may name a partition directly);
-- - a partition detached loses them (they would count its rows for the media type);
-- - the rows of a partition attached (or detached) join (or leave) the table without a row trigger
--   firing: the media type's counts are marked for popularity.reconcile_stats
--   (provider_stats.reconcile_pending says so until it runs), and an attached partition's rows may
--   carry scores no run gave them: the media type is marked for a rescore (rescore_marks).
-- A Citus distributed table's partitions are Citus's to manage (it refuses triggers it did not
-- create itself): they are left alone. As the extension owner, like the check above; only the
-- media types of the tables the command touched.
CREATE FUNCTION popularity._partitions_changed()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    touched text[];
    moved boolean;
BEGIN
    -- Only commands that add or remove partitions: a CREATE TABLE (... PARTITION OF), an ALTER
    -- TABLE that attaches or detaches. (Not any ALTER TABLE: pg_restore adds a restored table's
    -- constraints before its triggers, which it then creates itself.)
    SELECT array_agg(DISTINCT m.media_type) INTO touched
    FROM pg_event_trigger_ddl_commands() AS d
    CROSS JOIN LATERAL (SELECT d.objid UNION SELECT a.relid FROM pg_partition_ancestors(d.objid) AS a(relid)) AS t(relid)
    JOIN popularity.media_types AS m ON m.media_table = t.relid
    WHERE d.classid = 'pg_class'::regclass
      AND (d.command_tag = 'CREATE TABLE'
           OR (d.command_tag = 'ALTER TABLE' AND popularity._attaches_or_detaches(d.command)))
      AND NOT popularity._citus_distributed(m.media_table);
    SELECT bool_or(popularity._attaches_or_detaches(d.command)) INTO moved
    FROM pg_event_trigger_ddl_commands() AS d
    WHERE d.classid = 'pg_class'::regclass AND d.command_tag = 'ALTER TABLE';
    -- (The registered table's own are register_media_type's.)
    FOR r IN SELECT m.media_type, x.rel
             FROM popularity.media_types AS m CROSS JOIN LATERAL popularity._media_tree(m.media_table) AS x(rel)
             WHERE m.media_type = ANY (touched) AND x.rel <> m.media_table
               AND NOT EXISTS (SELECT FROM pg_trigger AS g
                               WHERE g.tgrelid = x.rel AND g.tgname = 'zz_popularity_stats_insert') LOOP
        PERFORM popularity._install_stats_triggers_on(r.media_type, r.rel);
    END LOOP;
    IF moved AND touched IS NOT NULL THEN
        INSERT INTO popularity.stats_marks (media_type, provider, reason)
        SELECT t, NULL::text, 'partition attached or detached' FROM unnest(touched) AS t;
        INSERT INTO popularity.rescore_marks (media_type, reason)
        SELECT t, 'partition attached or detached' FROM unnest(touched) AS t;
    END IF;
    -- The counts triggers of these media types on relations no longer in their tree: the partitions
    -- a DETACH detached (and their own partitions). (A trigger's argument is its media type.)
    IF moved THEN
        FOR r IN SELECT g.tgrelid::regclass AS rel
                 FROM popularity.media_types AS m
                 JOIN pg_trigger AS g ON g.tgname = 'zz_popularity_stats_insert'
                                     AND g.tgfoid = 'popularity._stats_trigger()'::regprocedure
                                     AND g.tgnargs = 1
                                     AND g.tgargs = convert_to(m.media_type, current_setting('server_encoding')) || '\x00'::bytea
                 WHERE m.media_type = ANY (touched)
                   AND g.tgrelid NOT IN (SELECT t.rel FROM popularity._media_tree(m.media_table) AS t(rel)) LOOP
            PERFORM popularity._remove_stats_triggers_on(r.rel);
        END LOOP;
    END IF;
END $$;
COMMENT ON FUNCTION popularity._partitions_changed() IS
    'Event trigger: the counts triggers on partitions created or attached under a registered media '
    'table, none on one detached, and the media type''s counts marked for reconciliation and its '
    'providers for a rescore when rows joined or left it (ATTACH / DETACH PARTITION)';
