-- Runs of the two jobs of the batch engine: the popularity refresh (queued by refresh_popularity)
-- and the tag filter (queued by filter_tags), executed by background workers in committed
-- block-range batches (src/worker/). All state lives in these tables, so a crash or restart resumes
-- from the last committed batch.

CREATE TABLE popularity.refresh_runs (
    run_id bigserial PRIMARY KEY,
    media_type text NOT NULL,
    media_table regclass NOT NULL,
    key_column name NOT NULL,
    providers text[] NOT NULL,
    forced boolean NOT NULL DEFAULT false,
    state text NOT NULL DEFAULT 'queued'
        CONSTRAINT state_known CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    requested_by oid NOT NULL,
    -- The run's writers: transactions in progress when the run was queued (after its constants
    -- committed) that may write the media table (they hold a write lock on it or a partition, or a transaction
    -- id; never read-only snapshots: see popularity._table_writers), as virtual transaction ids.
    -- Rows they insert may carry the old constants and become visible only when they commit, so
    -- the run is not finished before they end (see refresh_tasks.rewalk).
    -- NULL while filter_tags has committed a run but not yet recorded them: not started before.
    writers text[] DEFAULT '{}',
    requested_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at timestamptz,
    finished_at timestamptz,
    error text,
    -- The media table's file when the run was queued: a rewrite (VACUUM FULL, CLUSTER, ALTER TABLE
    -- ... TYPE) moves rows across the block ranges, so workers fail a run whose table was rewritten.
    relfilenode oid,
    -- filter_tags: count what would change and write nothing (needs only SELECT on the table).
    dry_run boolean NOT NULL DEFAULT false,
    -- filter_tags: each batch records what it removes (popularity.tag_filter_removed), so that
    -- popularity.undo_filter_tags can put it back; decided when the run is queued.
    records_removed boolean NOT NULL DEFAULT false,
    -- Blocks per batch; NULL: popularity.batch_blocks.
    batch_blocks integer CONSTRAINT batch_blocks_positive CHECK (batch_blocks > 0),
    undone_at timestamptz,
    records_purged_at timestamptz,
    -- refresh: rescore the rows of `providers`; filter_tags: apply the tag rules to every row.
    job text NOT NULL DEFAULT 'refresh' CONSTRAINT job_known CHECK (job IN ('refresh', 'filter_tags')),
    -- Per provider (parallel to providers), the constant and its version (metrics.constant_version)
    -- when the run was queued: a succeeded run rescored its providers with these, unless one
    -- changed during the run (then the version differs from the current one: popularity.rescore_state).
    constants double precision[] NOT NULL DEFAULT '{}',
    constant_versions uuid[] NOT NULL DEFAULT '{}',
    -- The table's primary key, in order (key_column is its first column): the workers find rows
    -- they could not lock again by it, and the undo record names rows by it.
    key_columns name[],
    CONSTRAINT refresh_options CHECK (job = 'filter_tags' OR NOT (dry_run OR records_removed)),
    CONSTRAINT dry_runs_record_nothing CHECK (NOT (dry_run AND records_removed))
);
-- At most one active run per media type and job.
CREATE UNIQUE INDEX refresh_runs_one_active ON popularity.refresh_runs (media_type, job)
    WHERE state IN ('queued', 'running');
COMMENT ON SEQUENCE popularity.refresh_runs_run_id_seq IS 'Run identifiers of popularity.refresh_runs';
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

