-- Without Citus (sql/install/65_citus.sql): the Citus routines find no distributed table and do
-- nothing, and the jobs' relations are the table's own.
SELECT popularity._citus_present(), popularity._citus_coordinator();
SELECT count(*) FROM popularity.citus_provider_stats();
SELECT count(*) FROM popularity.citus_refresh_status();
SELECT count(*) FROM popularity.citus_cancel_refresh();
CREATE TABLE plain_media (identifier int PRIMARY KEY, provider text, meta_data jsonb, updated_on timestamptz);
SELECT popularity._citus_distributed('plain_media'), popularity._citus_node('plain_media') IS NULL AS not_citus;
SELECT count(*) FROM popularity._citus_local_shards('plain_media');
SELECT popularity._media_leaves('plain_media');
SELECT popularity._counted_rows_sql('plain_media');
SELECT popularity._citus_allow_triggers('plain_media') IS NULL AS unchanged;
-- A worker-only routine refuses to run elsewhere.
SELECT popularity._citus_apply_config('image', NULL);
-- The internal routines are not for PUBLIC.
SELECT p.oid::regprocedure AS routine FROM pg_proc AS p
WHERE p.pronamespace = 'popularity'::regnamespace AND p.proname LIKE '\_citus%'
  AND has_function_privilege('public', p.oid, 'EXECUTE')
ORDER BY 1;
DROP TABLE plain_media;
