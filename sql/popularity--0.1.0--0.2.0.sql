-- popularity 0.1.0 -> 0.2.0. Every change the 0.2.0 fragments (sql/install/) make to 0.1.0 is
-- repeated here; test/scripts/upgrade.sh checks that an upgraded install equals a fresh 0.2.0 one.
\echo Use "ALTER EXTENSION popularity UPDATE TO '0.2.0'" to load this file. \quit

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
    SELECT CASE WHEN c.reltuples >= 0 THEN c.reltuples ELSE pg_relation_size(c.oid) / 100.0 END
           <= current_setting('popularity.constants_single_pass_rows')::float8
    INTO single_pass FROM pg_class AS c WHERE c.oid = tbl;
    IF single_pass AND (SELECT c.relrowsecurity FROM pg_class AS c WHERE c.oid = tbl) THEN
        -- Row-level security: the executor applies the policies.
        source := format('SELECT x.provider, x.metric, x.percentile, x.val, x.constant, x.last_error,'
                         '       @extschema@.popularity_percentile('
                         '           @extschema@.popularity_metric_value(t.meta_data, x.metric), x.percentile) AS pv'
                         ' FROM popularity.metrics AS x LEFT JOIN %s AS t ON t.provider = x.provider'
                         ' WHERE x.media_type = $1 AND ($2::text[] IS NULL OR x.provider = ANY ($2))'
                         ' GROUP BY x.media_type, x.provider ORDER BY x.provider', tbl);
    ELSIF single_pass THEN
        -- The same values read by one C++ scan of the table, without the executor; its result is
        -- in the order of its input arrays, which unnest zips with them (the arrays are aligned,
        -- being aggregated from the same rows; sorted once, as a provider name may be long).
        source := 'SELECT u.* FROM ('
                  '  SELECT array_agg(x.provider) AS p, array_agg(x.metric) AS mt, array_agg(x.percentile) AS pc,'
                  '         array_agg(x.val) AS v, array_agg(x.constant) AS c, array_agg(x.last_error) AS e'
                  '  FROM (SELECT x.provider, x.metric, x.percentile, x.val, x.constant, x.last_error'
                  '        FROM popularity.metrics AS x'
                  '        WHERE x.media_type = $1 AND ($2::text[] IS NULL OR x.provider = ANY ($2))'
                  '        ORDER BY x.provider) AS x) AS a,'
                  ' LATERAL unnest(a.p, a.mt, a.pc, a.v, a.c, a.e, popularity._metric_percentiles($3, a.p, a.mt, a.pc))'
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
    tbl regclass := popularity._media_table(media_type);
    key_column name := popularity._key_column(tbl);
    changed_providers text[];
    new_run bigint;
    nblocks bigint;
    segments integer;
    per_segment bigint;
    run_state text;
    run_error text;
    failed_count bigint;
    failed_detail text;
BEGIN
    -- Background workers rescore: without the preloaded library none would ever run the run.
    PERFORM popularity._require_preload();
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
    SELECT coalesce(array_agg(c.provider ORDER BY c.provider) FILTER (WHERE c.changed OR force), '{}'),
           count(*) FILTER (WHERE c.error IS NOT NULL),
           min(pg_catalog.format('provider %s: %s',
                                 pg_catalog.quote_literal(CASE WHEN pg_catalog.length(c.provider) <= 100 THEN c.provider
                                                               ELSE pg_catalog.left(c.provider, 80) || '...'
                                                                    || pg_catalog.right(c.provider, 17) END),
                                 c.error)) FILTER (WHERE c.error IS NOT NULL)
    INTO changed_providers, failed_count, failed_detail
    FROM popularity.refresh_constants(media_type, providers) AS c;
    COMMIT;
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
    -- The list in full only when it is short (there may be thousands of long names).
    RAISE NOTICE 'refresh run % queued for providers %', new_run,
        CASE WHEN (SELECT sum(pg_catalog.octet_length(p)) FROM unnest(changed_providers) AS p) <= 1000
             THEN array_to_string(changed_providers, ', ')
             ELSE pg_catalog.format('%s, ... (%s providers)',
                                    pg_catalog.left(array_to_string(changed_providers[1:3], ', '), 200),
                                    cardinality(changed_providers)) END;
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
