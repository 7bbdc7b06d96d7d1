-- Roles and rights (README, "Roles and rights"). The rule: what a role may do with a media type
-- follows from its rights on the media table, checked by PostgreSQL itself (row-level security on
-- the extension's tables, evaluated as the calling role):
--   * read a media type's configuration, runs, counts and status: SELECT on its table;
--   * refresh, filter tags, fold and reconcile its counts: SELECT and UPDATE on its table;
--   * register, unregister and configure it (metrics, tag rules, tag filtering at ingestion): own
--     its table (be a member of the owning role);
--   * the global tag rules (media_type NULL): the extension's owner (a superuser, normally).
-- Reading is open to every role (rows filtered as above). Writing also needs the operator rights
-- (popularity.grant_operator): EXECUTE on the internal functions and DML on the state tables, which
-- the policies then restrict to the role's own media types. The extension's owner and superusers
-- are not restricted. Ingestion needs nothing: the triggers read the configuration and append the
-- counts with the extension owner's rights.

-- Policies -----------------------------------------------------------------------------------------

ALTER TABLE popularity.media_types ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.media_types FOR SELECT
    USING (pg_catalog.has_table_privilege(media_table, 'SELECT'));
CREATE POLICY owners ON popularity.media_types FOR ALL
    USING (pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = media_table), 'USAGE'))
    WITH CHECK (pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = media_table), 'USAGE'));

ALTER TABLE popularity.metrics ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.metrics FOR SELECT
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = metrics.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'SELECT')));
CREATE POLICY owners ON popularity.metrics FOR ALL
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = metrics.media_type
                   AND pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = m.media_table), 'USAGE')))
    WITH CHECK (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = metrics.media_type
                        AND pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = m.media_table), 'USAGE')));
-- refresh_constants, run by a role that may update the table, writes the computed columns
-- (popularity._metrics_guard keeps the configured ones to the owner).
CREATE POLICY refreshers ON popularity.metrics FOR UPDATE
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = metrics.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'UPDATE')))
    WITH CHECK (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = metrics.media_type
                        AND pg_catalog.has_table_privilege(m.media_table, 'UPDATE')));

CREATE FUNCTION popularity._metrics_guard()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_RELID <> 'popularity.metrics'::regclass OR TG_LEVEL <> 'ROW' OR TG_WHEN <> 'BEFORE' THEN
        RAISE EXCEPTION 'popularity._metrics_guard() guards popularity.metrics only'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- The owner of the table of the row as it was and as it becomes: a role that owns one media
    -- type's table and may only update another's must not move a row to the other one. (NULL, a
    -- table that is gone, is no ownership.)
    IF (NEW.media_type, NEW.provider, NEW.metric, NEW.percentile)
           IS DISTINCT FROM (OLD.media_type, OLD.provider, OLD.metric, OLD.percentile)
       AND NOT (coalesce(pg_has_role((SELECT c.relowner FROM popularity.media_types AS m
                                      JOIN pg_class AS c ON c.oid = m.media_table
                                      WHERE m.media_type = OLD.media_type), 'USAGE'), false)
                AND coalesce(pg_has_role((SELECT c.relowner FROM popularity.media_types AS m
                                          JOIN pg_class AS c ON c.oid = m.media_table
                                          WHERE m.media_type = NEW.media_type), 'USAGE'), false)) THEN
        RAISE EXCEPTION 'only the owner of media type "%"''s table may change its metrics', OLD.media_type
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'A role that may update the table may refresh the constants, not choose the metric or percentile.';
    END IF;
    RETURN NEW;
END $$;
COMMENT ON FUNCTION popularity._metrics_guard() IS
    'Trigger on popularity.metrics: the metric and percentile of a provider are changed only by the '
    'owner of the media table';
CREATE TRIGGER metrics_guard BEFORE UPDATE ON popularity.metrics
    FOR EACH ROW EXECUTE FUNCTION popularity._metrics_guard();

ALTER TABLE popularity.tag_rules ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.tag_rules FOR SELECT
    USING (media_type IS NULL
           OR EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = tag_rules.media_type
                      AND pg_catalog.has_table_privilege(m.media_table, 'SELECT')));
