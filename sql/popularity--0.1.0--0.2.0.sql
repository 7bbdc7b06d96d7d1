-- popularity 0.1.0 -> 0.2.0. Every change the 0.2.0 fragments (sql/install/) make to 0.1.0 is
-- repeated here; test/scripts/upgrade.sh checks that an upgraded install equals a fresh 0.2.0 one.
\echo Use "ALTER EXTENSION popularity UPDATE TO '0.2.0'" to load this file. \quit

-- relations: the refresh queue trusts no caller-written row; workers notice a table rewritten under
-- a run; refresh_constants reads a partitioned table through the executor.
ALTER TABLE popularity.refresh_runs ADD COLUMN relfilenode oid;
-- Workers act on a run with the rights of the role that queued it, so the queue cannot be trusted
-- for who and what: whatever an INSERT says, a run is requested by the inserting role, for the
-- registered table of its media type, which that role may read and update; the identity of a run
-- never changes afterwards.
CREATE FUNCTION popularity._refresh_run_guard()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_RELID <> 'popularity.refresh_runs'::regclass OR TG_LEVEL <> 'ROW' OR TG_WHEN <> 'BEFORE' THEN
        RAISE EXCEPTION 'popularity._refresh_run_guard() guards popularity.refresh_runs only'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'INSERT' THEN
        NEW.requested_by := (SELECT r.oid FROM pg_roles AS r WHERE r.rolname = current_user);
        NEW.media_table := (SELECT m.media_table FROM popularity.media_types AS m
                            WHERE m.media_type = NEW.media_type);
        IF NEW.media_table IS NULL THEN
            RAISE EXCEPTION 'media type "%" is not registered', NEW.media_type
                USING ERRCODE = 'undefined_object',
                      HINT = 'Register it with popularity.register_media_type().';
        END IF;
        IF NOT (has_table_privilege(NEW.media_table, 'SELECT') AND has_table_privilege(NEW.media_table, 'UPDATE')) THEN
            RAISE EXCEPTION 'permission denied to refresh %', NEW.media_table
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'A refresh runs with the rights of the role that calls it: it needs SELECT and UPDATE on the media table.';
        END IF;
        NEW.relfilenode := pg_relation_filenode(NEW.media_table);
    ELSIF (NEW.run_id, NEW.media_type, NEW.media_table, NEW.key_column, NEW.providers, NEW.requested_by,
           NEW.relfilenode)
          IS DISTINCT FROM (OLD.run_id, OLD.media_type, OLD.media_table, OLD.key_column, OLD.providers,
                            OLD.requested_by, OLD.relfilenode) THEN
        RAISE EXCEPTION 'what a refresh run is (its media type, table, key, providers and requesting role) cannot be changed'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Cancel the run with popularity.cancel_refresh() and start another.';
    END IF;
    RETURN NEW;
END $$;
COMMENT ON FUNCTION popularity._refresh_run_guard() IS
    'Trigger on popularity.refresh_runs: a run is requested by the inserting role, for the registered '
    'table of its media type, which that role may read and update; its identity never changes';
CREATE TRIGGER refresh_run_guard BEFORE INSERT OR UPDATE ON popularity.refresh_runs
    FOR EACH ROW EXECUTE FUNCTION popularity._refresh_run_guard();

CREATE OR REPLACE FUNCTION popularity.refresh_constants(media_type text, providers text[] DEFAULT NULL)
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
        IF (SELECT c.relrowsecurity OR c.relkind <> 'r' FROM pg_class AS c WHERE c.oid = tbl) THEN
            -- Row-level security (the executor applies the policies), or a partitioned table (the
            -- executor reads every partition; the C++ scan reads one ordinary table).
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

-- owners: registering and configuring a media type is for its table's owner; the SECURITY DEFINER
-- trigger functions serve only their own tables; dropping a table unregisters it whoever drops it.
CREATE OR REPLACE FUNCTION popularity._require_owner(media_table regclass, action text)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT pg_has_role((SELECT c.relowner FROM pg_class AS c WHERE c.oid = media_table), 'USAGE') THEN
        RAISE EXCEPTION 'permission denied to % for table %', action, media_table
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Only the table''s owner (or a member of the owning role) registers and configures its media type.';
    END IF;
END $$;
COMMENT ON FUNCTION popularity._require_owner(regclass, text) IS
    'Raises 42501 unless the current role owns the media table (or is a member of its owner)';
