-- Citus: media tables distributed over worker nodes (issue 14, item 2; README, "Citus").
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

-- A hash-distributed Citus table: the kind the extension handles as distributed (a reference or
-- Citus-local table is handled as an ordinary table of the node that runs the extension's code).
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
-- unless it holds shards); of a distributed partitioned table, the shards of its leaf partitions.
-- These are what a worker node's jobs and counts work on.
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
        ' WHERE (s.logicalrelid = $1'
        '        OR s.logicalrelid IN (SELECT t.relid FROM pg_catalog.pg_partition_tree($1) AS t WHERE t.isleaf))'
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
        -- (A media type this worker registered for a table of its own is its own business.)
        DELETE FROM popularity.media_types AS m
        WHERE m.media_type = $1 AND popularity._citus_distributed(m.media_table);
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

-- As the extension owner: what it copies is the coordinator's own configuration of the media type
-- (read whole, whatever the caller's row-level security would show), and on the workers it must
-- write rows only the owner may write (global tag rules, other owners' metrics); a caller can only
-- make the workers' copy equal the coordinator's.
-- On the coordinator: copies a media type's configuration to every worker (run_command_on_workers:
-- one connection per worker, each committing on its own, outside the caller's transaction).
-- Raises when a worker fails. A no-op without Citus, on a worker, and for a media type whose table
-- is not distributed.
CREATE FUNCTION popularity._citus_push_config(media_type text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
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
        USING format('SELECT popularity._citus_apply_config(%L::pg_catalog.text, %L::pg_catalog.jsonb)',
                     $1, popularity._citus_config($1));
    IF failed IS NOT NULL THEN
        RAISE EXCEPTION 'could not copy the configuration of media type "%" to every Citus worker', $1
            USING ERRCODE = 'connection_failure', DETAIL = failed;
    END IF;
END $$;
COMMENT ON FUNCTION popularity._citus_push_config(text) IS
    'On a Citus coordinator: copies a media type''s configuration to every worker node (internal)';

-- (As the extension owner, like the push: whoever's transaction changed the configuration, a
-- table owner dropping a registered table included, has it copied.)
-- The deferred trigger on the configuration tables: at commit of a transaction that changed a media
-- type's configuration on the coordinator, the workers get it (once per media type and
-- transaction; a change of the global tag rules goes to every registered media type).
CREATE FUNCTION popularity._citus_config_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
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

-- The extension's schema, quoted: where the CALLs sent to the workers find the procedures.
CREATE FUNCTION popularity._extension_schema()
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT quote_ident(n.nspname) FROM pg_extension AS e JOIN pg_namespace AS n ON n.oid = e.extnamespace
    WHERE e.extname = 'popularity'
$$;
COMMENT ON FUNCTION popularity._extension_schema() IS
    'The schema of the popularity extension, quoted (internal)';

-- 'coordinator' or 'worker' for a Citus distributed table on this node, NULL for any other table
-- (and without Citus): what refresh_popularity, filter_tags and reconcile_stats do with it.
CREATE FUNCTION popularity._citus_node(media_table regclass)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN NOT popularity._citus_distributed(media_table) THEN NULL
                WHEN popularity._citus_coordinator() THEN 'coordinator' ELSE 'worker' END
$$;
COMMENT ON FUNCTION popularity._citus_node(regclass) IS
    'coordinator or worker for a Citus distributed table on this node, NULL otherwise (internal)';

-- Runs one command per worker node, in parallel (Citus's master_run_on_worker: one connection per
-- worker, as the calling role, each command committing on its own). The commands name everything
-- qualified (a worker's session has the role's default search_path). The active workers in
-- (name, port) order when nodes is NULL; a single command is run on every one.
CREATE FUNCTION popularity._citus_on_workers(commands text[], nodes text[] DEFAULT NULL, ports integer[] DEFAULT NULL)
RETURNS TABLE (node_name text, node_port integer, success boolean, result text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT popularity._citus_coordinator() THEN
        RAISE EXCEPTION 'not a Citus coordinator' USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF nodes IS NULL THEN
        EXECUTE 'SELECT array_agg(w.node_name ORDER BY w.node_name, w.node_port),'
                '       array_agg(w.node_port ORDER BY w.node_name, w.node_port)'
                ' FROM pg_catalog.master_get_active_worker_nodes() AS w'
            INTO nodes, ports;
    END IF;
    IF cardinality(nodes) IS NULL THEN
        RETURN;
    END IF;
    IF cardinality(commands) = 1 AND cardinality(nodes) > 1 THEN
        commands := array_fill(commands[1], ARRAY[cardinality(nodes)]);
    END IF;
    RETURN QUERY EXECUTE
        'SELECT r.node_name, r.node_port, r.success, r.result'
        ' FROM pg_catalog.master_run_on_worker($1, $2, $3, true) AS r'
        ' ORDER BY r.node_name, r.node_port'
        USING nodes, ports, commands;
END $$;
COMMENT ON FUNCTION popularity._citus_on_workers(text[], text[], integer[]) IS
    'On a Citus coordinator: runs a command on every worker node (or one command per given node) (internal)';

-- The coordinator's side of refresh_popularity and filter_tags on a distributed table: the workers
-- get the configuration, then `command` (the same CALL with wait => false) queues a run on each
-- worker node over its own shards, which its own background workers walk; with wait, it waits for
-- every one of them, reporting their progress together every popularity.progress_interval. A
-- cancel of the wait cancels the runs on every worker (popularity.citus_cancel_refresh does it
-- for runs started without wait). Raises when a worker could not start its run (the others are
-- cancelled), or when a run failed or was cancelled.
CREATE PROCEDURE popularity._citus_dispatch(job text, media_type text, command text, wait boolean)
LANGUAGE plpgsql
AS $$
DECLARE
    v_job CONSTANT pg_catalog.text := _citus_dispatch.job;
    v_media_type CONSTANT pg_catalog.text := _citus_dispatch.media_type;
    nodes pg_catalog.text[];
    ports integer[];
    run_ids bigint[];
    failed pg_catalog.text;
    states pg_catalog.text[];
    errors pg_catalog.text[];
    every pg_catalog.interval;
    last_report pg_catalog.timestamptz;
    began pg_catalog.timestamptz;
    interrupted boolean := false;
    progress pg_catalog.text;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    PERFORM popularity._citus_push_config(v_media_type);
    -- Start: one run per worker node.
    SELECT array_agg(w.node_name), array_agg(w.node_port),
           string_agg(format('%s:%s: %s', w.node_name, w.node_port, w.result), '; ') FILTER (WHERE NOT w.success)
    INTO nodes, ports, failed
    FROM popularity._citus_on_workers(ARRAY[command]) AS w;
    IF nodes IS NULL THEN
        RAISE EXCEPTION 'no active Citus worker node' USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    -- The run of this job each worker queued (or found in progress).
    -- (The active one: at most one per media type and job; a node that failed has none.)
    SELECT array_agg(CASE WHEN w.success THEN nullif(w.result, '')::bigint END ORDER BY w.node_name, w.node_port)
    INTO run_ids
    FROM popularity._citus_on_workers(ARRAY[format(
             'SELECT coalesce(pg_catalog.max(r.run_id) FILTER (WHERE r.state IN (''queued'', ''running'')),'
             '                pg_catalog.max(r.run_id))'
             ' FROM popularity.refresh_runs AS r'
             ' WHERE r.media_type OPERATOR(pg_catalog.=) %L AND r.job OPERATOR(pg_catalog.=) %L',
             v_media_type, v_job)], nodes, ports) AS w;
    IF failed IS NOT NULL THEN
        PERFORM FROM popularity._citus_on_workers(
            ARRAY(SELECT format('SELECT pg_catalog.count(*) FROM popularity.cancel_refresh(%s::pg_catalog.int8)',
                                coalesce(r::text, 'NULL'))
                  FROM unnest(run_ids) AS r), nodes, ports);
        RAISE EXCEPTION '% of media type "%" could not start on every Citus worker node', v_job, v_media_type
            USING ERRCODE = 'external_routine_exception', DETAIL = failed,
                  HINT = 'The runs that started on the other workers were cancelled.';
    END IF;
    RAISE NOTICE '% of media type "%" queued on % worker nodes: %', v_job, v_media_type, cardinality(nodes),
        (SELECT string_agg(format('%s:%s run %s', n, p, r), ', ') FROM unnest(nodes, ports, run_ids) AS u(n, p, r));
    IF NOT wait THEN
        RETURN;
    END IF;
    began := clock_timestamp();
    last_report := clock_timestamp();
    LOOP
        -- A cancel (or statement timeout) anywhere in a look or the nap cancels the runs.
        BEGIN
            SELECT array_agg(split_part(w.result, '|', 1) ORDER BY w.node_name, w.node_port),
                   array_agg(format('%s:%s run %s: %s', w.node_name, w.node_port, r.run_id,
                                    substr(w.result, strpos(w.result, '|') + 1)) ORDER BY w.node_name, w.node_port)
            INTO states, errors
            FROM popularity._citus_on_workers(
                     ARRAY(SELECT format('SELECT pg_catalog.concat(r.state, ''|'', r.error) FROM popularity.refresh_runs AS r'
                                         ' WHERE r.run_id OPERATOR(pg_catalog.=) %s', r)
                           FROM unnest(run_ids) AS r), nodes, ports) AS w
            JOIN unnest(nodes, ports, run_ids) AS r(node_name, node_port, run_id)
              ON r.node_name = w.node_name AND r.node_port = w.node_port;
            EXIT WHEN NOT EXISTS (SELECT FROM unnest(states) AS s WHERE s IS NULL OR s NOT IN ('succeeded', 'failed', 'cancelled'));
            every := current_setting('popularity.progress_interval')::interval;
            IF every > interval '0' AND clock_timestamp() - last_report >= every THEN
                SELECT string_agg(format('%s:%s %s', w.node_name, w.node_port, w.result), ', ' ORDER BY w.node_name, w.node_port)
                INTO progress
                FROM popularity._citus_on_workers(
                         ARRAY(SELECT format('SELECT pg_catalog.format(''run %%s %%s%%%% of %%s blocks, %%s rows scanned'', %s,'
                                             ' coalesce(pg_catalog.max(s.percent_done), 0), coalesce(pg_catalog.max(s.blocks_total), 0),'
                                             ' coalesce(pg_catalog.sum(s.rows_scanned), 0))'
                                             ' FROM popularity.refresh_status AS s WHERE s.run_id OPERATOR(pg_catalog.=) %s', r, r)
                               FROM unnest(run_ids) AS r), nodes, ports) AS w;
                RAISE NOTICE '% of media type "%" on the workers: %', v_job, v_media_type, progress;
                last_report := clock_timestamp();
            END IF;
            PERFORM pg_sleep(least(0.2, greatest(0.01, extract(epoch FROM clock_timestamp() - began) / 20)));
        EXCEPTION WHEN query_canceled THEN
            interrupted := true;
        END;
        IF interrupted THEN
            PERFORM FROM popularity._citus_on_workers(
                ARRAY(SELECT format('SELECT pg_catalog.count(*) FROM popularity.cancel_refresh(%s::pg_catalog.int8)', r)
                      FROM unnest(run_ids) AS r),
                nodes, ports);
            RAISE EXCEPTION '% of media type "%" cancelled on every worker node: the statement waiting for it was cancelled',
                v_job, v_media_type
                USING ERRCODE = 'query_canceled',
                      DETAIL = (SELECT string_agg(format('%s:%s run %s', n, p, r), ', ') FROM unnest(nodes, ports, run_ids) AS u(n, p, r)),
                      HINT = 'Resume each with CALL popularity.resume_refresh(run_id, wait => true) on its worker node, or start a new one here.';
        END IF;
    END LOOP;
    SELECT string_agg(e, '; ') INTO failed FROM unnest(states, errors) AS u(s, e) WHERE u.s <> 'succeeded';
    IF failed IS NOT NULL THEN
        RAISE EXCEPTION '% of media type "%" did not succeed on every worker node', v_job, v_media_type
            USING ERRCODE = CASE WHEN 'failed' = ANY (states) THEN 'external_routine_exception' ELSE 'query_canceled' END,
                  DETAIL = failed;
    END IF;
    RAISE NOTICE '% of media type "%" succeeded on % worker nodes', v_job, v_media_type, cardinality(nodes);
END $$;
COMMENT ON PROCEDURE popularity._citus_dispatch(text, text, text, boolean) IS
    'On a Citus coordinator: starts a job''s run on every worker node (each over its own shards) and, with '
    'wait, waits for all of them; a cancel of the wait cancels them (internal)';

-- What the worker nodes' runs do, seen from the coordinator: popularity.refresh_status of every
-- worker node (rows the caller may read there), with the node. Empty without Citus or elsewhere
-- than on a coordinator.
CREATE FUNCTION popularity.citus_refresh_status(of_media_type text DEFAULT NULL)
RETURNS TABLE (node text, run_id bigint, job text, media_type text, provider text, state text,
               blocks_done numeric, blocks_total numeric, percent_done numeric, rows_scanned numeric,
               rows_updated numeric, rows_per_second numeric, counters jsonb, error text, status jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    node_names text[];
    results jsonb[];
    failed text;
BEGIN
    -- (Checked here first: without Citus nothing internal is called, so any role may call it.)
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension AS e WHERE e.extname = 'citus') THEN
        RETURN;
    END IF;
    IF NOT popularity._citus_coordinator() THEN
        RETURN;
    END IF;
    SELECT array_agg(w.node_name || ':' || w.node_port), array_agg(CASE WHEN w.success THEN w.result::jsonb END),
           string_agg(w.node_name || ':' || w.node_port || ': ' || w.result, '; ') FILTER (WHERE NOT w.success)
    INTO node_names, results, failed
    FROM popularity._citus_on_workers(ARRAY[format(
             'SELECT coalesce(pg_catalog.json_agg(s ORDER BY s.run_id, s.provider), ''[]'') FROM popularity.refresh_status AS s'
             ' WHERE %L::pg_catalog.text IS NULL OR s.media_type OPERATOR(pg_catalog.=) %L', of_media_type, of_media_type)]) AS w;
    IF failed IS NOT NULL THEN
        RAISE WARNING 'could not read the status of every Citus worker node' USING DETAIL = failed;
    END IF;
    RETURN QUERY
    SELECT u.node, (e->>'run_id')::bigint, e->>'job', e->>'media_type', e->>'provider', e->>'state',
           (e->>'blocks_done')::numeric, (e->>'blocks_total')::numeric, (e->>'percent_done')::numeric,
           (e->>'rows_scanned')::numeric, (e->>'rows_updated')::numeric, (e->>'rows_per_second')::numeric,
           e->'counters', e->>'error', e
    FROM unnest(node_names, results) AS u(node, result)
    CROSS JOIN LATERAL jsonb_array_elements(u.result) AS e
    ORDER BY u.node, (e->>'run_id')::bigint, e->>'provider';
END $$;
COMMENT ON FUNCTION popularity.citus_refresh_status(text) IS
    'On a Citus coordinator: popularity.refresh_status of every worker node (their runs over their shards), '
    'with the node; status has every column';

-- Cancels the active runs of a media type (all when NULL) on every worker node: for runs started
-- from the coordinator without wait (a cancelled wait cancels its runs itself).
CREATE FUNCTION popularity.citus_cancel_refresh(media_type text DEFAULT NULL)
RETURNS TABLE (node text, run_id bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- (Checked here first: without Citus nothing internal is called, so any role may call it.)
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension AS e WHERE e.extname = 'citus') THEN
        RETURN;
    END IF;
    IF NOT popularity._citus_coordinator() THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT w.node_name || ':' || w.node_port, r::bigint
    FROM popularity._citus_on_workers(ARRAY[format(
             'SELECT coalesce(pg_catalog.string_agg(c::pg_catalog.text, '',''), '''')'
             ' FROM popularity.cancel_refresh(NULL, %L::pg_catalog.text) AS c', $1)]) AS w
    CROSS JOIN LATERAL unnest(string_to_array(nullif(w.result, ''), ',')) AS r
    WHERE w.success;
END $$;
COMMENT ON FUNCTION popularity.citus_cancel_refresh(text) IS
    'On a Citus coordinator: cancels the active runs of a media type (all when NULL) on every worker node; '
    'returns them (none elsewhere)';

-- The provider counts of a distributed table, from the coordinator: each worker node counts the
-- rows of its own shards (the counts triggers fire on the shards and append to that node's
-- journal); their sum is exact. reconcile_pending when any node's counts wait for reconcile_stats
-- (run from the coordinator, it reconciles every worker node's), or the coordinator's: a TRUNCATE
-- through the coordinator empties the shards without a trigger firing on them.
CREATE FUNCTION popularity.citus_provider_stats(of_media_type text DEFAULT NULL)
RETURNS TABLE (media_type text, provider text, rows bigint, rows_with_metric bigint, rows_scored bigint,
               rows_invalid_metric bigint, rows_missing_metric bigint, reconcile_pending boolean, nodes integer)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    node_names text[];
    results jsonb[];
    failed text;
BEGIN
    -- (Checked here first: without Citus nothing internal is called, so any role may call it.)
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension AS e WHERE e.extname = 'citus') THEN
        RETURN;
    END IF;
    IF NOT popularity._citus_coordinator() THEN
        RETURN;
    END IF;
    SELECT array_agg(w.node_name || ':' || w.node_port), array_agg(CASE WHEN w.success THEN w.result::jsonb END),
           string_agg(w.node_name || ':' || w.node_port || ': ' || w.result, '; ') FILTER (WHERE NOT w.success)
    INTO node_names, results, failed
    FROM popularity._citus_on_workers(ARRAY[format(
             'SELECT coalesce(pg_catalog.json_agg(s), ''[]'') FROM popularity.provider_stats AS s'
             ' WHERE %L::pg_catalog.text IS NULL OR s.media_type OPERATOR(pg_catalog.=) %L', of_media_type, of_media_type)]) AS w;
    -- Exact or nothing: a node's counts missing would make the sum wrong.
    IF failed IS NOT NULL THEN
        RAISE EXCEPTION 'could not read the provider counts of every Citus worker node'
            USING ERRCODE = 'connection_failure', DETAIL = failed;
    END IF;
    RETURN QUERY
    SELECT g.media_type, g.provider, g.rows, g.rows_with_metric, g.rows_scored, g.rows_invalid_metric,
           g.rows_missing_metric,
           -- (A TRUNCATE through the coordinator marks the coordinator only: Citus creates no
           -- TRUNCATE trigger on the shards.)
           g.pending OR EXISTS (SELECT FROM popularity.stats_marks AS k WHERE k.media_type = g.media_type
                                AND (k.provider IS NULL OR k.provider = g.provider)),
           g.nodes
    FROM (SELECT e->>'media_type' AS media_type, e->>'provider' AS provider, sum((e->>'rows')::bigint)::bigint AS rows,
                 sum((e->>'rows_with_metric')::bigint)::bigint AS rows_with_metric,
                 sum((e->>'rows_scored')::bigint)::bigint AS rows_scored,
                 sum((e->>'rows_invalid_metric')::bigint)::bigint AS rows_invalid_metric,
                 sum((e->>'rows_missing_metric')::bigint)::bigint AS rows_missing_metric,
                 bool_or((e->>'reconcile_pending')::boolean) AS pending, count(DISTINCT u.node)::integer AS nodes
          FROM unnest(node_names, results) AS u(node, result)
          CROSS JOIN LATERAL jsonb_array_elements(u.result) AS e
          GROUP BY e->>'media_type', e->>'provider') AS g
    ORDER BY g.media_type, g.provider;
END $$;
COMMENT ON FUNCTION popularity.citus_provider_stats(text) IS
    'On a Citus coordinator: popularity.provider_stats summed over every worker node (exact: each node counts '
    'its own shards); nodes is how many nodes have rows of the key';

-- What reconcile_stats counts on this node: the table, or for a Citus distributed table on a
-- worker node the rows of its own shards (the counts there are that node's); as SQL text.
CREATE FUNCTION popularity._counted_rows_sql(media_table regclass)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN popularity._citus_node(media_table) IS NULL THEN media_table::text
                ELSE coalesce('(' || (SELECT string_agg(format('SELECT provider, meta_data, standardized_popularity FROM %s', s),
                                                        ' UNION ALL ')
                                      FROM popularity._citus_local_shards(media_table) AS s) || ')',
                              format('(SELECT provider, meta_data, standardized_popularity FROM %s WHERE false)', media_table))
           END
$$;
COMMENT ON FUNCTION popularity._counted_rows_sql(regclass) IS
    'The rows whose counts this node keeps, as SQL: the table, or this node''s shards of a Citus distributed table (internal)';

-- grant_operator and revoke_operator on a coordinator do the same on every worker node, where the
-- role's statements also run: DDL that Citus propagates (register_media_type's triggers are
-- created on the workers as that role), the copies of the configuration, the runs over the shards.
-- (Citus propagates CREATE ROLE, not these grants on extension routines and tables.)
CREATE FUNCTION popularity._citus_operator_rights(role regrole, give boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    failed text;
BEGIN
    IF NOT popularity._citus_coordinator() THEN
        RETURN;
    END IF;
    SELECT string_agg(format('%s:%s: %s', w.node_name, w.node_port, w.result), '; ') FILTER (WHERE NOT w.success)
    INTO failed
    FROM popularity._citus_on_workers(ARRAY[format('SELECT popularity.%s(%L::pg_catalog.regrole)',
                                                   CASE WHEN give THEN 'grant_operator' ELSE 'revoke_operator' END,
                                                   role::text)]) AS w;
    IF failed IS NOT NULL THEN
        RAISE EXCEPTION 'could not % the operator rights of role % on every Citus worker node',
            CASE WHEN give THEN 'grant' ELSE 'revoke' END, role
            USING ERRCODE = 'external_routine_exception', DETAIL = failed;
    END IF;
END $$;
COMMENT ON FUNCTION popularity._citus_operator_rights(regrole, boolean) IS
    'On a Citus coordinator: grant_operator or revoke_operator on every worker node (internal)';
