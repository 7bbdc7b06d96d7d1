-- The role model: what a role may do with a media type follows from its rights on the media table
-- (README, "Roles and rights"). The whole workflow runs as a non-superuser table owner; a role with
-- UPDATE on the table refreshes and filters but cannot configure; a reader sees only its media types;
-- a role with operator rights but no rights on the table sees and changes nothing of it; ingestion
-- needs no right on the extension at all.
\set VERBOSITY default
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE ROLE pop_owner LOGIN;
CREATE ROLE pop_refresher LOGIN;
CREATE ROLE pop_reader;
CREATE ROLE pop_stranger LOGIN;
CREATE ROLE pop_ingest;
CREATE SCHEMA roles_catalog AUTHORIZATION pop_owner;
GRANT USAGE ON SCHEMA roles_catalog TO pop_refresher, pop_reader, pop_stranger, pop_ingest;
RESET client_min_messages;
SELECT popularity.grant_operator('pop_owner');
SELECT popularity.grant_operator('pop_refresher');
SELECT popularity.grant_operator('pop_stranger');

-- Internal functions are not for PUBLIC; only the extension's owner grants operator rights.
SELECT p.oid::regprocedure AS executable_by_public
FROM pg_proc AS p
WHERE p.pronamespace = 'popularity'::regnamespace AND p.proname LIKE '\_%'
  AND has_function_privilege('public', p.oid, 'EXECUTE');
SET ROLE pop_reader;
SELECT popularity._wake_scheduler();
RESET ROLE;
SET ROLE pop_owner;
SELECT popularity.grant_operator('pop_reader');
RESET ROLE;

-- The owner: registers, configures, ingests, refreshes, filters, counts.
SET ROLE pop_owner;
CREATE TABLE roles_catalog.image (
    identifier uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider text NOT NULL, meta_data jsonb, tags jsonb,
    updated_on timestamptz NOT NULL DEFAULT now());
INSERT INTO roles_catalog.image (provider, meta_data, tags)
SELECT CASE WHEN g % 2 = 0 THEN 'flickr' ELSE 'wikimedia' END,
       jsonb_build_object('views', g, 'global_usage_count', g % 5),
       '[{"name": "cat"}, {"name": "blurry", "accuracy": 0.5}]'
FROM generate_series(1, 400) AS g;
SELECT popularity.register_media_type('roles_image', 'roles_catalog.image');
SELECT popularity.set_metric('roles_image', 'flickr', 'views', 0.5);
SELECT provider, new_val, new_constant FROM popularity.refresh_constants('roles_image') ORDER BY provider;
SET client_min_messages = warning;
CALL refresh_popularity('roles_image', force => true);
RESET client_min_messages;
CREATE FUNCTION pg_temp.wrong() RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM roles_catalog.image AS t JOIN popularity.metrics AS m
           ON m.media_type = 'roles_image' AND m.provider = t.provider
    WHERE t.standardized_popularity IS DISTINCT FROM
          standardized_popularity(popularity_metric_value(t.meta_data, m.metric), m.constant) $$;
SELECT pg_temp.wrong() AS wrong_after_owner_refresh;
SET client_min_messages = warning;
CALL filter_tags('roles_image');
RESET client_min_messages;
SELECT count(*) AS rows_with_blurry FROM roles_catalog.image WHERE tags @> '[{"name": "blurry"}]';
CALL popularity.reconcile_stats('roles_image');
SELECT popularity.fold_stats() >= 0 AS folded;
SELECT provider, rows, rows_scored, reconcile_pending FROM popularity.provider_stats ORDER BY provider;
SELECT provider, rows_examined, rows_stale FROM popularity.freshness('roles_image', exact => true) ORDER BY provider;
INSERT INTO popularity.tag_rules (media_type, min_accuracy) VALUES ('roles_image', 0.8);
-- ... but not the global rules, nor another owner's media type.
INSERT INTO popularity.tag_rules (media_type, min_accuracy) VALUES (NULL, 0.8);
GRANT SELECT, UPDATE ON roles_catalog.image TO pop_refresher;
GRANT SELECT ON roles_catalog.image TO pop_reader;
GRANT INSERT ON roles_catalog.image TO pop_ingest;
RESET ROLE;

-- Ingestion needs no right on the extension: the row is scored and counted.
SET ROLE pop_ingest;
INSERT INTO roles_catalog.image (provider, meta_data) VALUES ('flickr', '{"views": 10}');
RESET ROLE;
SELECT standardized_popularity IS NOT NULL AS scored FROM roles_catalog.image WHERE meta_data = '{"views": 10}';
SELECT rows FROM popularity.provider_stats WHERE media_type = 'roles_image' AND provider = 'flickr';

