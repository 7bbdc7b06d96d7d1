-- Provider counts per (media type, provider), maintained by statement-level delta triggers, with a
-- reconciliation backstop; and freshness reports (how many stored scores are stale).
--
-- Counts = the folded base (stats_counts) + the unfolded deltas (stats_journal). Ingestion
-- statements only append to the journal (no index, no unique key: concurrent ingestion
-- transactions never wait on each other because of the counts). fold_stats() moves journal rows
-- into the base in one transaction; reads add both, so they are exact whenever folding runs.

CREATE TABLE popularity.stats_counts (
    media_type text NOT NULL REFERENCES popularity.media_types (media_type) ON DELETE CASCADE,
    provider text,
    rows bigint NOT NULL DEFAULT 0,
    rows_with_metric bigint NOT NULL DEFAULT 0,
    rows_scored bigint NOT NULL DEFAULT 0,
    rows_invalid_metric bigint NOT NULL DEFAULT 0,
    folded_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT stats_counts_key UNIQUE NULLS NOT DISTINCT (media_type, provider)
);
COMMENT ON TABLE popularity.stats_counts IS
    'Folded provider counts (add popularity.stats_journal for the exact value; read popularity.provider_stats)';
-- Dumped with the data (pg_dump reads everything in one snapshot, so the counts match the rows it
-- dumps); a restore also marks every media type for reconcile_stats (_stats_media_type_added).
SELECT pg_catalog.pg_extension_config_dump('popularity.stats_counts', '');
GRANT SELECT ON popularity.stats_counts TO PUBLIC;

