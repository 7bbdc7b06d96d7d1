-- Tag filter: rules, the per-row functions, and the batch procedure filter_tags.
-- Semantics: docs/semantics.md, "Tag filter".

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
    'Minimum confidence: a tag whose accuracy is strictly below it is dropped (a JSON number is '
    'compared exactly; a JSON string is read as Python''s float() reads it and compared with the '
    'nearest double, as Openverse does)';
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

-- The built-in rules have one definition, in the library (core::TagRuleConfig); the view shows them.
CREATE FUNCTION popularity.builtin_tag_rules(
    OUT min_accuracy numeric, OUT filtered_providers text[], OUT exact_denylist text[],
    OUT substring_denylist text[], OUT machine_labels text[])
RETURNS record
AS 'MODULE_PATHNAME', 'popularity_builtin_tag_rules'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION popularity.builtin_tag_rules() IS
    'The built-in tag rules of the library (the Openverse data refresh rules), as popularity.tag_rule_defaults shows them';

CREATE VIEW popularity.tag_rule_defaults AS
SELECT d.min_accuracy, d.filtered_providers, d.exact_denylist, d.substring_denylist, d.machine_labels
FROM popularity.builtin_tag_rules() AS d;
COMMENT ON VIEW popularity.tag_rule_defaults IS
    'Built-in tag rules (the Openverse data refresh rules, from the library); override them in popularity.tag_rules';
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

-- The verdicts of the rules, by name, in the library's order (one definition: POPULARITY_TAG_VERDICTS).
CREATE FUNCTION popularity._tag_verdicts()
RETURNS SETOF text
AS 'MODULE_PATHNAME', 'popularity_tag_verdicts'
LANGUAGE C IMMUTABLE PARALLEL SAFE ROWS 7;
COMMENT ON FUNCTION popularity._tag_verdicts() IS
    'The tag verdicts'' names in the library''s order, kept first: element k >= 2 of _tag_drop_counts counts the k-th (internal)';

CREATE TRIGGER tag_rules_changed
AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON popularity.tag_rules
FOR EACH STATEMENT EXECUTE FUNCTION popularity._config_changed();
COMMENT ON TRIGGER tag_rules_changed ON popularity.tag_rules IS
    'Makes every backend reload its cached configuration (tag rules, constants) once the change is visible to it';

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
        CONSTRAINT tag_filter_run_state CHECK (state IN ('running', 'finished', 'abandoned', 'undone')),
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
    finished_at timestamptz,
    records_removed boolean NOT NULL DEFAULT false,
    undone_at timestamptz,
    records_purged_at timestamptz
);
COMMENT ON SEQUENCE popularity.tag_filter_runs_run_id_seq IS
    'Run numbers of filter_tags (identity of popularity.tag_filter_runs)';
CREATE UNIQUE INDEX tag_filter_runs_one_running
    ON popularity.tag_filter_runs (media_type, dry_run) WHERE state = 'running';
COMMENT ON TABLE popularity.tag_filter_runs IS
    'Runs of filter_tags: progress (committed with each batch, so an interrupted run resumes) and '
    'counts. A dry run counts what a run would change';
COMMENT ON COLUMN popularity.tag_filter_runs.state IS
    'running (or interrupted: the next call resumes it), finished, abandoned (its media type was '
    're-registered with another table), or undone (popularity.undo_filter_tags)';
COMMENT ON COLUMN popularity.tag_filter_runs.records_removed IS
    'The run records what it removes from each row in popularity.tag_filter_removed, so that '
    'popularity.undo_filter_tags can restore it (popularity.tag_filter_undo when the run started)';
COMMENT ON COLUMN popularity.tag_filter_runs.undone_at IS 'When popularity.undo_filter_tags undid the run';
COMMENT ON COLUMN popularity.tag_filter_runs.records_purged_at IS
    'When popularity.purge_filter_undo deleted the run''s record of removed tags (the run can no '
    'longer be undone)';
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
    'Tags dropped because they are not objects, their name is not a string, or their accuracy is '
    'neither a number nor a string Python''s float() accepts';
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