CREATE POLICY owners ON popularity.tag_rules FOR ALL
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = tag_rules.media_type
                   AND pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = m.media_table), 'USAGE')))
    WITH CHECK (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = tag_rules.media_type
                        AND pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = m.media_table), 'USAGE')));

-- The records of removed tags follow their run: readable with SELECT on the run's table, written
-- (by filter_tags, undo_filter_tags, purge_filter_undo) with SELECT and UPDATE on it.
ALTER TABLE popularity.tag_filter_removed ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.tag_filter_removed FOR SELECT
    USING (EXISTS (SELECT FROM popularity.refresh_runs AS r WHERE r.run_id = tag_filter_removed.run_id));
CREATE POLICY writers ON popularity.tag_filter_removed FOR ALL
    USING (EXISTS (SELECT FROM popularity.refresh_runs AS r WHERE r.run_id = tag_filter_removed.run_id
                   AND pg_catalog.has_table_privilege(r.media_table, 'SELECT')
                   AND pg_catalog.has_table_privilege(r.media_table, CASE WHEN r.dry_run THEN 'SELECT' ELSE 'UPDATE' END)))
    WITH CHECK (EXISTS (SELECT FROM popularity.refresh_runs AS r WHERE r.run_id = tag_filter_removed.run_id
                        AND pg_catalog.has_table_privilege(r.media_table, 'SELECT')
                        AND pg_catalog.has_table_privilege(r.media_table, CASE WHEN r.dry_run THEN 'SELECT' ELSE 'UPDATE' END)));

ALTER TABLE popularity.refresh_runs ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.refresh_runs FOR SELECT
    USING (pg_catalog.has_table_privilege(media_table, 'SELECT'));
-- A dry run of filter_tags only reads the table, so SELECT on it is enough to run one.
CREATE POLICY writers ON popularity.refresh_runs FOR ALL
    USING (pg_catalog.has_table_privilege(media_table, CASE WHEN dry_run THEN 'SELECT' ELSE 'UPDATE' END))
    WITH CHECK (pg_catalog.has_table_privilege(media_table, CASE WHEN dry_run THEN 'SELECT' ELSE 'UPDATE' END));

ALTER TABLE popularity.refresh_tasks ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.refresh_tasks FOR SELECT
    USING (EXISTS (SELECT FROM popularity.refresh_runs AS r WHERE r.run_id = refresh_tasks.run_id));
CREATE POLICY writers ON popularity.refresh_tasks FOR ALL
    USING (EXISTS (SELECT FROM popularity.refresh_runs AS r WHERE r.run_id = refresh_tasks.run_id
                   AND pg_catalog.has_table_privilege(r.media_table, CASE WHEN r.dry_run THEN 'SELECT' ELSE 'UPDATE' END)))
    WITH CHECK (EXISTS (SELECT FROM popularity.refresh_runs AS r WHERE r.run_id = refresh_tasks.run_id
                        AND pg_catalog.has_table_privilege(r.media_table, CASE WHEN r.dry_run THEN 'SELECT' ELSE 'UPDATE' END)));

ALTER TABLE popularity.refresh_progress ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.refresh_progress FOR SELECT
    USING (EXISTS (SELECT FROM popularity.refresh_tasks AS t WHERE t.task_id = refresh_progress.task_id));
CREATE POLICY writers ON popularity.refresh_progress FOR ALL
    USING (EXISTS (SELECT FROM popularity.refresh_tasks AS t JOIN popularity.refresh_runs AS r USING (run_id)
                   WHERE t.task_id = refresh_progress.task_id AND pg_catalog.has_table_privilege(r.media_table, CASE WHEN r.dry_run THEN 'SELECT' ELSE 'UPDATE' END)))
    WITH CHECK (EXISTS (SELECT FROM popularity.refresh_tasks AS t JOIN popularity.refresh_runs AS r USING (run_id)
                        WHERE t.task_id = refresh_progress.task_id AND pg_catalog.has_table_privilege(r.media_table, CASE WHEN r.dry_run THEN 'SELECT' ELSE 'UPDATE' END)));

ALTER TABLE popularity.refresh_counters ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.refresh_counters FOR SELECT
    USING (EXISTS (SELECT FROM popularity.refresh_tasks AS t WHERE t.task_id = refresh_counters.task_id));
