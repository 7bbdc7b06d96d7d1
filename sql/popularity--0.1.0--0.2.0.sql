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
        IF NOT (has_table_privilege(NEW.media_table, 'SELECT')
                AND (NEW.dry_run OR has_table_privilege(NEW.media_table, 'UPDATE'))) THEN
            RAISE EXCEPTION 'permission denied to run % on %', NEW.job, NEW.media_table
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'A run has the rights of the role that queues it: it needs SELECT and UPDATE on the media table (a dry run: SELECT).';
        END IF;
        NEW.relfilenode := pg_relation_filenode(NEW.media_table);
        -- The key the workers revisit rows by: the table's own, whatever the INSERT said.
        NEW.key_columns := popularity._key_columns(NEW.media_table);
        NEW.key_column := NEW.key_columns[1];
        -- The constants the run rescores with, as they are now (after the caller's constants committed).
        SELECT coalesce(array_agg(m.constant ORDER BY p.ord), '{}'),
               coalesce(array_agg(m.constant_version ORDER BY p.ord), '{}')
        INTO NEW.constants, NEW.constant_versions
        FROM unnest(NEW.providers) WITH ORDINALITY AS p(provider, ord)
        LEFT JOIN popularity.metrics AS m ON m.media_type = NEW.media_type AND m.provider = p.provider;
    ELSIF (NEW.run_id, NEW.job, NEW.media_type, NEW.media_table, NEW.key_column, NEW.key_columns,
           NEW.providers, NEW.requested_by, NEW.relfilenode, NEW.constants, NEW.constant_versions,
           NEW.dry_run, NEW.records_removed, NEW.batch_blocks)
          IS DISTINCT FROM (OLD.run_id, OLD.job, OLD.media_type, OLD.media_table, OLD.key_column,
                            OLD.key_columns, OLD.providers, OLD.requested_by, OLD.relfilenode,
                            OLD.constants, OLD.constant_versions, OLD.dry_run, OLD.records_removed,
                            OLD.batch_blocks) THEN
        RAISE EXCEPTION 'what a run is (its job, media type, table, key, providers, their constants, options and requesting role) cannot be changed'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Cancel the run with popularity.cancel_refresh() and start another.';
    END IF;
    RETURN NEW;
END $$;
COMMENT ON FUNCTION popularity._refresh_run_guard() IS
    'Trigger on popularity.refresh_runs: a run is requested by the inserting role, for the registered '
    'table of its media type, which that role may read and update (a dry run: read), with its '
    'providers'' current constants; its identity never changes';
CREATE TRIGGER refresh_run_guard BEFORE INSERT OR UPDATE ON popularity.refresh_runs
    FOR EACH ROW EXECUTE FUNCTION popularity._refresh_run_guard();

-- (refresh_constants: see the values block, which recreates it with its new result type)

-- owners: registering and configuring a media type is for its table's owner; the SECURITY DEFINER
-- trigger functions serve only their own tables; dropping a table unregisters it whoever drops it.
CREATE OR REPLACE FUNCTION popularity._require_owner(media_table regclass, action text)
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
CREATE OR REPLACE FUNCTION popularity.unregister_media_type(media_type text)
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

-- search_path: the procedures that COMMIT (filter_tags, refresh_popularity) cannot carry a SET
-- clause; they now pin search_path to pg_catalog, pg_temp in every transaction segment themselves
-- (set_config(..., true) first and after each COMMIT), give the caller's value back before they
-- return, and declare their variables with qualified types. The refresh workers and schedulers pin
-- it in C++ before their first statement (the library, no SQL object). New bodies, as in
-- sql/install/40_tags.sql and 50_refresh.sql:
-- (filter_tags: the procedure of 0.1.0 is replaced in the engine block below.)


CREATE OR REPLACE PROCEDURE @extschema@.refresh_popularity(
    media_type text, providers text[] DEFAULT NULL, wait boolean DEFAULT true, force boolean DEFAULT false)
LANGUAGE plpgsql
AS $$
DECLARE
    caller_path pg_catalog.text;
    tbl pg_catalog.regclass;
    key_column pg_catalog.name;
    written_keys pg_catalog.name[];
    stale_providers pg_catalog.text[];
    new_run bigint;
    failed_count bigint;
    failed_detail pg_catalog.text;
    citus_node pg_catalog.text;
BEGIN
    caller_path := pg_catalog.current_setting('search_path');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    -- Background workers rescore: without the preloaded library none would ever run the run.
    PERFORM popularity._require_preload();
    tbl := popularity._media_table(media_type);
    -- A Citus distributed table: the coordinator computes the constants, then each worker node
    -- rescores its own shards (65_citus.sql); NULL without Citus.
    citus_node := popularity._citus_node(tbl);
    key_column := (popularity._key_columns(tbl))[1];
    -- The workers connect as the calling role (so they have exactly its rights); PostgreSQL 15
    -- lets a background worker connect only as a role that can log in.
    IF NOT (SELECT r.rolcanlogin FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'refresh workers run as the calling role, and role "%" cannot log in', current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Call refresh_popularity() as a role with LOGIN that may update the media table.';
    END IF;
    -- The workers update each leaf partition directly: a row cannot move to another partition.
    written_keys := popularity._partition_key_columns(tbl,
        CASE WHEN pg_catalog.current_setting('popularity.refresh_touch_updated_on')::boolean
             THEN ARRAY['standardized_popularity', 'updated_on']::name[]
             ELSE ARRAY['standardized_popularity']::name[] END);
    IF written_keys IS NOT NULL THEN
        RAISE EXCEPTION 'media table % is partitioned by %, which the refresh writes', tbl,
            array_to_string(written_keys, ', ')
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'A rescored row would have to move to another partition. Partition by a column the refresh does not write (Openverse: created_on), or for a table partitioned by updated_on turn popularity.refresh_touch_updated_on off (ALTER SYSTEM).';
    END IF;
    -- The workers read the table directly: a row-level security policy would apply to their
    -- UPDATE but not to their scan (said before the constants are committed).
    IF pg_catalog.row_security_active(tbl) THEN
        RAISE EXCEPTION 'row-level security applies to % for role "%"', tbl, current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Refresh as the table owner or a role with BYPASSRLS.';
    END IF;
    IF EXISTS (SELECT FROM popularity.refresh_runs AS r
               WHERE r.media_type = refresh_popularity.media_type AND r.job = 'refresh'
                 AND r.state IN ('queued', 'running')) THEN
        RAISE EXCEPTION 'a refresh of media type "%" is already in progress (run %)', media_type,
            (SELECT r.run_id FROM popularity.refresh_runs AS r
             WHERE r.media_type = refresh_popularity.media_type AND r.job = 'refresh'
               AND r.state IN ('queued', 'running'))
            USING ERRCODE = 'object_in_use',
                  HINT = 'Wait for it (popularity.refresh_status), or stop it with popularity.cancel_refresh(). '
                         'A run interrupted by a restart resumes when its database is in popularity.database '
                         '(reloadable); otherwise cancel it and CALL popularity.resume_refresh(run_id, wait => true).';
    END IF;

    -- It commits between its steps, so it must be called on its own (like VACUUM); checked after
    -- the checks above, which need no commit.
    IF popularity._in_transaction_block() THEN
        RAISE EXCEPTION 'refresh_popularity() cannot run inside a transaction block'
            USING ERRCODE = 'active_sql_transaction',
                  HINT = 'Call it on its own: it commits the new constants before the workers rescore.';
    END IF;

    -- 1. The constants, committed before any row is rescored: from then on ingestion uses them.
    -- (On a Citus worker node they are the coordinator's, copied here: a worker computes none.)
    IF citus_node IS DISTINCT FROM 'worker' THEN
        SELECT count(*) FILTER (WHERE c.error IS NOT NULL),
               min(pg_catalog.format('provider %s: %s',
                                     pg_catalog.quote_literal(CASE WHEN pg_catalog.length(c.provider) <= 100 THEN c.provider
                                                                   ELSE pg_catalog.left(c.provider, 80) || '...'
                                                                        || pg_catalog.right(c.provider, 17) END),
                                     c.error)) FILTER (WHERE c.error IS NOT NULL)
        INTO failed_count, failed_detail
        FROM popularity.refresh_constants(media_type, providers) AS c;
    END IF;
    COMMIT;
    caller_path := pg_catalog.current_setting('search_path');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF failed_count > 0 THEN
        -- The other providers are refreshed; these keep their previous constants.
        RAISE WARNING USING
            MESSAGE = pg_catalog.format('could not compute the constant of %s of media type "%s"',
                                        CASE WHEN failed_count = 1 THEN '1 provider'
                                             ELSE failed_count || ' providers' END, media_type),
            DETAIL = failed_detail || CASE WHEN failed_count > 1 THEN ' (and others)' ELSE '' END,
            HINT = 'Each keeps its previous constant; see popularity.metrics.last_error, and fix the metric '
                   'or percentile with popularity.set_metric().';
    END IF;

    IF citus_node = 'coordinator' THEN
        -- Each worker node queues its own run over its shards; waits for all of them.
        CALL popularity._citus_dispatch('refresh', media_type, pg_catalog.format(
            'CALL %s.refresh_popularity(%L::pg_catalog.text, %L::pg_catalog.text[], wait => false, force => %L::pg_catalog.bool)',
            popularity._extension_schema(),
            media_type, providers, force), wait);
        PERFORM pg_catalog.set_config('search_path', caller_path, true);
        RETURN;
    END IF;

    -- 2. The run and its block-range tasks: every stale provider (popularity.rescore_state: its
    -- constant changed since it was last rescored, here or elsewhere, or it never was), or every
    -- configured one with force.
    SELECT coalesce(array_agg(s.provider ORDER BY s.provider), '{}') INTO stale_providers
    FROM popularity.rescore_state AS s
    WHERE s.media_type = refresh_popularity.media_type
      AND (refresh_popularity.providers IS NULL OR s.provider = ANY (refresh_popularity.providers))
      AND (s.stale OR force);
    BEGIN
        INSERT INTO popularity.refresh_runs AS r
            (media_type, media_table, key_column, providers, forced, requested_by, writers, state, finished_at)
        VALUES (media_type, tbl, key_column, stale_providers, force, current_user::text::regrole::oid,
                popularity._table_writers(tbl),
                CASE WHEN cardinality(stale_providers) = 0 THEN 'succeeded' ELSE 'queued' END,
                CASE WHEN cardinality(stale_providers) = 0 THEN pg_catalog.clock_timestamp() END)
        RETURNING r.run_id INTO new_run;
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'a refresh of media type "%" is already in progress', media_type
            USING ERRCODE = 'object_in_use',
                  HINT = 'Wait for it (popularity.refresh_status), or stop it with popularity.cancel_refresh().';
    END;
    IF cardinality(stale_providers) = 0 THEN
        RAISE NOTICE 'refresh run %: no provider''s constant changed since it was last rescored, nothing to rescore', new_run
            USING HINT = 'Use force => true to rescore every configured provider anyway.';
        PERFORM pg_catalog.pg_notify('popularity', pg_catalog.json_build_object(
            'event', 'refresh_finished', 'run_id', new_run, 'media_type', media_type, 'state', 'succeeded')::text);
        COMMIT;
        RETURN;
    END IF;
    PERFORM popularity._create_tasks(new_run);
    PERFORM popularity._wake_scheduler();
    COMMIT;
    caller_path := pg_catalog.current_setting('search_path');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    -- The list in full only when it is short (there may be thousands of long names).
    RAISE NOTICE 'refresh run % queued for providers %', new_run,
        CASE WHEN (SELECT sum(pg_catalog.octet_length(p)) FROM unnest(stale_providers) AS p) <= 1000
             THEN array_to_string(stale_providers, ', ')
             ELSE pg_catalog.format('%s, ... (%s providers)',
                                    pg_catalog.left(array_to_string(stale_providers[1:3], ', '), 200),
                                    cardinality(stale_providers)) END;
    IF NOT wait THEN
        PERFORM pg_catalog.set_config('search_path', caller_path, true);
        RETURN;
    END IF;

    -- 3. Wait: progress NOTICEs, and a cancel of this CALL (Ctrl-C) cancels the run.
    CALL popularity._wait_refresh(new_run);
    PERFORM pg_catalog.set_config('search_path', caller_path, true);
END $$;

-- restore: the counts travel with a dump (one snapshot with the data), and every media type that
-- appears in the registry (registered or restored) is marked for reconcile_stats.
SELECT pg_catalog.pg_extension_config_dump('popularity.stats_counts', '');
SELECT pg_catalog.pg_extension_config_dump('popularity.stats_journal', '');
SELECT pg_catalog.pg_extension_config_dump('popularity.stats_marks', '');
SELECT pg_catalog.pg_extension_config_dump('popularity.stats_corrections', '');
SELECT pg_catalog.pg_extension_config_dump('popularity.stats_corrections_correction_id_seq', '');
CREATE FUNCTION popularity._stats_media_type_added()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- It runs with its owner's rights: only for the table it was made for.
    IF TG_RELID <> 'popularity.media_types'::regclass OR TG_LEVEL <> 'ROW' OR TG_WHEN <> 'AFTER'
       OR TG_OP <> 'INSERT' THEN
        RAISE EXCEPTION 'popularity._stats_media_type_added() serves popularity.media_types only'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO popularity.stats_marks (media_type, provider, reason) VALUES (NEW.media_type, NULL, 'registered');
    RETURN NULL;
END $$;
COMMENT ON FUNCTION popularity._stats_media_type_added() IS
    'Trigger on popularity.media_types: marks a registered (or restored) media type for reconcile_stats';
CREATE TRIGGER stats_media_type_added
    AFTER INSERT ON popularity.media_types
    FOR EACH ROW EXECUTE FUNCTION popularity._stats_media_type_added();
CREATE OR REPLACE FUNCTION popularity._install_stats_triggers(media_type text, media_table regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    installed boolean := EXISTS (SELECT FROM pg_trigger AS t
                                 WHERE t.tgrelid = media_table AND t.tgname = 'zz_popularity_stats_insert');
    has_rows boolean;
    rel regclass;
BEGIN
    FOR rel IN SELECT * FROM popularity._media_tree(media_table) LOOP
        PERFORM popularity._install_stats_triggers_on(media_type, rel);
    END LOOP;
    -- Every new media_types row was marked (popularity._stats_media_type_added); a table that
    -- gets its counts triggers now and is empty is exact from the start.
    IF NOT installed THEN
        -- (SELECT 1: Citus cannot plan a distributed query without target columns.)
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', media_table) INTO has_rows;
        IF NOT has_rows THEN
            DELETE FROM popularity.stats_marks AS k
            WHERE k.media_type = $1 AND k.provider IS NULL AND k.reason = 'registered';
        END IF;
    END IF;
END $$;
COMMENT ON FUNCTION popularity._install_stats_triggers(text, regclass) IS
    'Installs the counts triggers on a media table and its partitions (called by register_media_type)';

-- values: extreme values stay local, and the extension works without shared_preload_libraries
-- (issue 12, items 4 and 5).
-- The status of a provider whose constant cannot be computed.
ALTER TABLE popularity.metrics ADD COLUMN last_error text;
COMMENT ON COLUMN popularity.metrics.last_error IS
    'Why refresh_constants could not compute the constant the last time it tried (the previous val and constant are kept); NULL when it could';
SELECT pg_catalog.pg_extension_config_dump('popularity.metrics', '');

-- refresh_constants reports such a provider (a new result column, hence DROP + CREATE) and goes on
-- with the others; one UPDATE; a bounded NOTIFY payload.
DROP FUNCTION popularity.refresh_constants(text, text[]);
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

-- refresh_popularity raises 55000 at once without the preloaded library, and warns about
-- providers whose constant could not be computed.
CREATE FUNCTION popularity._require_preload()
RETURNS void
AS 'MODULE_PATHNAME', 'popularity_require_preload'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION popularity._require_preload() IS
    'Raises 55000 with a hint unless popularity is in shared_preload_libraries (the refresh needs its background workers)';

CREATE OR REPLACE PROCEDURE @extschema@.refresh_popularity(
    media_type text, providers text[] DEFAULT NULL, wait boolean DEFAULT true, force boolean DEFAULT false)
LANGUAGE plpgsql
AS $$
DECLARE
    caller_path pg_catalog.text;
    tbl pg_catalog.regclass;
    key_column pg_catalog.name;
    written_keys pg_catalog.name[];
    stale_providers pg_catalog.text[];
    new_run bigint;
    failed_count bigint;
    failed_detail pg_catalog.text;
    citus_node pg_catalog.text;
BEGIN
    caller_path := pg_catalog.current_setting('search_path');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    -- Background workers rescore: without the preloaded library none would ever run the run.
    PERFORM popularity._require_preload();
    tbl := popularity._media_table(media_type);
    -- A Citus distributed table: the coordinator computes the constants, then each worker node
    -- rescores its own shards (65_citus.sql); NULL without Citus.
    citus_node := popularity._citus_node(tbl);
    key_column := (popularity._key_columns(tbl))[1];
    -- The workers connect as the calling role (so they have exactly its rights); PostgreSQL 15
    -- lets a background worker connect only as a role that can log in.
    IF NOT (SELECT r.rolcanlogin FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'refresh workers run as the calling role, and role "%" cannot log in', current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Call refresh_popularity() as a role with LOGIN that may update the media table.';
    END IF;
    -- The workers update each leaf partition directly: a row cannot move to another partition.
    written_keys := popularity._partition_key_columns(tbl,
        CASE WHEN pg_catalog.current_setting('popularity.refresh_touch_updated_on')::boolean
             THEN ARRAY['standardized_popularity', 'updated_on']::name[]
             ELSE ARRAY['standardized_popularity']::name[] END);
    IF written_keys IS NOT NULL THEN
        RAISE EXCEPTION 'media table % is partitioned by %, which the refresh writes', tbl,
            array_to_string(written_keys, ', ')
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'A rescored row would have to move to another partition. Partition by a column the refresh does not write (Openverse: created_on), or for a table partitioned by updated_on turn popularity.refresh_touch_updated_on off (ALTER SYSTEM).';
    END IF;
    -- The workers read the table directly: a row-level security policy would apply to their
    -- UPDATE but not to their scan (said before the constants are committed).
    IF pg_catalog.row_security_active(tbl) THEN
        RAISE EXCEPTION 'row-level security applies to % for role "%"', tbl, current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Refresh as the table owner or a role with BYPASSRLS.';
    END IF;
    IF EXISTS (SELECT FROM popularity.refresh_runs AS r
               WHERE r.media_type = refresh_popularity.media_type AND r.job = 'refresh'
                 AND r.state IN ('queued', 'running')) THEN
        RAISE EXCEPTION 'a refresh of media type "%" is already in progress (run %)', media_type,
            (SELECT r.run_id FROM popularity.refresh_runs AS r
             WHERE r.media_type = refresh_popularity.media_type AND r.job = 'refresh'
               AND r.state IN ('queued', 'running'))
            USING ERRCODE = 'object_in_use',
                  HINT = 'Wait for it (popularity.refresh_status), or stop it with popularity.cancel_refresh(). '
                         'A run interrupted by a restart resumes when its database is in popularity.database '
                         '(reloadable); otherwise cancel it and CALL popularity.resume_refresh(run_id, wait => true).';
    END IF;

    -- It commits between its steps, so it must be called on its own (like VACUUM); checked after
    -- the checks above, which need no commit.
    IF popularity._in_transaction_block() THEN
        RAISE EXCEPTION 'refresh_popularity() cannot run inside a transaction block'
            USING ERRCODE = 'active_sql_transaction',
                  HINT = 'Call it on its own: it commits the new constants before the workers rescore.';
    END IF;

    -- 1. The constants, committed before any row is rescored: from then on ingestion uses them.
    -- (On a Citus worker node they are the coordinator's, copied here: a worker computes none.)
    IF citus_node IS DISTINCT FROM 'worker' THEN
        SELECT count(*) FILTER (WHERE c.error IS NOT NULL),
               min(pg_catalog.format('provider %s: %s',
                                     pg_catalog.quote_literal(CASE WHEN pg_catalog.length(c.provider) <= 100 THEN c.provider
                                                                   ELSE pg_catalog.left(c.provider, 80) || '...'
                                                                        || pg_catalog.right(c.provider, 17) END),
                                     c.error)) FILTER (WHERE c.error IS NOT NULL)
        INTO failed_count, failed_detail
        FROM popularity.refresh_constants(media_type, providers) AS c;
    END IF;
    COMMIT;
    caller_path := pg_catalog.current_setting('search_path');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF failed_count > 0 THEN
        -- The other providers are refreshed; these keep their previous constants.
        RAISE WARNING USING
            MESSAGE = pg_catalog.format('could not compute the constant of %s of media type "%s"',
                                        CASE WHEN failed_count = 1 THEN '1 provider'
                                             ELSE failed_count || ' providers' END, media_type),
            DETAIL = failed_detail || CASE WHEN failed_count > 1 THEN ' (and others)' ELSE '' END,
            HINT = 'Each keeps its previous constant; see popularity.metrics.last_error, and fix the metric '
                   'or percentile with popularity.set_metric().';
    END IF;

    IF citus_node = 'coordinator' THEN
        -- Each worker node queues its own run over its shards; waits for all of them.
        CALL popularity._citus_dispatch('refresh', media_type, pg_catalog.format(
            'CALL %s.refresh_popularity(%L::pg_catalog.text, %L::pg_catalog.text[], wait => false, force => %L::pg_catalog.bool)',
            popularity._extension_schema(),
            media_type, providers, force), wait);
        PERFORM pg_catalog.set_config('search_path', caller_path, true);
        RETURN;
    END IF;

    -- 2. The run and its block-range tasks: every stale provider (popularity.rescore_state: its
    -- constant changed since it was last rescored, here or elsewhere, or it never was), or every
    -- configured one with force.
    SELECT coalesce(array_agg(s.provider ORDER BY s.provider), '{}') INTO stale_providers
    FROM popularity.rescore_state AS s
    WHERE s.media_type = refresh_popularity.media_type
      AND (refresh_popularity.providers IS NULL OR s.provider = ANY (refresh_popularity.providers))
      AND (s.stale OR force);
    BEGIN
        INSERT INTO popularity.refresh_runs AS r
            (media_type, media_table, key_column, providers, forced, requested_by, writers, state, finished_at)
        VALUES (media_type, tbl, key_column, stale_providers, force, current_user::text::regrole::oid,
                popularity._table_writers(tbl),
                CASE WHEN cardinality(stale_providers) = 0 THEN 'succeeded' ELSE 'queued' END,
                CASE WHEN cardinality(stale_providers) = 0 THEN pg_catalog.clock_timestamp() END)
        RETURNING r.run_id INTO new_run;
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'a refresh of media type "%" is already in progress', media_type
            USING ERRCODE = 'object_in_use',
                  HINT = 'Wait for it (popularity.refresh_status), or stop it with popularity.cancel_refresh().';
    END;
    IF cardinality(stale_providers) = 0 THEN
        RAISE NOTICE 'refresh run %: no provider''s constant changed since it was last rescored, nothing to rescore', new_run
            USING HINT = 'Use force => true to rescore every configured provider anyway.';
        PERFORM pg_catalog.pg_notify('popularity', pg_catalog.json_build_object(
            'event', 'refresh_finished', 'run_id', new_run, 'media_type', media_type, 'state', 'succeeded')::text);
        COMMIT;
        RETURN;
    END IF;
    PERFORM popularity._create_tasks(new_run);
    PERFORM popularity._wake_scheduler();
    COMMIT;
    caller_path := pg_catalog.current_setting('search_path');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    -- The list in full only when it is short (there may be thousands of long names).
    RAISE NOTICE 'refresh run % queued for providers %', new_run,
        CASE WHEN (SELECT sum(pg_catalog.octet_length(p)) FROM unnest(stale_providers) AS p) <= 1000
             THEN array_to_string(stale_providers, ', ')
             ELSE pg_catalog.format('%s, ... (%s providers)',
                                    pg_catalog.left(array_to_string(stale_providers[1:3], ', '), 200),
                                    cardinality(stale_providers)) END;
    IF NOT wait THEN
        PERFORM pg_catalog.set_config('search_path', caller_path, true);
        RETURN;
    END IF;

    -- 3. Wait: progress NOTICEs, and a cancel of this CALL (Ctrl-C) cancels the run.
    CALL popularity._wait_refresh(new_run);
    PERFORM pg_catalog.set_config('search_path', caller_path, true);
END $$;

-- transaction blocks: refresh_popularity and filter_tags ask PostgreSQL whether they run in one.
CREATE FUNCTION popularity._in_transaction_block()
RETURNS boolean
AS 'MODULE_PATHNAME', 'popularity_in_transaction_block'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION popularity._in_transaction_block() IS
    'Whether the current transaction is an explicit transaction block, where a procedure that commits cannot run';

-- Accuracies stored as JSON strings are read as Python's float() reads them (issue 13, item 7).
COMMENT ON COLUMN popularity.tag_rules.min_accuracy IS
    'Minimum confidence: a tag whose accuracy is strictly below it is dropped (a JSON number is '
    'compared exactly; a JSON string is read as Python''s float() reads it and compared with the '
    'nearest double, as Openverse does)';
COMMENT ON COLUMN popularity.tag_filter_runs.dropped_malformed IS
    'Tags dropped because they are not objects, their name is not a string, or their accuracy is '
    'neither a number nor a string Python''s float() accepts';

-- progress: a CALL that waits for a refresh reports its progress, and cancelling it cancels the run;
-- resume_refresh can wait.
CREATE PROCEDURE popularity._wait_refresh(run_id bigint)
LANGUAGE plpgsql
AS $$
DECLARE
    v_run CONSTANT bigint := _wait_refresh.run_id;
    run_state pg_catalog.text;
    run_error pg_catalog.text;
    run_job pg_catalog.text;
    every pg_catalog.interval;
    last_report pg_catalog.timestamptz;
    last_wake pg_catalog.timestamptz;
    interrupted boolean := false;
    done numeric;
    total numeric;
    percent numeric;
    scanned numeric;
    rate numeric;
    eta pg_catalog.timestamptz;
    waiting pg_catalog.text;
    pids integer[];
    since pg_catalog.timestamptz;
    last_error pg_catalog.text;
    began pg_catalog.timestamptz;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    last_report := clock_timestamp();
    last_wake := clock_timestamp();
    began := clock_timestamp();
    LOOP
        SELECT r.state, r.error, r.job INTO run_state, run_error, run_job
        FROM popularity.refresh_runs AS r WHERE r.run_id = v_run;
        EXIT WHEN run_state IS NULL OR run_state IN ('succeeded', 'failed', 'cancelled');
        IF run_state = 'queued' AND clock_timestamp() - last_wake >= interval '1 second' THEN
            PERFORM popularity._wake_scheduler();
            last_wake := clock_timestamp();
        END IF;
        every := current_setting('popularity.progress_interval')::interval;
        IF every > interval '0' AND clock_timestamp() - last_report >= every THEN
            SELECT max(s.blocks_done), max(s.blocks_total), max(s.percent_done), sum(s.rows_scanned),
                   sum(s.rows_per_second), max(s.eta), max(s.waiting_for), max(s.waiting_pids),
                   min(s.waiting_since), max(s.last_error)
            INTO done, total, percent, scanned, rate, eta, waiting, pids, since, last_error
            FROM popularity.refresh_status AS s WHERE s.run_id = v_run;
            RAISE NOTICE '%', format('%s run %s: %s%% of %s blocks, %s rows scanned (%s rows/s), %s',
                run_job, v_run, coalesce(percent, 0), coalesce(total, 0), coalesce(scanned, 0), coalesce(rate, 0),
                CASE WHEN waiting IS NOT NULL
                     THEN format('waiting %s s for %s%s%s', round(extract(epoch FROM clock_timestamp() - since)),
                                 waiting,
                                 CASE WHEN pids IS NOT NULL THEN format(' (pid %s)', array_to_string(pids, ', ')) ELSE '' END,
                                 CASE WHEN waiting LIKE '%retry%' THEN format(' after: %s', last_error) ELSE '' END)
                     WHEN done IS NULL OR done = 0 THEN 'starting'
                     WHEN done >= total THEN 'revisiting rows other transactions held'
                     WHEN eta IS NOT NULL THEN format('about %s s left', ceil(extract(epoch FROM eta - clock_timestamp())))
                     ELSE 'walking' END);
            last_report := clock_timestamp();
        END IF;
        COMMIT;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        BEGIN
            -- Looks again after a twentieth of the time waited so far, between 5 and 100 ms: a
            -- short run is not made longer by the wait itself, a long one costs ten looks a second.
            PERFORM pg_sleep(least(0.1, greatest(0.005,
                                                 extract(epoch FROM clock_timestamp() - began) / 20)));
        EXCEPTION WHEN query_canceled THEN
            interrupted := true;
        END;
        IF interrupted THEN
            PERFORM popularity.cancel_refresh(v_run);
            COMMIT;
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
            RAISE EXCEPTION '% run % cancelled: the statement waiting for it was cancelled', run_job, v_run
                USING ERRCODE = 'query_canceled',
                      HINT = 'Resume it with CALL popularity.resume_refresh(' || v_run || ', wait => true); '
                             'a run started with wait => false goes on without the session.';
        END IF;
    END LOOP;
    IF run_state = 'failed' THEN
        RAISE EXCEPTION '% run % failed: %', run_job, v_run, run_error
            USING ERRCODE = 'external_routine_exception',
                  HINT = 'Fix the cause, then resume it with CALL popularity.resume_refresh(' || v_run || ', wait => true).';
    ELSIF run_state = 'cancelled' THEN
        RAISE EXCEPTION '% run % was cancelled', run_job, v_run
            USING ERRCODE = 'query_canceled',
                  HINT = 'Resume it with CALL popularity.resume_refresh(' || v_run || ', wait => true) or start a new one.';
    END IF;
END $$;
COMMENT ON PROCEDURE popularity._wait_refresh(bigint) IS
    'Waits for a refresh run: progress NOTICEs (or what the run waits for) every popularity.progress_interval; '
    'a cancel of the wait cancels the run; raises if the run failed or was cancelled';
CREATE PROCEDURE popularity.resume_refresh(run_id bigint, wait boolean)
LANGUAGE plpgsql
AS $$
DECLARE
    v_run CONSTANT bigint := resume_refresh.run_id;
    caller_path pg_catalog.text;
BEGIN
    caller_path := pg_catalog.current_setting('search_path');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF wait AND popularity._in_transaction_block() THEN
        RAISE EXCEPTION 'resume_refresh(..., wait => true) cannot run inside a transaction block'
            USING ERRCODE = 'active_sql_transaction',
                  HINT = 'Call it on its own, or use SELECT popularity.resume_refresh(run_id) without waiting.';
    END IF;
    PERFORM popularity.resume_refresh(v_run);
    IF NOT wait THEN
        PERFORM pg_catalog.set_config('search_path', caller_path, true);
        RETURN;
    END IF;
    COMMIT;
    CALL popularity._wait_refresh(v_run);
END $$;
COMMENT ON PROCEDURE popularity.resume_refresh(bigint, boolean) IS
    'Continues a failed or cancelled run from its last committed batch; with wait, returns when it '
    'has finished and raises if it failed or was cancelled';

-- engine: filter_tags is a job of the background workers' batch engine, like the refresh (issue 13,
-- item 1): runs, tasks, progress and status are shared (refresh_runs.job), the filter's counters are
-- kept by verdict name (refresh_counters), what a run removes is recorded by primary key, and the
-- ingestion trigger filters every row it writes while a filter run is active. The PL/pgSQL walk,
-- its C++ batch (_filter_tags_range) and popularity.tag_filter_runs are gone; the runs of 0.1.0's
-- filter are kept as history in refresh_runs (new run numbers; an interrupted one as cancelled).
ALTER TABLE popularity.refresh_runs
    ALTER COLUMN writers DROP NOT NULL,
    ADD COLUMN dry_run boolean NOT NULL DEFAULT false,
    ADD COLUMN records_removed boolean NOT NULL DEFAULT false,
    ADD COLUMN batch_blocks integer CONSTRAINT batch_blocks_positive CHECK (batch_blocks > 0),
    ADD COLUMN undone_at timestamptz,
    ADD COLUMN records_purged_at timestamptz,
    ADD COLUMN job text NOT NULL DEFAULT 'refresh' CONSTRAINT job_known CHECK (job IN ('refresh', 'filter_tags')),
    ADD CONSTRAINT refresh_options CHECK (job = 'filter_tags' OR NOT (dry_run OR records_removed)),
    ADD CONSTRAINT dry_runs_record_nothing CHECK (NOT (dry_run AND records_removed));
DROP INDEX popularity.refresh_runs_one_active;
CREATE UNIQUE INDEX refresh_runs_one_active ON popularity.refresh_runs (media_type, job)
    WHERE state IN ('queued', 'running');
COMMENT ON TABLE popularity.refresh_runs IS
    'Runs of the batch engine (history is kept): the job (refresh or filter_tags), what was '
    'requested, by whom, its state and error';
COMMENT ON COLUMN popularity.refresh_runs.records_removed IS
    'The run records what it removes from each row in popularity.tag_filter_removed, so that '
    'popularity.undo_filter_tags can restore it (popularity.tag_filter_undo when it was queued)';
COMMENT ON COLUMN popularity.refresh_runs.undone_at IS 'When popularity.undo_filter_tags undid the run';
COMMENT ON COLUMN popularity.refresh_runs.records_purged_at IS
    'When popularity.purge_filter_undo deleted the run''s record of removed tags (the run can no '
    'longer be undone)';

CREATE TABLE popularity.refresh_counters (
    task_id bigint NOT NULL REFERENCES popularity.refresh_tasks ON DELETE CASCADE,
    counter text NOT NULL,
    value bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, counter)
);
COMMENT ON TABLE popularity.refresh_counters IS
    'A job''s own counters per task, by name, written with each batch: for filter_tags the tags '
    'dropped per verdict (malformed, low_accuracy, ...) and rows_not_an_array';
GRANT SELECT ON popularity.refresh_counters TO PUBLIC;

-- The runs of 0.1.0's filter, as history of the engine (the guard would re-check the updating
-- role's rights on each table; the rows are copied as they are).
ALTER TABLE popularity.refresh_runs DISABLE TRIGGER refresh_run_guard;
WITH old AS (
    SELECT o.*, m.media_table AS registered_table,
           (SELECT a.attname FROM pg_catalog.pg_index AS i
            JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE i.indrelid = o.media_table AND i.indisprimary AND i.indnkeyatts = 1) AS key_column,
           pg_catalog.nextval('popularity.refresh_runs_run_id_seq') AS new_run
    FROM popularity.tag_filter_runs AS o
    LEFT JOIN popularity.media_types AS m ON m.media_type = o.media_type
), runs AS (
    INSERT INTO popularity.refresh_runs AS r
        (run_id, job, media_type, media_table, key_column, providers, state, requested_by, writers,
         requested_at, started_at, finished_at, error, dry_run)
    SELECT old.new_run, 'filter_tags', old.media_type, old.media_table, coalesce(old.key_column, 'identifier'),
           '{}', CASE old.state WHEN 'finished' THEN 'succeeded' ELSE 'cancelled' END,
           (SELECT ro.oid FROM pg_catalog.pg_roles AS ro WHERE ro.rolname = current_user), '{}',
           old.started_at, old.started_at, coalesce(old.finished_at, old.updated_at),
           CASE old.state WHEN 'running' THEN 'interrupted before the update to 0.2.0: CALL filter_tags again'
                          WHEN 'abandoned' THEN 'abandoned: its media type was registered with another table' END,
           old.dry_run
    FROM old RETURNING r.run_id
), tasks AS (
    INSERT INTO popularity.refresh_tasks AS t
        (run_id, segment, first_block, end_block, next_block, state, batches, started_at, finished_at)
    SELECT old.new_run, 0, 0, old.total_blocks, old.next_block,
           CASE old.state WHEN 'finished' THEN 'done' ELSE 'cancelled' END, old.batches,
           old.started_at, coalesce(old.finished_at, old.updated_at)
    FROM old RETURNING t.task_id, t.run_id
), progress AS (
    INSERT INTO popularity.refresh_progress (task_id, provider, rows_scanned, rows_updated, rows_skipped_locked)
    SELECT tasks.task_id, '', old.rows_scanned, old.rows_changed, old.lock_skips
    FROM old JOIN tasks ON tasks.run_id = old.new_run
)
INSERT INTO popularity.refresh_counters (task_id, counter, value)
SELECT tasks.task_id, c.counter, c.value
FROM old JOIN tasks ON tasks.run_id = old.new_run,
LATERAL (VALUES ('rows_not_an_array', old.rows_malformed), ('malformed', old.dropped_malformed),
                ('low_accuracy', old.dropped_low_accuracy), ('filtered_provider', old.dropped_filtered_provider),
                ('exact_denylist', old.dropped_exact_denylist), ('substring_denylist', old.dropped_substring_denylist),
                ('machine_label', old.dropped_machine_label)) AS c(counter, value)
WHERE c.value <> 0;
ALTER TABLE popularity.refresh_runs ENABLE TRIGGER refresh_run_guard;
DROP PROCEDURE @extschema@.filter_tags(text, boolean, integer);
DROP FUNCTION popularity._filter_tags_range(regclass, text, bigint, bigint, boolean);
ALTER EXTENSION popularity DROP TABLE popularity.tag_filter_runs;
DROP TABLE popularity.tag_filter_runs;

CREATE TRIGGER refresh_runs_changed AFTER INSERT OR UPDATE OF state OR DELETE ON popularity.refresh_runs
    FOR EACH STATEMENT EXECUTE FUNCTION popularity._config_changed();

DROP VIEW popularity.refresh_status;
CREATE VIEW popularity.refresh_status AS
SELECT r.run_id, r.job, r.media_type, nullif(p.provider, '') AS provider, r.state, r.forced, r.dry_run,
       blocks.done AS blocks_done, blocks.total AS blocks_total,
       coalesce(c.rows_scanned, 0) AS rows_scanned, coalesce(c.rows_updated, 0) AS rows_updated,
       coalesce(c.rows_skipped_locked, 0) AS rows_skipped_locked,
       blocks.pending_revisit AS rows_pending_revisit,
       blocks.batches, blocks.longest_batch_ms,
       round((coalesce(c.rows_scanned, 0)
              / greatest(extract(epoch FROM coalesce(r.finished_at, clock_timestamp()) - r.started_at), 0.001))::numeric)
           AS rows_per_second,
       CASE WHEN r.job = 'filter_tags' THEN coalesce(k.counters, '{}') END AS counters,
       r.requested_at, r.started_at, r.finished_at, r.error
FROM popularity.refresh_runs AS r
-- A refresh counts per provider; a filter run has one group, every row ('').
CROSS JOIN LATERAL unnest(CASE WHEN r.job = 'filter_tags' THEN ARRAY[''] ELSE r.providers END) AS p(provider)
LEFT JOIN LATERAL (
    SELECT sum(x.rows_scanned) AS rows_scanned, sum(x.rows_updated) AS rows_updated,
           sum(x.rows_skipped_locked) AS rows_skipped_locked
    FROM popularity.refresh_progress AS x JOIN popularity.refresh_tasks AS t USING (task_id)
    WHERE t.run_id = r.run_id AND x.provider = p.provider
) AS c ON true
LEFT JOIN LATERAL (
    SELECT jsonb_object_agg(y.counter, y.total ORDER BY y.counter) AS counters
    FROM (SELECT x.counter, sum(x.value) AS total
          FROM popularity.refresh_counters AS x JOIN popularity.refresh_tasks AS t USING (task_id)
          WHERE t.run_id = r.run_id GROUP BY x.counter) AS y
) AS k ON true
LEFT JOIN LATERAL (
    SELECT sum(t.next_block - t.first_block) AS done, sum(t.end_block - t.first_block) AS total,
           sum(t.batches) AS batches, round(max(t.longest_batch_ms)::numeric, 1) AS longest_batch_ms,
           (SELECT count(*) FROM popularity.refresh_skipped AS s JOIN popularity.refresh_tasks AS u USING (task_id)
            WHERE u.run_id = r.run_id) AS pending_revisit
    FROM popularity.refresh_tasks AS t WHERE t.run_id = r.run_id
) AS blocks ON true;
COMMENT ON VIEW popularity.refresh_status IS
    'Per run of either job and provider (a filter run: one row, provider NULL): state, blocks '
    'done/total, rows scanned, updated (a dry run: would be) and skipped while locked, batches, the '
    'longest batch that wrote rows (ms), rate, the filter''s counters (tags dropped per verdict), '
    'times and error (history included)';
GRANT SELECT ON popularity.refresh_status TO PUBLIC;

-- The block-range tasks of a run, per leaf (see below). Serialized per run: the workers that
-- finish their walk call it to cover partitions created or attached meanwhile.
CREATE FUNCTION popularity._create_tasks(run_id bigint)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    created integer;
BEGIN
    PERFORM pg_advisory_xact_lock(pg_catalog.hashtext('popularity._create_tasks'), (_create_tasks.run_id % 2147483647)::integer);
    -- Block ranges over every leaf that has none yet in the run (all of them when the run is
    -- queued; later, the partitions created or attached while it ran). A run has about 4 tasks
    -- per allowed worker, shared between leaves by size, of at least 64 blocks, and at least one
    -- per leaf (the last one of a leaf also walks the blocks added to it during the run).
    WITH leaves AS (
        SELECT l.leaf, pg_relation_size(l.leaf) / current_setting('block_size')::bigint AS nblocks,
               pg_relation_filenode(l.leaf) AS filenode
        FROM popularity.refresh_runs AS r CROSS JOIN LATERAL popularity._media_leaves(r.media_table) AS l(leaf)
        WHERE r.run_id = _create_tasks.run_id
          AND NOT EXISTS (SELECT FROM popularity.refresh_tasks AS t
                          WHERE t.run_id = _create_tasks.run_id AND t.leaf = l.leaf AND NOT t.leaf_left)
    ), sized AS (
        SELECT l.*, greatest(1, least((l.nblocks + 63) / 64,
                   ceil(current_setting('popularity.max_workers')::integer * 4
                        * l.nblocks::numeric / greatest(1, sum(l.nblocks) OVER ()))::bigint)) AS segments
        FROM leaves AS l
    ), ranges AS (
        SELECT z.leaf, z.filenode, s * per_segment AS first_block,
               least((s + 1) * per_segment, z.nblocks) AS end_block
        FROM sized AS z
        CROSS JOIN LATERAL (SELECT greatest(1, (z.nblocks + z.segments - 1) / z.segments) AS per_segment) AS p
        CROSS JOIN LATERAL generate_series(0, z.segments - 1) AS s
        WHERE s * per_segment < z.nblocks OR s = 0
    )
    INSERT INTO popularity.refresh_tasks (run_id, segment, first_block, end_block, next_block, leaf,
                                          leaf_relfilenode)
    SELECT _create_tasks.run_id,
           coalesce((SELECT max(t.segment) + 1 FROM popularity.refresh_tasks AS t
                     WHERE t.run_id = _create_tasks.run_id), 0)
             + row_number() OVER (ORDER BY g.leaf::oid, g.first_block) - 1,
           g.first_block, g.end_block, g.first_block, g.leaf, g.filenode
    FROM ranges AS g;
    GET DIAGNOSTICS created = ROW_COUNT;
    RETURN created;
END $$;
COMMENT ON FUNCTION popularity._create_tasks(bigint) IS
    'Creates the block-range tasks of a run (of either job) over the leaves of the media table that '
    'have none yet: all of them when the run is queued, the partitions created or attached since later';

-- undo: a run of filter_tags records what it removes from each row (popularity.tag_filter_removed,
-- in the batch's transaction), popularity.undo_filter_tags puts it back on the rows not changed
-- since, popularity.purge_filter_undo forgets old records (issue 13, item 8).
-- What each run removed: one row per batch that rewrote rows, written in that batch's transaction
-- (by the same statement as the rows), with one element per changed row in each array (compact: a
-- batch of a thousand changed rows costs one row, not a thousand rows and index entries). Read by
-- undo_filter_tags (per row: popularity.tag_filter_removed_rows), deleted by purge_filter_undo
-- after popularity.tag_filter_undo_retention.
CREATE TABLE popularity.tag_filter_removed (
    run_id bigint NOT NULL REFERENCES popularity.refresh_runs (run_id) ON DELETE CASCADE,
    row_keys text[] NOT NULL,
    removed jsonb[] NOT NULL,
    tags_hashes bigint[] NOT NULL,
    CONSTRAINT one_element_per_row CHECK (cardinality(removed) = cardinality(row_keys)
                                          AND cardinality(tags_hashes) = cardinality(row_keys))
);
CREATE INDEX tag_filter_removed_run ON popularity.tag_filter_removed (run_id);
COMMENT ON TABLE popularity.tag_filter_removed IS
    'The tags each run of filter_tags removed, one row per batch with one element per changed row '
    '(written in the batch''s transaction), so that popularity.undo_filter_tags can put them back; '
    'kept for popularity.tag_filter_undo_retention after the run (popularity.purge_filter_undo)';
COMMENT ON COLUMN popularity.tag_filter_removed.row_keys IS 'The rows: their primary keys, as text';
COMMENT ON COLUMN popularity.tag_filter_removed.removed IS
    'Per row, the removed tags as [[position, tag], ...]: positions in the array before the run, increasing';
COMMENT ON COLUMN popularity.tag_filter_removed.tags_hashes IS
    'Per row, popularity._tags_hash of the tags the run wrote (a 64-bit hash of the binary value): '
    'undo restores only a row whose tags still hash to it';
GRANT SELECT ON popularity.tag_filter_removed TO PUBLIC;

CREATE VIEW popularity.tag_filter_removed_rows AS
SELECT d.run_id, u.row_key, u.removed, u.tags_hash
FROM popularity.tag_filter_removed AS d,
     unnest(d.row_keys, d.removed, d.tags_hashes) AS u(row_key, removed, tags_hash);
COMMENT ON VIEW popularity.tag_filter_removed_rows IS
    'popularity.tag_filter_removed one row per changed row: the run, the row''s key, the tags it lost '
    'with their positions, the hash of the tags the run wrote';
GRANT SELECT ON popularity.tag_filter_removed_rows TO PUBLIC;

CREATE FUNCTION popularity._removed_tags(tags jsonb, record_provider text, media_type text)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'popularity_removed_tags'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION popularity._removed_tags(jsonb, text, text) IS
    'The tags the rules remove, as [[position, tag], ...] (positions in tags); NULL when tags is '
    'an array that loses nothing or not an array (internal)';

CREATE FUNCTION popularity._tags_hash(tags jsonb)
RETURNS bigint
AS 'MODULE_PATHNAME', 'popularity_tags_hash'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION popularity._tags_hash(jsonb) IS
    'A 64-bit hash of the binary jsonb value: what a filter run wrote, compared by undo (internal)';

CREATE FUNCTION popularity._restored_tags(tags jsonb, removed jsonb)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'popularity_restored_tags'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION popularity._restored_tags(jsonb, jsonb) IS
    'tags with the removed tags [[position, tag], ...] put back at their positions; raises 22023 '
    'when they do not fit (internal)';

-- Deletes the records of finished (abandoned, undone) runs older than the retention; schedulable
-- with pg_cron. Runs with the caller's rights: the policies limit it to the runs the caller may
-- write.
CREATE FUNCTION popularity.purge_filter_undo(media_type text DEFAULT NULL,
                                            older_than interval DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $function$
#variable_conflict use_column
DECLARE
    v_older_than interval := purge_filter_undo.older_than;
    v_runs bigint[];
    v_deleted bigint;
BEGIN
    IF v_older_than IS NULL THEN
        -- The setting in minutes; 30 days when the library is not loaded in this session.
        SELECT s.setting::bigint * interval '1 minute' INTO v_older_than
        FROM pg_catalog.pg_settings s WHERE s.name = 'popularity.tag_filter_undo_retention';
        v_older_than := coalesce(v_older_than, interval '30 days');
    END IF;
    WITH purged AS (
        UPDATE popularity.refresh_runs r
        SET records_purged_at = pg_catalog.clock_timestamp()
        WHERE r.job = 'filter_tags' AND r.records_removed AND r.records_purged_at IS NULL
          AND r.state NOT IN ('queued', 'running')
          AND (purge_filter_undo.media_type IS NULL OR r.media_type = purge_filter_undo.media_type)
          AND coalesce(r.undone_at, r.finished_at, r.requested_at)
              < pg_catalog.now() - v_older_than
        RETURNING r.run_id)
    SELECT coalesce(pg_catalog.array_agg(p.run_id), '{}') INTO v_runs FROM purged p;
    DELETE FROM popularity.tag_filter_removed d WHERE d.run_id = ANY (v_runs);
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END;
$function$;
COMMENT ON FUNCTION popularity.purge_filter_undo(text, interval) IS
    'Deletes the records of removed tags (popularity.tag_filter_removed) of the runs that ended '
    'more than older_than ago (default: popularity.tag_filter_undo_retention), of one media type or '
    'all; such runs can no longer be undone. Returns the number of rows deleted. CALL filter_tags '
    'runs it for its media type as it starts';

-- Puts back what a run removed, on the rows whose tags are still what the run wrote.
CREATE FUNCTION popularity.undo_filter_tags(run_id bigint, OUT rows_restored bigint,
                                           OUT rows_not_restored bigint,
                                           OUT not_restored text[])
RETURNS record
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $function$
#variable_conflict use_column
DECLARE
    v_run_id CONSTANT bigint := undo_filter_tags.run_id;
    v_run popularity.refresh_runs;
    v_ingestion boolean;
BEGIN
    IF v_run_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'run_id must not be null',
            HINT = 'Pass the run_id of a filter_tags run (popularity.refresh_status, job filter_tags).';
    END IF;
    SELECT * INTO v_run FROM popularity.refresh_runs r WHERE r.run_id = v_run_id AND r.job = 'filter_tags';
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_object',
            MESSAGE = format('unknown tag filter run %s', v_run_id),
            HINT = 'popularity.refresh_status lists the runs of filter_tags (job filter_tags; those of media tables you may read).';
    END IF;
    IF (SELECT c.relkind FROM pg_class AS c WHERE c.oid = v_run.media_table) IS DISTINCT FROM 'r'
       AND (SELECT c.relkind FROM pg_class AS c WHERE c.oid = v_run.media_table) IS DISTINCT FROM 'p' THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_table',
            MESSAGE = format('the table of tag filter run %s no longer exists', v_run_id),
            HINT = 'Its records stay in popularity.tag_filter_removed until they are purged.';
    END IF;
    IF NOT (has_table_privilege(v_run.media_table, 'SELECT')
            AND has_table_privilege(v_run.media_table, 'UPDATE')) THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('permission denied to undo tag filter run %s of %s', v_run_id, v_run.media_table),
            HINT = 'Undoing a run needs SELECT and UPDATE on the media table (and popularity.grant_operator).';
    END IF;
    IF v_run.dry_run THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('tag filter run %s is a dry run: it changed nothing', v_run_id),
            HINT = 'Pass the run_id of a run made without dry_run.';
    END IF;
    -- The run row is locked first: a run cannot be resumed while it is undone.
    SELECT * INTO v_run FROM popularity.refresh_runs r WHERE r.run_id = v_run_id FOR UPDATE;
    IF v_run.state IN ('queued', 'running') THEN
        RAISE EXCEPTION USING ERRCODE = 'object_in_use',
            MESSAGE = format('tag filter run %s is still in progress', v_run_id),
            HINT = format('Cancel it first: SELECT popularity.cancel_refresh(%s);', v_run_id);
    END IF;
    IF v_run.undone_at IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('tag filter run %s was undone already', v_run_id),
            HINT = 'The rows it could not restore are left in popularity.tag_filter_removed.';
    END IF;
    IF NOT v_run.records_removed THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('tag filter run %s kept no record of what it removed', v_run_id),
            HINT = 'popularity.tag_filter_undo was off when the run started.';
    END IF;
    IF v_run.records_purged_at IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('the record of tag filter run %s was purged', v_run_id),
            HINT = 'Records are kept for popularity.tag_filter_undo_retention after a run.';
    END IF;
    SELECT m.filter_tags_at_ingestion INTO v_ingestion
    FROM popularity.media_types m WHERE m.media_table = v_run.media_table;
    IF v_ingestion THEN
        RAISE WARNING 'media type "%" filters tags at ingestion: its trigger applies the rules again to the rows this undo rewrites', v_run.media_type
            USING HINT = 'Fix the rules (popularity.tag_rules) before undoing, or turn filter_tags_at_ingestion off for the undo.';
    END IF;
    -- One statement: restores the rows whose tags still hash to what the run wrote, and replaces
    -- the run's records by one holding the rows not restored (changed or deleted since).
    EXECUTE format(
        'WITH d AS ('
        '    SELECT u.row_key, u.removed, u.tags_hash FROM popularity.tag_filter_removed r,'
        '           ROWS FROM (pg_catalog.unnest(r.row_keys), pg_catalog.unnest(r.removed),'
        '                      pg_catalog.unnest(r.tags_hashes)) AS u(row_key, removed, tags_hash)'
        '    WHERE r.run_id OPERATOR(pg_catalog.=) $1'
        '), restored AS ('
        '    UPDATE %1$s t SET tags = popularity._restored_tags(t.tags, d.removed)'
        '    FROM d WHERE %2$s'
        '      AND popularity._tags_hash(t.tags) OPERATOR(pg_catalog.=) d.tags_hash'
        '      AND pg_catalog.jsonb_typeof(t.tags) OPERATOR(pg_catalog.=) ''array'''
        '    RETURNING d.row_key'
        '), forgotten AS ('
        '    DELETE FROM popularity.tag_filter_removed r WHERE r.run_id OPERATOR(pg_catalog.=) $1'
        '), kept AS ('
        '    INSERT INTO popularity.tag_filter_removed (run_id, row_keys, removed, tags_hashes)'
        '    SELECT $1, pg_catalog.array_agg(d.row_key ORDER BY d.row_key),'
        '           pg_catalog.array_agg(d.removed ORDER BY d.row_key),'
        '           pg_catalog.array_agg(d.tags_hash ORDER BY d.row_key)'
        '    FROM d WHERE NOT EXISTS (SELECT FROM restored x WHERE x.row_key OPERATOR(pg_catalog.=) d.row_key)'
        '    HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 0'
        '    RETURNING row_keys'
        ') '
        'SELECT (SELECT pg_catalog.count(*) FROM restored), coalesce((SELECT k.row_keys FROM kept k), ''{}'')',
        v_run.media_table,
        popularity._key_match_sql(v_run.media_table,
                                  coalesce(v_run.key_columns, ARRAY[v_run.key_column]), 'd.row_key'))
    INTO rows_restored, not_restored USING v_run_id;
    rows_not_restored := pg_catalog.cardinality(not_restored);
    UPDATE popularity.refresh_runs r SET undone_at = pg_catalog.clock_timestamp()
    WHERE r.run_id = v_run_id;
    RAISE NOTICE 'tag filter run % of media type "%" undone: % rows restored, % not restored (changed or deleted since the run)',
        v_run_id, v_run.media_type, rows_restored, rows_not_restored;
END;
$function$;
COMMENT ON FUNCTION popularity.undo_filter_tags(bigint) IS
    'Puts back the tags a run of filter_tags removed, on the rows whose tags are still exactly what '
    'the run wrote, in one transaction, and marks the run undone. Returns how many rows it '
    'restored and the keys of the rows it could not restore (changed or deleted since: '
    'their records stay in popularity.tag_filter_removed). Needs SELECT and UPDATE on the media '
    'table; refuses dry runs, runs in progress and runs without a record';

-- The procedure ------------------------------------------------------------------------------------

-- Queues a filter_tags run of the batch engine (background workers, like refresh_popularity: one
-- committed transaction per batch, rows other transactions hold skipped and revisited, a rewalk for
-- rows moved by transactions in progress when the run was queued) and, with wait, waits for it.
-- While a run (not a dry run) is active, the ingestion trigger applies the rules to every row it
-- writes, so a row that ingestion moves behind the walk is filtered too.
-- search_path: pinned in every transaction segment, as in refresh_popularity (50_refresh.sql).
-- updated_on is deliberately left alone: the tags are not new data.
CREATE PROCEDURE @extschema@.filter_tags(media_type text, dry_run boolean DEFAULT false,
                                         batch_blocks integer DEFAULT NULL, wait boolean DEFAULT true)
LANGUAGE plpgsql
AS $procedure$
#variable_conflict use_column
DECLARE
    v_media_type CONSTANT pg_catalog.text := filter_tags.media_type;
    v_dry_run CONSTANT boolean := filter_tags.dry_run;
    v_batch CONSTANT integer := filter_tags.batch_blocks;
    v_wait CONSTANT boolean := filter_tags.wait;
    v_caller_path pg_catalog.text;
    v_table pg_catalog.regclass;
    v_key pg_catalog.name;
    v_run_id bigint;
    v_active_dry boolean;
    v_missing pg_catalog.text;
    v_status record;
BEGIN
    v_caller_path := pg_catalog.current_setting('search_path');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF v_media_type IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'media type must not be null',
            HINT = 'Pass a media type registered in popularity.media_types.';
    END IF;
    IF v_dry_run IS NULL OR v_wait IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'dry_run and wait must not be null';
    END IF;
    IF v_batch IS NOT NULL AND v_batch < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = pg_catalog.format('batch_blocks must be at least 1, not %s', v_batch),
            HINT = 'batch_blocks is the number of table blocks (8 kB pages) per committed batch; NULL: popularity.batch_blocks.';
    END IF;
    v_table := popularity._media_table(v_media_type);
    -- The rights it needs, said in one sentence before anything runs.
    IF NOT pg_catalog.has_table_privilege(v_table, 'SELECT')
       OR NOT (v_dry_run OR pg_catalog.has_table_privilege(v_table, 'UPDATE')) THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('permission denied to filter the tags of %s', v_table),
            HINT = CASE WHEN v_dry_run THEN 'A dry run needs SELECT on the media table.'
                        ELSE 'filter_tags needs SELECT and UPDATE on the media table (a dry run: SELECT).' END;
    END IF;
    -- The workers update each leaf partition directly: a row cannot move to another partition.
    IF popularity._partition_key_columns(v_table, ARRAY['tags']::name[]) IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'feature_not_supported',
            MESSAGE = pg_catalog.format('media table %s is partitioned by tags, which filter_tags writes', v_table),
            HINT = 'A filtered row would have to move to another partition. Partition by a column filter_tags does not write (Openverse: created_on).';
    END IF;
    -- The workers read the table directly: a row-level security policy would apply to their UPDATE
    -- but not to their scan.
    IF pg_catalog.row_security_active(v_table) THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('row-level security applies to %s for role "%s"', v_table, current_user),
            HINT = 'Run filter_tags as the table owner or a role with BYPASSRLS.';
    END IF;
    -- The columns it needs, with their types.
    SELECT pg_catalog.string_agg(pg_catalog.format('%I %s', need.name, need.type), ', ')
    INTO v_missing
    FROM (VALUES ('tags', 'jsonb'::regtype), ('provider', 'text'::regtype)) AS need(name, type)
    WHERE NOT EXISTS (
        SELECT FROM pg_catalog.pg_attribute a
        WHERE a.attrelid = v_table AND a.attname = need.name AND NOT a.attisdropped AND a.attnum > 0
          AND (a.atttypid = need.type
               OR (need.type = 'text'::regtype AND a.atttypid = 'character varying'::regtype)));
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_column',
            MESSAGE = pg_catalog.format('media table %s lacks columns that filter_tags needs', v_table),
            DETAIL = pg_catalog.format('Missing or of another type: %s.', v_missing),
            HINT = 'A media table has a primary key, provider text or varchar, and tags jsonb.';
    END IF;
    v_key := (popularity._key_columns(v_table))[1];
    -- Background workers run it: without the preloaded library none would ever run.
    PERFORM popularity._require_preload();
    -- The workers connect as the calling role, which must be able to log in.
    IF NOT (SELECT r.rolcanlogin FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'filter_tags workers run as the calling role, and role "%" cannot log in', current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Call filter_tags() as a role with LOGIN that may update the media table.';
    END IF;
    -- Fail early on rules that cannot be loaded.
    PERFORM popularity.filtered_tags('[]'::jsonb, NULL, v_media_type);
    -- It commits, so it must be called on its own (like VACUUM).
    IF v_wait AND popularity._in_transaction_block() THEN
        RAISE EXCEPTION USING ERRCODE = 'active_sql_transaction',
            MESSAGE = 'filter_tags() cannot run inside a transaction block',
            HINT = 'Call it on its own, or with wait => false (the workers start when the transaction commits).';
    END IF;

    -- A Citus distributed table, on the coordinator: each worker node queues its own run over its
    -- shards (65_citus.sql); with wait, waits for all of them.
    IF popularity._citus_node(v_table) = 'coordinator' THEN
        CALL popularity._citus_dispatch('filter_tags', v_media_type, pg_catalog.format(
            'CALL %s.filter_tags(%L::pg_catalog.text, %L::pg_catalog.bool, %L::pg_catalog.int4, wait => false)',
            popularity._extension_schema(),
            v_media_type, v_dry_run, v_batch), v_wait);
        PERFORM pg_catalog.set_config('search_path', v_caller_path, true);
        RETURN;
    END IF;

    -- A run in progress for this media type: wait for it (the same kind), or refuse.
    SELECT r.run_id, r.dry_run INTO v_run_id, v_active_dry
    FROM popularity.refresh_runs r
    WHERE r.media_type = v_media_type AND r.job = 'filter_tags' AND r.state IN ('queued', 'running');
    IF v_run_id IS NOT NULL AND v_active_dry IS DISTINCT FROM v_dry_run THEN
        RAISE EXCEPTION USING ERRCODE = 'object_in_use',
            MESSAGE = pg_catalog.format('a %s of media type "%s" is in progress (run %s)',
                                        CASE WHEN v_active_dry THEN 'dry run of filter_tags' ELSE 'filter_tags run' END,
                                        v_media_type, v_run_id),
            HINT = 'Wait for it (popularity.refresh_status), or stop it with popularity.cancel_refresh(run_id).';
    END IF;
    IF v_run_id IS NOT NULL THEN
        RAISE NOTICE 'filter_tags run % of media type "%" is in progress: %', v_run_id, v_media_type,
            CASE WHEN v_wait THEN 'waiting for it' ELSE 'not starting another' END;
    ELSE
        -- The records of removed tags of this media type's old runs go first.
        IF NOT v_dry_run THEN
            PERFORM popularity.purge_filter_undo(v_media_type);
        END IF;
        BEGIN
            INSERT INTO popularity.refresh_runs AS r
                (job, media_type, media_table, key_column, providers, requested_by, writers, dry_run,
                 records_removed, batch_blocks)
            VALUES ('filter_tags', v_media_type, v_table, v_key, '{}', current_user::text::regrole::oid,
                    NULL, v_dry_run,
                    NOT v_dry_run
                        AND coalesce(pg_catalog.current_setting('popularity.tag_filter_undo', true), 'on')::boolean,
                    v_batch)
            RETURNING r.run_id INTO v_run_id;
        EXCEPTION WHEN unique_violation THEN
            RAISE EXCEPTION 'a filter_tags run of media type "%" is already in progress', v_media_type
                USING ERRCODE = 'object_in_use',
                      HINT = 'Wait for it (popularity.refresh_status), or stop it with popularity.cancel_refresh().';
        END;
        PERFORM popularity._create_tasks(v_run_id);
        -- The run commits with writers NULL: from its commit on, the ingestion trigger filters every
        -- row it writes (not for a dry run), so a row that ingestion moves behind the walk is
        -- filtered anyway; then the scheduler records the transactions in progress (they may still
        -- write rows unfiltered), the run waits for them and walks again what it walked before
        -- they ended (as a refresh does), and only then starts.
        PERFORM popularity._wake_scheduler();
        RAISE NOTICE '% run % of media type "%" queued',
            CASE WHEN v_dry_run THEN 'dry filter_tags' ELSE 'filter_tags' END, v_run_id, v_media_type;
    END IF;
    IF NOT v_wait THEN
        PERFORM pg_catalog.set_config('search_path', v_caller_path, true);
        RETURN;
    END IF;
    COMMIT;
    CALL popularity._wait_refresh(v_run_id);

    SELECT s.state, s.rows_scanned, s.rows_updated, s.counters INTO v_status
    FROM popularity.refresh_status s WHERE s.run_id = v_run_id;
    RAISE NOTICE '%', pg_catalog.format(
        '%s run %s of media type "%s" %s: %s rows scanned, %s %s, %s not an array; tags dropped: %s',
        CASE WHEN v_dry_run THEN 'dry filter_tags' ELSE 'filter_tags' END, v_run_id, v_media_type,
        v_status.state, v_status.rows_scanned, v_status.rows_updated,
        CASE WHEN v_dry_run THEN 'would change' ELSE 'changed' END,
        coalesce(v_status.counters ->> 'rows_not_an_array', '0'),
        coalesce((SELECT pg_catalog.string_agg(pg_catalog.format('%s %s', v.value, v.key), ', ' ORDER BY v.key)
                  FROM pg_catalog.jsonb_each_text(v_status.counters) v WHERE v.key <> 'rows_not_an_array'),
                 'none'));
    PERFORM pg_catalog.set_config('search_path', v_caller_path, true);
END;
$procedure$;
COMMENT ON PROCEDURE @extschema@.filter_tags(text, boolean, integer, boolean) IS
    'Applies the tag rules in place to a media type''s table: queues a run of the batch engine '
    '(background workers, committed batches of batch_blocks blocks that skip rows other '
    'transactions hold and revisit them) and, with wait, returns when it has finished. With '
    'dry_run it changes no media row and only counts. Progress and counts: '
    'popularity.refresh_status (job filter_tags)';

-- (comments of routines redefined above)
COMMENT ON FUNCTION popularity._refresh_run_guard() IS
    'Trigger on popularity.refresh_runs: a run is requested by the inserting role, for the registered '
    'table of its media type, which that role may read and update (a dry run: read), with its '
    'providers'' current constants; its identity never changes';
COMMENT ON PROCEDURE popularity._wait_refresh(bigint) IS
    'Waits for a run of either job: progress NOTICEs (or what the run waits for) every '
    'popularity.progress_interval; a cancel of the wait cancels the run; raises if the run failed or '
    'was cancelled';

-- stale state from stored state (issue 13, item 3): a refresh rescores every provider whose
-- constant changed since the provider was last rescored, whoever changed it (refresh_constants
-- called on its own, a CALL whose session died between its two commits), or that never was;
-- freshness() reports the same notion. Each constant gets a version (a new one whenever it
-- changes), each run records the constants and versions of its providers when it is queued, and
-- popularity.rescore_state compares the two.
-- An upgraded install has no recorded versions: every provider that has a constant is stale once,
-- so the first refresh_popularity after the update rescores them all (one pass over the table that
-- rewrites only the rows whose score differs; on an install kept up to date, none).
ALTER TABLE popularity.metrics ADD COLUMN constant_version uuid NOT NULL DEFAULT gen_random_uuid();
COMMENT ON COLUMN popularity.metrics.constant_version IS
    'Identifies the current value of the constant: a new random one whenever the constant changes, whoever changes it '
    '(never reused, so a value seen again means the constant has not changed since)';

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

ALTER TABLE popularity.refresh_runs ADD COLUMN constants double precision[] NOT NULL DEFAULT '{}',
    ADD COLUMN constant_versions uuid[] NOT NULL DEFAULT '{}';
-- (popularity._refresh_run_guard records them: see its definition in the relations block)

-- Which providers' rows carry their current constant, from stored state alone: a provider is stale
-- when it has a constant and the last succeeded run that rescored it did not record the constant's
-- current version when it was queued (the constant changed during or after that run, however it
-- was changed), or no run ever rescored it. refresh_popularity rescores the stale providers;
-- freshness() reports the same column. (Runs without providers, e.g. "nothing to rescore", add
-- nothing.)
CREATE VIEW popularity.rescore_state AS
SELECT x.media_type, x.provider, x.constant, x.constant_changed_at,
       last.run_id AS rescored_run, last.finished_at AS rescored_at, last.constant AS rescored_constant,
       x.constant IS NOT NULL AND last.version IS DISTINCT FROM x.constant_version AS stale
FROM popularity.metrics AS x
LEFT JOIN (
    SELECT DISTINCT ON (r.media_type, u.provider) r.media_type, u.provider, r.run_id, r.finished_at,
           u.constant, u.version
    FROM popularity.refresh_runs AS r
    CROSS JOIN LATERAL unnest(r.providers, r.constants, r.constant_versions) AS u(provider, constant, version)
    WHERE r.state = 'succeeded' AND r.job = 'refresh'
    ORDER BY r.media_type, u.provider, r.finished_at DESC, r.run_id DESC
) AS last ON last.media_type = x.media_type AND last.provider = x.provider;
COMMENT ON VIEW popularity.rescore_state IS
    'Per configured provider: its constant, when it changed, the last succeeded refresh run that rescored it '
    '(when it finished, the constant it was queued with), and stale: it has a constant that changed since that '
    'run was queued, or was never rescored (the next refresh_popularity rescores it)';
GRANT SELECT ON popularity.rescore_state TO PUBLIC;
-- refresh_popularity queues the stale providers (see its definitions above).
COMMENT ON PROCEDURE @extschema@.refresh_popularity(text, text[], boolean, boolean) IS
    'Recomputes the constants of a media type, then rescoring of every provider whose constant changed '
    'since it was last rescored, or that never was (popularity.rescore_state.stale; all with force) runs '
    'in background workers; with wait, returns when the run finished and raises if it failed or was cancelled';

-- freshness reports rescore_pending (a new result column, hence DROP + CREATE).
DROP FUNCTION popularity.freshness(text, integer, boolean, double precision, text);
CREATE FUNCTION popularity.freshness(
    media_type text, sample_rows integer DEFAULT 10000, exact boolean DEFAULT false,
    seed double precision DEFAULT NULL, sampling text DEFAULT 'bernoulli')
RETURNS TABLE (provider text, metric text, constant double precision, method text, rows_counted bigint,
               rows_examined bigint, rows_stale bigint, stale_fraction double precision,
               stale_lower double precision, stale_upper double precision, estimated_stale_rows bigint,
               constant_changed_at timestamptz, last_refresh_finished_at timestamptz, rescore_pending boolean)
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
                WHERE r.media_type = $1 AND r.state = 'succeeded' AND k.provider = ANY (r.providers)),
               coalesce(rs.stale, false)
        FROM keys AS k
        LEFT JOIN examined AS e ON e.provider IS NOT DISTINCT FROM k.provider
        LEFT JOIN cfg AS m ON m.provider = k.provider
        LEFT JOIN popularity.rescore_state AS rs ON rs.media_type = $1 AND rs.provider = k.provider
        LEFT JOIN popularity.provider_stats AS s ON s.media_type = $1 AND s.provider IS NOT DISTINCT FROM k.provider
        ORDER BY k.provider NULLS FIRST
        $sql$, tbl, sample_clause)
        USING $1, CASE WHEN sample_clause = '' THEN 'exact' ELSE 'sample' END;
END $$;
COMMENT ON FUNCTION popularity.freshness(text, integer, boolean, double precision, text) IS
    'Per provider: the fraction of rows whose stored score differs from the score under the current constant, '
    'from a sample of about sample_rows rows (bernoulli, or system: blocks, approximate) with an exact 99% '
    'Clopper-Pearson interval (exact => true scans every row), the exact row count, when the constant last '
    'changed, when the last successful refresh of the provider finished, and whether the next refresh_popularity '
    'rescores it (popularity.rescore_state.stale); seed makes the sample repeatable';

-- One "score differs" (issue 13, item 6): the ingestion trigger, the refresh and _score_differs
-- share core::score_differs.
COMMENT ON FUNCTION popularity._score_differs(double precision, double precision, double precision) IS
    'Whether a stored score must be rewritten, as the ingestion trigger and the refresh judge it: NULL-ness differs, or the values are unequal (NaN equals NaN, -0 equals 0) and their relative difference exceeds the tolerance (Boost.Math; NULL tolerance = 0)';

-- One configuration cache with one invalidation (issue 13, item 6): every configuration table has
-- the statement trigger popularity._config_changed() (no argument), which replaces
-- popularity._tag_rules_changed().
COMMENT ON FUNCTION popularity._config_changed() IS
    'Statement trigger on every configuration table: backends reload their cached configuration once the change is visible to them (internal)';
DROP TRIGGER metrics_changed ON popularity.metrics;
CREATE TRIGGER metrics_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON popularity.metrics
    FOR EACH STATEMENT EXECUTE FUNCTION popularity._config_changed();
DROP TRIGGER media_types_changed ON popularity.media_types;
CREATE TRIGGER media_types_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON popularity.media_types
    FOR EACH STATEMENT EXECUTE FUNCTION popularity._config_changed();
DROP TRIGGER tag_rules_changed ON popularity.tag_rules;
DROP FUNCTION popularity._tag_rules_changed();
CREATE TRIGGER tag_rules_changed
AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON popularity.tag_rules
FOR EACH STATEMENT EXECUTE FUNCTION popularity._config_changed();
COMMENT ON TRIGGER tag_rules_changed ON popularity.tag_rules IS
    'Makes every backend reload its cached configuration (tag rules, constants) once the change is visible to it';

-- Verdict identity and the built-in rules in one place (issue 13, item 6): the view
-- popularity.tag_rule_defaults reads the library's rules; _tag_verdicts() lists the verdicts.
CREATE FUNCTION popularity.builtin_tag_rules(
    OUT min_accuracy numeric, OUT filtered_providers text[], OUT exact_denylist text[],
    OUT substring_denylist text[], OUT machine_labels text[])
RETURNS record
AS 'MODULE_PATHNAME', 'popularity_builtin_tag_rules'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION popularity.builtin_tag_rules() IS
    'The built-in tag rules of the library (the Openverse data refresh rules), as popularity.tag_rule_defaults shows them';
CREATE OR REPLACE VIEW popularity.tag_rule_defaults AS
SELECT d.min_accuracy, d.filtered_providers, d.exact_denylist, d.substring_denylist, d.machine_labels
FROM popularity.builtin_tag_rules() AS d;
COMMENT ON VIEW popularity.tag_rule_defaults IS
    'Built-in tag rules (the Openverse data refresh rules, from the library); override them in popularity.tag_rules';
CREATE FUNCTION popularity._tag_verdicts()
RETURNS SETOF text
AS 'MODULE_PATHNAME', 'popularity_tag_verdicts'
LANGUAGE C IMMUTABLE PARALLEL SAFE ROWS 7;
COMMENT ON FUNCTION popularity._tag_verdicts() IS
    'The tag verdicts'' names in the library''s order, kept first: element k >= 2 of _tag_drop_counts counts the k-th (internal)';

-- resilience (issue 13, items 4 and 5): the end of a run waits only for the transactions that may
-- write its table (a write lock on it, or a transaction id), never for read-only snapshots
-- (_table_writers replaces _writers_in_progress in refresh_popularity; the old function stays for
-- 0.1.0's library calls); refresh_status shows percent done, the estimated end, what a run waits
-- for (writers, rows held by other transactions, a worker slot, a retry), by which processes and
-- since when, batches retried and the last error; a batch that hits a lock or statement timeout, a
-- serialization failure or a deadlock is retried (popularity.batch_retries); every worker error is
-- recorded in its task; a worker that could not be started is not an attempt.
ALTER TABLE popularity.refresh_tasks
    ADD COLUMN failures integer NOT NULL DEFAULT 0,
    ADD COLUMN retries bigint NOT NULL DEFAULT 0,
    ADD COLUMN last_error text,
    ADD COLUMN last_error_at timestamptz,
    ADD COLUMN waiting_for text,
    ADD COLUMN waiting_since timestamptz,
    ADD COLUMN waiting_pids integer[];

CREATE FUNCTION popularity._table_writers(media_table regclass)
RETURNS text[]
AS 'MODULE_PATHNAME', 'popularity_table_writers'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION popularity._table_writers(regclass) IS
    'Virtual transaction ids of the other transactions of this database that may write the table: they hold '
    'a write lock on it (ROW EXCLUSIVE or stronger) or a transaction id (read-only snapshots are left out)';

COMMENT ON FUNCTION popularity._writers_ended(text[]) IS
    'Whether all these transactions (from _table_writers) have ended; never waits';

CREATE OR REPLACE FUNCTION popularity.resume_refresh(run_id bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_job text;
BEGIN
    -- Workers run as the role that queued the run: only that role (or a member of it) resumes it.
    IF EXISTS (SELECT FROM popularity.refresh_runs AS r WHERE r.run_id = resume_refresh.run_id
               AND NOT pg_has_role(r.requested_by, 'MEMBER')) THEN
        RAISE EXCEPTION 'run % was queued by another role', run_id
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Its workers act with the rights of the role that queued it: resume it as that role, or start a new run.';
    END IF;
    UPDATE popularity.refresh_runs AS r SET state = 'queued', finished_at = NULL, error = NULL,
           -- A filter run's writers are recorded again by the scheduler, once the run is queued
           -- (the ingestion trigger filters again from then on).
           writers = CASE WHEN r.job = 'filter_tags' THEN NULL ELSE r.writers END
    WHERE r.run_id = resume_refresh.run_id AND r.state IN ('failed', 'cancelled')
      AND r.undone_at IS NULL AND r.records_purged_at IS NULL
      AND r.media_table = (SELECT m.media_table FROM popularity.media_types AS m WHERE m.media_type = r.media_type)
    RETURNING r.job INTO v_job;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % cannot be resumed', run_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Only failed or cancelled runs of a table still registered, not undone, can be resumed; see popularity.refresh_status.';
    END IF;
    UPDATE popularity.refresh_tasks AS t SET state = 'pending', error = NULL, attempts = 0, failures = 0,
           waiting_for = NULL, waiting_since = NULL, waiting_pids = NULL
    WHERE t.run_id = resume_refresh.run_id AND t.state IN ('failed', 'cancelled', 'running', 'revisiting');
    IF v_job = 'filter_tags' THEN
        -- While the run was stopped the ingestion trigger did not filter: rows written meanwhile
        -- may be anywhere, so the whole table is walked again (rows already filtered cost no write).
        UPDATE popularity.refresh_tasks AS t SET state = 'pending', next_block = t.first_block, rewalk = false
        WHERE t.run_id = resume_refresh.run_id;
    END IF;
    PERFORM popularity._wake_scheduler();
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'another refresh of the same media type is in progress'
        USING ERRCODE = 'object_in_use', HINT = 'Wait for it to finish, or cancel it first.';
END $$;
COMMENT ON FUNCTION popularity.resume_refresh(bigint) IS
    'Continues a failed or cancelled run from its last committed batch';

-- New columns in the middle of the view: dropped and created again (security_invoker: see the
-- roles block).
DROP VIEW popularity.refresh_status;
CREATE VIEW popularity.refresh_status AS
SELECT r.run_id, r.job, r.media_type, nullif(p.provider, '') AS provider, r.state, r.forced, r.dry_run,
       blocks.done AS blocks_done, blocks.total AS blocks_total,
       CASE WHEN r.state = 'succeeded' THEN 100.0
            WHEN blocks.total > 0 THEN round(100.0 * least(blocks.done, blocks.total) / blocks.total, 1)
            ELSE 0.0 END AS percent_done,
       coalesce(c.rows_scanned, 0) AS rows_scanned, coalesce(c.rows_updated, 0) AS rows_updated,
       coalesce(c.rows_skipped_locked, 0) AS rows_skipped_locked,
       blocks.pending_revisit AS rows_pending_revisit,
       blocks.batches, blocks.longest_batch_ms,
       round((coalesce(c.rows_scanned, 0)
              / greatest(extract(epoch FROM coalesce(r.finished_at, clock_timestamp()) - r.started_at), 0.001))::numeric)
           AS rows_per_second,
       CASE WHEN r.job = 'filter_tags' THEN coalesce(k.counters, '{}') END AS counters,
       -- When the walk of the blocks should end, at the rate so far (the end-of-run waits aside).
       CASE WHEN r.state = 'running' AND blocks.done > 0 AND blocks.done < blocks.total
            THEN clock_timestamp() + (clock_timestamp() - r.started_at)
                                     * ((blocks.total - blocks.done)::double precision / blocks.done) END AS eta,
       w.waiting_for, w.waiting_pids, w.waiting_since,
       blocks.retries, blocks.last_error,
       r.requested_at, r.started_at, r.finished_at, r.error
FROM popularity.refresh_runs AS r
-- A refresh counts per provider; a filter run has one group, every row ('').
CROSS JOIN LATERAL unnest(CASE WHEN r.job = 'filter_tags' THEN ARRAY[''] ELSE r.providers END) AS p(provider)
LEFT JOIN LATERAL (
    SELECT sum(x.rows_scanned) AS rows_scanned, sum(x.rows_updated) AS rows_updated,
           sum(x.rows_skipped_locked) AS rows_skipped_locked
    FROM popularity.refresh_progress AS x JOIN popularity.refresh_tasks AS t USING (task_id)
    WHERE t.run_id = r.run_id AND x.provider = p.provider
) AS c ON true
LEFT JOIN LATERAL (
    SELECT jsonb_object_agg(y.counter, y.total ORDER BY y.counter) AS counters
    FROM (SELECT x.counter, sum(x.value) AS total
          FROM popularity.refresh_counters AS x JOIN popularity.refresh_tasks AS t USING (task_id)
          WHERE t.run_id = r.run_id GROUP BY x.counter) AS y
) AS k ON true
LEFT JOIN LATERAL (
    SELECT sum(t.next_block - t.first_block) AS done, sum(t.end_block - t.first_block) AS total,
           sum(t.batches) AS batches, round(max(t.longest_batch_ms)::numeric, 1) AS longest_batch_ms,
           (SELECT count(*) FROM popularity.refresh_skipped AS s JOIN popularity.refresh_tasks AS u USING (task_id)
            WHERE u.run_id = r.run_id) AS pending_revisit,
           sum(t.retries) AS retries,
           (array_agg(t.last_error ORDER BY t.last_error_at DESC) FILTER (WHERE t.last_error IS NOT NULL))[1] AS last_error
    FROM popularity.refresh_tasks AS t WHERE t.run_id = r.run_id
) AS blocks ON true
-- What an active run waits for: what its unfinished tasks wait for (a queued run: its scheduler, a
-- background worker too, to start), since when, and the processes: those its tasks recorded (rows'
-- holders, a lock's holders), and those of the run's writers still in progress (through their
-- virtual transaction ids' locks).
LEFT JOIN LATERAL (
    SELECT CASE WHEN r.state = 'queued' THEN 'worker slot'
                ELSE string_agg(DISTINCT t.waiting_for, ', ') END AS waiting_for,
           CASE WHEN r.state = 'queued' THEN r.requested_at ELSE min(t.waiting_since) END AS waiting_since,
           (SELECT array_agg(DISTINCT x.pid ORDER BY x.pid)
            FROM (SELECT unnest(u.waiting_pids) FROM popularity.refresh_tasks AS u
                  WHERE u.run_id = r.run_id AND u.state IN ('pending', 'running', 'revisiting')
                  UNION ALL
                  SELECT l.pid FROM pg_catalog.pg_locks AS l
                  WHERE bool_or(t.waiting_for = 'writers') AND l.locktype = 'virtualxid'
                    AND l.virtualxid = ANY (r.writers) AND l.granted) AS x(pid)) AS waiting_pids
    FROM popularity.refresh_tasks AS t
    WHERE t.run_id = r.run_id AND t.state IN ('pending', 'running', 'revisiting')
) AS w ON r.state IN ('queued', 'running');
COMMENT ON VIEW popularity.refresh_status IS
    'Per run of either job and provider (a filter run: one row, provider NULL): state, blocks '
    'done/total and percent, rows scanned, updated (a dry run: would be) and skipped while locked, '
    'batches, the longest batch that wrote rows (ms), rate, the filter''s counters (tags dropped per '
    'verdict) and estimated end, what an active run waits for (writers, rows held by other '
    'transactions, a worker slot, a retry), by which processes and since when, batches retried and '
    'the last error, times and error (history included)';
GRANT SELECT ON popularity.refresh_status TO PUBLIC;

-- foreign partitions: refused under a registered media table, at registration and when attached or
-- created later (issue 14, item 1): they broke ingestion of every partition.

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

-- 0.2.0: partitioned media tables. A run walks every leaf partition (tasks per leaf, a leaf's own
-- relfilenode), rows are named by a primary key of any width (key_columns), and the workers cover
-- partitions created or attached during a run.
ALTER TABLE popularity.refresh_runs ADD COLUMN key_columns name[];
ALTER TABLE popularity.refresh_runs DISABLE TRIGGER refresh_run_guard;
UPDATE popularity.refresh_runs SET key_columns = ARRAY[key_column];
ALTER TABLE popularity.refresh_runs ENABLE TRIGGER refresh_run_guard;
ALTER TABLE popularity.refresh_tasks ADD COLUMN leaf regclass, ADD COLUMN leaf_relfilenode oid;
UPDATE popularity.refresh_tasks AS t SET leaf = r.media_table, leaf_relfilenode = r.relfilenode
FROM popularity.refresh_runs AS r WHERE r.run_id = t.run_id;
CREATE INDEX refresh_tasks_leaf ON popularity.refresh_tasks (run_id, leaf);
COMMENT ON TABLE popularity.refresh_tasks IS
    'A run''s units of work: contiguous block ranges of the media table or of one of its leaf partitions '
    '(leaf), each with its progress marker (next_block) committed in the same transaction as each batch';

-- The primary key of a media table, its columns in order (any number of them: a partitioned
-- table's includes the partition key). The workers find rows they could not lock again by it.
CREATE FUNCTION popularity._key_columns(media_table regclass)
RETURNS name[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    result name[];
BEGIN
    SELECT array_agg(a.attname ORDER BY k.n) INTO result
    FROM pg_index AS i
    CROSS JOIN LATERAL unnest(i.indkey[0:i.indnkeyatts - 1]) WITH ORDINALITY AS k(attnum, n)
    JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indrelid = media_table AND i.indisprimary;
    IF result IS NULL THEN
        RAISE EXCEPTION 'table % has no primary key', media_table
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'The workers find rows they could not lock again by the primary key; add one (Openverse: identifier; on a partitioned table it includes the partition key).';
    END IF;
    RETURN result;
END $$;
COMMENT ON FUNCTION popularity._key_columns(regclass) IS
    'The primary key columns of a media table, in order';

-- The rows of `t` whose primary key equals the key written as text in the expression `key_text`
-- (SQL), each key column compared with its type's equality operator: one column, the column's text
-- form; several, a text array of their text forms. The workers write and read keys so too
-- (src/worker/key.cpp).
CREATE FUNCTION popularity._key_match_sql(media_table regclass, key_columns name[], key_text text)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    result text;
    matched integer;
BEGIN
    -- Each column's equality is the one of the primary key index's operator class for it (the
    -- operator the index serves), never an operator found by name.
    SELECT string_agg(
               CASE WHEN cardinality(key_columns) = 1
                    THEN format('t.%I OPERATOR(%I.%s) (%s)::%s', k.name, ns.nspname, o.oprname, key_text,
                                format_type(a.atttypid, NULL))
                    ELSE format('t.%I OPERATOR(%I.%s) ((%s)::pg_catalog.text[])[%s]::%s', k.name, ns.nspname,
                                o.oprname, key_text, k.n, format_type(a.atttypid, NULL)) END,
               ' AND ' ORDER BY k.n),
           count(*)
    INTO result, matched
    FROM unnest(key_columns) WITH ORDINALITY AS k(name, n)
    JOIN pg_attribute AS a ON a.attrelid = media_table AND a.attname = k.name AND NOT a.attisdropped
    JOIN pg_index AS i ON i.indrelid = media_table AND i.indisprimary AND i.indkey[k.n - 1] = a.attnum
    JOIN pg_opclass AS c ON c.oid = i.indclass[k.n - 1]
    JOIN pg_amop AS ao ON ao.amopfamily = c.opcfamily AND ao.amopmethod = c.opcmethod
                      AND ao.amoplefttype = c.opcintype AND ao.amoprighttype = c.opcintype
                      AND ao.amopstrategy = 3 -- btree equality
    JOIN pg_operator AS o ON o.oid = ao.amopopr
    JOIN pg_namespace AS ns ON ns.oid = o.oprnamespace;
    IF matched IS DISTINCT FROM cardinality(key_columns) THEN
        RAISE EXCEPTION 'the primary key of % is no longer (%)', media_table, array_to_string(key_columns, ', ')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'The run named its rows by that key; its record cannot be matched any more.';
    END IF;
    RETURN result;
END $$;
COMMENT ON FUNCTION popularity._key_match_sql(regclass, name[], text) IS
    'SQL comparing the primary key of alias t with a key written as text (one column: its text; '
    'several: a text array)';

-- The relations a run walks for a media table: the table itself, or the leaf partitions of a
-- partitioned one (at any depth; foreign partitions are refused under registered tables).
CREATE FUNCTION popularity._media_leaves(media_table regclass)
RETURNS SETOF regclass
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF popularity._citus_distributed(media_table) THEN
        RETURN QUERY SELECT * FROM popularity._citus_local_shards(media_table);
        RETURN;
    END IF;
    -- The ordinary tables of the tree (a partitioned table's rows are in its leaves).
    RETURN QUERY
    SELECT t.rel FROM popularity._media_tree(media_table) AS t(rel) JOIN pg_class AS c ON c.oid = t.rel
    WHERE c.relkind = 'r';
END $$;
COMMENT ON FUNCTION popularity._media_leaves(regclass) IS
    'The relations a run walks: the media table, or the leaf partitions of a partitioned one, or the '
    'shards of a Citus distributed table on this node';

-- (_create_tasks, the run guard, refresh_popularity, filter_tags and undo_filter_tags are
-- replaced where they are defined above.)
DROP FUNCTION popularity._key_column(regclass);

-- 0.2.0: partitions under a registered media table carry the counts triggers (statement-level
-- triggers are not inherited, and a statement, the workers' included, may name a partition), kept
-- as partitions come and go by an event trigger, which also marks the counts for reconciliation when
-- rows join or leave the table (ATTACH / DETACH PARTITION).
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
-- ATTACH PARTITION, DETACH PARTITION), for the provider counts:
-- - a new member of the tree gets the counts triggers (statement-level triggers are not inherited,
--   and a statement may name a partition directly);
-- - a table that left the tree loses them (they would count its rows for the media type);
-- - the rows of a partition attached (or detached) join (or leave) the table without a row trigger
--   firing: the media type's counts are marked for popularity.reconcile_stats
--   (provider_stats.reconcile_pending says so until it runs).
-- As the extension owner, like the check above; only the trees of the tables the command touched.
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

CREATE OR REPLACE FUNCTION popularity._remove_stats_triggers(media_table regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel regclass;
BEGIN
    FOR rel IN SELECT * FROM popularity._media_tree(media_table) LOOP
        PERFORM popularity._remove_stats_triggers_on(rel);
    END LOOP;
END $$;
COMMENT ON FUNCTION popularity._remove_stats_triggers(regclass) IS
    'Removes the counts triggers from a media table and its partitions (called by unregister_media_type)';

CREATE OR REPLACE FUNCTION popularity._stats_truncated()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM popularity.media_types AS m
                   WHERE m.media_type = TG_ARGV[0] AND m.media_table = TG_RELID) THEN
        -- A partition of the registered table, truncated on its own: its rows are gone, and only
        -- a recount says how many of each provider they were.
        IF EXISTS (SELECT FROM popularity.media_types AS m
                   WHERE m.media_type = TG_ARGV[0]
                     AND m.media_table IN (SELECT a.relid FROM pg_partition_ancestors(TG_RELID) AS a(relid))) THEN
            INSERT INTO popularity.stats_marks (media_type, provider, reason)
            VALUES (TG_ARGV[0], NULL, 'partition truncated');
            RETURN NULL;
        END IF;
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
    'Counts trigger (AFTER TRUNCATE): zeroes the media type''s counts and marks it for reconcile_stats '
    '(a partition truncated on its own: marks it only)';

-- The partitions of media tables registered before: their counts triggers, and a recount (statements
-- that named a partition were not counted).
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT m.media_type, x.rel
             FROM popularity.media_types AS m CROSS JOIN LATERAL popularity._media_tree(m.media_table) AS x(rel)
             WHERE x.rel <> m.media_table
               AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger AS g
                               WHERE g.tgrelid = x.rel AND g.tgname = 'zz_popularity_stats_insert') LOOP
        PERFORM popularity._install_stats_triggers_on(r.media_type, r.rel);
        INSERT INTO popularity.stats_marks (media_type, provider, reason) VALUES (r.media_type, NULL, 'upgrade');
    END LOOP;
END $$;

-- Citus: distributed media tables (issue 14, item 2): sql/install/65_citus.sql
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

-- reconcile_stats: on a Citus coordinator each worker node reconciles its shards' counts (60_stats.sql)
CREATE OR REPLACE PROCEDURE popularity.reconcile_stats(media_type text DEFAULT NULL, INOUT corrections integer DEFAULT NULL)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    target record;
    ids bigint[];
    c record;
    failed text;
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
        -- A Citus distributed table, on the coordinator: each worker node reconciles the counts of
        -- its own shards (the counts live there; 65_citus.sql).
        IF popularity._citus_node(target.media_table) = 'coordinator' THEN
            SELECT corrections + coalesce(sum(nullif(w.result, '')::integer) FILTER (WHERE w.success), 0),
                   string_agg(format('%s:%s: %s', w.node_name, w.node_port, w.result), '; ') FILTER (WHERE NOT w.success)
            INTO corrections, failed
            FROM popularity._citus_on_workers(ARRAY[format('CALL popularity.reconcile_stats(%L::pg_catalog.text)', target.media_type)]) AS w;
            IF failed IS NOT NULL THEN
                RAISE EXCEPTION 'could not reconcile the counts of media type "%" on every Citus worker node', target.media_type
                    USING ERRCODE = 'external_routine_exception', DETAIL = failed;
            END IF;
            DELETE FROM popularity.stats_marks AS k WHERE k.media_type = target.media_type;
            CONTINUE;
        END IF;
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
            $sql$, popularity._counted_rows_sql(target.media_table))
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

-- 0.2.0: a partition attached or detached marks its media type for a rescore (rescore_marks, read
-- by rescore_state); the counts triggers leave only the partitions a DETACH detached; a dropped
-- partition marks the counts; the partitions' event trigger is created last (it calls the Citus
-- predicates above).

-- Media types whose rows may carry scores no run gave them, though no constant changed: a partition
-- attached with rows scored elsewhere (popularity._partitions_changed). Every provider of the media
-- type is stale until a refresh queued after the mark succeeds.
CREATE TABLE popularity.rescore_marks (
    media_type text NOT NULL REFERENCES popularity.media_types (media_type) ON DELETE CASCADE,
    reason text NOT NULL,
    marked_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE popularity.rescore_marks IS
    'Media types whose every provider is stale until a refresh queued after the mark succeeds (a partition '
    'attached with rows scored elsewhere)';
GRANT SELECT ON popularity.rescore_marks TO PUBLIC;

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

CREATE OR REPLACE VIEW popularity.rescore_state AS
SELECT x.media_type, x.provider, x.constant, x.constant_changed_at,
       last.run_id AS rescored_run, last.finished_at AS rescored_at, last.constant AS rescored_constant,
       x.constant IS NOT NULL
       AND (last.version IS DISTINCT FROM x.constant_version
            OR EXISTS (SELECT FROM popularity.rescore_marks AS k
                       WHERE k.media_type = x.media_type AND k.marked_at > last.requested_at)) AS stale
FROM popularity.metrics AS x
LEFT JOIN (
    SELECT DISTINCT ON (r.media_type, u.provider) r.media_type, u.provider, r.run_id, r.finished_at,
           u.constant, u.version, r.requested_at
    FROM popularity.refresh_runs AS r
    CROSS JOIN LATERAL unnest(r.providers, r.constants, r.constant_versions) AS u(provider, constant, version)
    WHERE r.state = 'succeeded' AND r.job = 'refresh'
    ORDER BY r.media_type, u.provider, r.finished_at DESC, r.run_id DESC
) AS last ON last.media_type = x.media_type AND last.provider = x.provider;
COMMENT ON VIEW popularity.rescore_state IS
    'Per configured provider: its constant, when it changed, the last succeeded refresh run that rescored it '
    '(when it finished, the constant it was queued with), and stale: it has a constant that changed since that '
    'run was queued, or was never rescored (the next refresh_popularity rescores it)';

CREATE EVENT TRIGGER popularity_partitions_changed ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE')
    EXECUTE FUNCTION popularity._partitions_changed();
COMMENT ON EVENT TRIGGER popularity_partitions_changed IS
    'Keeps the counts triggers and the counts of a registered media table right as partitions come and go';

-- 0.2.0: a task whose partition left the media table is marked (leaf_left), so that the partition
-- attached again is walked; jobs refuse a table partitioned by a column they write.
ALTER TABLE popularity.refresh_tasks ADD COLUMN leaf_left boolean NOT NULL DEFAULT false;
-- The columns among `columns` that partition the media table's tree (at any level): a job writing
-- one of them would have to move rows between partitions, which the workers' updates of a leaf
-- cannot do. (Expression keys are not inspected.)
CREATE FUNCTION popularity._partition_key_columns(media_table regclass, columns name[])
RETURNS name[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT array_agg(DISTINCT a.attname ORDER BY a.attname)
    FROM popularity._media_tree(media_table) AS t(rel)
    JOIN pg_partitioned_table AS p ON p.partrelid = t.rel
    CROSS JOIN LATERAL unnest(p.partattrs::int2[]) AS k(attnum)
    JOIN pg_attribute AS a ON a.attrelid = t.rel AND a.attnum = k.attnum
    WHERE a.attname = ANY (columns)
$$;
COMMENT ON FUNCTION popularity._partition_key_columns(regclass, name[]) IS
    'The given columns that partition the media table (at any level of its tree)';

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
    -- The owner of the table of the row as it was and as it becomes: a role that owns one media
    -- type's table and may only update another's must not move a row to the other one. (NULL, a
    -- table that is gone, is no ownership.)
    IF (NEW.media_type, NEW.provider, NEW.metric, NEW.percentile)
           IS DISTINCT FROM (OLD.media_type, OLD.provider, OLD.metric, OLD.percentile)
       AND NOT (coalesce(pg_has_role((SELECT c.relowner FROM popularity.media_types AS m
                                      JOIN pg_class AS c ON c.oid = m.media_table
                                      WHERE m.media_type = OLD.media_type), 'USAGE'), false)
                AND coalesce(pg_has_role((SELECT c.relowner FROM popularity.media_types AS m
                                          JOIN pg_class AS c ON c.oid = m.media_table
                                          WHERE m.media_type = NEW.media_type), 'USAGE'), false)) THEN
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

-- The records of removed tags follow their run: readable with SELECT on the run's table, written
-- (by filter_tags, undo_filter_tags, purge_filter_undo) with SELECT and UPDATE on it.
ALTER TABLE popularity.tag_filter_removed ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.tag_filter_removed FOR SELECT
    USING (EXISTS (SELECT FROM popularity.refresh_runs AS r WHERE r.run_id = tag_filter_removed.run_id));
CREATE POLICY writers ON popularity.tag_filter_removed FOR ALL
    USING (EXISTS (SELECT FROM popularity.refresh_runs AS r WHERE r.run_id = tag_filter_removed.run_id
                   AND pg_catalog.has_table_privilege(r.media_table, 'SELECT')
                   AND pg_catalog.has_table_privilege(r.media_table, CASE WHEN r.dry_run THEN 'SELECT' ELSE 'UPDATE' END)))
    WITH CHECK (EXISTS (SELECT FROM popularity.refresh_runs AS r WHERE r.run_id = tag_filter_removed.run_id
                        AND pg_catalog.has_table_privilege(r.media_table, 'SELECT')
                        AND pg_catalog.has_table_privilege(r.media_table, CASE WHEN r.dry_run THEN 'SELECT' ELSE 'UPDATE' END)));

ALTER TABLE popularity.refresh_runs ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.refresh_runs FOR SELECT
    USING (pg_catalog.has_table_privilege(media_table, 'SELECT'));
-- A dry run of filter_tags only reads the table, so SELECT on it is enough to run one.
CREATE POLICY writers ON popularity.refresh_runs FOR ALL
    USING (pg_catalog.has_table_privilege(media_table, CASE WHEN dry_run THEN 'SELECT' ELSE 'UPDATE' END))
    WITH CHECK (pg_catalog.has_table_privilege(media_table, CASE WHEN dry_run THEN 'SELECT' ELSE 'UPDATE' END));

ALTER TABLE popularity.refresh_tasks ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.refresh_tasks FOR SELECT
    USING (EXISTS (SELECT FROM popularity.refresh_runs AS r WHERE r.run_id = refresh_tasks.run_id));
CREATE POLICY writers ON popularity.refresh_tasks FOR ALL
    USING (EXISTS (SELECT FROM popularity.refresh_runs AS r WHERE r.run_id = refresh_tasks.run_id
                   AND pg_catalog.has_table_privilege(r.media_table, CASE WHEN r.dry_run THEN 'SELECT' ELSE 'UPDATE' END)))
    WITH CHECK (EXISTS (SELECT FROM popularity.refresh_runs AS r WHERE r.run_id = refresh_tasks.run_id
                        AND pg_catalog.has_table_privilege(r.media_table, CASE WHEN r.dry_run THEN 'SELECT' ELSE 'UPDATE' END)));

ALTER TABLE popularity.refresh_progress ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.refresh_progress FOR SELECT
    USING (EXISTS (SELECT FROM popularity.refresh_tasks AS t WHERE t.task_id = refresh_progress.task_id));
CREATE POLICY writers ON popularity.refresh_progress FOR ALL
    USING (EXISTS (SELECT FROM popularity.refresh_tasks AS t JOIN popularity.refresh_runs AS r USING (run_id)
                   WHERE t.task_id = refresh_progress.task_id AND pg_catalog.has_table_privilege(r.media_table, CASE WHEN r.dry_run THEN 'SELECT' ELSE 'UPDATE' END)))
    WITH CHECK (EXISTS (SELECT FROM popularity.refresh_tasks AS t JOIN popularity.refresh_runs AS r USING (run_id)
                        WHERE t.task_id = refresh_progress.task_id AND pg_catalog.has_table_privilege(r.media_table, CASE WHEN r.dry_run THEN 'SELECT' ELSE 'UPDATE' END)));

ALTER TABLE popularity.refresh_counters ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.refresh_counters FOR SELECT
    USING (EXISTS (SELECT FROM popularity.refresh_tasks AS t WHERE t.task_id = refresh_counters.task_id));
CREATE POLICY writers ON popularity.refresh_counters FOR ALL
    USING (EXISTS (SELECT FROM popularity.refresh_tasks AS t JOIN popularity.refresh_runs AS r USING (run_id)
                   WHERE t.task_id = refresh_counters.task_id AND pg_catalog.has_table_privilege(r.media_table, CASE WHEN r.dry_run THEN 'SELECT' ELSE 'UPDATE' END)))
    WITH CHECK (EXISTS (SELECT FROM popularity.refresh_tasks AS t JOIN popularity.refresh_runs AS r USING (run_id)
                        WHERE t.task_id = refresh_counters.task_id AND pg_catalog.has_table_privilege(r.media_table, CASE WHEN r.dry_run THEN 'SELECT' ELSE 'UPDATE' END)));

ALTER TABLE popularity.refresh_skipped ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.refresh_skipped FOR SELECT
    USING (EXISTS (SELECT FROM popularity.refresh_tasks AS t WHERE t.task_id = refresh_skipped.task_id));
CREATE POLICY writers ON popularity.refresh_skipped FOR ALL
    USING (EXISTS (SELECT FROM popularity.refresh_tasks AS t JOIN popularity.refresh_runs AS r USING (run_id)
                   WHERE t.task_id = refresh_skipped.task_id AND pg_catalog.has_table_privilege(r.media_table, CASE WHEN r.dry_run THEN 'SELECT' ELSE 'UPDATE' END)))
    WITH CHECK (EXISTS (SELECT FROM popularity.refresh_tasks AS t JOIN popularity.refresh_runs AS r USING (run_id)
                        WHERE t.task_id = refresh_skipped.task_id AND pg_catalog.has_table_privilege(r.media_table, CASE WHEN r.dry_run THEN 'SELECT' ELSE 'UPDATE' END)));
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

ALTER TABLE popularity.rescore_marks ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.rescore_marks FOR SELECT
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = rescore_marks.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'SELECT')));
CREATE POLICY writers ON popularity.rescore_marks FOR ALL
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = rescore_marks.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'UPDATE')))
    WITH CHECK (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = rescore_marks.media_type
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
ALTER VIEW popularity.tag_filter_removed_rows SET (security_invoker = true);
ALTER VIEW popularity.rescore_state SET (security_invoker = true);

-- Operator rights -----------------------------------------------------------------------------------

-- Gives (or takes back) EXECUTE on the internal routines and DML on the state tables (the policies
-- narrow them to the role's own media types) and their sequences. The extension's owner only.
CREATE FUNCTION popularity._operator_rights(role regrole, give boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    f regprocedure;
    t regclass;
BEGIN
    IF role IS NULL OR give IS NULL THEN
        RAISE EXCEPTION 'role must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT pg_has_role((SELECT n.nspowner FROM pg_namespace AS n WHERE n.nspname = 'popularity'), 'USAGE') THEN
        RAISE EXCEPTION 'only the owner of the popularity extension may grant or revoke operator rights'
            USING ERRCODE = 'insufficient_privilege', HINT = 'Ask a superuser to run it.';
    END IF;
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc AS p
             WHERE p.pronamespace = 'popularity'::regnamespace AND p.proname LIKE '\_%' AND p.prokind IN ('f', 'p')
               AND p.proname NOT LIKE '\_guard\_%' AND p.proname <> '_operator_rights' LOOP
        EXECUTE format(CASE WHEN give THEN 'GRANT EXECUTE ON ROUTINE %s TO %s' ELSE 'REVOKE EXECUTE ON ROUTINE %s FROM %s' END,
                       f, role);
    END LOOP;
    FOR t IN SELECT c.oid::regclass FROM pg_class AS c
             WHERE c.relnamespace = 'popularity'::regnamespace AND c.relkind = 'r' AND c.relrowsecurity LOOP
        EXECUTE format(CASE WHEN give THEN 'GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO %s' ELSE 'REVOKE ALL ON %s FROM %s' END,
                       t, role);
    END LOOP;
    FOR t IN SELECT c.oid::regclass FROM pg_class AS c
             WHERE c.relnamespace = 'popularity'::regnamespace AND c.relkind = 'S' LOOP
        EXECUTE format(CASE WHEN give THEN 'GRANT USAGE, SELECT ON SEQUENCE %s TO %s' ELSE 'REVOKE ALL ON SEQUENCE %s FROM %s' END,
                       t, role);
    END LOOP;
END $$;
COMMENT ON FUNCTION popularity._operator_rights(regrole, boolean) IS
    'Gives or takes back the operator rights (EXECUTE on the internal routines, DML on the state tables)';

CREATE FUNCTION popularity.grant_operator(role regrole)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT popularity._operator_rights(role, true);
    -- On a Citus coordinator, on every worker node too (65_citus.sql).
    SELECT popularity._citus_operator_rights(role, true);
$$;
COMMENT ON FUNCTION popularity.grant_operator(regrole) IS
    'Lets a role use the extension beyond reading (register, configure, refresh, filter tags, counts): '
    'what it may do with each media type still follows from its rights on the media table';
REVOKE ALL ON FUNCTION popularity.grant_operator(regrole) FROM PUBLIC;

CREATE FUNCTION popularity.revoke_operator(role regrole)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT popularity._operator_rights(role, false);
    SELECT popularity._citus_operator_rights(role, false);
$$;
COMMENT ON FUNCTION popularity.revoke_operator(regrole) IS
    'Takes back what popularity.grant_operator gave (reading stays open to every role)';
REVOKE ALL ON FUNCTION popularity.revoke_operator(regrole) FROM PUBLIC;

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
        EXECUTE pg_catalog.format('REVOKE ALL ON ROUTINE %s FROM PUBLIC', f);
    END LOOP;
END $$;