CREATE OR REPLACE FUNCTION popularity.register_media_type(
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
    PERFORM popularity._require_owner(media_table, 'register a media type');
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
CREATE OR REPLACE FUNCTION popularity.unregister_media_type(media_type text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tbl regclass := popularity._media_table(media_type);
BEGIN
    PERFORM popularity._require_owner(tbl, 'unregister media type "' || media_type || '"');
    IF EXISTS (SELECT FROM pg_class WHERE oid = tbl) THEN
        EXECUTE format('DROP TRIGGER IF EXISTS zz_popularity_score ON %s', tbl);
        PERFORM popularity._remove_stats_triggers(tbl);
    END IF;
    DELETE FROM popularity.media_types AS m WHERE m.media_type = $1; -- metrics go with it (cascade)
END $$;
COMMENT ON FUNCTION popularity.unregister_media_type(text) IS
    'Removes a media type''s trigger, registration and metrics; the table and its data (including '
    'standardized_popularity) are left alone';
CREATE OR REPLACE FUNCTION popularity.set_metric(
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
CREATE OR REPLACE FUNCTION popularity._forget_dropped_tables()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM popularity.media_types AS m
    WHERE m.media_table::oid IN (SELECT d.objid FROM pg_event_trigger_dropped_objects() AS d
                                 WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0);
END $$;
COMMENT ON FUNCTION popularity._forget_dropped_tables() IS
    'Event trigger: unregisters the media types of dropped tables';
CREATE OR REPLACE FUNCTION popularity._stats_metric_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    key_media_type text := CASE TG_OP WHEN 'DELETE' THEN OLD.media_type ELSE NEW.media_type END;
    key_provider text := CASE TG_OP WHEN 'DELETE' THEN OLD.provider ELSE NEW.provider END;
BEGIN
    -- It runs with its owner's rights: only for the table it was made for.
    IF TG_RELID <> 'popularity.metrics'::regclass OR TG_LEVEL <> 'ROW' OR TG_WHEN <> 'AFTER' THEN
        RAISE EXCEPTION 'popularity._stats_metric_changed() serves popularity.metrics only'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
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
CREATE OR REPLACE FUNCTION popularity._stats_media_type_removed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- It runs with its owner's rights: only for the table it was made for.
    IF TG_RELID <> 'popularity.media_types'::regclass OR TG_LEVEL <> 'ROW' OR TG_WHEN <> 'AFTER'
       OR TG_OP <> 'DELETE' THEN
        RAISE EXCEPTION 'popularity._stats_media_type_removed() serves popularity.media_types only'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    DELETE FROM popularity.stats_journal AS j WHERE j.media_type = OLD.media_type;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION popularity._stats_media_type_removed() IS
    'Trigger on popularity.media_types: removes the unfolded count deltas of an unregistered media type';

-- roles (keep this block last: its REVOKE covers every internal function created above).
-- Policies -----------------------------------------------------------------------------------------

ALTER TABLE popularity.media_types ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.media_types FOR SELECT
    USING (pg_catalog.has_table_privilege(media_table, 'SELECT'));
CREATE POLICY owners ON popularity.media_types FOR ALL
    USING (pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = media_table), 'USAGE'))
    WITH CHECK (pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = media_table), 'USAGE'));

ALTER TABLE popularity.metrics ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.metrics FOR SELECT
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = metrics.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'SELECT')));
CREATE POLICY owners ON popularity.metrics FOR ALL
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = metrics.media_type
                   AND pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = m.media_table), 'USAGE')))
    WITH CHECK (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = metrics.media_type
                        AND pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = m.media_table), 'USAGE')));
-- refresh_constants, run by a role that may update the table, writes the computed columns
-- (popularity._metrics_guard keeps the configured ones to the owner).
CREATE POLICY refreshers ON popularity.metrics FOR UPDATE
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = metrics.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'UPDATE')))
    WITH CHECK (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = metrics.media_type
                        AND pg_catalog.has_table_privilege(m.media_table, 'UPDATE')));

CREATE FUNCTION popularity._metrics_guard()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_RELID <> 'popularity.metrics'::regclass OR TG_LEVEL <> 'ROW' OR TG_WHEN <> 'BEFORE' THEN
        RAISE EXCEPTION 'popularity._metrics_guard() guards popularity.metrics only'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF (NEW.media_type, NEW.provider, NEW.metric, NEW.percentile)
           IS DISTINCT FROM (OLD.media_type, OLD.provider, OLD.metric, OLD.percentile)
       AND NOT pg_has_role((SELECT c.relowner FROM popularity.media_types AS m
                            JOIN pg_class AS c ON c.oid = m.media_table
                            WHERE m.media_type = OLD.media_type), 'USAGE') THEN
        RAISE EXCEPTION 'only the owner of media type "%"''s table may change its metrics', OLD.media_type
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'A role that may update the table may refresh the constants, not choose the metric or percentile.';
    END IF;
    RETURN NEW;
END $$;
COMMENT ON FUNCTION popularity._metrics_guard() IS
    'Trigger on popularity.metrics: the metric and percentile of a provider are changed only by the '
    'owner of the media table';