CREATE POLICY writers ON popularity.refresh_counters FOR ALL
    USING (EXISTS (SELECT FROM popularity.refresh_tasks AS t JOIN popularity.refresh_runs AS r USING (run_id)
                   WHERE t.task_id = refresh_counters.task_id AND pg_catalog.has_table_privilege(r.media_table, CASE WHEN r.dry_run THEN 'SELECT' ELSE 'UPDATE' END)))
    WITH CHECK (EXISTS (SELECT FROM popularity.refresh_tasks AS t JOIN popularity.refresh_runs AS r USING (run_id)
                        WHERE t.task_id = refresh_counters.task_id AND pg_catalog.has_table_privilege(r.media_table, CASE WHEN r.dry_run THEN 'SELECT' ELSE 'UPDATE' END)));

ALTER TABLE popularity.refresh_skipped ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.refresh_skipped FOR SELECT
    USING (EXISTS (SELECT FROM popularity.refresh_tasks AS t WHERE t.task_id = refresh_skipped.task_id));
CREATE POLICY writers ON popularity.refresh_skipped FOR ALL
    USING (EXISTS (SELECT FROM popularity.refresh_tasks AS t JOIN popularity.refresh_runs AS r USING (run_id)
                   WHERE t.task_id = refresh_skipped.task_id AND pg_catalog.has_table_privilege(r.media_table, CASE WHEN r.dry_run THEN 'SELECT' ELSE 'UPDATE' END)))
    WITH CHECK (EXISTS (SELECT FROM popularity.refresh_tasks AS t JOIN popularity.refresh_runs AS r USING (run_id)
                        WHERE t.task_id = refresh_skipped.task_id AND pg_catalog.has_table_privilege(r.media_table, CASE WHEN r.dry_run THEN 'SELECT' ELSE 'UPDATE' END)));
GRANT SELECT ON popularity.refresh_skipped TO PUBLIC;

ALTER TABLE popularity.stats_counts ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.stats_counts FOR SELECT
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_counts.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'SELECT')));
CREATE POLICY writers ON popularity.stats_counts FOR ALL
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_counts.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'UPDATE')))
    WITH CHECK (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_counts.media_type
                        AND pg_catalog.has_table_privilege(m.media_table, 'UPDATE')));

ALTER TABLE popularity.stats_journal ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.stats_journal FOR SELECT
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_journal.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'SELECT')));
CREATE POLICY writers ON popularity.stats_journal FOR ALL
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_journal.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'UPDATE')))
    WITH CHECK (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_journal.media_type
                        AND pg_catalog.has_table_privilege(m.media_table, 'UPDATE')));

ALTER TABLE popularity.rescore_marks ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.rescore_marks FOR SELECT
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = rescore_marks.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'SELECT')));
CREATE POLICY writers ON popularity.rescore_marks FOR ALL
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = rescore_marks.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'UPDATE')))
    WITH CHECK (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = rescore_marks.media_type
                        AND pg_catalog.has_table_privilege(m.media_table, 'UPDATE')));

ALTER TABLE popularity.stats_marks ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.stats_marks FOR SELECT
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_marks.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'SELECT')));
CREATE POLICY writers ON popularity.stats_marks FOR ALL
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_marks.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'UPDATE')))
    WITH CHECK (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_marks.media_type
                        AND pg_catalog.has_table_privilege(m.media_table, 'UPDATE')));

ALTER TABLE popularity.stats_corrections ENABLE ROW LEVEL SECURITY;
CREATE POLICY readers ON popularity.stats_corrections FOR SELECT
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_corrections.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'SELECT')));
CREATE POLICY writers ON popularity.stats_corrections FOR ALL
    USING (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_corrections.media_type
                   AND pg_catalog.has_table_privilege(m.media_table, 'UPDATE')))
    WITH CHECK (EXISTS (SELECT FROM popularity.media_types AS m WHERE m.media_type = stats_corrections.media_type
                        AND pg_catalog.has_table_privilege(m.media_table, 'UPDATE')));

