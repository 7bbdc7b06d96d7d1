-- The targeted fuzzer's argument catalog and call generator (loaded after setup.sql, as superuser).
--   fuzz.arg_values   per argument type, SQL expressions of ordinary, extreme and malformed values
--   fuzz.calls(seed, random_combos)  one statement per line: for every function and procedure of the
--       extension (pg_depend, deptype 'e'): the call with base arguments, the call with all NULLs,
--       every argument varied through every value of its type (the others at their base), then
--       `random_combos` calls with every argument drawn at random; plus the aggregate over odd
--       inputs and trigger functions fired from triggers they were not made for.
--   fuzz.restore()  puts the media type registrations back after a (un)registering call
CREATE SCHEMA IF NOT EXISTS fuzz;
GRANT USAGE ON SCHEMA fuzz TO PUBLIC;

CREATE TABLE fuzz.arg_values (type regtype NOT NULL, expr text NOT NULL, is_base boolean NOT NULL DEFAULT false);
GRANT SELECT ON fuzz.arg_values TO PUBLIC;

INSERT INTO fuzz.arg_values (type, expr, is_base)
SELECT 'double precision'::regtype, e, e = '0.5' FROM unnest(ARRAY[
    'NULL::float8', '0.5', '0', '''-0''::float8', '1', '-1', '0.85', '0.99', '''NaN''::float8',
    '''Infinity''::float8', '''-Infinity''::float8', '5e-324::float8', '2.2250738585072014e-308::float8',
    '1e308::float8', '1.7976931348623157e308::float8', '-1.7976931348623157e308::float8',
    '0.9999999999999999::float8', '1e-300::float8', '-1e-300::float8', '1.0000000000000002::float8',
    '4294967296::float8', '9.2233720368547758e18::float8']) AS e
UNION ALL
SELECT 'integer'::regtype, e, e = '100' FROM unnest(ARRAY[
    'NULL::int', '100', '0', '1', '-1', '2147483647', '(-2147483648)::int', '1000000', '-100'] ) AS e
UNION ALL
SELECT 'bigint'::regtype, e, e = '1' FROM unnest(ARRAY[
    'NULL::bigint', '1', '0', '-1', '10', '100000', '9223372036854775807', '(-9223372036854775808)::bigint',
    '4294967296', '(SELECT max(run_id) FROM popularity.refresh_runs)',
    '(SELECT max(run_id) FROM popularity.refresh_runs WHERE job = ''filter_tags'' AND NOT dry_run)',
    '(SELECT max(run_id) FROM popularity.refresh_runs WHERE job = ''filter_tags'' AND dry_run)',
    '(SELECT max(run_id) FROM popularity.refresh_runs WHERE job = ''refresh'')',
    '(SELECT min(run_id) FROM popularity.refresh_runs WHERE job = ''filter_tags'' AND media_type = ''secret'')']) AS e