CREATE TABLE popularity.stats_journal (
    media_type text NOT NULL,
    provider text,
    rows bigint NOT NULL,
    rows_with_metric bigint NOT NULL,
    rows_scored bigint NOT NULL,
    rows_invalid_metric bigint NOT NULL,
    source text NOT NULL DEFAULT 'trigger'
        CONSTRAINT source_known CHECK (source IN ('trigger', 'truncate', 'reconcile')),
    recorded_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE popularity.stats_journal IS
    'Unfolded count deltas, appended by the counts triggers (one row per statement and provider with a '
    'non-zero delta), TRUNCATE and reconcile_stats; moved into stats_counts by fold_stats()';
SELECT pg_catalog.pg_extension_config_dump('popularity.stats_journal', '');
GRANT SELECT ON popularity.stats_journal TO PUBLIC;

-- Keys whose counts may be wrong until reconcile_stats runs (provider NULL: every provider). Rows
-- are only ever inserted, and reconcile_stats deletes the rows its snapshot saw, so a mark made
-- while it runs survives it.
CREATE TABLE popularity.stats_marks (
    media_type text NOT NULL REFERENCES popularity.media_types (media_type) ON DELETE CASCADE,
    provider text,
    reason text NOT NULL,
    marked_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE popularity.stats_marks IS
    'Counts to verify with reconcile_stats: after TRUNCATE, a metric change, or registration of a '
    'non-empty table (provider NULL: every provider of the media type)';
SELECT pg_catalog.pg_extension_config_dump('popularity.stats_marks', '');
GRANT SELECT ON popularity.stats_marks TO PUBLIC;

CREATE TABLE popularity.stats_corrections (
    correction_id bigserial PRIMARY KEY,
    reconciled_at timestamptz NOT NULL DEFAULT now(),
    media_type text NOT NULL,
    provider text,
    kind text NOT NULL CONSTRAINT kind_known CHECK (kind IN ('drift', 'missing', 'orphan')),
    rows_before bigint,
    rows_with_metric_before bigint,
    rows_scored_before bigint,
    rows_invalid_metric_before bigint,
    rows_after bigint,
    rows_with_metric_after bigint,
    rows_scored_after bigint,
    rows_invalid_metric_after bigint
);
COMMENT ON TABLE popularity.stats_corrections IS
    'History of reconcile_stats corrections: counted (before) and true (after) values of each key that '
    'drifted (drift), was not counted (missing) or was counted but has no rows (orphan)';
COMMENT ON SEQUENCE popularity.stats_corrections_correction_id_seq IS
    'Identifiers of popularity.stats_corrections';
SELECT pg_catalog.pg_extension_config_dump('popularity.stats_corrections', '');
SELECT pg_catalog.pg_extension_config_dump('popularity.stats_corrections_correction_id_seq', '');
GRANT SELECT ON popularity.stats_corrections TO PUBLIC;

CREATE VIEW popularity.provider_stats AS
SELECT s.media_type,
       s.provider,
       sum(s.rows)::bigint AS rows,
       sum(s.rows_with_metric)::bigint AS rows_with_metric,
       sum(s.rows_scored)::bigint AS rows_scored,
       sum(s.rows_invalid_metric)::bigint AS rows_invalid_metric,
       (sum(s.rows) - sum(s.rows_with_metric) - sum(s.rows_invalid_metric))::bigint AS rows_missing_metric,
       EXISTS (SELECT FROM popularity.stats_marks AS k
               WHERE k.media_type = s.media_type
                 AND (k.provider IS NULL OR k.provider = s.provider)) AS reconcile_pending
FROM (SELECT c.media_type, c.provider, c.rows, c.rows_with_metric, c.rows_scored, c.rows_invalid_metric
      FROM popularity.stats_counts AS c
      UNION ALL
      SELECT j.media_type, j.provider, j.rows, j.rows_with_metric, j.rows_scored, j.rows_invalid_metric
      FROM popularity.stats_journal AS j) AS s
GROUP BY s.media_type, s.provider
HAVING sum(s.rows) <> 0 OR sum(s.rows_with_metric) <> 0 OR sum(s.rows_scored) <> 0
    OR sum(s.rows_invalid_metric) <> 0;
COMMENT ON VIEW popularity.provider_stats IS
    'Exact counts per (media type, provider): rows, rows whose configured metric is usable, scored rows, '
    'rows whose metric is present but unusable, rows without it; reconcile_pending when a TRUNCATE, a '
    'metric change or a registration asks for reconcile_stats';
GRANT SELECT ON popularity.provider_stats TO PUBLIC;

CREATE FUNCTION popularity._stats_trigger()
RETURNS trigger
AS 'MODULE_PATHNAME', 'popularity_stats_trigger'
LANGUAGE C;
COMMENT ON FUNCTION popularity._stats_trigger() IS
    'Counts trigger (AFTER INSERT/UPDATE/DELETE FOR EACH STATEMENT, with transition tables): appends '
    'delta = f(new) - f(old) per provider to popularity.stats_journal';

CREATE FUNCTION popularity._metric_status(meta_data jsonb, metric text)
RETURNS text
AS 'MODULE_PATHNAME', 'popularity_metric_status'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION popularity._metric_status(jsonb, text) IS
    'ok, missing or invalid: how the counts classify meta_data->>metric';

CREATE FUNCTION popularity.clopper_pearson_lower(
    successes bigint, trials bigint, confidence double precision DEFAULT 0.99)
RETURNS double precision
AS 'MODULE_PATHNAME', 'popularity_clopper_pearson_lower'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION popularity.clopper_pearson_lower(bigint, bigint, double precision) IS
    'Lower bound of the exact (Clopper-Pearson) two-sided confidence interval of a binomial proportion (Boost.Math)';

CREATE FUNCTION popularity.clopper_pearson_upper(
    successes bigint, trials bigint, confidence double precision DEFAULT 0.99)
RETURNS double precision
AS 'MODULE_PATHNAME', 'popularity_clopper_pearson_upper'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION popularity.clopper_pearson_upper(bigint, bigint, double precision) IS
    'Upper bound of the exact (Clopper-Pearson) two-sided confidence interval of a binomial proportion (Boost.Math)';

-- TRUNCATE: every count of the media type becomes 0 (exact under READ COMMITTED: TRUNCATE holds
-- ACCESS EXCLUSIVE, so every writer of the table has finished and its deltas are visible to this
-- statement), and the media type is marked for reconciliation (a TRUNCATE inside a REPEATABLE READ
-- transaction may not see the last deltas).
CREATE FUNCTION popularity._stats_truncated()
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

-- A provider's metric decides which of its rows "have a metric". When it is added, changed or
-- removed, the key's counts were computed with another metric: the key is marked for
-- reconcile_stats (not reconciled on the spot: that would scan all of the provider's rows inside
-- set_metric's transaction).
CREATE FUNCTION popularity._stats_metric_changed()
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
CREATE TRIGGER stats_metric_changed
    AFTER INSERT OR DELETE OR UPDATE OF metric, provider ON popularity.metrics
    FOR EACH ROW EXECUTE FUNCTION popularity._stats_metric_changed();

-- The journal has no foreign key (it would lock the media type's row from every ingestion
-- statement); its rows go with their media type here.
CREATE FUNCTION popularity._stats_media_type_removed()
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
CREATE TRIGGER stats_media_type_removed
    AFTER DELETE ON popularity.media_types
    FOR EACH ROW EXECUTE FUNCTION popularity._stats_media_type_removed();

-- Every media type that appears in the registry is marked for reconcile_stats: by
-- register_media_type (a table that already has rows: they were never counted) and by a restore
-- (pg_restore loads the registry and the counts, but the media table's rows arrive before its
-- counts triggers, and a partial or data-only restore may not match the counts at all).
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

-- Called by register_media_type: the counts triggers on the table and each of its partitions
-- (those created or attached later get them from popularity._partitions_changed). A table that
-- already has rows stays marked for reconcile_stats (its existing rows were never counted); an
-- empty one is exact from the start (CREATE TRIGGER waits for every writer of the table, so the
-- emptiness check sees all of them).
CREATE FUNCTION popularity._install_stats_triggers(media_type text, media_table regclass)
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

CREATE FUNCTION popularity._remove_stats_triggers(media_table regclass)
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

-- Moves the journal into the base, in one transaction: the journal rows are deleted with RETURNING
-- and added to the base in the same statement, so a reader (any snapshot) sees each delta exactly
-- once, and a delta committed meanwhile is simply left for the next fold. Folds are serialized.
CREATE FUNCTION popularity.fold_stats()
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    folded bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('popularity.fold_stats'));
    WITH moved AS (
        DELETE FROM popularity.stats_journal AS j RETURNING j.*
    ), sums AS (
        SELECT m.media_type, m.provider, count(*) AS n, sum(m.rows) AS rows,
               sum(m.rows_with_metric) AS rows_with_metric, sum(m.rows_scored) AS rows_scored,
               sum(m.rows_invalid_metric) AS rows_invalid_metric
        FROM moved AS m GROUP BY m.media_type, m.provider
    ), added AS (
        INSERT INTO popularity.stats_counts AS c
            (media_type, provider, rows, rows_with_metric, rows_scored, rows_invalid_metric)
        SELECT s.media_type, s.provider, s.rows, s.rows_with_metric, s.rows_scored, s.rows_invalid_metric
        FROM sums AS s
        -- deltas of a media type unregistered meanwhile are dropped with it
        WHERE EXISTS (SELECT FROM popularity.media_types AS t WHERE t.media_type = s.media_type)
        ON CONFLICT ON CONSTRAINT stats_counts_key DO UPDATE
            SET rows = c.rows + excluded.rows,
                rows_with_metric = c.rows_with_metric + excluded.rows_with_metric,
                rows_scored = c.rows_scored + excluded.rows_scored,
                rows_invalid_metric = c.rows_invalid_metric + excluded.rows_invalid_metric,
                folded_at = now()
    )
    SELECT coalesce(sum(s.n), 0) INTO folded FROM sums AS s;
    -- Keys whose counts all reached 0 (rows deleted, orphans reconciled) disappear.
    DELETE FROM popularity.stats_counts AS c
    WHERE c.rows = 0 AND c.rows_with_metric = 0 AND c.rows_scored = 0 AND c.rows_invalid_metric = 0;
    RETURN folded;
END $$;
COMMENT ON FUNCTION popularity.fold_stats() IS
    'Moves the count deltas of popularity.stats_journal into popularity.stats_counts in one transaction; '
    'returns the number of journal rows folded. Schedule it (pg_cron), e.g. every minute';

-- Recomputes the counts of a media type (all when NULL) from its table and applies the difference
-- to the current value as a delta. Truth and current value (base + journal) are read by ONE
-- statement, so in one snapshot S; its correction is truth(S) - current(S). A delta committed
-- after S is in the journal but not in current(S), and its rows are not in truth(S): after the
-- correction commits, the value is truth(S) + later deltas = the truth. A transaction still
-- running at S has neither its rows in truth(S) nor its deltas in current(S). The marks seen in S
-- are cleared by the same statement; a mark made later survives. Reconciliations of a media type
-- are serialized (a second one then sees the first one's correction), and need READ COMMITTED.
CREATE PROCEDURE popularity.reconcile_stats(media_type text DEFAULT NULL, INOUT corrections integer DEFAULT NULL)
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

-- The sampling methods of freshness() and estimate_percentile(). bernoulli (the default) draws rows
-- independently, which the intervals assume; it reads every block but evaluates only the sampled
-- rows. system draws whole blocks and reads only those: much faster on a huge table, but rows of
-- one block are alike (a provider's rows are loaded together, a refresh rescores block ranges), so
-- its intervals are too narrow: an indication, not a guarantee.
CREATE FUNCTION popularity._check_sampling(sampling text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF sampling IS NULL OR sampling NOT IN ('bernoulli', 'system') THEN
        RAISE EXCEPTION 'unknown sampling method "%"', sampling
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use bernoulli (independent rows: valid intervals) or system (whole blocks: fast, approximate).';
    END IF;
END $$;
COMMENT ON FUNCTION popularity._check_sampling(text) IS
    'Raises 22023 unless the sampling method is bernoulli or system';

-- Freshness: per provider, the fraction of rows whose stored score differs from the score under the
-- current constant (beyond popularity.score_tolerance, as the refresh judges it), estimated from a
-- sample of about sample_rows rows with an exact 99% Clopper-Pearson interval; exact => true (or a
-- sample that would cover the table) scans every row, and the interval is then the value itself.
-- Beside the rows, rescore_pending says whether the next refresh_popularity rescores the provider
-- (popularity.rescore_state.stale, the refresh's own notion, from stored state: its constant changed
-- since its last rescore, or it was never rescored).
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

-- Percentiles from a sample, with distribution-free bounds (order statistics): for huge providers,
-- what refresh_constants would compute, without reading every row. refresh_constants itself stays
-- exact.
CREATE FUNCTION popularity.quantile_ranks(
    n bigint, percentile double precision, confidence double precision DEFAULT 0.99,
    OUT estimate_rank bigint, OUT lower_rank bigint, OUT upper_rank bigint, OUT coverage double precision)
AS 'MODULE_PATHNAME', 'popularity_quantile_ranks'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION popularity.quantile_ranks(bigint, double precision, double precision) IS
    'Ranks (1-based, in a sorted sample of n values) of percentile_disc''s estimate and of distribution-free '
    'bounds on the percentile holding with probability coverage >= confidence (Boost.Math binomial); a bound is '
    'NULL when the sample is too small';

CREATE FUNCTION popularity.estimate_percentile(
    media_type text, providers text[] DEFAULT NULL, sample_rows integer DEFAULT 10000,
    confidence double precision DEFAULT 0.99, seed double precision DEFAULT NULL,
    sampling text DEFAULT 'bernoulli')
RETURNS TABLE (provider text, metric text, percentile double precision, method text, sample_values bigint,
               estimate double precision, lower_bound double precision, upper_bound double precision,
               coverage double precision, constant_estimate double precision, constant_lower double precision,
               constant_upper double precision, current_constant double precision)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tbl regclass := popularity._media_table($1);
    m record;
    r record;
    total double precision;
    percent double precision;
    sample_clause text;
    vals double precision[];
    n bigint;
BEGIN
    IF sample_rows IS NULL OR sample_rows < 1 THEN
        RAISE EXCEPTION 'sample_rows must be a positive number of rows'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The value given was %s.', coalesce(sample_rows::text, 'NULL'));
    END IF;
    PERFORM popularity._check_sampling(sampling);
    FOR m IN
        SELECT x.provider, x.metric, x.percentile, x.constant FROM popularity.metrics AS x
        WHERE x.media_type = $1 AND ($2 IS NULL OR x.provider = ANY ($2)) ORDER BY x.provider
    LOOP
        -- The sampling rate that gives about sample_rows values of this provider (from its exact
        -- count of usable values); the whole provider when that is all of it.
        total := (SELECT s.rows_with_metric FROM popularity.provider_stats AS s
                  WHERE s.media_type = $1 AND s.provider = m.provider);
        percent := 100.0 * sample_rows / greatest(coalesce(total, 0), 1);
        sample_clause := CASE WHEN percent < 100 THEN
            format(' TABLESAMPLE %s (%s)%s', upper(sampling), percent,
                   CASE WHEN seed IS NOT NULL THEN format(' REPEATABLE (%s)', seed) ELSE '' END)
            ELSE '' END;
        EXECUTE format('SELECT array_agg(v.x ORDER BY v.x) FROM (SELECT @extschema@.popularity_metric_value(t.meta_data, $1) AS x '
                       'FROM %s AS t%s WHERE t.provider = $2) AS v WHERE v.x IS NOT NULL', tbl, sample_clause)
            INTO vals USING m.metric, m.provider;
        n := coalesce(cardinality(vals), 0);
        provider := m.provider;
        metric := m.metric;
        percentile := m.percentile;
        method := CASE WHEN sample_clause = '' THEN 'exact' ELSE 'sample' END;
        sample_values := n;
        current_constant := m.constant;
        estimate := NULL; lower_bound := NULL; upper_bound := NULL; coverage := NULL;
        constant_estimate := NULL; constant_lower := NULL; constant_upper := NULL;
        IF n > 0 THEN
            SELECT * INTO r FROM popularity.quantile_ranks(n, m.percentile, confidence);
            estimate := vals[r.estimate_rank];
            lower_bound := vals[r.lower_rank];
            upper_bound := vals[r.upper_rank];
            coverage := r.coverage;
            -- The constant grows with the percentile value, so the bounds carry over.
            constant_estimate := @extschema@.popularity_constant(estimate, m.percentile);
            constant_lower := @extschema@.popularity_constant(lower_bound, m.percentile);
            constant_upper := @extschema@.popularity_constant(upper_bound, m.percentile);
        END IF;
        RETURN NEXT;
    END LOOP;
END $$;
COMMENT ON FUNCTION popularity.estimate_percentile(text, text[], integer, double precision, double precision, text) IS
    'Per provider: the percentile value and constant estimated from a sample of about sample_rows values '
    '(the exact percentile_disc when the sample would cover the provider), with distribution-free order-statistic '
    'bounds holding with probability >= confidence, beside the current constant; refresh_constants stays exact';