-- A role with UPDATE on the table refreshes and filters, but does not configure.
SET ROLE pop_refresher;
SELECT popularity.set_metric('roles_image', 'flickr', 'views', 0.6);
UPDATE popularity.metrics SET percentile = 0.6 WHERE media_type = 'roles_image' AND provider = 'flickr';
-- ... nor moves a provider of a media type whose table it owns to one whose table it may only
-- update (the guard checks the owner of the row as it was and as it becomes).
RESET ROLE;
CREATE TABLE roles_catalog.own_image (identifier uuid PRIMARY KEY, provider text, meta_data jsonb,
                                      updated_on timestamptz);
ALTER TABLE roles_catalog.own_image OWNER TO pop_refresher;
SET client_min_messages = warning;
SELECT popularity.register_media_type('roles_own', 'roles_catalog.own_image', default_metrics => false);
RESET client_min_messages;
SELECT popularity.set_metric('roles_own', 'own_provider', 'views', 0.5);
SET ROLE pop_refresher;
UPDATE popularity.metrics SET media_type = 'roles_image', percentile = 0.99
WHERE media_type = 'roles_own' AND provider = 'own_provider';
UPDATE popularity.metrics SET percentile = 0.7 WHERE media_type = 'roles_own' AND provider = 'own_provider';
RESET ROLE;
SELECT media_type, provider, percentile FROM popularity.metrics WHERE provider = 'own_provider';
SELECT popularity.unregister_media_type('roles_own');
DROP TABLE roles_catalog.own_image;
SET ROLE pop_refresher;
SELECT popularity.register_media_type('roles_image2', 'roles_catalog.image');
SELECT popularity.unregister_media_type('roles_image');
SET client_min_messages = warning;
CALL refresh_popularity('roles_image', force => true);
SELECT pg_temp.wrong() AS wrong_after_refresher_refresh;
CALL filter_tags('roles_image', dry_run => true);
RESET client_min_messages;
SELECT state, requested_by::regrole FROM popularity.refresh_runs ORDER BY run_id DESC LIMIT 1;
RESET ROLE;
-- Only the role that queued a run (or a member of it) resumes it: its workers act with that
-- role's rights, so even the table's owner may not set another role's run going again.
UPDATE popularity.refresh_runs SET state = 'cancelled' WHERE run_id = (SELECT max(run_id) FROM popularity.refresh_runs);
SET ROLE pop_owner;
DO $$
BEGIN
    PERFORM popularity.resume_refresh((SELECT max(run_id) FROM popularity.refresh_runs));
    RAISE NOTICE 'resumed';
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'refused (%)', SQLSTATE;
END $$;
RESET ROLE;
UPDATE popularity.refresh_runs SET state = 'succeeded' WHERE run_id = (SELECT max(run_id) FROM popularity.refresh_runs);

-- A reader sees its media type's configuration and status, and changes nothing.
SET ROLE pop_reader;
SELECT media_type FROM popularity.media_types;
SELECT provider, metric FROM popularity.metrics ORDER BY provider;
SELECT DISTINCT media_type, state FROM popularity.refresh_status;
SELECT provider, rows FROM popularity.provider_stats ORDER BY provider;
CALL refresh_popularity('roles_image');
UPDATE popularity.metrics SET constant = 1;
RESET ROLE;

-- A role with operator rights but no right on the table sees nothing of it and changes nothing.
SET ROLE pop_stranger;
SELECT count(*) AS media_types FROM popularity.media_types;
SELECT count(*) AS metrics FROM popularity.metrics;
SELECT count(*) AS runs FROM popularity.refresh_status;
SELECT count(*) AS counts FROM popularity.provider_stats;
CALL refresh_popularity('roles_image');
INSERT INTO popularity.refresh_runs (media_type, media_table, key_column, providers, requested_by)
VALUES ('roles_image', 'roles_catalog.image', 'identifier', '{flickr}', 10);
UPDATE popularity.metrics SET constant = 1;
DELETE FROM popularity.stats_journal;
DELETE FROM popularity.media_types;
-- The extension's trigger functions serve only their own tables.
CREATE TEMP TABLE forged (media_type text);
CREATE TRIGGER forged AFTER DELETE ON forged FOR EACH ROW EXECUTE FUNCTION popularity._stats_media_type_removed();
INSERT INTO forged VALUES ('roles_image');
DELETE FROM forged;
RESET ROLE;
SELECT count(*) > 0 AS journal_kept FROM popularity.stats_journal WHERE media_type = 'roles_image';

SET client_min_messages = warning;
DROP SCHEMA roles_catalog CASCADE;
SELECT count(*) AS registrations_left FROM popularity.media_types WHERE media_type = 'roles_image';
SELECT popularity.revoke_operator('pop_owner');
SELECT popularity.revoke_operator('pop_refresher');
SELECT popularity.revoke_operator('pop_stranger');
DROP OWNED BY pop_owner, pop_refresher, pop_reader, pop_stranger, pop_ingest;
DROP ROLE pop_owner, pop_refresher, pop_reader, pop_stranger, pop_ingest;