UNION ALL
SELECT 'interval'::regtype, e, e = '''30 days''::interval' FROM unnest(ARRAY[
    'NULL::interval', '''30 days''::interval', '''0''::interval', '''-1 day''::interval',
    '''1 microsecond''::interval', '''178000000 years''::interval', '''-178000000 years''::interval',
    '''1 mon -30 days''::interval']) AS e
UNION ALL
SELECT 'boolean'::regtype, e, e = 'false' FROM unnest(ARRAY['NULL::boolean', 'false', 'true']) AS e
UNION ALL
SELECT 'text'::regtype, e, e = '''image''' FROM unnest(ARRAY[
    'NULL::text', '''image''', '''''', '''audio''', '''secret''', '''fuzz_unregistered''', '''flickr''',
    '''wikimedia''', '''views''', '''global_usage_count''', '''IMAGE''', ''' image''', '''image ''',
    'repeat(''x'', 100000)', 'repeat(''é'', 70)', 'repeat(''a'', 63)', 'repeat(''a'', 64)',
    'E''\''";--''', 'E''a\tb\nc''', 'U&''\+01F916\0301\0130\0131\FFFD''', '''"image"''',
    '''pg_catalog.pg_class''', '''none''', '''core_error''', '''std_exception''', '''bad_alloc''',
    '''unknown''', '''pg_error''', '''bernoulli''', '''system''', '''constants''', '''tag_rules''',
    '''%''', '''\''', '''{1,2}''', '''0/0''', '''1/1''', '''-1/0''', '''4294967295/4294967295''',
    'repeat(''ß'', 20000)']) AS e
UNION ALL
SELECT 'regclass'::regtype, e, e = '''image''::regclass' FROM (
    SELECT '''image''::regclass' AS e
    UNION ALL SELECT 'NULL::regclass'
    UNION ALL SELECT format('(SELECT rel::regclass FROM fuzz_relations WHERE label = %L)', label)
    FROM fuzz_relations WHERE label <> 'image') AS s
UNION ALL
SELECT 'text[]'::regtype, e, e = 'ARRAY[''flickr'']' FROM unnest(ARRAY[
    'NULL::text[]', 'ARRAY[''flickr'']', '''{}''::text[]', '''{NULL}''::text[]',
    'ARRAY[''flickr'', ''wikimedia'', NULL]', 'ARRAY[''views'']', 'ARRAY[''views'', ''global_usage_count'']',
    'ARRAY[''flickr'', ''flickr'']', 'ARRAY['''']', 'ARRAY[''jamendo'', ''freesound'']', 'ARRAY[repeat(''x'', 100000)]',
    '(SELECT array_agg(''p'' || g) FROM generate_series(1, 100000) AS g)',
    '(SELECT array_agg(NULL::text) FROM generate_series(1, 100000) AS g)',
    '''{{flickr,wikimedia},{views,views}}''::text[]', '''[0:1]={flickr,wikimedia}''::text[]',
    '''[-5:-5]={views}''::text[]', 'ARRAY[''0/0'', ''1/1'', ''bogus'']',
    '(SELECT array_agg(g || ''/'' || g) FROM generate_series(1, 1000) AS g)']) AS e
UNION ALL
SELECT 'double precision[]'::regtype, e, e = 'ARRAY[0.85]::float8[]' FROM unnest(ARRAY[
    'NULL::float8[]', 'ARRAY[0.85]::float8[]', '''{}''::float8[]', '''{NULL}''::float8[]',
    '''{NaN}''::float8[]', '''{Infinity,-Infinity}''::float8[]', '''{0}''::float8[]', '''{1}''::float8[]',
    '''{-1}''::float8[]', '''{5e-324}''::float8[]', '''{0.5,0.5,NULL}''::float8[]',
    '''{0.1,0.2,0.3,0.4,0.5}''::float8[]', '''{{0.5,0.5},{0.5,0.5}}''::float8[]', '''[3:3]={0.5}''::float8[]',
    '(SELECT array_agg(random()) FROM generate_series(1, 100000) AS g)']) AS e
