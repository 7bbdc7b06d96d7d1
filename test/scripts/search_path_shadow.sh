#!/usr/bin/env bash
# search_path hijack: no SQL the extension executes may resolve a function, operator or catalog
# relation through the caller's search_path (issue 12, item 2).
#
# Every identifier and operator symbol used in the installed extension script and in the string
# literals of the C++ sources (src/**/*.cpp, *.hpp) is found automatically; for each, a "shadow"
# with exactly the signature of every existing function, aggregate, procedure or operator of that
# name (and a view for each same-named catalog or extension relation) is created in schema
# `shadow`. A shadow counts its call in a sequence (not rolled back by the error), logs a WARNING
# and raises. The database's search_path is then `shadow, pg_catalog, public`: the shadow schema
# comes before pg_catalog, so identical signatures are caught too, and it applies to the client
# sessions, the refresh scheduler and the refresh workers alike. The whole workflow (register,
# ingestion, constants, refresh, cancel/resume, filter_tags, counts, reconcile, freshness,
# estimates, truncate, unregister, drop) runs as a superuser: it must succeed, no shadow may have
# run (counter, server log, client output), and the caller's search_path must be the same after
# each procedure returned or failed.
# Needs PGHOST/PGPORT/PGUSER of a running server with the extension installed (test/run-all);
# CLUSTER_DIR (exported by test/lib/cluster.sh) adds the server-log check.
set -euo pipefail
cd "$(dirname "$0")/../.."

DB=popularity_search_path
HOSTILE='shadow, pg_catalog, public'
fail() { echo "FAILED: $*" >&2; exit 1; }
# A session with a safe path, for setup and checks; and one with the hostile path.
safe() { PGOPTIONS='-c search_path=pg_catalog,public' psql -X -v ON_ERROR_STOP=1 -qAt -d "$DB" "$@"; }
hostile() { timeout 300 psql -X -v ON_ERROR_STOP=1 -qAt -d "$DB" "$@"; }

version=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" popularity.control)
script=build/popularity--$version.sql
[ -f "$script" ] || fail "$script not built (run make)"

psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true' EXIT

# 1. Names and symbols: every identifier, and every run of operator characters (with all its
# substrings: "=-1" holds "=" and "-"), in the install script and in the C++ string literals;
# plus the operators SQL syntax implies (IN, IS DISTINCT FROM, CASE, NULLIF: "="; NOT IN: "<>";
# BETWEEN: "<=", ">="; LIKE, ILIKE). Words that name nothing are filtered out by the catalog.
find src -name '*.cpp' -o -name '*.hpp' | sort | xargs perl -0777 -ne '
    s{//[^\n]*}{}g;                        # line comments (they may hold quotes)
    s{\x27(?:[^\x27\\\n]|\\.)+\x27}{}g;    # character literals
    while (/"((?:[^"\\\n]|\\.)*)"/g) { print "$1\n" }' >"$tmp/cpp_literals"
cat "$script" "$tmp/cpp_literals" >"$tmp/all_sql"
perl -ne 'print "$1\n" while /([A-Za-z_][A-Za-z0-9_]*)/g' "$tmp/all_sql" | sort -u >"$tmp/names"
{
    perl -ne 'while (/([-+*\/<>=~!@#%^&|`?]+)/g) { my $r = $1;
                  for my $i (0 .. length($r) - 1) { for my $n (1 .. length($r) - $i) {
                      print substr($r, $i, $n), "\n" } } }' "$tmp/all_sql"
    printf '%s\n' '=' '<>' '<' '>' '<=' '>=' '~~' '!~~' '~~*' '!~~*'
} | sort -u >"$tmp/symbols"
echo "sources: $script and $(wc -l <"$tmp/cpp_literals") C++ string literals;" \
    "$(wc -l <"$tmp/names") distinct identifiers, $(wc -l <"$tmp/symbols") operator-character sequences"

# 2. The catalog, and a workflow's data, under a safe path.
safe <<'SQL'
CREATE EXTENSION popularity SCHEMA public;
CREATE TABLE public.image (
    identifier uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider varchar(80) NOT NULL, foreign_identifier text NOT NULL, meta_data jsonb, tags jsonb,
    updated_on timestamptz NOT NULL DEFAULT now());