CREATE TRIGGER metrics_guard BEFORE UPDATE ON popularity.metrics
    FOR EACH ROW EXECUTE FUNCTION popularity._metrics_guard();

ALTER TABLE popularity.tag_rules ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.tag_rules FOR SELECT
    USING (media_type IS NULL
           OR EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = tag_rules.media_type
                      AND pg_catalog.has_table_privilege(m.media_table, 'SELECT')));
CREATE POLICY owners ON popularity.tag_rules FOR ALL
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = tag_rules.media_type
                   AND pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = m.media_table), 'USAGE')))
    WITH CHECK (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = tag_rules.media_type
                        AND pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = m.media_table), 'USAGE')));

ALTER TABLE popularity.tag_filter_runs ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.tag_filter_runs FOR SELECT
    USING (pg_catalog.has_table_privilege(media_table, 'SELECT'));
-- A dry run only reads the table.
CREATE POLICY writers ON popularity.tag_filter_runs FOR ALL
    USING (pg_catalog.has_table_privilege(media_table, 'SELECT')
           AND (dry_run OR pg_catalog.has_table_privilege(media_table, 'UPDATE')))
    WITH CHECK (pg_catalog.has_table_privilege(media_table, 'SELECT')
                AND (dry_run OR pg_catalog.has_table_privilege(media_table, 'UPDATE')));

ALTER TABLE popularity.refresh_runs ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.refresh_runs FOR SELECT
    USING (pg_catalog.has_table_privilege(media_table, 'SELECT'));
CREATE POLICY writers ON popularity.refresh_runs FOR ALL
    USING (pg_catalog.has_table_privilege(media_table, 'UPDATE'))
    WITH CHECK (pg_catalog.has_table_privilege(media_table, 'UPDATE'));

ALTER TABLE popularity.refresh_tasks ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.refresh_tasks FOR SELECT
    USING (EXISTS (SELECT FROM popularity.refresh_runs AS r WHERE r.run_id = refresh_tasks.run_id));
CREATE POLICY writers ON popularity.refresh_tasks FOR ALL
    USING (EXISTS (SELECT FROM popularity.refresh_runs AS r WHERE r.run_id = refresh_tasks.run_id
                   AND pg_catalog.has_table_privilege(r.media_table, 'UPDATE')))
    WITH CHECK (EXISTS (SELECT FROM popularity.refresh_runs AS r WHERE r.run_id = refresh_tasks.run_id
                        AND pg_catalog.has_table_privilege(r.media_table, 'UPDATE')));

ALTER TABLE popularity.refresh_progress ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.refresh_progress FOR SELECT
    USING (EXISTS (SELECT FROM popularity.refresh_tasks AS t WHERE t.task_id = refresh_progress.task_id));
CREATE POLICY writers ON popularity.refresh_progress FOR ALL
    USING (EXISTS (SELECT FROM popularity.refresh_tasks AS t JOIN popularity.refresh_runs AS r USING (run_id)
                   WHERE t.task_id = refresh_progress.task_id AND pg_catalog.has_table_privilege(r.media_table, 'UPDATE')))
    WITH CHECK (EXISTS (SELECT FROM popularity.refresh_tasks AS t JOIN popularity.refresh_runs AS r USING (run_id)
                        WHERE t.task_id = refresh_progress.task_id AND pg_catalog.has_table_privilege(r.media_table, 'UPDATE')));

ALTER TABLE popularity.refresh_skipped ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.refresh_skipped FOR SELECT
    USING (EXISTS (SELECT FROM popularity.refresh_tasks AS t WHERE t.task_id = refresh_skipped.task_id));
CREATE POLICY writers ON popularity.refresh_skipped FOR ALL
    USING (EXISTS (SELECT FROM popularity.refresh_tasks AS t JOIN popularity.refresh_runs AS r USING (run_id)
                   WHERE t.task_id = refresh_skipped.task_id AND pg_catalog.has_table_privilege(r.media_table, 'UPDATE')))
    WITH CHECK (EXISTS (SELECT FROM popularity.refresh_tasks AS t JOIN popularity.refresh_runs AS r USING (run_id)
                        WHERE t.task_id = refresh_skipped.task_id AND pg_catalog.has_table_privilege(r.media_table, 'UPDATE')));
GRANT SELECT ON popularity.refresh_skipped TO PUBLIC;

ALTER TABLE popularity.stats_counts ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.stats_counts FOR SELECT
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_counts.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'SELECT')));
CREATE POLICY writers ON popularity.stats_counts FOR ALL
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_counts.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'UPDATE')))
    WITH CHECK (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_counts.media_type
                        AND pg_catalog.has_table_privilege(m.media_table, 'UPDATE')));