-- What each run removed, per changed row: written in the transaction of the batch that rewrote
-- the row, read by undo_filter_tags, deleted by purge_filter_undo after
-- popularity.tag_filter_undo_retention.
CREATE TABLE popularity.tag_filter_removed (
    run_id bigint NOT NULL REFERENCES popularity.tag_filter_runs (run_id) ON DELETE CASCADE,
    identifier uuid NOT NULL,
    removed jsonb NOT NULL,
    tags_hash bigint NOT NULL
);
CREATE INDEX tag_filter_removed_run ON popularity.tag_filter_removed (run_id);
COMMENT ON TABLE popularity.tag_filter_removed IS
    'The tags each run of filter_tags removed, per changed row (written in the batch''s '
    'transaction), so that popularity.undo_filter_tags can put them back; kept for '
    'popularity.tag_filter_undo_retention after the run (popularity.purge_filter_undo)';
COMMENT ON COLUMN popularity.tag_filter_removed.identifier IS 'The row (its identifier)';
COMMENT ON COLUMN popularity.tag_filter_removed.removed IS
    'The removed tags as [[position, tag], ...]: positions in the array before the run, increasing';
COMMENT ON COLUMN popularity.tag_filter_removed.tags_hash IS
    'popularity._tags_hash of the tags the run wrote (a 64-bit hash of the binary value): undo '
    'restores only a row whose tags still hash to it';
GRANT SELECT ON popularity.tag_filter_removed TO PUBLIC;

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
        UPDATE popularity.tag_filter_runs r
        SET records_purged_at = pg_catalog.clock_timestamp()
        WHERE r.records_removed AND r.records_purged_at IS NULL AND r.state <> 'running'
          AND (purge_filter_undo.media_type IS NULL OR r.media_type = purge_filter_undo.media_type)
          AND coalesce(r.undone_at, r.finished_at, r.updated_at)
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
                                           OUT not_restored uuid[])
RETURNS record
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $function$
#variable_conflict use_column
DECLARE
    v_run_id CONSTANT bigint := undo_filter_tags.run_id;
    v_run popularity.tag_filter_runs;
    v_ingestion boolean;
BEGIN
    IF v_run_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'run_id must not be null',
            HINT = 'Pass a run_id of popularity.tag_filter_runs.';
    END IF;
    SELECT * INTO v_run FROM popularity.tag_filter_runs r WHERE r.run_id = v_run_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_object',
            MESSAGE = format('unknown tag filter run %s', v_run_id),
            HINT = 'popularity.tag_filter_runs lists the runs of filter_tags (those of media tables you may read).';
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
    -- Waits for a batch of the run in progress; once undone, the run stops at its next batch.
    SELECT * INTO v_run FROM popularity.tag_filter_runs r WHERE r.run_id = v_run_id FOR UPDATE;
    IF v_run.state = 'undone' THEN
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
    -- One statement: restores the rows whose tags still hash to what the run wrote and forgets
    -- their records. The records left are the rows not restored (changed or deleted since).
    EXECUTE format(
        'WITH restored AS ('
        '    UPDATE %s t SET tags = popularity._restored_tags(t.tags, d.removed)'
        '    FROM popularity.tag_filter_removed d'
        '    WHERE d.run_id = $1 AND t.identifier = d.identifier'
        '      AND popularity._tags_hash(t.tags) OPERATOR(pg_catalog.=) d.tags_hash'
        '      AND pg_catalog.jsonb_typeof(t.tags) OPERATOR(pg_catalog.=) ''array'''
        '    RETURNING t.identifier'
        '), forgotten AS ('
        '    DELETE FROM popularity.tag_filter_removed d USING restored r'
        '    WHERE d.run_id = $1 AND d.identifier = r.identifier'
        ') '
        'SELECT pg_catalog.count(*) FROM restored', v_run.media_table)
    INTO rows_restored USING v_run_id;
    SELECT pg_catalog.count(*), coalesce(pg_catalog.array_agg(d.identifier ORDER BY d.identifier), '{}')
    INTO rows_not_restored, not_restored
    FROM popularity.tag_filter_removed d WHERE d.run_id = v_run_id;
    UPDATE popularity.tag_filter_runs r
    SET state = 'undone', undone_at = pg_catalog.clock_timestamp(),
        updated_at = pg_catalog.clock_timestamp()
    WHERE r.run_id = v_run_id;
    RAISE NOTICE 'tag filter run % of media type "%" undone: % rows restored, % not restored (changed or deleted since the run)',
        v_run_id, v_run.media_type, rows_restored, rows_not_restored;