INSERT INTO public.image (provider, foreign_identifier, meta_data, tags)
SELECT CASE WHEN g % 3 = 0 THEN 'wikimedia' ELSE 'flickr' END, 'f' || g,
       CASE WHEN g % 3 = 0 THEN jsonb_build_object('global_usage_count', g % 7)
            WHEN g % 11 = 0 THEN jsonb_build_object('views', '1k')
            ELSE jsonb_build_object('views', g % 5000) END,
       jsonb_build_array(jsonb_build_object('name', 'cat', 'provider', 'flickr'),
                         jsonb_build_object('name', 'CC0'),
                         jsonb_build_object('name', 'blurry', 'accuracy', 0.5, 'provider', 'clarifai'))
FROM generate_series(1, 4000) AS g;
-- A second media table with row-level security enabled: refresh_constants reads it through the
-- executor (dynamic SQL) instead of the C++ scan.
CREATE TABLE public.audio (
    identifier uuid PRIMARY KEY DEFAULT gen_random_uuid(), provider text NOT NULL,
    meta_data jsonb, tags jsonb, updated_on timestamptz NOT NULL DEFAULT now());
ALTER TABLE public.audio ENABLE ROW LEVEL SECURITY;
INSERT INTO public.audio (provider, meta_data)
SELECT 'jamendo', jsonb_build_object('listens', g) FROM generate_series(1, 300) AS g;
SQL

# Every SQL or PL/pgSQL routine of the extension pins search_path: a SET clause, or (procedures
# that commit) set_config in its body.
unpinned=$(safe -c "
    SELECT string_agg(p.oid::regprocedure::text, ', ' ORDER BY p.oid::regprocedure::text)
    FROM pg_depend AS d JOIN pg_extension AS e ON e.oid = d.refobjid AND e.extname = 'popularity'
    JOIN pg_proc AS p ON d.classid = 'pg_proc'::regclass AND p.oid = d.objid
    JOIN pg_language AS l ON l.oid = p.prolang
    WHERE d.deptype = 'e' AND l.lanname IN ('sql', 'plpgsql')
      AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)
      AND strpos(p.prosrc, 'set_config(''search_path'', ''pg_catalog, pg_temp'', true)') = 0")
[ -z "$unpinned" ] || fail "routines without a pinned search_path: $unpinned"

