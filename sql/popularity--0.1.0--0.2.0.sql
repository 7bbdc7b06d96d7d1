-- popularity 0.1.0 -> 0.2.0. Every change the 0.2.0 fragments (sql/install/) make to 0.1.0 is
-- repeated here; test/scripts/upgrade.sh checks that an upgraded install equals a fresh 0.2.0 one.
\echo Use "ALTER EXTENSION popularity UPDATE TO '0.2.0'" to load this file. \quit

-- search_path: the procedures that COMMIT (filter_tags, refresh_popularity) cannot carry a SET
-- clause; they now pin search_path to pg_catalog, pg_temp in every transaction segment themselves
-- (set_config(..., true) first and after each COMMIT), give the caller's value back before they
-- return, and declare their variables with qualified types. The refresh workers and schedulers pin
-- it in C++ before their first statement (the library, no SQL object). New bodies, as in
-- sql/install/40_tags.sql and 50_refresh.sql:
CREATE OR REPLACE PROCEDURE @extschema@.filter_tags(media_type text, dry_run boolean DEFAULT false,
                                         batch_blocks integer DEFAULT 1000)
LANGUAGE plpgsql
AS $procedure$
#variable_conflict use_column
DECLARE
    v_media_type CONSTANT pg_catalog.text := filter_tags.media_type;
    v_dry_run CONSTANT boolean := filter_tags.dry_run;
    v_batch CONSTANT integer := filter_tags.batch_blocks;
    v_caller_path pg_catalog.text;
    v_table pg_catalog.regclass;
    v_relkind pg_catalog."char";
    v_run popularity.tag_filter_runs;
    v_run_id bigint;
    v_lo bigint;
    v_hi bigint;
    v_lock_wait CONSTANT pg_catalog.text := '1s';
    v_wait_sql pg_catalog.text;
    v_scanned bigint;
    v_malformed_rows bigint;
    v_candidates pg_catalog.uuid[];
    v_drops bigint[];
    v_locked pg_catalog.uuid[];
    v_changed bigint;
    v_pending pg_catalog.uuid[];
    v_direct boolean;
    v_direct_changed bigint;
    v_direct_drops bigint[];
    v_unlocked pg_catalog.uuid[];
    v_retry pg_catalog.uuid[];
    v_missing pg_catalog.text;
    v_scan_sql pg_catalog.text;
    v_lock_sql pg_catalog.text;
    v_recheck_sql pg_catalog.text;
BEGIN
    v_caller_path := pg_catalog.current_setting('search_path');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
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
    v_caller_path := pg_catalog.current_setting('search_path');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

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
            v_caller_path := pg_catalog.current_setting('search_path');
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
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
        v_caller_path := pg_catalog.current_setting('search_path');
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
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
    PERFORM pg_catalog.set_config('search_path', v_caller_path, true);
END;
$procedure$;

CREATE OR REPLACE PROCEDURE @extschema@.refresh_popularity(
    media_type text, providers text[] DEFAULT NULL, wait boolean DEFAULT true, force boolean DEFAULT false)
LANGUAGE plpgsql
AS $$
DECLARE
    caller_path pg_catalog.text;
    tbl pg_catalog.regclass;
    key_column pg_catalog.name;
    changed_providers pg_catalog.text[];
    new_run bigint;
    nblocks bigint;
    segments integer;
    per_segment bigint;
    run_state pg_catalog.text;
    run_error pg_catalog.text;
BEGIN
    caller_path := pg_catalog.current_setting('search_path');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    tbl := popularity._media_table(media_type);
    key_column := popularity._key_column(tbl);
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
    caller_path := pg_catalog.current_setting('search_path');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

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
    caller_path := pg_catalog.current_setting('search_path');
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    RAISE NOTICE 'refresh run % queued for providers %', new_run, array_to_string(changed_providers, ', ');
    IF NOT wait THEN
        PERFORM pg_catalog.set_config('search_path', caller_path, true);
        RETURN;
    END IF;

    -- 3. Wait, committing between looks so no snapshot is held while the workers run.
    LOOP
        SELECT r.state, r.error INTO run_state, run_error FROM popularity.refresh_runs AS r WHERE r.run_id = new_run;
        EXIT WHEN run_state IN ('succeeded', 'failed', 'cancelled');
        COMMIT;
        caller_path := pg_catalog.current_setting('search_path');
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
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
    PERFORM pg_catalog.set_config('search_path', caller_path, true);
END $$;