UNION ALL
SELECT 'jsonb'::regtype, e, e = '''{"views": 10}''::jsonb' FROM unnest(ARRAY[
    'NULL::jsonb', '''{"views": 10}''::jsonb', '''null''::jsonb', '''{}''::jsonb', '''[]''::jsonb',
    '''1''::jsonb', '''"s"''::jsonb', '''true''::jsonb', '''{"views": null}''::jsonb',
    '''{"views": 1e308}''::jsonb', '''{"views": 1e400}''::jsonb', '''{"views": -1e400}''::jsonb',
    '''{"views": 1e-400}''::jsonb', '''{"views": "1k"}''::jsonb', '''{"views": "NaN"}''::jsonb',
    '''{"views": "Infinity"}''::jsonb', '''{"views": "-0"}''::jsonb', '''{"views": -0}''::jsonb',
    '''{"views": -5}''::jsonb', '''{"views": [1]}''::jsonb', '''{"views": {"a": 1}}''::jsonb',
    '''{"views": true}''::jsonb', '''{"views": "  12  "}''::jsonb', '''{"views": "0x10"}''::jsonb',
    '''{"views": 123456789012345678901234567890123456789012345678901234567890}''::jsonb',
    '''{"views": 0.000000000000000000000000000000000000000000000000000000000000000001}''::jsonb',
    '(''{"views": '' || repeat(''9'', 1000) || ''}'')::jsonb',
    '''[{"name": "cat", "accuracy": 0.95, "provider": "clarifai"}]''::jsonb',
    '''[{"name": "uploaded:by=flickrmobile"}, {"name": "dog", "provider": "rekognition"}]''::jsonb',
    '''[{"name": null}, {"name": 1}, {"accuracy": "x"}, {}, null, 1, "s", []]''::jsonb',
    '''[{"name": "a", "accuracy": 1e400}, {"name": "b", "accuracy": -1e400}, {"name": "c", "accuracy": "NaN"}]''::jsonb',
    '''[{"name": "a", "accuracy": 0.9}, {"name": "b", "accuracy": 0.8999999999999999}]''::jsonb',
    'jsonb_build_array(jsonb_build_object(''name'', repeat(''İ'', 100000), ''accuracy'', 1))',
    'jsonb_build_array(jsonb_build_object(''name'', U&''\0130\0307\03A3\1E9E\+01F916'', ''provider'', ''x''))',
    '(SELECT jsonb_agg(jsonb_build_object(''name'', ''t'' || g, ''accuracy'', 0.95)) FROM generate_series(1, 100000) AS g)',
    '(SELECT jsonb_object_agg(''k'' || g, g) FROM generate_series(1, 100000) AS g)',
    '(repeat(''['', 1000) || repeat('']'', 1000))::jsonb',
    '(repeat(''{"views": '', 500) || ''1'' || repeat(''}'', 500))::jsonb']) AS e
UNION ALL
SELECT 'internal'::regtype, 'NULL::internal', true
UNION ALL
SELECT 'bytea'::regtype, e, e = 'NULL::bytea' FROM unnest(ARRAY[
    'NULL::bytea', '''\x''::bytea', '''\x00''::bytea', '''\xffffffffffffffff''::bytea',
    'decode(repeat(''ff'', 1000), ''hex'')']) AS e;

-- Media type registrations back to those of setup.sql (called after every registering call); what
-- it had to undo is logged with the role that called it (a plain role should never have changed any).
CREATE TABLE fuzz.restore_log (at timestamptz DEFAULT clock_timestamp(), role text, what text);
CREATE FUNCTION fuzz.restore() RETURNS void LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public AS $$
DECLARE
    m record;
BEGIN
    FOR m IN SELECT mt.media_type FROM popularity.media_types AS mt
             WHERE mt.media_type NOT IN ('image', 'secret', 'audio') LOOP
        INSERT INTO fuzz.restore_log (role, what) VALUES (session_user, 'unregistered ' || m.media_type);
        BEGIN PERFORM popularity.unregister_media_type(m.media_type);
        EXCEPTION WHEN OTHERS THEN RAISE WARNING 'fuzz.restore: %', SQLERRM; END;
    END LOOP;
    FOR m IN SELECT * FROM (VALUES ('image', 'image'), ('secret', 'secret'), ('audio', 'image_part')) AS v(media_type, tab)
             WHERE NOT EXISTS (SELECT FROM popularity.media_types AS mt
                               WHERE mt.media_type = v.media_type AND mt.media_table = v.tab::regclass) LOOP
        INSERT INTO fuzz.restore_log (role, what) VALUES (session_user, 're-registered ' || m.media_type);
        BEGIN
            IF EXISTS (SELECT FROM popularity.media_types AS mt WHERE mt.media_type = m.media_type) THEN
                PERFORM popularity.unregister_media_type(m.media_type);
            END IF;
            PERFORM popularity.register_media_type(m.media_type, m.tab::regclass);
            IF m.media_type = 'secret' THEN
                PERFORM popularity.set_metric('secret', 'flickr', 'views', 0.85);
            END IF;
        EXCEPTION WHEN OTHERS THEN RAISE WARNING 'fuzz.restore: %', SQLERRM;
        END;
    END LOOP;
END $$;
GRANT EXECUTE ON FUNCTION fuzz.restore() TO PUBLIC;

