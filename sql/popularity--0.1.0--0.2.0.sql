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
