-- Fixed scenarios the targeted fuzzer runs after the generated calls, one statement a line, as
-- each role: the aggregate over odd input (serial and parallel), the extension's trigger
-- functions fired from triggers they were not made for (temporary tables, so both roles can), and
-- the tag filter job (odd arguments, racing runs, cancel/resume/undo of every kind of run, tables
-- the workers cannot open or whose columns change under a run).
-- The aggregate
SELECT popularity_percentile(v, 0.5) FROM unnest('{NaN,Infinity,-Infinity,0,-0,5e-324,1e308,NULL}'::float8[]) AS v;
SELECT popularity_percentile(v, p) FROM unnest('{1,2,3}'::float8[]) AS v, unnest('{NaN,-0,0,1,1.0000000000000002,Infinity,-1,NULL}'::float8[]) AS p GROUP BY p;
SELECT popularity_percentile(v, p) FROM (VALUES (1::float8, 0.5::float8), (2, 0.9), (3, NULL), (NULL, 0.1)) AS t(v, p);
SELECT popularity_percentile(v, 0.5) FROM unnest('{}'::float8[]) AS v;
SELECT popularity_percentile(DISTINCT v, 0.5) FROM unnest('{1,1,2,NaN,NaN}'::float8[]) AS v;
SELECT popularity_percentile(v, 0.5) FILTER (WHERE v > 1) FROM unnest('{1,2,3}'::float8[]) AS v;
SELECT popularity_percentile(v, 0.5) OVER (ORDER BY v ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) FROM unnest('{3,1,2,NaN,NULL,-1}'::float8[]) AS v;
SELECT popularity_percentile(v, 0.5) OVER () FROM unnest('{3,1,2}'::float8[]) AS v;
SELECT popularity_percentile(g::float8, 0.999999) FROM generate_series(1, 2000000) AS g;
SELECT popularity_percentile(CASE WHEN g % 3 = 0 THEN 'NaN'::float8 WHEN g % 3 = 1 THEN '-Infinity' ELSE g END, 0.3) FROM generate_series(1, 100000) AS g;
SET max_parallel_workers_per_gather = 4; SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0; SET force_parallel_mode = on; SELECT provider, popularity_percentile(popularity_metric_value(meta_data, 'views'), 0.85), popularity_percentile(standardized_popularity, 'NaN') FROM image GROUP BY provider;
SET max_parallel_workers_per_gather = 4; SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0; SET force_parallel_mode = on; SELECT popularity_percentile(CASE WHEN random() < 0.5 THEN 'NaN'::float8 ELSE random() END, 0.5) FROM image;
SET max_parallel_workers_per_gather = 4; SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0; SET force_parallel_mode = on; SELECT popularity_percentile(popularity_metric_value(meta_data, 'views'), 0.5) FROM image WHERE false;
SET max_parallel_workers_per_gather = 4; SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0; SET force_parallel_mode = on; SELECT popularity.filtered_tags(tags, provider, 'image') IS NULL, popularity._metric_status(meta_data, 'views'), standardized_popularity(popularity_metric_value(meta_data, 'views'), 10) FROM image LIMIT 50;
SELECT popularity._percentile_final(NULL); SELECT popularity._percentile_transition(NULL, 1, 0.5); SELECT popularity._percentile_combine(NULL, NULL);
SELECT popularity._percentile_serialize(NULL); SELECT popularity._percentile_deserialize('\x0102'::bytea, NULL);
-- The ingestion trigger on tables it was not installed on
CREATE TEMP TABLE fz_t1 (LIKE image INCLUDING DEFAULTS);
CREATE TRIGGER a BEFORE INSERT OR UPDATE ON fz_t1 FOR EACH ROW EXECUTE FUNCTION popularity._score_trigger('image'); INSERT INTO fz_t1 SELECT * FROM image LIMIT 50;
UPDATE fz_t1 SET meta_data = '{"views": 1e400}'; UPDATE fz_t1 SET meta_data = NULL; UPDATE fz_t1 SET provider = NULL; UPDATE fz_t1 SET standardized_popularity = 'NaN';
SET popularity.strict_metrics = on; UPDATE fz_t1 SET meta_data = '{"views": "1k"}'; RESET popularity.strict_metrics;
ALTER TABLE fz_t1 ADD COLUMN extra int; UPDATE fz_t1 SET meta_data = '{"views": 5}';
ALTER TABLE fz_t1 DROP COLUMN extra; ALTER TABLE fz_t1 ADD COLUMN extra2 text DEFAULT repeat('y', 3000); UPDATE fz_t1 SET meta_data = '{"views": 6}';
ALTER TABLE fz_t1 DROP COLUMN standardized_popularity; UPDATE fz_t1 SET meta_data = '{"views": 7}';
ALTER TABLE fz_t1 ADD COLUMN standardized_popularity int; UPDATE fz_t1 SET meta_data = '{"views": 8}';
ALTER TABLE fz_t1 ALTER COLUMN meta_data TYPE text; UPDATE fz_t1 SET provider = 'flickr';
CREATE TEMP TABLE fz_t2 (x int); CREATE TRIGGER a BEFORE INSERT OR UPDATE ON fz_t2 FOR EACH ROW EXECUTE FUNCTION popularity._score_trigger('image'); INSERT INTO fz_t2 VALUES (1);
CREATE TEMP TABLE fz_t3 (provider text, meta_data jsonb, standardized_popularity float8); CREATE TRIGGER a BEFORE INSERT OR UPDATE ON fz_t3 FOR EACH ROW EXECUTE FUNCTION popularity._score_trigger(); INSERT INTO fz_t3 VALUES ('flickr', '{"views": 1}');
CREATE TRIGGER b BEFORE INSERT ON fz_t3 FOR EACH ROW EXECUTE FUNCTION popularity._score_trigger('image', 'x'); DROP TRIGGER a ON fz_t3; INSERT INTO fz_t3 VALUES ('flickr', '{"views": 1}');
DROP TRIGGER b ON fz_t3; CREATE TRIGGER c AFTER INSERT ON fz_t3 FOR EACH ROW EXECUTE FUNCTION popularity._score_trigger('image'); INSERT INTO fz_t3 VALUES ('flickr', '{"views": 1}');
DROP TRIGGER c ON fz_t3; CREATE TRIGGER d BEFORE INSERT ON fz_t3 FOR EACH STATEMENT EXECUTE FUNCTION popularity._score_trigger('image'); INSERT INTO fz_t3 VALUES ('flickr', '{"views": 1}');
DROP TRIGGER d ON fz_t3; CREATE TRIGGER e BEFORE DELETE ON fz_t3 FOR EACH ROW EXECUTE FUNCTION popularity._score_trigger('image'); DELETE FROM fz_t3;
DROP TRIGGER e ON fz_t3; CREATE TRIGGER f BEFORE INSERT OR UPDATE ON fz_t3 FOR EACH ROW EXECUTE FUNCTION popularity._score_trigger(''); INSERT INTO fz_t3 VALUES ('flickr', '{"views": 1}');
DROP TRIGGER f ON fz_t3; CREATE TRIGGER g BEFORE INSERT OR UPDATE ON fz_t3 FOR EACH ROW EXECUTE FUNCTION popularity._score_trigger('secret'); INSERT INTO fz_t3 VALUES ('flickr', '{"views": 7770001}') RETURNING standardized_popularity;
CREATE TEMP TABLE fz_t4 (provider text, meta_data jsonb, tags jsonb, standardized_popularity float8); CREATE TRIGGER a BEFORE INSERT OR UPDATE ON fz_t4 FOR EACH ROW EXECUTE FUNCTION popularity._score_trigger('audio'); INSERT INTO fz_t4 VALUES ('jamendo', '{"listen_count": 3}', '[]');
CREATE TEMP VIEW fz_v AS SELECT * FROM fz_t4; CREATE TRIGGER a INSTEAD OF INSERT ON fz_v FOR EACH ROW EXECUTE FUNCTION popularity._score_trigger('image'); INSERT INTO fz_v VALUES ('flickr', '{"views": 1}', '[]');
-- The counts triggers on tables that are not the registered ones
CREATE TEMP TABLE fz_s1 (LIKE image INCLUDING DEFAULTS); CREATE TRIGGER s AFTER INSERT ON fz_s1 REFERENCING NEW TABLE AS n FOR EACH STATEMENT EXECUTE FUNCTION popularity._stats_trigger('image'); INSERT INTO fz_s1 SELECT * FROM image LIMIT 10;
CREATE TEMP TABLE fz_s2 (LIKE image INCLUDING DEFAULTS); CREATE TRIGGER s AFTER INSERT ON fz_s2 FOR EACH STATEMENT EXECUTE FUNCTION popularity._stats_trigger('image'); INSERT INTO fz_s2 SELECT * FROM image LIMIT 10;
CREATE TEMP TABLE fz_s3 (LIKE image INCLUDING DEFAULTS); CREATE TRIGGER s AFTER INSERT ON fz_s3 FOR EACH ROW EXECUTE FUNCTION popularity._stats_trigger('image'); INSERT INTO fz_s3 SELECT * FROM image LIMIT 10;
CREATE TEMP TABLE fz_s4 (LIKE image INCLUDING DEFAULTS); CREATE TRIGGER s AFTER DELETE ON fz_s4 REFERENCING OLD TABLE AS o FOR EACH STATEMENT EXECUTE FUNCTION popularity._stats_trigger('secret'); INSERT INTO fz_s4 SELECT * FROM image LIMIT 10; DELETE FROM fz_s4;
CREATE TEMP TABLE fz_s5 (x int); CREATE TRIGGER s AFTER INSERT ON fz_s5 REFERENCING NEW TABLE AS n FOR EACH STATEMENT EXECUTE FUNCTION popularity._stats_trigger('image'); INSERT INTO fz_s5 VALUES (1);
CREATE TEMP TABLE fz_s6 (LIKE image INCLUDING DEFAULTS); CREATE TRIGGER s AFTER TRUNCATE ON fz_s6 FOR EACH STATEMENT EXECUTE FUNCTION popularity._stats_truncated('image'); TRUNCATE fz_s6;
CREATE TEMP TABLE fz_s7 (LIKE image INCLUDING DEFAULTS); CREATE TRIGGER s AFTER INSERT ON fz_s7 FOR EACH ROW EXECUTE FUNCTION popularity._stats_truncated('image'); INSERT INTO fz_s7 SELECT * FROM image LIMIT 1;
-- The SECURITY DEFINER trigger functions fired from the caller's own tables
CREATE TEMP TABLE fz_m (media_type text, provider text, metric text); CREATE TRIGGER s AFTER INSERT OR DELETE ON fz_m FOR EACH ROW EXECUTE FUNCTION popularity._stats_metric_changed(); INSERT INTO fz_m VALUES ('image', 'flickr', 'views'); DELETE FROM fz_m;
CREATE TEMP TABLE fz_r (media_type text); CREATE TRIGGER s AFTER DELETE ON fz_r FOR EACH ROW EXECUTE FUNCTION popularity._stats_media_type_removed(); INSERT INTO fz_r VALUES ('image'), ('secret'); DELETE FROM fz_r;
CREATE TEMP TABLE fz_c (x int); CREATE TRIGGER s AFTER INSERT ON fz_c FOR EACH STATEMENT EXECUTE FUNCTION popularity._config_changed('constants'); CREATE TRIGGER t AFTER INSERT ON fz_c FOR EACH ROW EXECUTE FUNCTION popularity._config_changed('bogus'); INSERT INTO fz_c VALUES (1);
CREATE TEMP TABLE fz_c2 (x int); CREATE TRIGGER s AFTER INSERT ON fz_c2 FOR EACH STATEMENT EXECUTE FUNCTION popularity._config_changed(); INSERT INTO fz_c2 VALUES (1);
CREATE TEMP TABLE fz_c3 (x int); CREATE TRIGGER s AFTER INSERT ON fz_c3 FOR EACH STATEMENT EXECUTE FUNCTION popularity._forget_dropped_tables(); INSERT INTO fz_c3 VALUES (1);
-- Registered tables changed under the extension
BEGIN; ALTER TABLE image DROP COLUMN standardized_popularity; INSERT INTO image (provider, meta_data) VALUES ('flickr', '{"views": 3}'); ROLLBACK;
BEGIN; ALTER TABLE image ALTER COLUMN meta_data TYPE text; UPDATE image SET provider = provider WHERE foreign_identifier = 'f1'; ROLLBACK;
BEGIN; ALTER TABLE image RENAME COLUMN provider TO prov; SELECT * FROM popularity.refresh_constants('image'); ROLLBACK;
BEGIN; ALTER TABLE image ADD COLUMN zz int DEFAULT 1; UPDATE image SET meta_data = meta_data WHERE foreign_identifier LIKE 'f2%'; ROLLBACK;
BEGIN; TRUNCATE image; SELECT * FROM popularity.provider_stats; SELECT * FROM popularity.freshness('image', 100, true); ROLLBACK;
BEGIN; DELETE FROM image; SELECT * FROM popularity.estimate_percentile('image', NULL, 10, 0.99, 0.5, 'system'); ROLLBACK;
BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT * FROM popularity.refresh_constants('image'); CALL popularity.reconcile_stats('image'); ROLLBACK;
BEGIN; CALL refresh_popularity('image'); ROLLBACK;
BEGIN; CALL filter_tags('image'); ROLLBACK;
CALL refresh_popularity('audio', NULL, false, true);
CALL filter_tags('audio', true, 1);
-- The tag filter job: odd arguments, runs racing each other, cancel, resume and undo on every kind of run
CALL filter_tags('image', false, 0); CALL filter_tags('image', false, -1); CALL filter_tags('image', NULL); CALL filter_tags('image', false, 1, NULL);
CALL filter_tags('image', false, 2147483647, false); CALL filter_tags('image', true, 1, false);
CALL filter_tags('image', false, 1, false); CALL filter_tags('image', true, 1, false); CALL filter_tags('image', false, 1, false); CALL refresh_popularity('image', NULL, false, true);
CALL filter_tags('image', false, 1, false); SELECT * FROM popularity.undo_filter_tags((SELECT max(run_id) FROM popularity.refresh_runs WHERE job = 'filter_tags'));
CALL filter_tags('image', false, 1, false); SELECT popularity.cancel_refresh(media_type => 'image'); SELECT popularity.resume_refresh(max(run_id)) FROM popularity.refresh_runs WHERE job = 'filter_tags' AND state = 'cancelled';
DO $$ DECLARE r bigint := (SELECT max(run_id) FROM popularity.refresh_runs WHERE job = 'filter_tags'); BEGIN PERFORM popularity.cancel_refresh(r); CALL popularity.resume_refresh(r, true); END $$;
SELECT * FROM popularity.undo_filter_tags((SELECT max(run_id) FROM popularity.refresh_runs WHERE job = 'refresh'));
SELECT * FROM popularity.undo_filter_tags((SELECT max(run_id) FROM popularity.refresh_runs WHERE job = 'filter_tags' AND dry_run));
SELECT u.* FROM (SELECT run_id FROM popularity.refresh_runs WHERE job = 'filter_tags' AND NOT dry_run AND undone_at IS NULL ORDER BY run_id DESC LIMIT 3) AS r CROSS JOIN LATERAL popularity.undo_filter_tags(r.run_id) AS u;
SELECT * FROM popularity.undo_filter_tags((SELECT max(run_id) FROM popularity.refresh_runs WHERE undone_at IS NOT NULL));
SELECT popularity.purge_filter_undo('image', '-1 day'); SELECT * FROM popularity.undo_filter_tags((SELECT max(run_id) FROM popularity.refresh_runs WHERE job = 'filter_tags' AND records_purged_at IS NOT NULL));
SET popularity.tag_filter_undo = off; CALL filter_tags('image', false, 4); RESET popularity.tag_filter_undo; SELECT * FROM popularity.undo_filter_tags((SELECT max(run_id) FROM popularity.refresh_runs WHERE job = 'filter_tags'));
UPDATE image SET tags = '"not an array"' WHERE foreign_identifier = 'f3'; UPDATE image SET tags = '[1, null, {"name": null}, {"name": "x", "accuracy": "nan"}, {"name": "y", "accuracy": " 1_0e-1 "}]' WHERE foreign_identifier = 'f4'; CALL filter_tags('image', false, 8); SELECT counters FROM popularity.refresh_status WHERE run_id = (SELECT max(run_id) FROM popularity.refresh_runs WHERE job = 'filter_tags');
BEGIN; UPDATE image SET tags = tags WHERE foreign_identifier LIKE 'f5%'; SELECT popularity.undo_filter_tags((SELECT max(run_id) FROM popularity.refresh_runs WHERE job = 'filter_tags')); ROLLBACK;
-- A filter run of a table the workers cannot open (another session's temporary table), and of one whose columns change
CREATE TEMP TABLE fz_ft (LIKE image INCLUDING ALL); INSERT INTO fz_ft SELECT * FROM image LIMIT 100; SELECT popularity.register_media_type('fz_temp', 'fz_ft', false); CALL filter_tags('fz_temp', false, 1); SELECT fuzz.restore();
CREATE TABLE fz_fw (LIKE image_wide INCLUDING ALL); INSERT INTO fz_fw SELECT * FROM image_wide; SELECT popularity.register_media_type('fz_wide', 'fz_fw', false); CALL filter_tags('fz_wide', false, 1, false); ALTER TABLE fz_fw ALTER COLUMN tags TYPE text; SELECT pg_sleep(0.5); SELECT state, error FROM popularity.refresh_status WHERE media_type = 'fz_wide'; SELECT fuzz.restore(); DROP TABLE fz_fw;
CREATE TABLE fz_fv (LIKE image_wide INCLUDING ALL); INSERT INTO fz_fv SELECT * FROM image_wide; SELECT popularity.register_media_type('fz_wide2', 'fz_fv', false); CALL filter_tags('fz_wide2', false, 1, false); DROP TABLE fz_fv; SELECT state, error FROM popularity.refresh_status WHERE media_type = 'fz_wide2'; SELECT fuzz.restore();
SELECT * FROM popularity.refresh_constants('audio');