-- Every function and procedure of the extension.
CREATE VIEW fuzz.routines AS
SELECT p.oid, p.oid::regprocedure::text AS signature, p.prokind, p.proname::text AS name,
       p.pronamespace::regnamespace::text AS schema, ARRAY(SELECT t::regtype FROM unnest(p.proargtypes) WITH ORDINALITY AS u(t, n) ORDER BY n) AS argtypes,
       p.prorettype = 'trigger'::regtype AS is_trigger
FROM pg_proc AS p
JOIN pg_depend AS d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
JOIN pg_extension AS e ON e.oid = d.refobjid AND e.extname = 'popularity';
GRANT SELECT ON fuzz.routines TO PUBLIC;

CREATE FUNCTION fuzz.calls(seed float8, random_combos int)
RETURNS TABLE (routine text, stmt text) LANGUAGE plpgsql AS $$
DECLARE
    r record;
    args text[];
    base text[];
    v text;
    i int;
    k int;
    -- register/unregister change the registrations the other calls rely on: put them back after
    mutating boolean;
BEGIN
    PERFORM setseed(seed);
    FOR r IN SELECT * FROM fuzz.routines WHERE prokind IN ('f', 'p') ORDER BY
                 name IN ('unregister_media_type', 'register_media_type', '_remove_stats_triggers',
                          '_install_stats_triggers', '_forget_dropped_tables'), signature LOOP
        mutating := r.name IN ('unregister_media_type', 'register_media_type', '_remove_stats_triggers',
                               '_install_stats_triggers', '_forget_dropped_tables');
        base := ARRAY(SELECT coalesce((SELECT a.expr FROM fuzz.arg_values AS a
                                       WHERE a.type = t AND a.is_base LIMIT 1), 'NULL::' || t::text)
                      FROM unnest(r.argtypes) WITH ORDINALITY AS u(t, n) ORDER BY n);
        -- base, all NULL
        RETURN QUERY SELECT r.signature, fuzz.call_text(r.prokind, r.schema, r.name, r.is_trigger, base, mutating);
        RETURN QUERY SELECT r.signature, fuzz.call_text(r.prokind, r.schema, r.name, r.is_trigger,
            ARRAY(SELECT 'NULL::' || t::text FROM unnest(r.argtypes) WITH ORDINALITY AS u(t, n) ORDER BY n), mutating);
        -- one argument at a time through every value of its type
        FOR i IN 1 .. coalesce(array_length(r.argtypes, 1), 0) LOOP
            FOR v IN SELECT a.expr FROM fuzz.arg_values AS a WHERE a.type = r.argtypes[i] AND NOT a.is_base LOOP
                args := base;
                args[i] := v;
                RETURN QUERY SELECT r.signature, fuzz.call_text(r.prokind, r.schema, r.name, r.is_trigger, args, mutating);
            END LOOP;
        END LOOP;
        -- random combinations
        IF coalesce(array_length(r.argtypes, 1), 0) > 1 THEN
            FOR k IN 1 .. random_combos LOOP
                args := ARRAY(SELECT (SELECT a.expr FROM fuzz.arg_values AS a WHERE a.type = t
                                      ORDER BY random() + n * 0 LIMIT 1)
                              FROM unnest(r.argtypes) WITH ORDINALITY AS u(t, n) ORDER BY n);
                RETURN QUERY SELECT r.signature, fuzz.call_text(r.prokind, r.schema, r.name, r.is_trigger, args, mutating);
            END LOOP;
        END IF;
    END LOOP;
END $$;

CREATE FUNCTION fuzz.call_text(prokind "char", schema text, name text, is_trigger boolean, args text[],
                               mutating boolean) RETURNS text LANGUAGE sql AS $$
    SELECT CASE WHEN prokind = 'p' THEN 'CALL ' ELSE 'SELECT ' END
        || quote_ident(schema) || '.' || quote_ident(name) || '(' || array_to_string(args, ', ') || ')'
        || CASE WHEN prokind = 'f' AND NOT is_trigger THEN ' AS x' ELSE '' END
        || ';' || CASE WHEN mutating THEN ' SELECT fuzz.restore();' ELSE '' END
$$;
