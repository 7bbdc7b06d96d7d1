-- Citus: media tables distributed over worker nodes (issue 14, item 2; docs/scale-out.md).
--
-- What runs where. The coordinator holds the configuration every node scores with: the registry,
-- the metrics and constants, the tag rules. CREATE EXTENSION popularity on the coordinator is
-- propagated by Citus to every node, so each node has its own (local) configuration tables; they
-- are not made Citus reference tables (Citus refuses: "cannot distribute relation "media_types"
-- because it has triggers", and row-level security policies on them: "cannot create policy"; their
-- regclass columns would also name the coordinator's OIDs). Instead the coordinator copies a media
-- type's configuration to every worker whenever it changes (a deferred trigger at commit of the
-- coordinator's transaction, through run_command_on_workers), and before every run it dispatches.
-- The ingestion and counts triggers run on the shards, on the worker nodes, and read that copy.
--
-- Every routine here first checks at run time that the citus extension is installed in this
-- database: without Citus none of them does anything. (Before 70_roles.sql, whose REVOKE from
-- PUBLIC covers every internal routine created before it.)

CREATE FUNCTION popularity._citus_present()
RETURNS boolean
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT EXISTS (SELECT FROM pg_catalog.pg_extension AS e WHERE e.extname = 'citus') $$;
COMMENT ON FUNCTION popularity._citus_present() IS
    'True when the citus extension is installed in this database (internal)';

-- A hash-distributed Citus table (reference and Citus-local tables are single-placement copies
-- that the extension treats like ordinary tables on the node that runs it).
CREATE FUNCTION popularity._citus_distributed(media_table regclass)
RETURNS boolean
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    result boolean;
BEGIN
    IF NOT popularity._citus_present() THEN
        RETURN false;
    END IF;
    -- Dynamic: pg_dist_partition exists only with Citus.
    EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition AS p'
            '               WHERE p.logicalrelid = $1 AND p.partmethod = ''h'')'
        INTO result USING media_table;
    RETURN result;
END $$;
COMMENT ON FUNCTION popularity._citus_distributed(regclass) IS
    'True when the table is a hash-distributed Citus table (false without Citus) (internal)';

CREATE FUNCTION popularity._citus_coordinator()
RETURNS boolean
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    result boolean;
BEGIN
    IF NOT popularity._citus_present() THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT pg_catalog.citus_is_coordinator()' INTO result;
    RETURN coalesce(result, false);
END $$;
COMMENT ON FUNCTION popularity._citus_coordinator() IS
    'True on a Citus coordinator (false without Citus) (internal)';

-- The shards of a distributed table placed on this node, as relations (none on the coordinator
-- unless it holds shards). These are what a worker node's triggers, counts and jobs work on.
CREATE FUNCTION popularity._citus_local_shards(media_table regclass)
RETURNS SETOF regclass
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT popularity._citus_distributed(media_table) THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE
        'SELECT pg_catalog.shard_name(s.logicalrelid, s.shardid, false)::pg_catalog.regclass'
        ' FROM pg_catalog.pg_dist_shard AS s'
        ' JOIN pg_catalog.pg_dist_placement AS p ON p.shardid = s.shardid'
        ' WHERE s.logicalrelid = $1'
        '   AND p.groupid = (SELECT g.groupid FROM pg_catalog.pg_dist_local_group AS g)'
        ' ORDER BY s.shardid'
        USING media_table;
END $$;
COMMENT ON FUNCTION popularity._citus_local_shards(regclass) IS
    'The shards of a Citus distributed table placed on this node (none without Citus) (internal)';

-- refresh_constants on a Citus distributed table, on the coordinator: what
-- popularity._metric_percentiles gives (per provider, popularity_percentile of its metric, NULL
-- without values, aligned with the input arrays), by one distributed query grouped by provider, in
-- which Citus reads every shard on every worker. (Citus does not combine partial states of an
-- aggregate whose state type is internal, as popularity_percentile's: the workers send each
-- row's value, which is what a partial state of an exact percentile holds anyway.) The metric and
-- percentile of each provider are literals of the query, so that it reads the distributed table
-- alone.
CREATE FUNCTION popularity._citus_metric_percentiles(media_table regclass, providers text[], metrics text[],
                                                     percentiles double precision[])
RETURNS double precision[]
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    metric_case text;
    percentile_case text;
    result double precision[];
BEGIN
    IF cardinality(providers) IS NULL OR cardinality(providers) = 0 THEN
        RETURN '{}';
    END IF;
    SELECT ' CASE t.provider::text' || string_agg(format(' WHEN %L THEN %L::text', u.p, u.m), '') || ' END',
           ' CASE t.provider::text' || string_agg(format(' WHEN %L THEN %L::float8', u.p, u.pc::text), '') || ' END'
    INTO metric_case, percentile_case
    FROM unnest(providers, metrics, percentiles) AS u(p, m, pc);
    EXECUTE format('SELECT array_agg(r.pv ORDER BY u.i)'
                   ' FROM unnest($1) WITH ORDINALITY AS u(provider, i)'
                   ' LEFT JOIN (SELECT t.provider::text AS provider,'
                   '                   @extschema@.popularity_percentile('
                   '                       @extschema@.popularity_metric_value(t.meta_data,%s),%s) AS pv'
                   '            FROM %s AS t WHERE t.provider::text = ANY ($1)'
                   '            GROUP BY t.provider::text) AS r ON r.provider = u.provider',
                   metric_case, percentile_case, media_table)
        INTO result USING providers;
    RETURN result;
END $$;
COMMENT ON FUNCTION popularity._citus_metric_percentiles(regclass, text[], text[], double precision[]) IS
    'popularity._metric_percentiles over a Citus distributed table: one distributed query over every shard (internal)';

-- Registering (or unregistering) a distributed table creates (drops) triggers on it, which Citus
-- propagates to every shard only with citus.enable_unsafe_triggers on ("triggers are not supported
-- on distributed tables" otherwise). "Unsafe" is Citus's warning that a trigger on a shard sees only
-- its node; ours are written for that: the score trigger reads the row alone, the counts triggers
-- append to their node's journal. Sets it for the rest of the caller's transaction; returns the
-- previous value for popularity._citus_triggers_done to restore (NULL: nothing was changed).
CREATE FUNCTION popularity._citus_allow_triggers(media_table regclass)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    previous text;
BEGIN
    IF NOT popularity._citus_distributed(media_table) THEN
        RETURN NULL;
    END IF;
    previous := current_setting('citus.enable_unsafe_triggers');
    PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
    RETURN previous;
END $$;
COMMENT ON FUNCTION popularity._citus_allow_triggers(regclass) IS
    'Lets triggers be created on a Citus distributed table (and its shards) in this transaction (internal)';

CREATE FUNCTION popularity._citus_triggers_done(previous text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF previous IS NOT NULL THEN
        PERFORM set_config('citus.enable_unsafe_triggers', previous, true);
    END IF;
END $$;
COMMENT ON FUNCTION popularity._citus_triggers_done(text) IS
    'Restores citus.enable_unsafe_triggers after popularity._citus_allow_triggers (internal)';

-- A media type's configuration as the coordinator holds it: its registry row (the table by name,
-- which each node resolves to its own relation), its metrics, its tag rules and the global ones.
-- NULL when the media type is not registered.
CREATE FUNCTION popularity._citus_config(media_type text)
RETURNS jsonb
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object(
               'table', (SELECT format('%I.%I', n.nspname, c.relname)
                         FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
                         WHERE c.oid = m.media_table),
               'media_type', to_jsonb(m) - 'media_table',
               'metrics', coalesce((SELECT jsonb_agg(to_jsonb(x) - 'constant_version' ORDER BY x.provider)
                                    FROM popularity.metrics AS x WHERE x.media_type = m.media_type), '[]'),
               'tag_rules', coalesce((SELECT jsonb_agg(to_jsonb(r))
                                      FROM popularity.tag_rules AS r
                                      WHERE r.media_type = m.media_type OR r.media_type IS NULL), '[]'),
               -- Whether the rows present at registration still wait to be counted.
               'counts_pending', EXISTS (SELECT FROM popularity.stats_marks AS k
                                         WHERE k.media_type = m.media_type AND k.provider IS NULL
                                           AND k.reason = 'registered'))
    FROM popularity.media_types AS m WHERE m.media_type = $1
$$;
COMMENT ON FUNCTION popularity._citus_config(text) IS
    'A media type''s configuration (registry row, metrics, tag rules) as JSON, for the workers (internal)';

-- On a worker: makes its copy of a media type's configuration equal the coordinator's (NULL: the
-- media type is no longer registered). Writes only what differs, so unchanged metrics keep their
-- constant_version (a run in progress on this node then goes on). A media type registered while
-- its table was empty starts with exact counts here too. It touches nothing but the configuration.
CREATE FUNCTION popularity._citus_apply_config(media_type text, config jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tbl regclass;
    added boolean;
BEGIN
    IF NOT popularity._citus_present() OR popularity._citus_coordinator() THEN
        RAISE EXCEPTION 'popularity._citus_apply_config runs on Citus worker nodes only'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF config IS NULL THEN
        DELETE FROM popularity.media_types AS m WHERE m.media_type = $1;
        RETURN;
    END IF;
    tbl := (config->>'table')::regclass;
    added := NOT EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = $1);
    INSERT INTO popularity.media_types AS m (media_type, media_table, filter_tags_at_ingestion, registered_at)
    SELECT $1, tbl, r.filter_tags_at_ingestion, r.registered_at
    FROM jsonb_populate_record(NULL::popularity.media_types, config->'media_type') AS r
    ON CONFLICT ON CONSTRAINT media_types_pkey DO UPDATE
        SET media_table = excluded.media_table, filter_tags_at_ingestion = excluded.filter_tags_at_ingestion,
            registered_at = excluded.registered_at
        WHERE (m.media_table, m.filter_tags_at_ingestion, m.registered_at)
              IS DISTINCT FROM (excluded.media_table, excluded.filter_tags_at_ingestion, excluded.registered_at);
    -- The coordinator found the table empty when it registered it (it cleared its own mark, with
    -- every writer of the table waited for): so are this node's shards. (Never looked at here: the
    -- coordinator's transaction that registered the table may still hold its shards' locks.)
    IF added AND NOT (config->>'counts_pending')::boolean THEN
        DELETE FROM popularity.stats_marks AS k
        WHERE k.media_type = $1 AND k.provider IS NULL AND k.reason = 'registered';
    END IF;

    DELETE FROM popularity.metrics AS x
    WHERE x.media_type = $1
      AND x.provider NOT IN (SELECT r.provider FROM jsonb_to_recordset(config->'metrics') AS r(provider text));
    INSERT INTO popularity.metrics AS x (media_type, provider, metric, percentile, val, constant, computed_at,
                                         constant_changed_at, created_at, last_error)
    SELECT $1, r.provider, r.metric, r.percentile, r.val, r.constant, r.computed_at, r.constant_changed_at,
           r.created_at, r.last_error
    FROM jsonb_populate_recordset(NULL::popularity.metrics, config->'metrics') AS r
    ON CONFLICT ON CONSTRAINT metrics_pkey DO UPDATE
        SET metric = excluded.metric, percentile = excluded.percentile, val = excluded.val,
            constant = excluded.constant, computed_at = excluded.computed_at,
            constant_changed_at = excluded.constant_changed_at, created_at = excluded.created_at,
            last_error = excluded.last_error
        WHERE (x.metric, x.percentile, x.val, x.constant, x.computed_at, x.constant_changed_at, x.created_at,
               x.last_error)
              IS DISTINCT FROM
              (excluded.metric, excluded.percentile, excluded.val, excluded.constant, excluded.computed_at,
               excluded.constant_changed_at, excluded.created_at, excluded.last_error);

    DELETE FROM popularity.tag_rules AS t
    WHERE (t.media_type = $1 OR t.media_type IS NULL)
      AND NOT EXISTS (SELECT FROM jsonb_populate_recordset(NULL::popularity.tag_rules, config->'tag_rules') AS r
                      WHERE r.media_type IS NOT DISTINCT FROM t.media_type);
    INSERT INTO popularity.tag_rules AS t
    SELECT r.* FROM jsonb_populate_recordset(NULL::popularity.tag_rules, config->'tag_rules') AS r
    ON CONFLICT ON CONSTRAINT tag_rules_media_type_key DO UPDATE
        SET min_accuracy = excluded.min_accuracy, filtered_providers = excluded.filtered_providers,
            exact_denylist = excluded.exact_denylist, substring_denylist = excluded.substring_denylist,
            machine_labels = excluded.machine_labels
        WHERE (t.min_accuracy, t.filtered_providers, t.exact_denylist, t.substring_denylist, t.machine_labels)
              IS DISTINCT FROM
              (excluded.min_accuracy, excluded.filtered_providers, excluded.exact_denylist,
               excluded.substring_denylist, excluded.machine_labels);
END $$;
COMMENT ON FUNCTION popularity._citus_apply_config(text, jsonb) IS
    'On a Citus worker: makes its copy of a media type''s configuration equal the coordinator''s (internal)';

-- On the coordinator: copies a media type's configuration to every worker (run_command_on_workers:
-- one connection per worker, each committing on its own, outside the caller's transaction).
-- Raises when a worker fails. A no-op without Citus, on a worker, and for a media type whose table
-- is not distributed.
CREATE FUNCTION popularity._citus_push_config(media_type text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tbl regclass;
    failed text;
BEGIN
    IF NOT popularity._citus_coordinator() THEN
        RETURN;
    END IF;
    SELECT m.media_table INTO tbl FROM popularity.media_types AS m WHERE m.media_type = $1;
    -- Unregistered: remove it from workers that have it (they are the ones with a distributed
    -- table registered under that name).
    IF tbl IS NOT NULL AND NOT popularity._citus_distributed(tbl) THEN
        RETURN;
    END IF;
    EXECUTE 'SELECT string_agg(format(''%s:%s: %s'', w.nodename, w.nodeport, w.result), ''; '')'
            ' FROM pg_catalog.run_command_on_workers($1) AS w WHERE NOT w.success'
        INTO failed
        USING format('SELECT popularity._citus_apply_config(%L, %L::jsonb)', $1, popularity._citus_config($1));
    IF failed IS NOT NULL THEN
        RAISE EXCEPTION 'could not copy the configuration of media type "%" to every Citus worker', $1
            USING ERRCODE = 'connection_failure', DETAIL = failed;
    END IF;
END $$;
COMMENT ON FUNCTION popularity._citus_push_config(text) IS
    'On a Citus coordinator: copies a media type''s configuration to every worker node (internal)';

-- The deferred trigger on the configuration tables: at commit of a transaction that changed a media
-- type's configuration on the coordinator, the workers get it (once per media type and
-- transaction; a change of the global tag rules goes to every registered media type).
CREATE FUNCTION popularity._citus_config_changed()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    changed text;
    done text;
BEGIN
    IF TG_RELID NOT IN ('popularity.media_types'::regclass, 'popularity.metrics'::regclass,
                        'popularity.tag_rules'::regclass) OR TG_LEVEL <> 'ROW' OR TG_WHEN <> 'AFTER' THEN
        RAISE EXCEPTION 'popularity._citus_config_changed() serves the configuration tables only'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT popularity._citus_coordinator() THEN
        RETURN NULL;
    END IF;
    -- Pushed already in this transaction (the push sends the state at commit, all rows included).
    done := coalesce(current_setting('popularity_citus.pushed', true), '');
    FOR changed IN
        SELECT DISTINCT t FROM (SELECT CASE WHEN TG_OP = 'DELETE' THEN OLD.media_type ELSE NEW.media_type END
                                UNION ALL SELECT CASE WHEN TG_OP = 'UPDATE' THEN OLD.media_type END) AS c(t)
        WHERE t IS NOT NULL
        UNION
        SELECT m.media_type FROM popularity.media_types AS m
        WHERE TG_RELID = 'popularity.tag_rules'::regclass
          AND (CASE WHEN TG_OP = 'DELETE' THEN OLD.media_type ELSE NEW.media_type END) IS NULL
    LOOP
        CONTINUE WHEN done LIKE '%' || txid_current() || ':' || md5(changed) || '%';
        PERFORM popularity._citus_push_config(changed);
        done := done || txid_current() || ':' || md5(changed) || ' ';
        PERFORM set_config('popularity_citus.pushed', done, true);
    END LOOP;
    RETURN NULL;
END $$;
COMMENT ON FUNCTION popularity._citus_config_changed() IS
    'Deferred trigger on the configuration tables: on a Citus coordinator, copies the changed media types'' '
    'configuration to the workers at commit (internal)';
CREATE CONSTRAINT TRIGGER citus_config_changed AFTER INSERT OR UPDATE OR DELETE ON popularity.media_types
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION popularity._citus_config_changed();
CREATE CONSTRAINT TRIGGER citus_config_changed AFTER INSERT OR UPDATE OR DELETE ON popularity.metrics
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION popularity._citus_config_changed();
CREATE CONSTRAINT TRIGGER citus_config_changed AFTER INSERT OR UPDATE OR DELETE ON popularity.tag_rules
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION popularity._citus_config_changed();