# 3. The shadows.
{
    echo "CREATE SCHEMA shadow;"
    echo "CREATE TABLE shadow.names (name text);"
    echo "CREATE TABLE shadow.symbols (symbol text);"
    echo "COPY shadow.names FROM STDIN;"
    cat "$tmp/names"
    echo '\.'
    echo "COPY shadow.symbols FROM STDIN;"
    sed 's/\\/\\\\/g' "$tmp/symbols"
    echo '\.'
    cat <<'SQL'
SET search_path = pg_catalog; -- type names below print unqualified for built-in types
-- Every call of a shadow is counted here: a sequence is not rolled back with the error.
CREATE SEQUENCE shadow.hits;
CREATE FUNCTION shadow._body(what text) RETURNS text LANGUAGE sql IMMUTABLE AS $f$
    SELECT format($b$BEGIN
    PERFORM pg_catalog.nextval('shadow.hits'::pg_catalog.regclass);
    RAISE WARNING 'shadow %% ran', %1$L;
    RAISE EXCEPTION 'shadow %% ran', %1$L;
END$b$, what) $f$;
CREATE FUNCTION shadow._hit(what text) RETURNS boolean LANGUAGE plpgsql VOLATILE
    AS $f$ BEGIN PERFORM pg_catalog.nextval('shadow.hits'::pg_catalog.regclass);
                 RAISE WARNING 'shadow % ran', what; RAISE EXCEPTION 'shadow % ran', what; END $f$;
CREATE TABLE shadow.made (kind text, name text, how text);

-- A routine of the given signature that raises: PL/pgSQL, or, for signatures PL/pgSQL cannot
-- take (internal, "any", cstring, window functions), the built-in any_in, which always raises
-- "cannot accept a value of type any".
CREATE FUNCTION shadow._make(kind text, name text, head text, tail text, what text) RETURNS text
LANGUAGE plpgsql AS $f$
BEGIN
    IF tail NOT LIKE '%WINDOW%' THEN
        BEGIN
            EXECUTE format('CREATE %s %s %s LANGUAGE plpgsql AS %L', kind, head, tail, shadow._body(what));
            RETURN 'plpgsql';
        EXCEPTION WHEN duplicate_function THEN RETURN 'duplicate';
                  WHEN OTHERS THEN NULL;
        END;
    END IF;
    BEGIN
        EXECUTE format('CREATE %s %s %s LANGUAGE internal AS %L', kind, head, tail, 'any_in');
        RETURN 'internal';
    EXCEPTION WHEN duplicate_function THEN RETURN 'duplicate';
              WHEN OTHERS THEN
        RAISE NOTICE 'no shadow for % %: %', kind, what, SQLERRM;
        RETURN 'skipped';
    END;
END $f$;

DO $do$
DECLARE
    p record;
    how text;
    rettype text;
    argtypes text;
BEGIN
    -- Functions, procedures and aggregates of every schema (pg_catalog, the extension's own).
    FOR p IN
        SELECT f.oid, f.proname, f.prokind, f.prorettype, f.proargtypes, f.pronargs,
               pg_get_function_arguments(f.oid) AS args, pg_get_function_result(f.oid) AS result,
               format('%s.%s(%s)', n.nspname, f.proname, pg_get_function_identity_arguments(f.oid)) AS what,
               a.aggkind
        FROM pg_proc AS f JOIN pg_namespace AS n ON n.oid = f.pronamespace
        LEFT JOIN pg_aggregate AS a ON a.aggfnoid = f.oid
        WHERE f.proname IN (SELECT s.name FROM shadow.names AS s)
          AND n.nspname NOT IN ('shadow', 'pg_toast')
          AND f.prorettype NOT IN ('trigger'::regtype, 'event_trigger'::regtype)
        ORDER BY f.oid
    LOOP
        IF p.prokind = 'p' THEN
            how := shadow._make('PROCEDURE', p.proname, format('shadow.%I(%s)', p.proname, p.args), '', p.what);
        ELSIF p.prokind IN ('f', 'w') THEN
            how := shadow._make('FUNCTION', p.proname, format('shadow.%I(%s)', p.proname, p.args),
                                format('RETURNS %s%s', p.result, CASE WHEN p.prokind = 'w' THEN ' WINDOW' END),
                                p.what);
        ELSIF p.aggkind = 'n' THEN
            -- An aggregate whose transition and final functions raise (the final function runs
            -- even over no rows).
            rettype := p.prorettype::regtype::text;
            SELECT string_agg(t::regtype::text, ', ' ORDER BY i) INTO argtypes
            FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS x(t, i);
            how := shadow._make('FUNCTION', 'sfunc', format('shadow.%I(%s)', 'sfunc_' || p.oid,
                                concat_ws(', ', rettype, argtypes)), format('RETURNS %s', rettype), p.what);
            IF how NOT IN ('skipped') THEN
                how := shadow._make('FUNCTION', 'ffunc', format('shadow.%I(%s)', 'ffunc_' || p.oid, rettype),
                                    format('RETURNS %s', rettype), p.what);
            END IF;
            IF how NOT IN ('skipped') THEN
                BEGIN
                    EXECUTE format('CREATE AGGREGATE shadow.%I(%s) (SFUNC = shadow.%I, STYPE = %s, FINALFUNC = shadow.%I)',
                                   p.proname, coalesce(argtypes, '*'), 'sfunc_' || p.oid, rettype, 'ffunc_' || p.oid);
                    how := 'aggregate';
                EXCEPTION WHEN OTHERS THEN
                    RAISE NOTICE 'no shadow for aggregate %: %', p.what, SQLERRM;
                    how := 'skipped';
                END;
            END IF;
        ELSE
            RAISE NOTICE 'no shadow for ordered-set aggregate %', p.what;
            how := 'skipped';
        END IF;
        INSERT INTO shadow.made VALUES ('function', p.proname, how);
    END LOOP;

    -- Operators: one of each signature of every operator whose name appears.
    FOR p IN
        SELECT o.oid, o.oprname, o.oprleft, o.oprright, o.oprresult,
               format('operator %s.%s(%s, %s)', n.nspname, o.oprname, o.oprleft::regtype, o.oprright::regtype) AS what
        FROM pg_operator AS o JOIN pg_namespace AS n ON n.oid = o.oprnamespace
        WHERE o.oprname IN (SELECT s.symbol FROM shadow.symbols AS s) AND n.nspname <> 'shadow'
        ORDER BY o.oid
    LOOP
        how := shadow._make('FUNCTION', 'op', format('shadow.%I(%s)', 'op_' || p.oid,
                            concat_ws(', ', CASE WHEN p.oprleft <> 0 THEN p.oprleft::regtype::text END,
                                      p.oprright::regtype::text)),
                            format('RETURNS %s', p.oprresult::regtype), p.what);
        IF how <> 'skipped' THEN
            BEGIN
                EXECUTE format('CREATE OPERATOR shadow.%s (%s RIGHTARG = %s, FUNCTION = shadow.%I)', p.oprname,
                               CASE WHEN p.oprleft <> 0 THEN format('LEFTARG = %s,', p.oprleft::regtype) ELSE '' END,
                               p.oprright::regtype, 'op_' || p.oid);
            EXCEPTION WHEN OTHERS THEN
                RAISE NOTICE 'no shadow for %: %', p.what, SQLERRM;
                how := 'skipped';
            END;
        END IF;
        INSERT INTO shadow.made VALUES ('operator', p.oprname, how);
    END LOOP;

    -- Relations of pg_catalog and of the extension's schema: a view of the same name and columns
    -- that raises when read.
    FOR p IN
        SELECT c.relname, n.nspname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE c.relname IN (SELECT s.name FROM shadow.names AS s) AND c.relkind IN ('r', 'v', 'p')
          AND n.nspname IN ('pg_catalog', 'popularity')
    LOOP
        BEGIN
            -- (columns of a pseudo-type, as pg_attribute.attmissingval, cannot be in a view)
            EXECUTE format('CREATE VIEW shadow.%I AS SELECT %s FROM %I.%I WHERE shadow._hit(%L)',
                           p.relname,
                           (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
                            FROM pg_attribute AS a JOIN pg_type AS t ON t.oid = a.atttypid
                            WHERE a.attrelid = format('%I.%I', p.nspname, p.relname)::regclass
                              AND a.attnum > 0 AND NOT a.attisdropped AND t.typtype <> 'p'),
                           p.nspname, p.relname, p.nspname || '.' || p.relname);
            how := 'view';
        EXCEPTION WHEN duplicate_table THEN how := 'duplicate';
        END;
        INSERT INTO shadow.made VALUES ('relation', p.relname, how);
    END LOOP;

    -- Types of pg_catalog (names that are not SQL keywords, such as text, name, "char", uuid,
    -- regclass, int8): a domain over the type whose check raises whenever a value becomes one.
    FOR p IN
        SELECT t.typname FROM pg_type AS t
        WHERE t.typname IN (SELECT s.name FROM shadow.names AS s) AND t.typnamespace = 'pg_catalog'::regnamespace
          AND t.typtype IN ('b', 'e', 'r', 'm') AND t.typcategory <> 'A'
    LOOP
        BEGIN
            EXECUTE format('CREATE DOMAIN shadow.%I AS pg_catalog.%I CHECK (shadow._hit(%L))',
                           p.typname, p.typname, 'type pg_catalog.' || p.typname);
            how := 'domain';
        EXCEPTION WHEN duplicate_object THEN how := 'duplicate';
        END;
        INSERT INTO shadow.made VALUES ('type', p.typname, how);
    END LOOP;
END $do$;
SQL
} | safe -v ON_ERROR_STOP=1 >"$tmp/setup.log" 2>&1 || { tail -30 "$tmp/setup.log"; fail "creating the shadows failed"; }
grep 'no shadow' "$tmp/setup.log" || true
safe -c "SELECT format('shadowed: %s functions, aggregates and procedures (%s names), %s operators (%s symbols), %s relations, %s types; %s signatures without a shadow',
                count(*) FILTER (WHERE kind = 'function' AND how NOT IN ('skipped', 'duplicate')),
                count(DISTINCT name) FILTER (WHERE kind = 'function' AND how NOT IN ('skipped', 'duplicate')),
                count(*) FILTER (WHERE kind = 'operator' AND how NOT IN ('skipped', 'duplicate')),
                count(DISTINCT name) FILTER (WHERE kind = 'operator' AND how NOT IN ('skipped', 'duplicate')),
                count(*) FILTER (WHERE kind = 'relation' AND how = 'view'),
                count(*) FILTER (WHERE kind = 'type' AND how = 'domain'),
                count(*) FILTER (WHERE how = 'skipped'))
         FROM shadow.made"
