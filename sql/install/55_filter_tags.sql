-- The tag filter job: filter_tags queues a run of the batch engine (popularity.refresh_runs, job
-- filter_tags; 50_refresh.sql) whose per-row decision is the tag rules (40_tags.sql), and what a
-- run removed is kept so that it can be undone. Semantics: docs/semantics.md, "Tag filter".

-- Undo ---------------------------------------------------------------------------------------------

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
