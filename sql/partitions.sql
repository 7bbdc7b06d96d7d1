-- Partitioned media tables (issue 14, item 1): the parent is registered; constants are computed
-- over the whole tree; both jobs walk every leaf partition (tasks per leaf), rows named by a
-- composite primary key that includes the partition key; undo restores by that key; a role needs
-- its rights on the partitions too (the workers update the leaves directly).
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT setseed(0.25);
-- Run numbers of their own (the history is deleted at the end, and the numbering restarted).
ALTER SEQUENCE popularity.refresh_runs_run_id_seq RESTART WITH 2001;
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
-- Waits (up to 60 s) for a run to end; returns its state.
CREATE FUNCTION pg_temp.wait_run(run bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    s text;
BEGIN
    FOR i IN 1..1200 LOOP
        SELECT state INTO s FROM popularity.refresh_runs WHERE run_id = run;
        IF s IN ('succeeded', 'failed', 'cancelled') THEN
            RETURN s;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN 'timed out in state ' || s;
END $$;
-- Rows whose stored score is not the one their provider's current constant gives.
CREATE FUNCTION pg_temp.wrong_scores(tbl regclass, mt text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    EXECUTE format('SELECT count(*) FROM %s AS t LEFT JOIN popularity.metrics AS m
                    ON m.media_type = $1 AND m.provider = t.provider
                    WHERE t.standardized_popularity IS DISTINCT FROM
                          standardized_popularity(popularity_metric_value(t.meta_data, m.metric), m.constant)', tbl)
        INTO n USING mt;
    RETURN n;
END $$;

-- Monthly partitions of 2024 on created_on (one of them sub-partitioned in halves), a default
-- partition, and a primary key (identifier, created_on).
CREATE TABLE pimage (
    identifier uuid NOT NULL,
    created_on timestamptz NOT NULL,
    provider text NOT NULL,
    meta_data jsonb,
    tags jsonb,
    updated_on timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (identifier, created_on)
) PARTITION BY RANGE (created_on);
CREATE TABLE pimage_2024_01 PARTITION OF pimage FOR VALUES FROM ('2024-01-01') TO ('2024-02-01');
CREATE TABLE pimage_2024_02 PARTITION OF pimage FOR VALUES FROM ('2024-02-01') TO ('2024-03-01');
CREATE TABLE pimage_2024_03 PARTITION OF pimage FOR VALUES FROM ('2024-03-01') TO ('2024-04-01')
    PARTITION BY RANGE (created_on);
CREATE TABLE pimage_2024_03a PARTITION OF pimage_2024_03 FOR VALUES FROM ('2024-03-01') TO ('2024-03-16');
CREATE TABLE pimage_2024_03b PARTITION OF pimage_2024_03 FOR VALUES FROM ('2024-03-16') TO ('2024-04-01');
CREATE TABLE pimage_default PARTITION OF pimage DEFAULT;
INSERT INTO pimage (identifier, created_on, provider, meta_data, tags)
SELECT md5(g::text)::uuid, timestamptz '2024-01-01' + (g % 100) * interval '1 day',
       (ARRAY['flickr', 'wikimedia', 'smithsonian'])[1 + g % 3],
       jsonb_build_object('views', g % 997, 'global_usage_count', g % 11, 'title', repeat('x', 100)),
       jsonb_build_array(jsonb_build_object('name', 'dog'),
                         jsonb_build_object('name', 'cat', 'provider', 'rekognition', 'accuracy', 0.5),
                         jsonb_build_object('name', 'sky', 'provider', 'rekognition', 'accuracy', 0.99))
FROM generate_series(1, 12000) AS g;
SELECT tableoid::regclass AS leaf, count(*) FROM pimage GROUP BY 1 ORDER BY 1;

-- Registered as one media type: the parent.
SELECT popularity.register_media_type('pimage', 'pimage');
SELECT popularity.set_metric('pimage', 'flickr', 'views', percentile => 0.85);
SELECT popularity.set_metric('pimage', 'wikimedia', 'global_usage_count', percentile => 0.85);
SELECT popularity.set_metric('pimage', 'smithsonian', 'views', percentile => 0.5);
SELECT leaf FROM popularity._media_leaves('pimage') AS leaf ORDER BY 1;
SELECT popularity._key_columns('pimage');

-- Constants over the whole tree, equal to percentile_disc over all rows.
SELECT provider, new_constant FROM popularity.refresh_constants('pimage') ORDER BY 1;
SELECT m.provider, m.val IS NOT DISTINCT FROM (
           SELECT percentile_disc(m.percentile) WITHIN GROUP (ORDER BY popularity_metric_value(t.meta_data, m.metric))
           FROM pimage AS t WHERE t.provider = m.provider) AS exact
FROM popularity.metrics AS m WHERE m.media_type = 'pimage' ORDER BY 1;

-- The refresh walks every leaf: one or more tasks per leaf, and no row left with a wrong score.
SELECT pg_temp.wrong_scores('pimage', 'pimage') AS wrong_before;
CALL refresh_popularity('pimage');
SELECT pg_temp.wrong_scores('pimage', 'pimage') AS wrong_after;
SELECT t.leaf, count(*) > 0 AS has_tasks, bool_and(t.state = 'done') AS done
FROM popularity.refresh_tasks AS t JOIN popularity.refresh_runs AS r USING (run_id)
WHERE r.media_type = 'pimage' AND r.job = 'refresh' GROUP BY 1 ORDER BY 1;
SELECT r.key_columns, s.state, s.rows_updated
FROM popularity.refresh_runs AS r JOIN (SELECT run_id, max(state) AS state, sum(rows_updated) AS rows_updated
                                        FROM popularity.refresh_status GROUP BY run_id) AS s USING (run_id)
WHERE r.media_type = 'pimage';

-- Ingestion into any partition, one created after registration included, is scored.
CREATE TABLE pimage_2024_05 PARTITION OF pimage FOR VALUES FROM ('2024-05-01') TO ('2024-06-01');
INSERT INTO pimage (identifier, created_on, provider, meta_data)
VALUES (md5('new may')::uuid, '2024-05-02', 'flickr', '{"views": 850}'),
       (md5('new default')::uuid, '2030-01-01', 'wikimedia', '{"global_usage_count": 3}');
SELECT pg_temp.wrong_scores('pimage', 'pimage') AS wrong_after_ingestion;
-- The provider counts (statement triggers with transition tables on the parent) are exact.
-- (Statements that name a partition are counted by the partition's own counts triggers: the
-- workers' updates, and ingestion straight into a partition.)
CREATE FUNCTION pg_temp.counts_off() RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM (SELECT provider, count(*) AS rows, count(standardized_popularity) AS rows_scored
                          FROM pimage GROUP BY 1) AS c
    FULL JOIN (SELECT provider, rows, rows_scored FROM popularity.provider_stats WHERE media_type = 'pimage') AS s
    USING (provider)
    WHERE (c.rows, c.rows_scored) IS DISTINCT FROM (s.rows, s.rows_scored) $$;
CALL popularity.reconcile_stats('pimage');
INSERT INTO pimage (identifier, created_on, provider, meta_data)
SELECT md5('more' || g)::uuid, timestamptz '2024-02-10' + g * interval '1 hour', 'smithsonian', '{}'
FROM generate_series(1, 100) AS g;
DELETE FROM pimage WHERE identifier = md5('new may')::uuid;
INSERT INTO pimage_2024_02 (identifier, created_on, provider, meta_data)
VALUES (md5('straight into a partition')::uuid, '2024-02-11', 'wikimedia', '{"global_usage_count": 1}');
INSERT INTO pimage_2024_03a (identifier, created_on, provider, meta_data)
VALUES (md5('straight into a sub-partition')::uuid, '2024-03-02', 'wikimedia', '{"global_usage_count": 2}');
UPDATE pimage_2024_03 SET meta_data = '{}' WHERE identifier = md5('straight into a sub-partition')::uuid;
SELECT pg_temp.counts_off() AS counts_off, bool_or(reconcile_pending) AS pending
FROM popularity.provider_stats WHERE media_type = 'pimage';

-- A constant changed and a pre-filled table attached with stale scores: the next refresh covers it.
CREATE TABLE pimage_2023 (LIKE pimage INCLUDING DEFAULTS);
INSERT INTO pimage_2023 (identifier, created_on, provider, meta_data, standardized_popularity)
SELECT md5('old' || g)::uuid, timestamptz '2023-01-01' + g * interval '1 hour', 'flickr',
       jsonb_build_object('views', g), -1
FROM generate_series(1, 500) AS g;
ALTER TABLE pimage ATTACH PARTITION pimage_2023 FOR VALUES FROM ('2023-01-01') TO ('2023-12-01');
-- Its rows joined without a row trigger: the counts say they need reconciling, and it makes them exact.
SELECT pg_temp.counts_off() AS counts_off, bool_or(reconcile_pending) AS pending
FROM popularity.provider_stats WHERE media_type = 'pimage';
CALL popularity.reconcile_stats('pimage');
SELECT pg_temp.counts_off() AS counts_off, bool_or(reconcile_pending) AS pending
FROM popularity.provider_stats WHERE media_type = 'pimage';
SELECT popularity.set_metric('pimage', 'flickr', 'views', percentile => 0.7);
CALL refresh_popularity('pimage');
SELECT pg_temp.wrong_scores('pimage', 'pimage') AS wrong_after_attach,
       (SELECT count(*) FROM pimage_2023 WHERE standardized_popularity = -1) AS stale_in_attached;
-- The workers' updates of the leaves were counted (rows scored: the new partition's rows).
SELECT pg_temp.counts_off() AS counts_off;
-- A partition created later has the counts triggers; one detached has none any more.
SELECT c.relname, count(g.tgname) AS counts_triggers
FROM pg_class AS c LEFT JOIN pg_trigger AS g ON g.tgrelid = c.oid AND g.tgname LIKE 'zz\_popularity\_stats\_%'
WHERE c.relname IN ('pimage', 'pimage_2024_03', 'pimage_2024_05', 'pimage_2023') GROUP BY 1 ORDER BY 1;

-- A table attached with scores no run gave them, no constant changed: the attach marks every
-- provider stale (rescore_marks), so the next refresh rescores them.
CREATE TABLE pimage_2022 (LIKE pimage INCLUDING DEFAULTS);
INSERT INTO pimage_2022 (identifier, created_on, provider, meta_data, standardized_popularity)
SELECT md5('older' || g)::uuid, timestamptz '2022-01-01' + g * interval '1 hour', 'wikimedia',
       jsonb_build_object('global_usage_count', g % 5), 42
FROM generate_series(1, 300) AS g;
ALTER TABLE pimage ATTACH PARTITION pimage_2022 FOR VALUES FROM ('2022-01-01') TO ('2023-01-01');
SELECT provider, stale FROM popularity.rescore_state WHERE media_type = 'pimage' ORDER BY 1;
CALL refresh_popularity('pimage');
SELECT pg_temp.wrong_scores('pimage', 'pimage') AS wrong_after_stale_attach,
       (SELECT count(*) FROM popularity.rescore_state WHERE media_type = 'pimage' AND stale) AS stale_left;

-- filter_tags walks every leaf; the undo record names rows by (identifier, created_on).
SET client_min_messages = warning; -- (rows scanned vary: rewritten rows landing in blocks not yet walked)
CALL filter_tags('pimage');
RESET client_min_messages;
SELECT state, rows_updated FROM popularity.refresh_status WHERE job = 'filter_tags';
SELECT count(*) FILTER (WHERE tags IS DISTINCT FROM popularity.filtered_tags(tags, NULL, 'pimage')) AS unfiltered,
       count(*) FILTER (WHERE tags @> '[{"name": "cat"}]') AS low_accuracy_left,
       count(*) FILTER (WHERE tags @> '[{"name": "dog"}]') AS kept
FROM pimage;
SELECT run_id AS filter_run FROM popularity.refresh_runs WHERE media_type = 'pimage' AND job = 'filter_tags' \gset
SELECT (SELECT row_key FROM popularity.tag_filter_removed_rows WHERE run_id = :filter_run LIMIT 1) ~ '^\{[0-9a-f-]+,"2' AS composite_key_recorded;
-- One row changed since the run is not restored; the others are.
UPDATE pimage SET tags = '[]' WHERE identifier = md5('7')::uuid;
SELECT rows_restored, cardinality(not_restored) AS not_restored FROM popularity.undo_filter_tags(:filter_run);
SELECT count(*) FILTER (WHERE tags @> '[{"name": "cat"}]') AS restored_low_accuracy FROM pimage;

-- The workers update the leaves directly: a role with rights on the parent only is told which
-- partition it lacks them on; granted on the partitions, it refreshes.
CREATE ROLE part_operator LOGIN;
SELECT popularity.grant_operator('part_operator');
GRANT SELECT, UPDATE ON pimage TO part_operator;
SET ROLE part_operator;
CALL refresh_popularity('pimage', force => true, wait => false);
RESET ROLE;
SELECT pg_temp.wait_run(max(run_id)) AS state FROM popularity.refresh_runs WHERE media_type = 'pimage';
SELECT error ~ '^permission denied for table public\.pimage_' AS names_the_partition
FROM popularity.refresh_runs WHERE run_id = (SELECT max(run_id) FROM popularity.refresh_runs);
DO $$
DECLARE
    leaf regclass;
BEGIN
    FOR leaf IN SELECT * FROM popularity._media_leaves('pimage') LOOP
        EXECUTE format('GRANT SELECT, UPDATE ON %s TO part_operator', leaf);
    END LOOP;
END $$;
SET ROLE part_operator;
CALL refresh_popularity('pimage', force => true);
RESET ROLE;
SELECT pg_temp.wrong_scores('pimage', 'pimage') AS wrong_after_operator;

-- A partition detached: its rows left the media table (the counts ask for reconcile_stats), it
-- has no counts triggers any more, and writing it still works and counts nothing.
CALL popularity.reconcile_stats('pimage');
ALTER TABLE pimage DETACH PARTITION pimage_2024_05;
SELECT count(g.tgname) AS counts_triggers_left FROM pg_trigger AS g
WHERE g.tgrelid = 'pimage_2024_05'::regclass AND g.tgname LIKE 'zz\_popularity\_stats\_%';
INSERT INTO pimage_2024_05 (identifier, created_on, provider, meta_data)
VALUES (md5('detached')::uuid, '2024-05-03', 'flickr', '{"views": 1}');
SELECT bool_or(reconcile_pending) AS pending FROM popularity.provider_stats WHERE media_type = 'pimage';
CALL popularity.reconcile_stats('pimage');
SELECT pg_temp.counts_off() AS counts_off;
DROP TABLE pimage_2024_05;

-- A run queued for a table dropped before the scheduler recorded its writers (they are looked up
-- over the table's partitions) does not stop the scheduler: the next run of another media type
-- finishes.
CREATE TABLE pgone (LIKE pimage INCLUDING ALL) PARTITION BY RANGE (created_on);
CREATE TABLE pgone_1 PARTITION OF pgone FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
SELECT popularity.register_media_type('pgone', 'pgone', default_metrics => false);
BEGIN;
CALL filter_tags('pgone', wait => false);
DROP TABLE pgone;
COMMIT;
SET statement_timeout = '60s';
SET client_min_messages = warning;
CALL filter_tags('pimage', dry_run => true);
RESET client_min_messages;
RESET statement_timeout;
SELECT state FROM popularity.refresh_runs WHERE job = 'filter_tags' AND dry_run AND media_type = 'pimage';
SELECT count(*) AS runs_left_queued FROM popularity.cancel_refresh(media_type => 'pgone');

-- A table partitioned by a column a job writes is refused, saying which (the workers update each
-- leaf directly: a row could not move to another partition).
CREATE TABLE pbyscore (identifier int, provider text, meta_data jsonb, tags jsonb,
                       updated_on timestamptz NOT NULL DEFAULT now(), standardized_popularity double precision,
                       PRIMARY KEY (identifier, updated_on)) PARTITION BY RANGE (updated_on);
CREATE TABLE pbyscore_all PARTITION OF pbyscore DEFAULT;
SELECT popularity.register_media_type('pbyscore', 'pbyscore', default_metrics => false);
CALL refresh_popularity('pbyscore');
SET client_min_messages = warning;
CALL filter_tags('pbyscore', dry_run => true);
RESET client_min_messages;
DROP TABLE pbyscore;

-- Unregistering leaves the tree alone.
SELECT popularity.unregister_media_type('pimage');
DROP TABLE pimage;
SELECT popularity.revoke_operator('part_operator');
DROP OWNED BY part_operator;
DROP ROLE part_operator;
DELETE FROM popularity.refresh_runs WHERE media_type IN ('pimage', 'pgone', 'pbyscore');
ALTER SEQUENCE popularity.refresh_runs_run_id_seq RESTART WITH 1;