CREATE TABLE popularity.refresh_tasks (
    task_id bigserial PRIMARY KEY,
    run_id bigint NOT NULL REFERENCES popularity.refresh_runs ON DELETE CASCADE,
    segment integer NOT NULL,
    first_block bigint NOT NULL,
    end_block bigint NOT NULL,
    next_block bigint NOT NULL,
    state text NOT NULL DEFAULT 'pending'
        CONSTRAINT state_known CHECK (state IN ('pending', 'running', 'revisiting', 'done', 'failed', 'cancelled')),
    batches bigint NOT NULL DEFAULT 0,
    revisit_passes bigint NOT NULL DEFAULT 0,
    attempts integer NOT NULL DEFAULT 0, -- workers started since the last committed batch
    -- A batch of this task ran while some of the run's writers were in progress: once they have
    -- all ended, the task walks its range once more (rows they inserted were invisible to it).
    rewalk boolean NOT NULL DEFAULT false,
    -- The last task has looked past the table's size at queue time (rows the run's writers
    -- added in new blocks).
    tail_checked boolean NOT NULL DEFAULT false,
    -- The longest batch that locked and wrote rows, from its start to its last statement before
    -- the commit (ingestion waits on a batch's row locks at most about this long).
    longest_batch_ms double precision NOT NULL DEFAULT 0,
    started_at timestamptz,
    finished_at timestamptz,
    error text,
    -- Failures in a row of the task's current batch (lock or statement timeout, serialization
    -- failure, deadlock: each is retried after a pause); a batch that commits resets it, and the
    -- task fails when it exceeds popularity.batch_retries.
    failures integer NOT NULL DEFAULT 0,
    retries bigint NOT NULL DEFAULT 0, -- batches retried after such a failure, over the task's life
    last_error text,                   -- the last error of one of its batches (retried or not)
    last_error_at timestamptz,
    -- What the task waits for: 'writers' (its range is walked; the run's writers have not ended),
    -- 'rows held by other transactions' (rows left to revisit), 'worker slot' (no background worker
    -- could be started for it), 'retry' (a batch failed: see last_error); since when, and the
    -- processes it waits for when they are known.
    waiting_for text,
    waiting_since timestamptz,
    waiting_pids integer[],
    -- The relation the task walks: the media table, or one of its leaf partitions; and that
    -- relation's file when the task was created (a rewrite moves rows across block ranges).
    leaf regclass,
    leaf_relfilenode oid,
    -- The leaf left the media table during the run (DETACH, DROP): the task ended there. The leaf
    -- attached again gets tasks of its own.
    leaf_left boolean NOT NULL DEFAULT false,
    UNIQUE (run_id, segment)
);
CREATE INDEX refresh_tasks_leaf ON popularity.refresh_tasks (run_id, leaf);
COMMENT ON SEQUENCE popularity.refresh_tasks_task_id_seq IS 'Task identifiers of popularity.refresh_tasks';
COMMENT ON TABLE popularity.refresh_tasks IS
    'A run''s units of work: contiguous block ranges of the media table or of one of its leaf partitions '
    '(leaf), each with its progress marker (next_block) committed in the same transaction as each batch';

CREATE TABLE popularity.refresh_progress (
    task_id bigint NOT NULL REFERENCES popularity.refresh_tasks ON DELETE CASCADE,
    provider text NOT NULL,
    rows_scanned bigint NOT NULL DEFAULT 0,
    rows_updated bigint NOT NULL DEFAULT 0,
    rows_skipped_locked bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, provider)
);
COMMENT ON TABLE popularity.refresh_progress IS
    'Counters per task and provider, written with each batch (so no batch is ever counted twice)';

CREATE TABLE popularity.refresh_skipped (
    task_id bigint NOT NULL REFERENCES popularity.refresh_tasks ON DELETE CASCADE,
    row_key text NOT NULL,
    PRIMARY KEY (task_id, row_key)
);
CREATE TABLE popularity.refresh_counters (
    task_id bigint NOT NULL REFERENCES popularity.refresh_tasks ON DELETE CASCADE,
    counter text NOT NULL,
    value bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, counter)
);
COMMENT ON TABLE popularity.refresh_counters IS
    'A job''s own counters per task, by name, written with each batch: for filter_tags the tags '
    'dropped per verdict (malformed, low_accuracy, ...) and rows_not_an_array';

COMMENT ON TABLE popularity.refresh_skipped IS
    'Rows a batch could not lock (another transaction held them), by primary key, to revisit until none is left';

GRANT SELECT ON popularity.refresh_runs, popularity.refresh_tasks, popularity.refresh_progress,
    popularity.refresh_counters TO PUBLIC;

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
-- A tag filter run starting or ending changes which media types the ingestion trigger filters:
-- every backend reloads its configuration, as after a change of popularity.media_types.
CREATE TRIGGER refresh_runs_changed AFTER INSERT OR UPDATE OF state OR DELETE ON popularity.refresh_runs
    FOR EACH STATEMENT EXECUTE FUNCTION popularity._config_changed();

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

-- Which providers' rows carry their current constant, from stored state alone: a provider is stale
-- when it has a constant and the last succeeded run that rescored it did not record the constant's
-- current version when it was queued (the constant changed during or after that run, however it
-- was changed), or no run ever rescored it, or its media type was marked (rescore_marks) since that
-- run was queued. refresh_popularity rescores the stale providers;
-- freshness() reports the same column. (Runs without providers, e.g. "nothing to rescore", add
-- nothing.)
CREATE VIEW popularity.rescore_state AS
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
GRANT SELECT ON popularity.rescore_state TO PUBLIC;

CREATE FUNCTION popularity._wake_scheduler()
RETURNS void
AS 'MODULE_PATHNAME', 'popularity_wake_scheduler'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION popularity._wake_scheduler() IS
    'Wakes (or starts) the refresh scheduler of this database when the current transaction commits';

CREATE FUNCTION popularity._in_transaction_block()
RETURNS boolean
AS 'MODULE_PATHNAME', 'popularity_in_transaction_block'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION popularity._in_transaction_block() IS
    'Whether the current transaction is an explicit transaction block, where a procedure that commits cannot run';

