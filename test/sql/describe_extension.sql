-- One line per object of the popularity extension (and per property that matters: definition,
-- privileges, comment, configuration rows), sorted, free of OIDs: two databases whose outputs are
-- equal hold the same extension. test/scripts/upgrade.sh compares an upgraded install with a fresh one.
WITH members AS (
    SELECT d.classid, d.objid, d.objsubid
    FROM pg_catalog.pg_depend AS d JOIN pg_catalog.pg_extension AS e ON e.oid = d.refobjid
    WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e'
      AND e.extname = 'popularity'
), objects AS (
    SELECT pg_catalog.pg_describe_object(m.classid, m.objid, m.objsubid) AS object,
           CASE m.classid
               WHEN 'pg_catalog.pg_proc'::regclass THEN
                   (SELECT CASE WHEN p.prokind = 'a' THEN
                                    pg_catalog.format('aggregate(%s) state %s final %s combine %s serial %s deserial %s',
                                        pg_catalog.pg_get_function_arguments(p.oid), a.aggtransfn, a.aggfinalfn,
                                        a.aggcombinefn, a.aggserialfn, a.aggdeserialfn)
                                ELSE pg_catalog.pg_get_functiondef(p.oid) END
                           || ' acl=' || coalesce(p.proacl::text, 'default')
                    FROM pg_catalog.pg_proc AS p LEFT JOIN pg_catalog.pg_aggregate AS a ON a.aggfnoid = p.oid
                    WHERE p.oid = m.objid)
               WHEN 'pg_catalog.pg_class'::regclass THEN
                   (SELECT pg_catalog.format('kind %s acl=%s rls=%s options=%s', c.relkind,
                               coalesce(c.relacl::text, 'default'), c.relrowsecurity, c.reloptions)
                           || coalesce(' view: ' || pg_catalog.pg_get_viewdef(c.oid), '')
                           || coalesce((SELECT pg_catalog.string_agg(pg_catalog.format('%s %s%s%s%s', a.attname,
                                               pg_catalog.format_type(a.atttypid, a.atttypmod),
                                               CASE WHEN a.attnotnull THEN ' not null' ELSE '' END,
                                               coalesce(' default ' || pg_catalog.pg_get_expr(ad.adbin, ad.adrelid), ''),
                                               coalesce(' acl=' || a.attacl::text, '')), ', ' ORDER BY a.attnum)
                                        FROM pg_catalog.pg_attribute AS a
                                        LEFT JOIN pg_catalog.pg_attrdef AS ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
                                        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '')
                           || coalesce((SELECT pg_catalog.string_agg(co.conname || ': ' || pg_catalog.pg_get_constraintdef(co.oid), '; ' ORDER BY co.conname)
                                        FROM pg_catalog.pg_constraint AS co WHERE co.conrelid = c.oid), '')
                           || coalesce((SELECT pg_catalog.string_agg(pg_catalog.pg_get_indexdef(i.indexrelid), '; ' ORDER BY 1)
                                        FROM pg_catalog.pg_index AS i WHERE i.indrelid = c.oid), '')
                           || coalesce((SELECT pg_catalog.string_agg(pg_catalog.pg_get_triggerdef(t.oid), '; ' ORDER BY t.tgname)
                                        FROM pg_catalog.pg_trigger AS t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal), '')
                           || coalesce((SELECT pg_catalog.string_agg(pg_catalog.format('policy %s %s', po.polname, pg_catalog.pg_get_expr(po.polqual, po.polrelid)), '; ' ORDER BY po.polname)
                                        FROM pg_catalog.pg_policy AS po WHERE po.polrelid = c.oid), '')
                    FROM pg_catalog.pg_class AS c WHERE c.oid = m.objid)
               WHEN 'pg_catalog.pg_namespace'::regclass THEN
                   (SELECT 'acl=' || coalesce(n.nspacl::text, 'default') FROM pg_catalog.pg_namespace AS n WHERE n.oid = m.objid)
               WHEN 'pg_catalog.pg_type'::regclass THEN
                   (SELECT pg_catalog.format('type %s', t.typtype) FROM pg_catalog.pg_type AS t WHERE t.oid = m.objid)
               WHEN 'pg_catalog.pg_event_trigger'::regclass THEN
                   (SELECT pg_catalog.format('event %s %s %s %s', t.evtevent, t.evtfoid::regprocedure, t.evtenabled, t.evttags)
                    FROM pg_catalog.pg_event_trigger AS t WHERE t.oid = m.objid)
               ELSE ''
           END AS definition,
           pg_catalog.obj_description(m.objid, (SELECT c.relname FROM pg_catalog.pg_class AS c WHERE c.oid = m.classid)) AS comment
    FROM members AS m
)
SELECT o.object || E'\n    ' || coalesce(o.definition, '?') || E'\n    comment: ' || coalesce(o.comment, '-')
FROM objects AS o
UNION ALL
-- Column comments and the configuration tables' dump filters.
SELECT pg_catalog.format('column comment %s.%s: %s', c.oid::regclass, a.attname, pg_catalog.col_description(c.oid, a.attnum))
FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.oid
WHERE c.relnamespace = 'popularity'::regnamespace AND a.attnum > 0
  AND pg_catalog.col_description(c.oid, a.attnum) IS NOT NULL
UNION ALL
SELECT pg_catalog.format('extension %s version %s', e.extname, e.extversion)
FROM pg_catalog.pg_extension AS e WHERE e.extname = 'popularity'
UNION ALL
SELECT pg_catalog.format('configuration table %s dumped where %L', x.tbl::regclass, x.cond)
FROM pg_catalog.pg_extension AS e, ROWS FROM (pg_catalog.unnest(e.extconfig), pg_catalog.unnest(e.extcondition)) AS x(tbl, cond)
WHERE e.extname = 'popularity'
UNION ALL
-- Rows the extension ships.
SELECT pg_catalog.format('shipped row %s', d) FROM popularity.default_metrics AS d
ORDER BY 1;