ALTER TABLE popularity.stats_journal ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.stats_journal FOR SELECT
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_journal.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'SELECT')));
CREATE POLICY writers ON popularity.stats_journal FOR ALL
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_journal.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'UPDATE')))
    WITH CHECK (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_journal.media_type
                        AND pg_catalog.has_table_privilege(m.media_table, 'UPDATE')));

ALTER TABLE popularity.stats_marks ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.stats_marks FOR SELECT
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_marks.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'SELECT')));
CREATE POLICY writers ON popularity.stats_marks FOR ALL
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_marks.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'UPDATE')))
    WITH CHECK (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_marks.media_type
                        AND pg_catalog.has_table_privilege(m.media_table, 'UPDATE')));

ALTER TABLE popularity.stats_corrections ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.stats_corrections FOR SELECT
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_corrections.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'SELECT')));
CREATE POLICY writers ON popularity.stats_corrections FOR ALL
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_corrections.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'UPDATE')))
    WITH CHECK (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_corrections.media_type
                        AND pg_catalog.has_table_privilege(m.media_table, 'UPDATE')));

-- The views read their tables with the reader's rights, so the policies filter them too.
ALTER VIEW popularity.refresh_status SET (security_invoker = true);
ALTER VIEW popularity.provider_stats SET (security_invoker = true);
ALTER VIEW popularity.effective_tag_rules SET (security_invoker = true);

-- Internal functions ----------------------------------------------------------------------------

-- Internal (_-prefixed) functions, trigger functions included, are not for PUBLIC: the operator
-- rights grant them. (Triggers fire whatever the rights of the role whose statement fires them;
-- EXECUTE is checked when a trigger is created.)
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc AS p
             WHERE p.pronamespace = 'popularity'::regnamespace AND p.proname LIKE '\_%' AND p.prokind IN ('f', 'p')
             ORDER BY 1 LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END $$;

-- Operator rights -----------------------------------------------------------------------------------

CREATE FUNCTION popularity.grant_operator(role regrole)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    f regprocedure;
    t regclass;
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'role must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT pg_has_role((SELECT n.nspowner FROM pg_namespace AS n WHERE n.nspname = 'popularity'), 'USAGE') THEN
        RAISE EXCEPTION 'only the owner of the popularity extension may grant operator rights'
            USING ERRCODE = 'insufficient_privilege', HINT = 'Ask a superuser to run it.';
    END IF;
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc AS p
             WHERE p.pronamespace = 'popularity'::regnamespace AND p.proname LIKE '\_%' AND p.prokind IN ('f', 'p')
               AND p.proname NOT LIKE '\_guard\_%' LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s', f, role);
    END LOOP;
    FOR t IN SELECT c.oid::regclass FROM pg_class AS c
             WHERE c.relnamespace = 'popularity'::regnamespace AND c.relkind = 'r' AND c.relrowsecurity LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO %s', t, role);
    END LOOP;
    FOR t IN SELECT c.oid::regclass FROM pg_class AS c
             WHERE c.relnamespace = 'popularity'::regnamespace AND c.relkind = 'S' LOOP
        EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s TO %s', t, role);
    END LOOP;
END $$;
COMMENT ON FUNCTION popularity.grant_operator(regrole) IS
    'Lets a role use the extension beyond reading (register, configure, refresh, filter tags, counts): '
    'what it may do with each media type still follows from its rights on the media table';
REVOKE ALL ON FUNCTION popularity.grant_operator(regrole) FROM PUBLIC;

CREATE FUNCTION popularity.revoke_operator(role regrole)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    f regprocedure;
    t regclass;
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'role must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT pg_has_role((SELECT n.nspowner FROM pg_namespace AS n WHERE n.nspname = 'popularity'), 'USAGE') THEN
        RAISE EXCEPTION 'only the owner of the popularity extension may revoke operator rights'
            USING ERRCODE = 'insufficient_privilege', HINT = 'Ask a superuser to run it.';
    END IF;
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc AS p
             WHERE p.pronamespace = 'popularity'::regnamespace AND p.proname LIKE '\_%' AND p.prokind IN ('f', 'p') LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM %s', f, role);
    END LOOP;
    FOR t IN SELECT c.oid::regclass FROM pg_class AS c
             WHERE c.relnamespace = 'popularity'::regnamespace AND c.relkind = 'r' AND c.relrowsecurity LOOP
        EXECUTE format('REVOKE ALL ON %s FROM %s', t, role);
    END LOOP;
    FOR t IN SELECT c.oid::regclass FROM pg_class AS c
             WHERE c.relnamespace = 'popularity'::regnamespace AND c.relkind = 'S' LOOP
        EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM %s', t, role);
    END LOOP;
END $$;
COMMENT ON FUNCTION popularity.revoke_operator(regrole) IS
    'Takes back what popularity.grant_operator gave (reading stays open to every role)';
REVOKE ALL ON FUNCTION popularity.revoke_operator(regrole) FROM PUBLIC;