# The shadows work: an unqualified call, an operator, a relation under the hostile path raise.
for probe in "SELECT cardinality(ARRAY['a']::text[])" "SELECT ARRAY[gen_random_uuid()] || ARRAY[gen_random_uuid()]" \
    "SELECT pg_catalog.length('a'::text)" "SELECT count(*) FROM pg_class"; do
    out=$(PGOPTIONS="-c search_path=shadow,pg_catalog,public" psql -X -qAt -d "$DB" -c "$probe" 2>&1 || true)
    grep -q 'shadow .* ran' <<<"$out" || fail "the shadows do not work: '$probe' gave: $out"
done
safe -c "SELECT setval('shadow.hits', 1, false)" >/dev/null

# 4. Everything that connects to the database from now on gets the hostile path: client sessions,
# the refresh scheduler and the refresh workers.
psql -X -q -d postgres -c "ALTER DATABASE $DB SET search_path = $HOSTILE"
log_start=0
if [ -n "${CLUSTER_DIR:-}" ] && [ -f "$CLUSTER_DIR/server.log" ]; then
    log_start=$(stat -c %s "$CLUSTER_DIR/server.log")
fi

# Which shadows ran since step 4: the counter, the client output, the server log. Prints them;
# fails when there is any.
shadows_ran() {
    local hits client server=''
    hits=$(safe -c "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM shadow.hits")
    client=$(cat "$tmp"/*.out 2>/dev/null | grep -E 'shadow .* ran|cannot accept a value of type any' || true)
    if [ -n "${CLUSTER_DIR:-}" ] && [ -f "$CLUSTER_DIR/server.log" ]; then
        server=$(tail -c +"$((log_start + 1))" "$CLUSTER_DIR/server.log" |
            grep -E 'shadow .* ran|cannot accept a value of type any' | sed -E 's/^.*(WARNING|ERROR): +//' || true)
    else
        echo "(no CLUSTER_DIR: server log not checked)"
    fi
    if [ "$hits" != 0 ] || [ -n "$client" ] || [ -n "$server" ]; then
        echo "shadow calls counted: $hits; messages (client and server log):"
        printf '%s\n%s\n' "$client" "$server" | sed -E 's/^.*(WARNING|ERROR): +//' | grep . | sort | uniq -c | head -40
        return 0
    fi
    return 1
}
workflow_failed() {
    cat "$tmp/$1.out"
    shadows_ran || true
    fail "the workflow failed under the hostile search_path"
}

# 5. The workflow, as a superuser. Only the test's own statements are written qualified
# (OPERATOR(pg_catalog.=)); everything the extension runs is under test.
hostile >"$tmp/workflow1.out" 2>&1 <<'SQL' || workflow_failed workflow1
SHOW search_path;
SELECT popularity.register_media_type('image', 'public.image');
SELECT popularity.register_media_type('audio', 'public.audio');
SELECT popularity.set_metric('image', 'flickr', 'views', 0.8);
INSERT INTO popularity.tag_rules (media_type, exact_denylist) VALUES ('image', '{cat,dog}');
UPDATE popularity.media_types SET filter_tags_at_ingestion = true WHERE media_type OPERATOR(pg_catalog.=) 'image';
SELECT provider, changed FROM popularity.refresh_constants('image');
SELECT provider, changed FROM popularity.refresh_constants('audio');
-- refresh: constants, run, workers
CALL public.refresh_popularity('image');
SHOW search_path;
-- ingestion: scoring trigger (constants cache), tag filter at ingestion (rules cache), counts
INSERT INTO public.image (identifier, provider, foreign_identifier, meta_data, tags)
VALUES ('00000000-0000-0000-0000-000000000001', 'flickr', 'new-1', '{"views": 123}',
        '[{"name": "cat"}, {"name": "blurry", "accuracy": 0.5, "provider": "clarifai"}]');
INSERT INTO public.image (identifier, provider, foreign_identifier, meta_data)
VALUES ('00000000-0000-0000-0000-000000000001', 'flickr', 'new-1', '{"views": 7}')
ON CONFLICT (identifier) DO UPDATE SET meta_data = excluded.meta_data;
UPDATE public.image SET meta_data = '{"views": 9}' WHERE foreign_identifier OPERATOR(pg_catalog.=) 'f1';
DELETE FROM public.image WHERE foreign_identifier OPERATOR(pg_catalog.=) 'f2';
INSERT INTO public.audio (provider, meta_data) VALUES ('jamendo', '{"listens": 5}');
-- a changed constant: rescoring by the workers; then a forced run, cancelled and resumed
SELECT popularity.set_metric('image', 'flickr', 'views', 0.7);
CALL public.refresh_popularity('image');
CALL public.refresh_popularity('audio');
CALL public.refresh_popularity('image', force => true, wait => false);
SHOW search_path;
SELECT popularity.resume_refresh(r) FROM popularity.cancel_refresh(media_type => 'image') AS r;
SQL
# Wait for the resumed (or finished) run from a safe session.
for _ in $(seq 1 600); do
    [ "$(safe -c "SELECT count(*) FROM popularity.refresh_runs WHERE state IN ('queued', 'running')")" = 0 ] && break
    sleep 0.2
done
hostile >"$tmp/workflow2.out" 2>&1 <<'SQL' || workflow_failed workflow2
CALL public.refresh_popularity('image', force => true);
-- tag filter: dry run, then in small committed batches
CALL public.filter_tags('image', dry_run => true);
CALL public.filter_tags('image', batch_blocks => 2);
SHOW search_path;
SELECT popularity.filtered_tags('[{"name": "CC0"}, {"name": "ok"}]', 'flickr', 'image');
-- counts and freshness
SELECT popularity.fold_stats();
CALL popularity.reconcile_stats('image');
CALL popularity.reconcile_stats();
SELECT media_type, provider, rows FROM popularity.provider_stats;
SELECT provider, method, rows_stale FROM popularity.freshness('image');
SELECT provider, method FROM popularity.freshness('image', sample_rows => 100, seed => 0.5, sampling => 'system');
SELECT provider, method, rows_stale FROM popularity.freshness('image', exact => true);
SELECT provider, method FROM popularity.estimate_percentile('image', sample_rows => 200, seed => 0.5);
SELECT provider, method FROM popularity.estimate_percentile('image', providers => '{flickr}');
SELECT run_id, provider, state FROM popularity.refresh_status;
SELECT * FROM popularity.effective_tag_rules;
-- truncate, unregister, drop (event trigger)
TRUNCATE public.audio;
CALL popularity.reconcile_stats('audio');
SELECT popularity.unregister_media_type('audio');
SELECT popularity.register_media_type('audio', 'public.audio');
DROP TABLE public.audio;
SHOW search_path;
SQL

# 6. The caller's search_path after each procedure: returned, failed, called from a DO block.
hostile -v ON_ERROR_STOP=0 >"$tmp/paths.out" 2>&1 <<'SQL' || true
SET search_path = shadow, pg_catalog, public, pg_temp;
CALL public.filter_tags('image');
SHOW search_path;
CALL public.filter_tags('no such media type');
SHOW search_path;
CALL public.refresh_popularity('image');
SHOW search_path;
CALL public.refresh_popularity('no such media type');
SHOW search_path;
BEGIN;
CALL public.refresh_popularity('image');
ROLLBACK;
SHOW search_path;
DO $$ BEGIN
    CALL public.refresh_popularity('image', force => true, wait => false);
    RAISE NOTICE 'after refresh_popularity: %', pg_catalog.current_setting('search_path');
    CALL public.filter_tags('image');
    RAISE NOTICE 'after filter_tags: %', pg_catalog.current_setting('search_path');
END $$;
SHOW search_path;
SQL
expected='shadow, pg_catalog, public, pg_temp'
[ "$(grep -c "^$expected\$" "$tmp/paths.out")" = 6 ] &&
    grep -q "after refresh_popularity: $expected\$" "$tmp/paths.out" &&
    grep -q "after filter_tags: $expected\$" "$tmp/paths.out" &&
    [ "$(grep -c 'ERROR:  media type "no such media type" is not registered' "$tmp/paths.out")" = 2 ] &&
    grep -q 'cannot run inside a transaction block' "$tmp/paths.out" || {
    cat "$tmp/paths.out"
    fail "a procedure changed the caller's search_path"
}
for _ in $(seq 1 600); do
    [ "$(safe -c "SELECT count(*) FROM popularity.refresh_runs WHERE state IN ('queued', 'running')")" = 0 ] && break
    sleep 0.2
done

# 7. No shadow ran.
if shadows_ran; then
    fail "the extension ran objects of the caller's search_path"
fi

# 8. The workflow did its work.
safe -c "SELECT count(*) FROM popularity.refresh_runs WHERE state <> 'succeeded'" | grep -qx 0 ||
    fail "a refresh run did not succeed: $(safe -c "SELECT string_agg(run_id || ' ' || state || ' ' || coalesce(error, ''), '; ') FROM popularity.refresh_runs")"
wrong=$(safe -c "SELECT count(*) FROM public.image AS t JOIN popularity.metrics AS m ON m.media_type = 'image' AND m.provider = t.provider
                 WHERE t.standardized_popularity IS DISTINCT FROM standardized_popularity(popularity_metric_value(t.meta_data, m.metric), m.constant)")
[ "$wrong" = 0 ] || fail "$wrong rows wrongly scored after the refresh"
[ "$(safe -c "SELECT count(*) FROM public.image WHERE tags @> '[{\"name\": \"blurry\"}]' OR tags @> '[{\"name\": \"cat\"}]'")" = 0 ] ||
    fail "filter_tags left tags its rules drop"
# The filter runs (jobs of the workers, which ran under the hostile path too): the dry run counted
# without writing, the run in batches of 2 blocks changed rows and recorded what it removed.
[ "$(safe -c "SELECT count(*) FILTER (WHERE dry_run AND rows_updated > 0 AND counters ? 'exact_denylist')
                     || ' ' || count(*) FILTER (WHERE NOT dry_run AND rows_updated > 0 AND counters ? 'exact_denylist')
              FROM popularity.refresh_status WHERE job = 'filter_tags' AND state = 'succeeded'")" = "1 1" ] ||
    fail "expected one dry run and one run of filter_tags that changed rows: $(safe -c "SELECT string_agg(format('%s %s %s %s', run_id, dry_run, rows_updated, counters), '; ') FROM popularity.refresh_status WHERE job = 'filter_tags'")"
[ "$(safe -c "SELECT count(*) > 0 FROM popularity.tag_filter_removed")" = t ] ||
    fail "the filter run recorded nothing it removed"
[ "$(safe -c "SELECT sum(rows) FROM popularity.provider_stats WHERE media_type = 'image'")" = \
  "$(safe -c "SELECT count(*) FROM public.image")" ] || fail "provider counts are not exact"
[ "$(safe -c "SELECT count(*) FROM popularity.media_types WHERE media_type = 'audio'")" = 0 ] ||
    fail "dropping a registered table did not unregister it"
echo "ok: the workflow ran under search_path '$HOSTILE' without running any shadow, and every procedure left the caller's search_path as it was"