END;
$function$;
COMMENT ON FUNCTION popularity.undo_filter_tags(bigint) IS
    'Puts back the tags a run of filter_tags removed, on the rows whose tags are still exactly what '
    'the run wrote, in one transaction, and marks the run undone. Returns how many rows it '
    'restored and the identifiers of the rows it could not restore (changed or deleted since: '
    'their records stay in popularity.tag_filter_removed). Needs SELECT and UPDATE on the media '
    'table; refuses dry runs and runs without a record';

-- The batch procedure -----------------------------------------------------------------------------

-- One main-pass batch in C++ (src/pg/tag_filter_batch.cpp).
CREATE FUNCTION popularity._filter_tags_range(media_table regclass, media_type text,
                                              from_block bigint, to_block bigint, dry_run boolean,
                                              record_run bigint, OUT rows_scanned bigint, OUT rows_malformed bigint,
                                              OUT rows_changed bigint, OUT drops bigint[],
                                              OUT unlocked uuid[])
RETURNS record
AS 'MODULE_PATHNAME', 'popularity_filter_tags_range'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION popularity._filter_tags_range(regclass, text, bigint, bigint, boolean, bigint) IS
    'One batch of filter_tags over blocks [from_block, to_block): scans them with the caller''s '
    'snapshot, runs the rules once per row, locks the rows that change (skipping rows other '
    'transactions hold) and rewrites them with one UPDATE (dry run: only counts). Returns the '
    'counts, the tags dropped per reason in the changed rows and the identifiers of the rows it '
    'could not lock. With record_run <> 0 it records what it removed from each row in '
    'popularity.tag_filter_removed (run record_run) in the same statement. Needs SELECT and UPDATE on the table and refuses tables where row-level '
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
-- popularity.tag_filter_runs); identifiers reach dynamic SQL quoted.
-- search_path: a procedure with a SET clause cannot COMMIT, so every transaction segment pins it
-- itself: the first statement of the body and the statement after every COMMIT set it to
-- pg_catalog, pg_temp with set_config(..., true) (transaction-local: each COMMIT ends it), after
-- remembering the caller's value, which it sets back before returning. So every expression and
-- statement of the body resolves functions, operators and types in pg_catalog. The declarations
-- run before the body (no initializer calls anything) and name their types qualified, and an
-- error or a COMMIT gives the caller's value back anyway.
-- updated_on is deliberately left alone: it drives the popularity refresh (rows updated after its
-- cutoff are skipped), and the tags are not new data.
CREATE PROCEDURE @extschema@.filter_tags(media_type text, dry_run boolean DEFAULT false,
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
    v_record_run bigint;
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
    -- The rights it needs, said in one sentence before anything runs.
    IF NOT pg_catalog.has_table_privilege(v_table, 'SELECT')
       OR NOT (v_dry_run OR pg_catalog.has_table_privilege(v_table, 'UPDATE')) THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('permission denied to filter the tags of %s', v_table),
            HINT = CASE WHEN v_dry_run THEN 'A dry run needs SELECT on the media table.'
                        ELSE 'filter_tags needs SELECT and UPDATE on the media table (a dry run: SELECT).' END;
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
    -- It commits after every batch, so it must be called on its own (like VACUUM).
    IF popularity._in_transaction_block() THEN
        RAISE EXCEPTION USING ERRCODE = 'active_sql_transaction',
            MESSAGE = 'filter_tags() cannot run inside a transaction block',
            HINT = 'Call it on its own: it commits after every batch, so that it never holds row locks for long.';
    END IF;
    -- Fail early on rules that cannot be loaded.
    PERFORM popularity.filtered_tags('[]'::jsonb, NULL, v_media_type);

    -- The records of removed tags of this media type's old runs go first.
    IF NOT v_dry_run THEN
        PERFORM popularity.purge_filter_undo(v_media_type);
    END IF;

    -- Resume the unfinished run of this media type, or start one. Whether a run records what it
    -- removes (popularity.tag_filter_undo) is decided when it starts.
    UPDATE popularity.tag_filter_runs r SET state = 'abandoned', updated_at = pg_catalog.now()
    WHERE r.media_type = v_media_type AND r.dry_run = v_dry_run AND r.state = 'running'
      AND r.media_table <> v_table;
    INSERT INTO popularity.tag_filter_runs (media_type, media_table, dry_run, total_blocks,
                                            records_removed)
    VALUES (v_media_type, v_table, v_dry_run,
            pg_catalog.pg_relation_size(v_table)
                / pg_catalog.current_setting('block_size')::bigint,
            NOT v_dry_run
                AND coalesce(pg_catalog.current_setting('popularity.tag_filter_undo', true), 'on')::boolean)
    ON CONFLICT (media_type, dry_run) WHERE state = 'running' DO NOTHING
    RETURNING run_id, CASE WHEN records_removed THEN run_id ELSE 0 END INTO v_run_id, v_record_run;
    IF v_run_id IS NULL THEN
        SELECT r.run_id, r.next_block, r.total_blocks, CASE WHEN r.records_removed THEN r.run_id ELSE 0 END
        INTO v_run_id, v_lo, v_hi, v_record_run
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
    -- With $3 <> 0, what it removes from each row is recorded for run $3 in the same statement.
    v_lock_sql := pg_catalog.format(
        'WITH locked AS ('
        '    SELECT t.identifier, t.tags, popularity._tag_drop_counts(t.tags, t.provider, $2) AS c'
        '    FROM %1$s t WHERE t.identifier = ANY ($1) FOR UPDATE OF t SKIP LOCKED'
        '), changed AS ('
        '    UPDATE %1$s t SET tags = popularity.filtered_tags(t.tags, t.provider, $2)'
        '    FROM locked l WHERE t.identifier = l.identifier AND l.c[1] = 0'
        '    RETURNING t.identifier, t.tags, t.provider, l.tags AS old_tags'
        '), recorded AS ('
        '    INSERT INTO popularity.tag_filter_removed (run_id, identifier, removed, tags_hash)'
        '    SELECT $3, c.identifier, popularity._removed_tags(c.old_tags, c.provider, $2),'
        '           popularity._tags_hash(c.tags)'
        '    FROM changed c WHERE $3 <> 0'
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
            FROM popularity._filter_tags_range(v_table, v_media_type, v_lo, v_hi, v_dry_run,
                                               v_record_run) f;
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
                EXECUTE v_lock_sql INTO v_locked, v_changed, v_drops
                    USING v_candidates, v_media_type, v_record_run;
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
COMMENT ON PROCEDURE @extschema@.filter_tags(text, boolean, integer) IS
    'Applies the tag rules in place to a media type''s table, in committed batches of batch_blocks '
    'blocks that skip rows other transactions hold and revisit them; resumes an interrupted run. '
    'With dry_run it changes no media row and only counts. Progress and counts: '
    'popularity.tag_filter_runs';