CREATE FUNCTION popularity._require_preload()
RETURNS void
AS 'MODULE_PATHNAME', 'popularity_require_preload'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION popularity._require_preload() IS
    'Raises 55000 with a hint unless popularity is in shared_preload_libraries (the refresh needs its background workers)';

CREATE FUNCTION popularity._score_differs(old double precision, new double precision, tolerance double precision)
RETURNS boolean
AS 'MODULE_PATHNAME', 'popularity_score_differs'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION popularity._score_differs(double precision, double precision, double precision) IS
    'Whether a stored score must be rewritten, as the ingestion trigger and the refresh judge it: NULL-ness differs, or the values are unequal (NaN equals NaN, -0 equals 0) and their relative difference exceeds the tolerance (Boost.Math; NULL tolerance = 0)';

CREATE FUNCTION popularity._writers_in_progress()
RETURNS text[]
AS 'MODULE_PATHNAME', 'popularity_writers_in_progress'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION popularity._writers_in_progress() IS
    'Virtual transaction ids of the other transactions of this database that have written or run a statement now';

CREATE FUNCTION popularity._table_writers(media_table regclass)
RETURNS text[]
AS 'MODULE_PATHNAME', 'popularity_table_writers'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION popularity._table_writers(regclass) IS
    'Virtual transaction ids of the other transactions of this database that may write the table: they hold '
    'a write lock on it (ROW EXCLUSIVE or stronger) or a transaction id (read-only snapshots are left out)';

CREATE FUNCTION popularity._writers_ended(vxids text[])
RETURNS boolean
AS 'MODULE_PATHNAME', 'popularity_writers_ended'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION popularity._writers_ended(text[]) IS
    'Whether all these transactions (from _table_writers) have ended; never waits';

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
-- (SQL), each key column compared with the equality of the primary key index's operator class: one column, the column's text
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

-- The relations a run walks for a media table: the table itself, or the leaf partitions of a
-- partitioned one (at any depth; foreign partitions are refused under registered tables), or the
-- shards of a Citus distributed table placed on this node (65_citus.sql: each node walks its own).
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

-- Waits for a run (of either job), committing between looks (no snapshot is held while the workers run).
-- Every popularity.progress_interval it reports progress (NOTICE: share of blocks, rate, time left,
-- or what the run waits for); a cancel of the waiting statement (Ctrl-C, statement_timeout) cancels
-- the run too, since whoever waited has given up on it (start it with wait => false to let it run
-- on without the session); a failed or cancelled run raises, with the run's error. A run still
-- queued after a second waits for its scheduler, which may have found no free background-worker
-- slot: the scheduler is woken (or started) again every second.
-- It commits, so it pins search_path in every transaction segment (see refresh_popularity).
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
    'Waits for a run of either job: progress NOTICEs (or what the run waits for) every '
    'popularity.progress_interval; a cancel of the wait cancels the run; raises if the run failed or '
    'was cancelled';

-- search_path: a procedure with a SET clause cannot COMMIT, so every transaction segment pins it
-- itself: the first statement of the body and the statement after every COMMIT set it to
-- pg_catalog, pg_temp with set_config(..., true) (transaction-local: each COMMIT ends it), after
-- remembering the caller's value, which it sets back before returning. So every expression and
-- statement of the body resolves functions, operators and types in pg_catalog. The declarations
-- run before the body (no initializer calls anything) and name their types qualified, and an
-- error or a COMMIT gives the caller's value back anyway.
CREATE PROCEDURE @extschema@.refresh_popularity(
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
COMMENT ON PROCEDURE @extschema@.refresh_popularity(text, text[], boolean, boolean) IS
    'Recomputes the constants of a media type, then rescoring of every provider whose constant changed '
    'since it was last rescored, or that never was (popularity.rescore_state.stale; all with force) runs '
    'in background workers; with wait, returns when the run finished and raises if it failed or was cancelled';

CREATE FUNCTION popularity.cancel_refresh(run_id bigint DEFAULT NULL, media_type text DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE popularity.refresh_runs AS r SET state = 'cancelled', finished_at = clock_timestamp(),
           error = 'cancelled by ' || session_user
    WHERE r.state IN ('queued', 'running')
      AND (cancel_refresh.run_id IS NULL OR r.run_id = cancel_refresh.run_id)
      AND (cancel_refresh.media_type IS NULL OR r.media_type = cancel_refresh.media_type)
    RETURNING r.run_id;
$$;
COMMENT ON FUNCTION popularity.cancel_refresh(bigint, text) IS
    'Stops active runs (all, one run, or one media type''s) between batches; returns the runs cancelled. '
    'Their progress is kept: popularity.resume_refresh() continues them.';

CREATE FUNCTION popularity.resume_refresh(run_id bigint)
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

-- The same, and with wait the CALL returns when the run has finished (as refresh_popularity does).
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