-- The views read their tables with the reader's rights, so the policies filter them too.
ALTER VIEW popularity.refresh_status SET (security_invoker = true);
ALTER VIEW popularity.provider_stats SET (security_invoker = true);
ALTER VIEW popularity.effective_tag_rules SET (security_invoker = true);
ALTER VIEW popularity.tag_filter_removed_rows SET (security_invoker = true);
ALTER VIEW popularity.rescore_state SET (security_invoker = true);

-- Operator rights -----------------------------------------------------------------------------------

-- Gives (or takes back) EXECUTE on the internal routines and DML on the state tables (the policies
-- narrow them to the role's own media types) and their sequences. The extension's owner only.
CREATE FUNCTION popularity._operator_rights(role regrole, give boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    f regprocedure;
    t regclass;
BEGIN
    IF role IS NULL OR give IS NULL THEN
        RAISE EXCEPTION 'role must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT pg_has_role((SELECT n.nspowner FROM pg_namespace AS n WHERE n.nspname = 'popularity'), 'USAGE') THEN
        RAISE EXCEPTION 'only the owner of the popularity extension may grant or revoke operator rights'
            USING ERRCODE = 'insufficient_privilege', HINT = 'Ask a superuser to run it.';
    END IF;
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc AS p
             WHERE p.pronamespace = 'popularity'::regnamespace AND p.proname LIKE '\_%' AND p.prokind IN ('f', 'p')
               AND p.proname NOT LIKE '\_guard\_%' AND p.proname <> '_operator_rights' LOOP
        EXECUTE format(CASE WHEN give THEN 'GRANT EXECUTE ON ROUTINE %s TO %s' ELSE 'REVOKE EXECUTE ON ROUTINE %s FROM %s' END,
                       f, role);
    END LOOP;
    FOR t IN SELECT c.oid::regclass FROM pg_class AS c
             WHERE c.relnamespace = 'popularity'::regnamespace AND c.relkind = 'r' AND c.relrowsecurity LOOP
        EXECUTE format(CASE WHEN give THEN 'GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO %s' ELSE 'REVOKE ALL ON %s FROM %s' END,
                       t, role);
    END LOOP;
    FOR t IN SELECT c.oid::regclass FROM pg_class AS c
             WHERE c.relnamespace = 'popularity'::regnamespace AND c.relkind = 'S' LOOP
        EXECUTE format(CASE WHEN give THEN 'GRANT USAGE, SELECT ON SEQUENCE %s TO %s' ELSE 'REVOKE ALL ON SEQUENCE %s FROM %s' END,
                       t, role);
    END LOOP;
END $$;
COMMENT ON FUNCTION popularity._operator_rights(regrole, boolean) IS
    'Gives or takes back the operator rights (EXECUTE on the internal routines, DML on the state tables)';

CREATE FUNCTION popularity.grant_operator(role regrole)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT popularity._operator_rights(role, true);
    -- On a Citus coordinator, on every worker node too (65_citus.sql).
    SELECT popularity._citus_operator_rights(role, true);
$$;
COMMENT ON FUNCTION popularity.grant_operator(regrole) IS
    'Lets a role use the extension beyond reading (register, configure, refresh, filter tags, counts): '
    'what it may do with each media type still follows from its rights on the media table';
REVOKE ALL ON FUNCTION popularity.grant_operator(regrole) FROM PUBLIC;

CREATE FUNCTION popularity.revoke_operator(role regrole)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT popularity._operator_rights(role, false);
    SELECT popularity._citus_operator_rights(role, false);
$$;
COMMENT ON FUNCTION popularity.revoke_operator(regrole) IS
    'Takes back what popularity.grant_operator gave (reading stays open to every role)';
REVOKE ALL ON FUNCTION popularity.revoke_operator(regrole) FROM PUBLIC;

-- Internal functions ----------------------------------------------------------------------------

-- Internal (_-prefixed) functions, trigger functions included, are not for PUBLIC: the operator
-- rights grant them. (Triggers fire whatever the rights of the role whose statement fires them;
-- EXECUTE is checked when a trigger is created.)
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc AS p
             WHERE p.pronamespace = 'popularity'::regnamespace AND p.proname LIKE '\_%' AND p.prokind IN ('f', 'p')
             ORDER BY 1 LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON ROUTINE %s FROM PUBLIC', f);
    END LOOP;
END $$;
