-- Provider counts (delta triggers, journal, fold, reconciliation) and freshness.
CREATE FUNCTION pg_temp.try(statement text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    hint text;
BEGIN
    EXECUTE statement;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS hint = PG_EXCEPTION_HINT;
    RETURN SQLSTATE || ': ' || SQLERRM || coalesce(' (hint: ' || nullif(hint, '') || ')', '');
END $$;
-- The counts of media type 'st' as the view shows them.
CREATE FUNCTION pg_temp.counts()
RETURNS TABLE (provider text, rows bigint, with_metric bigint, scored bigint, invalid bigint, missing bigint,
               pending boolean)
LANGUAGE sql AS $$
    SELECT provider, rows, rows_with_metric, rows_scored, rows_invalid_metric, rows_missing_metric,
           reconcile_pending
    FROM popularity.provider_stats WHERE media_type = 'st' ORDER BY provider NULLS FIRST
$$;
CREATE FUNCTION pg_temp.journal_rows() RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM popularity.stats_journal WHERE media_type = 'st'
$$;

CREATE TABLE st (
    identifier uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider varchar(80),
    foreign_identifier text NOT NULL,
    meta_data jsonb,
    updated_on timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX st_provider_fid ON st (provider, md5(foreign_identifier));
-- An empty table is exact from registration on: nothing to reconcile.
SELECT popularity.register_media_type('st', 'st', false);
-- The true counts, computed from the table without the extension's counting code.
CREATE FUNCTION pg_temp.truth()
RETURNS TABLE (provider text, rows bigint, with_metric bigint, scored bigint, invalid bigint)
LANGUAGE sql AS $$
    SELECT t.provider, count(*),
           count(*) FILTER (WHERE popularity_metric_value(t.meta_data, m.metric) IS NOT NULL),
           count(*) FILTER (WHERE t.standardized_popularity IS NOT NULL),
           count(*) FILTER (WHERE m.metric IS NOT NULL AND t.meta_data ? m.metric
                              AND t.meta_data -> m.metric <> 'null'::jsonb
                              AND popularity_metric_value(t.meta_data, m.metric) IS NULL)
    FROM st AS t LEFT JOIN popularity.metrics AS m ON m.media_type = 'st' AND m.provider = t.provider
    GROUP BY t.provider ORDER BY t.provider NULLS FIRST
$$;
CREATE FUNCTION pg_temp.exact() RETURNS boolean LANGUAGE sql AS $$
    SELECT NOT EXISTS (SELECT provider, rows, with_metric, scored, invalid FROM pg_temp.counts()
                       EXCEPT ALL SELECT * FROM pg_temp.truth())
       AND NOT EXISTS (SELECT * FROM pg_temp.truth()
                       EXCEPT ALL SELECT provider, rows, with_metric, scored, invalid FROM pg_temp.counts())
$$;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'st'::regclass AND tgname LIKE 'zz_popularity_stats%' ORDER BY 1;
SELECT count(*) AS marks FROM popularity.stats_marks WHERE media_type = 'st';
SELECT popularity.set_metric('st', 'flickr', 'views', 0.5);
SELECT popularity.set_metric('st', 'wikimedia', 'global_usage_count', 0.5);
SELECT * FROM popularity.refresh_constants('st');  -- no rows yet: no constants

-- INSERT: +1 per row, per provider; one journal row per provider and statement.
INSERT INTO st (provider, foreign_identifier, meta_data) VALUES
    ('flickr', 'a', '{"views": 10}'), ('flickr', 'b', '{"views": 20}'), ('flickr', 'c', '{"views": "1k"}'),
    ('flickr', 'd', '{"views": null}'), ('flickr', 'e', '{}'), ('flickr', 'f', '{"views": -1}'),
    ('wikimedia', 'a', '{"global_usage_count": 3}'), ('nappy', 'a', '{"downloads": 5}'),
    (NULL, 'a', '{"views": 1}');
SELECT provider, rows, rows_with_metric, rows_scored, rows_invalid_metric, source
FROM popularity.stats_journal WHERE media_type = 'st' ORDER BY provider NULLS FIRST;
SELECT * FROM pg_temp.counts();
SELECT pg_temp.exact();

-- Constants, then a re-delivery that scores the rows (an UPDATE of every flickr row).
SELECT provider, new_constant FROM popularity.refresh_constants('st') ORDER BY 1;
UPDATE st SET updated_on = now() WHERE provider IN ('flickr', 'wikimedia');
SELECT * FROM pg_temp.counts();
SELECT pg_temp.exact();

-- Upsert no-op: re-delivering the same rows changes no count and appends nothing.
SELECT popularity.fold_stats() > 0 AS folded;
INSERT INTO st (provider, foreign_identifier, meta_data)
VALUES ('flickr', 'a', '{"views": 10}'), ('flickr', 'c', '{"views": "1k"}'), ('nappy', 'a', '{"downloads": 5}')
ON CONFLICT (provider, md5(foreign_identifier)) DO UPDATE
    SET meta_data = st.meta_data || excluded.meta_data, updated_on = now();
SELECT pg_temp.journal_rows() AS journal_after;

-- Upsert change: "1k" becomes a number, the missing value arrives, a new row comes with them.
INSERT INTO st (provider, foreign_identifier, meta_data)
VALUES ('flickr', 'c', '{"views": 30}'), ('flickr', 'e', '{"views": 0}'), ('flickr', 'g', '{"views": 40}')
ON CONFLICT (provider, md5(foreign_identifier)) DO UPDATE
    SET meta_data = st.meta_data || excluded.meta_data, updated_on = now();
-- Two deltas: the INSERT trigger's (row g) and the UPDATE trigger's (rows c and e).
SELECT provider, rows, rows_with_metric, rows_scored, rows_invalid_metric
FROM popularity.stats_journal WHERE media_type = 'st' ORDER BY rows, rows_with_metric;
SELECT * FROM pg_temp.counts();
SELECT pg_temp.exact();

-- Provider change: the row moves from one key to the other (and loses its score: nappy has no metric).
UPDATE st SET provider = 'nappy' WHERE provider = 'flickr' AND foreign_identifier = 'b';
SELECT * FROM pg_temp.counts();
SELECT pg_temp.exact();

-- DELETE: -1 per row; a key whose rows are all gone disappears.
DELETE FROM st WHERE provider = 'wikimedia' OR provider IS NULL;
SELECT * FROM pg_temp.counts();
SELECT pg_temp.exact();

-- Folding moves the journal into the base: same counts, empty journal; folding again moves nothing.
SELECT popularity.fold_stats() > 0 AS folded;
SELECT pg_temp.journal_rows() AS journal_rows;
SELECT * FROM pg_temp.counts();
SELECT popularity.fold_stats() AS folded_again;
SELECT provider, rows FROM popularity.stats_counts WHERE media_type = 'st' ORDER BY 1;  -- wikimedia and NULL gone

-- A rolled-back statement leaves no delta.
BEGIN;
INSERT INTO st (provider, foreign_identifier, meta_data) VALUES ('flickr', 'rolled back', '{"views": 1}');
ROLLBACK;
SELECT pg_temp.exact();

-- TRUNCATE: the counts go to zero at once and the media type is marked for reconciliation.
CREATE TABLE st_saved AS SELECT * FROM st;
TRUNCATE st;
SELECT count(*) AS keys_left FROM pg_temp.counts();
SELECT media_type, provider, reason FROM popularity.stats_marks WHERE media_type = 'st';
INSERT INTO st SELECT * FROM st_saved;
SELECT * FROM pg_temp.counts();  -- exact again, still marked
CALL popularity.reconcile_stats('st');  -- nothing drifted: no correction, mark cleared
SELECT * FROM pg_temp.counts();

-- A metric change marks its key (only): its rows were counted with the old metric.
SELECT popularity.set_metric('st', 'nappy', 'downloads', 0.5);
SELECT * FROM pg_temp.counts();
SELECT pg_temp.exact();  -- not until reconciled
-- Changing only the percentile marks nothing.
CALL popularity.reconcile_stats('st');
SELECT popularity.set_metric('st', 'nappy', 'downloads', 0.6);
SELECT count(*) AS marks FROM popularity.stats_marks WHERE media_type = 'st';

-- Reconciliation with injected drift: rows written with triggers off (drift), a counted key
-- deleted (missing), a key without rows (orphan). Only those are corrected, as deltas, reported
-- and kept in the history.
SET session_replication_role = replica;
INSERT INTO st (provider, foreign_identifier, meta_data) VALUES ('flickr', 'h', '{"views": "bad"}'),
    ('flickr', 'i', '{"views": 7}'), ('smithsonian', 'a', '{}');
RESET session_replication_role;
SELECT popularity.fold_stats() >= 0 AS folded;
DELETE FROM popularity.stats_counts WHERE media_type = 'st' AND provider = 'nappy';
INSERT INTO popularity.stats_counts (media_type, provider, rows, rows_scored) VALUES ('st', 'ghost', 2, 1);
SELECT * FROM pg_temp.counts();
SELECT pg_temp.exact();
SELECT pg_temp.journal_rows() AS journal_before;
CALL popularity.reconcile_stats('st');
SELECT provider, rows, rows_with_metric, rows_scored, rows_invalid_metric, source
FROM popularity.stats_journal WHERE media_type = 'st' ORDER BY provider NULLS FIRST;
SELECT provider, kind, rows_before, rows_with_metric_before, rows_scored_before, rows_invalid_metric_before,
       rows_after, rows_with_metric_after, rows_scored_after, rows_invalid_metric_after
FROM popularity.stats_corrections WHERE media_type = 'st' ORDER BY provider, kind;
SELECT * FROM pg_temp.counts();
SELECT pg_temp.exact();
CALL popularity.reconcile_stats('st');  -- converged: nothing more to correct
SELECT popularity.fold_stats() > 0 AS folded;
SELECT provider FROM popularity.stats_counts WHERE media_type = 'st' ORDER BY 1;  -- the orphan is gone
SELECT pg_temp.exact();

-- Ingestion by a role with rights on the media table only: its deltas are recorded.
CREATE ROLE popularity_stats_ingest;
GRANT INSERT, UPDATE, DELETE, SELECT ON st TO popularity_stats_ingest;
SET ROLE popularity_stats_ingest;
INSERT INTO st (provider, foreign_identifier, meta_data) VALUES ('flickr', 'by role', '{"views": 5}');
SELECT pg_temp.try($$INSERT INTO popularity.stats_journal (media_type, provider, rows, rows_with_metric,
    rows_scored, rows_invalid_metric) VALUES ('st', 'flickr', 1000, 0, 0, 0)$$);
RESET ROLE;
REVOKE ALL ON st FROM popularity_stats_ingest;
DROP ROLE popularity_stats_ingest;
SELECT pg_temp.exact();

-- The trigger function cannot be used to count another table's rows as a media type's.
CREATE TABLE st_forge (provider text, meta_data jsonb, standardized_popularity double precision);
CREATE TRIGGER forge AFTER INSERT ON st_forge REFERENCING NEW TABLE AS n
    FOR EACH STATEMENT EXECUTE FUNCTION popularity._stats_trigger('st');
SELECT pg_temp.try($$INSERT INTO st_forge VALUES ('flickr', '{}', NULL)$$);
CREATE TRIGGER forge_row AFTER INSERT ON st_forge FOR EACH ROW EXECUTE FUNCTION popularity._stats_trigger('st');
DROP TRIGGER forge ON st_forge;
SELECT pg_temp.try($$INSERT INTO st_forge VALUES ('flickr', '{}', NULL)$$);
DROP TABLE st_forge;

-- Errors.
SELECT pg_temp.try($$CALL popularity.reconcile_stats('video')$$);
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT pg_temp.try($$CALL popularity.reconcile_stats('st')$$);
ROLLBACK;
SELECT pg_temp.try($$SELECT * FROM popularity.freshness('st', 0)$$);
SELECT pg_temp.try($$SELECT * FROM popularity.freshness('video')$$);
SELECT pg_temp.try($$SELECT * FROM popularity.freshness('st', sampling => 'rows')$$);
SELECT pg_temp.try($$SELECT popularity.clopper_pearson_upper(5, 3)$$);
SELECT pg_temp.try($$SELECT popularity.clopper_pearson_upper(-1, 3)$$);
SELECT pg_temp.try($$SELECT popularity.clopper_pearson_lower(1, 3, 1)$$);

-- Clopper-Pearson bounds (Boost.Math): 5/10 at 95% (textbook), 0/1000 and 10/10 at 99%.
SELECT round(popularity.clopper_pearson_lower(5, 10, 0.95)::numeric, 6) AS lower_5_10,
       round(popularity.clopper_pearson_upper(5, 10, 0.95)::numeric, 6) AS upper_5_10,
       round(popularity.clopper_pearson_upper(0, 1000)::numeric, 8) AS upper_0_1000,
       popularity.clopper_pearson_lower(0, 1000) AS lower_0_1000,
       round(popularity.clopper_pearson_lower(10, 10)::numeric, 8) AS lower_10_10,
       popularity.clopper_pearson_upper(10, 10) AS upper_10_10,
       popularity.clopper_pearson_lower(0, 0) AS lower_none, popularity.clopper_pearson_upper(0, 0) AS upper_none;

-- Freshness. 3000 flickr rows scored at ingestion with a stored constant of 50; refresh_constants
-- then computes the true median, 49, so every score but those of 0 views is stale until a refresh.
TRUNCATE st;
CALL popularity.reconcile_stats('st');
UPDATE popularity.metrics SET val = 50, constant = 50 WHERE media_type = 'st' AND provider = 'flickr';
INSERT INTO st (provider, foreign_identifier, meta_data)
SELECT 'flickr', 'fresh' || g, jsonb_build_object('views', g % 100, 'pad', repeat('x', 100))
FROM generate_series(1, 3000) AS g;
INSERT INTO st (provider, foreign_identifier, meta_data)
SELECT 'nappy', 'fresh' || g, jsonb_build_object('downloads', g) FROM generate_series(1, 20) AS g;
SELECT provider, old_constant, new_constant, changed FROM popularity.refresh_constants('st', ARRAY['flickr']);
SELECT provider, metric, constant, method, rows_counted, rows_examined, rows_stale, stale_fraction,
       stale_lower, stale_upper, estimated_stale_rows, constant_changed_at IS NOT NULL AS constant_changed,
       last_refresh_finished_at, rescore_pending
FROM popularity.freshness('st', exact => true);
-- From a sample of about 1500 independent rows (repeatable): an interval around the true 0.99.
SELECT provider, method, rows_examined BETWEEN 600 AND 2400 AS sampled_about_half,
       stale_lower <= stale_fraction AND stale_fraction <= stale_upper AS ordered,
       stale_lower < 0.99 AND 0.99 < stale_upper AS covers_truth, stale_upper - stale_lower < 0.05 AS narrow
FROM popularity.freshness('st', 1500, seed => 1) WHERE provider = 'flickr';

-- refresh_constants already stored the new constant; its providers were never rescored with it, so
-- the refresh rescores them (without force).
SET client_min_messages = warning;  -- the run number depends on the tests before this one
CALL refresh_popularity('st');
RESET client_min_messages;
SELECT provider, constant, method, rows_counted, rows_examined, rows_stale, stale_fraction, stale_lower,
       stale_upper, last_refresh_finished_at IS NOT NULL AS refreshed, rescore_pending
FROM popularity.freshness('st', exact => true) WHERE provider = 'flickr';
-- After the refresh, from a sample: stale fraction 0, the 99% upper bound below 1%.
SELECT provider, method, rows_examined >= 528 AS enough_rows, rows_stale, stale_fraction, stale_lower,
       stale_upper < 0.01 AS upper_below_1_percent, last_refresh_finished_at IS NOT NULL AS refreshed
FROM popularity.freshness('st', 1500, seed => 1) WHERE provider = 'flickr';
-- Whole blocks (fast, approximate intervals): the same answer on a clean table.
SELECT provider, method, rows_examined > 0 AS sampled, rows_stale, stale_upper < 0.01 AS upper_below_1_percent
FROM popularity.freshness('st', 1500, seed => 1, sampling => 'system') WHERE provider = 'flickr';
-- The default sample covers this small table: it is scanned exactly.
SELECT provider, method, rows_examined, rows_stale FROM popularity.freshness('st') ORDER BY 1;
-- Percentile from a sample with order-statistic bounds. The whole provider (the sample would
-- cover it): percentile_disc's value, the constant refresh_constants stored.
SELECT provider, method, sample_values, estimate, lower_bound, upper_bound, coverage >= 0.99 AS covered,
       constant_estimate, current_constant, constant_estimate = current_constant AS same_constant
FROM popularity.estimate_percentile('st', ARRAY['flickr']);
-- A sample of about 1500 independent values (repeatable): bounds around the true median 49.
SELECT provider, method, sample_values BETWEEN 600 AND 2400 AS sampled_about_half,
       lower_bound <= estimate AND estimate <= upper_bound AS ordered,
       lower_bound <= 49 AND 49 <= upper_bound AS covers_truth, coverage >= 0.99 AS covered,
       constant_lower <= constant_estimate AND constant_estimate <= constant_upper AS constants_ordered
FROM popularity.estimate_percentile('st', ARRAY['flickr'], 1500, seed => 1);
-- Too few values for bounds at 99%: NULL bounds; no values: no estimate.
SELECT popularity.set_metric('st', 'smithsonian', 'views', 0.5);
INSERT INTO st (provider, foreign_identifier, meta_data) VALUES ('smithsonian', 's1', '{"views": 4}'),
    ('smithsonian', 's2', '{"views": 6}');
SELECT provider, method, sample_values, estimate, lower_bound, upper_bound, coverage, constant_estimate
FROM popularity.estimate_percentile('st', ARRAY['smithsonian', 'wikimedia']);
SELECT * FROM popularity.quantile_ranks(100, 0.5, 0.95);  -- the textbook median interval: x(40), x(61)
SELECT pg_temp.try($$SELECT * FROM popularity.quantile_ranks(0, 0.5)$$);
SELECT pg_temp.try($$SELECT * FROM popularity.estimate_percentile('st', sample_rows => 0)$$);
DELETE FROM st WHERE provider = 'smithsonian';
-- The refresh's rewrites were counted too.
SELECT * FROM pg_temp.counts();
SELECT pg_temp.exact();

-- Registering a table that already has rows marks it; reconcile_stats then creates its keys.
CREATE TABLE st_old (id int PRIMARY KEY, provider text, meta_data jsonb, updated_on timestamptz NOT NULL DEFAULT now());
INSERT INTO st_old (id, provider, meta_data) VALUES (1, 'jamendo', '{"listens": 1}'), (2, 'jamendo', '{}');
SELECT popularity.register_media_type('st_old', 'st_old', false);
SELECT popularity.set_metric('st_old', 'jamendo', 'listens');
SELECT media_type, provider, reason FROM popularity.stats_marks WHERE media_type = 'st_old';
CALL popularity.reconcile_stats('st_old');
SELECT provider, rows, rows_with_metric, rows_scored, reconcile_pending FROM popularity.provider_stats
WHERE media_type = 'st_old';
-- Registering again keeps the counts (no new mark).
SELECT popularity.register_media_type('st_old', 'st_old', false);
SELECT count(*) AS marks FROM popularity.stats_marks WHERE media_type = 'st_old';

-- Unregistering removes the triggers and the media type's counts, journal and marks.
SELECT popularity.unregister_media_type('st_old');
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'st_old'::regclass AND NOT tgisinternal;
SELECT (SELECT count(*) FROM popularity.stats_journal WHERE media_type = 'st_old') AS journal,
       (SELECT count(*) FROM popularity.stats_counts WHERE media_type = 'st_old') AS counts;
DROP TABLE st_old;
SELECT popularity.unregister_media_type('st');
SELECT (SELECT count(*) FROM popularity.stats_journal WHERE media_type = 'st') AS journal,
       (SELECT count(*) FROM popularity.stats_counts WHERE media_type = 'st') AS counts,
       (SELECT count(*) FROM popularity.stats_marks WHERE media_type = 'st') AS marks;
DROP TABLE st, st_saved;
