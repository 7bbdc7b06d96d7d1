# Shared pieces of the fuzzers (sourced by test/fuzz/run-long and test/scripts/fuzz_smoke.sh).
#   fuzz_cluster_start              a throwaway server (test/lib/cluster.sh) configured for fuzzing
#   fuzz_setup_db DB ROWS           the database of setup.sql + generator.sql
#   fuzz_targeted DB ROLE SEED N    the targeted fuzzer: every routine, generated arguments, as ROLE
#   fuzz_sqlsmith DB ROLE SEED SECONDS MAX_QUERIES   sqlsmith, bounded by time and queries
#   fuzz_background_start DB / fuzz_background_stop  refreshes, tag filter runs (cancelled, resumed,
#                                   undone) running meanwhile
#   fuzz_probe_targets DB           the runs the probes aim at (fuzz.probe_runs), made as the superuser
#   fuzz_probes DB                  what the plain role must not be able to do or read
#   fuzz_report                     every crash of the server log (query when known); non-zero if any
# Results go to $FUZZ_OUT (crashes.txt, internal_errors.txt, timeouts.txt, alarms.txt, logs).
# Needs PG_CONFIG (the install tree whose server runs) and `sqlsmith` (Debian package).

FUZZ_DIR=${FUZZ_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
# shellcheck source=../lib/cluster.sh
source "$FUZZ_DIR/../lib/cluster.sh"
FUZZ_OUT=${FUZZ_OUT:-$(mktemp -d /tmp/popularity-fuzz.XXXXXX)}
mkdir -p "$FUZZ_OUT"
: >>"$FUZZ_OUT/crashes.txt"
: >>"$FUZZ_OUT/internal_errors.txt"
: >>"$FUZZ_OUT/timeouts.txt"
: >>"$FUZZ_OUT/alarms.txt"
FUZZ_STATEMENT_TIMEOUT=${FUZZ_STATEMENT_TIMEOUT:-15s}

fuzz_note() { printf '[fuzz %(%H:%M:%S)T] %s\n' -1 "$*"; }

# The server: crashes restart it (restart_after_crash), the SQLSTATE is in every log line, the
# whole query of a crashed backend is logged (track_activity_query_size), refresh batches are
# small so that background runs last, and pg_cron is loaded when it is installed.
fuzz_cluster_start() {
    local preload=popularity
    [ -e "$("$PG_CONFIG" --pkglibdir)/pg_cron.so" ] && preload=popularity,pg_cron
    cluster_start "shared_preload_libraries = '$preload'" \
        "log_line_prefix = '%m [%p] %e %q%a '" \
        "restart_after_crash = on" \
        "track_activity_query_size = 1048576" \
        "log_min_error_statement = panic" \
        "popularity.database = 'postgres'" \
        "popularity.batch_blocks = 4" \
        "popularity.naptime = 100ms" \
        "max_worker_processes = 24" \
        "max_connections = 60" "$@"
}

fuzz_server_log() { echo "$CLUSTER_DIR/server.log"; }

# Waits until the server accepts queries again (after a crash and its recovery).
fuzz_wait_ready() { # db
    local i
    for i in $(seq 1 600); do
        psql -X -q -At -d "$1" -c 'SELECT 1' >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    fuzz_note "server not ready after 120 s"
    return 1
}

fuzz_setup_db() { # db rows
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1" || return 1
    psql -X -q -v ON_ERROR_STOP=1 -v rows="$2" -d "$1" -f "$FUZZ_DIR/setup.sql" &&
        psql -X -q -v ON_ERROR_STOP=1 -d "$1" -f "$FUZZ_DIR/generator.sql"
}

# Runs a file of statements (one a line) as ROLE, each in its own transaction (autocommit), with a
# statement timeout. When the connection is lost (server crash), waits for the server, records the
# statement and goes on with the next line. Writes internal errors (XX000) and timeouts with their
# statements. Prints a summary line.
fuzz_run_file() { # db role file label
    local db=$1 role=$2 file=$3 label=$4
    local total start=1 rc line stmt part err crashes=0 n_err
    total=$(wc -l <"$file")
    err="$FUZZ_OUT/$label.stderr"
    : >"$err"
    while [ "$start" -le "$total" ]; do
        part="$FUZZ_OUT/$label.part.sql"
        tail -n +"$start" "$file" >"$part"
        PGOPTIONS="-c statement_timeout=$FUZZ_STATEMENT_TIMEOUT -c lock_timeout=5s -c client_min_messages=error" \
            psql -X -q -v ON_ERROR_STOP=0 -v VERBOSITY=verbose -o /dev/null -U "$role" -d "$db" \
            -f "$part" 2>"$err.cur" >/dev/null
        rc=$?
        # psql:<file>:<line>: ERROR:  XX000: ...   (line numbers of the part, shifted to the file's)
        awk -v off=$((start - 1)) -v part="$part" '
            match($0, /^psql:[^:]*:[0-9]+: /) {
                split($0, f, ":"); $0 = "line " (f[3] + off) ":" substr($0, RLENGTH)
            } { print }' "$err.cur" >>"$err"
        if [ "$rc" -eq 2 ]; then
            line=$(grep -oE "^psql:[^:]*:[0-9]+: (server closed the connection|connection to server was lost|FATAL|could not)" "$err.cur" |
                tail -1 | cut -d: -f3)
            [ -n "$line" ] || line=$(grep -oE '^psql:[^:]*:[0-9]+:' "$err.cur" | tail -1 | cut -d: -f3)
            [ -n "$line" ] || line=1
            line=$((start - 1 + line))
            stmt=$(sed -n "${line}p" "$file")
            crashes=$((crashes + 1))
            fuzz_note "$label: connection lost at line $line: ${stmt:0:300}"
            printf '%s\tline %s\t%s\n' "$label" "$line" "$stmt" >>"$FUZZ_OUT/connection_lost.txt"
            fuzz_wait_ready "$db" || return 1
            start=$((line + 1))
        else
            break
        fi
    done
    # internal errors and timeouts, with their statements
    grep -E '^line [0-9]+: ERROR:  XX000' "$err" | while IFS= read -r l; do
        line=${l#line }; line=${line%%:*}
        printf '%s\t%s\n\t%s\n' "$label" "${l:0:400}" "$(sed -n "${line}p" "$file" | cut -c1-600)" >>"$FUZZ_OUT/internal_errors.txt"
    done
    grep -E '^line [0-9]+: ERROR:  57014' "$err" | while IFS= read -r l; do
        line=${l#line }; line=${line%%:*}
        printf '%s\t%s\n' "$label" "$(sed -n "${line}p" "$file" | cut -c1-600)" >>"$FUZZ_OUT/timeouts.txt"
    done
    n_err=$(grep -cE '^line [0-9]+: ERROR:' "$err" || true)
    fuzz_note "$label: $total statements as $role, $n_err errors, $crashes connections lost"
    grep -oE '^line [0-9]+: ERROR:  [0-9A-Z]{5}' "$err" | awk '{print $4}' | sort | uniq -c | sort -rn |
        head -20 | tr '\n' ' ' | sed 's/^/    SQLSTATEs: /'
    echo
}

# The targeted fuzzer: generated calls of every routine, then the aggregate and trigger scenarios.
fuzz_targeted() { # db role seed random_combos
    local db=$1 role=$2 seed=$3 combos=$4 file="$FUZZ_OUT/targeted-$2-$3.sql"
    psql -X -q -At -d "$db" -c "SELECT stmt FROM fuzz.calls($seed, $combos)" >"$file" || return 1
    sed -e '/^--/d' -e '/^$/d' "$FUZZ_DIR/scenarios.sql" >>"$file"
    fuzz_run_file "$db" "$role" "$file" "targeted-$role-$seed"
}

# sqlsmith as ROLE for at most SECONDS and MAX_QUERIES; prints its query count and rate.
fuzz_sqlsmith() { # db role seed seconds max_queries
    local db=$1 role=$2 seed=$3 secs=$4 max=$5 log="$FUZZ_OUT/sqlsmith-$2-$3.log" t0 t1 n
    t0=$(date +%s.%N)
    timeout --signal=INT --kill-after=10 "$secs" sqlsmith \
        --target="host=$PGHOST port=$PGPORT dbname=$db user=$role" \
        --seed="$seed" --max-queries="$max" --verbose >"$log" 2>&1
    t1=$(date +%s.%N)
    # --verbose prints "queries: N" lines; the last one is the total
    n=$(grep -oE 'queries: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+')
    [ -n "$n" ] || n=$(tr -cd '.eCStw' <"$log" | wc -c)
    fuzz_note "sqlsmith as $role (seed $seed): ${n:-?} queries in $(printf '%.0f' "$(echo "$t1 - $t0" | bc)") s"
    echo "$role $seed ${n:-0} $(echo "$t1 - $t0" | bc)" >>"$FUZZ_OUT/sqlsmith_runs.txt"
}

# Refreshes (forced, with changing constants) and tag filter runs in a loop, as the superuser: a
# filter run is a job of the same background workers; every third one is cancelled mid-way and
# resumed, and the last one that changed rows is undone (its tags come back for the next run).
fuzz_background_start() { # db
    local db=$1
    (
        i=0
        while :; do
            i=$((i + 1))
            psql -X -q -d "$db" -c "SELECT popularity.set_metric('image', 'flickr', 'views', 0.$((50 + i % 49)))" \
                -c "CALL refresh_popularity('image', wait => true, force => true)" >/dev/null 2>&1
            if [ $((i % 3)) = 0 ]; then
                psql -X -q -d "$db" -c "CALL filter_tags('image', batch_blocks => 1, wait => false)" \
                    -c "SELECT pg_sleep(0.2)" \
                    -c "SELECT popularity.cancel_refresh(media_type => 'image')" \
                    -c "SELECT popularity.resume_refresh(max(run_id)) FROM popularity.refresh_runs WHERE job = 'filter_tags' AND state = 'cancelled'" \
                    >/dev/null 2>&1
            else
                psql -X -q -d "$db" -c "CALL filter_tags('image', dry_run => $([ $((i % 2)) = 0 ] && echo true || echo false), batch_blocks => 2)" \
                    >/dev/null 2>&1
            fi
            [ $((i % 4)) = 0 ] &&
                psql -X -q -d "$db" -c "SELECT popularity.undo_filter_tags(max(run_id)) FROM popularity.refresh_runs
                                        WHERE job = 'filter_tags' AND media_type = 'image' AND NOT dry_run
                                          AND state NOT IN ('queued', 'running') AND undone_at IS NULL" >/dev/null 2>&1
            psql -X -q -d "$db" -c "UPDATE image SET meta_data = meta_data || jsonb_build_object('views', $i) WHERE foreign_identifier LIKE 'f$((i % 9 + 1))%'" \
                -c "SELECT popularity.fold_stats()" >/dev/null 2>&1
            sleep 0.2
        done
    ) &
    FUZZ_BG_PID=$!
}

fuzz_background_stop() {
    [ -n "${FUZZ_BG_PID:-}" ] || return 0
    kill "$FUZZ_BG_PID" 2>/dev/null
    wait "$FUZZ_BG_PID" 2>/dev/null
    FUZZ_BG_PID=
}

# Waits (up to 60 s) until no refresh or tag filter run is active, so that state can be compared.
fuzz_wait_idle() { # db
    local i
    for i in $(seq 1 300); do
        [ "$(psql -X -At -d "$1" -c "SELECT NOT EXISTS (SELECT FROM popularity.refresh_runs WHERE state IN ('queued', 'running'))" 2>/dev/null)" = t ] && return 0
        sleep 0.2
    done
    return 1
}

# A digest of every table of the extension's schema and of the catalogs, to see what a role changed.
fuzz_state() { # db
    psql -X -At -d "$1" <<'SQL'
SELECT string_agg(format('%s=%s', t, d), E'\n' ORDER BY t) FROM (
    SELECT c.oid::regclass::text AS t,
           (xpath('/row/d/text()', query_to_xml(format(
               'SELECT md5(coalesce(string_agg(x::text, ''|'' ORDER BY x::text), '''')) AS d FROM %s AS x',
               c.oid::regclass), false, true, '')))[1]::text AS d
    FROM pg_class AS c
    WHERE c.relkind = 'r' AND (c.relnamespace = 'popularity'::regnamespace
                               OR c.oid IN ('image'::regclass, 'secret'::regclass, 'image_part_flickr'::regclass))
) AS s;
SQL
}

# The runs the probes aim at, made as the superuser and named in fuzz.probe_runs (readable by the
# plain role, which may not see the runs themselves): a finished filter run of `image` and one of
# `secret` that recorded the tags they removed (secret's rows get a tag to drop first), and a
# refresh run. Notes in alarms.txt when one could not be made (the probes would aim at nothing).
fuzz_probe_targets() { # db
    psql -X -q -d "$1" >/dev/null 2>&1 <<'SQL'
SET client_min_messages = warning;
CREATE TABLE IF NOT EXISTS fuzz.probe_runs (label text PRIMARY KEY, run_id bigint);
GRANT SELECT ON fuzz.probe_runs TO PUBLIC;
TRUNCATE fuzz.probe_runs;
UPDATE secret SET tags = tags || '[{"name": "TOPSECRET again", "accuracy": 0.2}]' WHERE foreign_identifier LIKE 'TOPSECRET1%';
UPDATE image SET tags = tags || '[{"name": "uploaded:by=instagram"}]' WHERE foreign_identifier LIKE 'f1%';
CALL filter_tags('secret');
CALL filter_tags('image');
CALL refresh_popularity('image', force => true);
INSERT INTO fuzz.probe_runs
SELECT r.media_type, max(r.run_id) FROM popularity.refresh_runs AS r
WHERE r.job = 'filter_tags' AND NOT r.dry_run AND r.state = 'succeeded' AND r.media_type IN ('image', 'secret')
  AND EXISTS (SELECT FROM popularity.tag_filter_removed_rows AS d WHERE d.run_id = r.run_id)
GROUP BY r.media_type
UNION ALL
SELECT 'refresh', max(r.run_id) FROM popularity.refresh_runs AS r WHERE r.job = 'refresh';
SQL
    local have
    have=$(psql -X -At -d "$1" -c "SELECT string_agg(label, ' ' ORDER BY label) FROM fuzz.probe_runs WHERE run_id IS NOT NULL")
    [ "$have" = "image refresh secret" ] ||
        echo "probe targets: only '$have' of image, refresh, secret could be made" >>"$FUZZ_OUT/alarms.txt"
}

# What the plain role must not be able to do: each probe must fail. Successes go to alarms.txt.
fuzz_probes() { # db
    local db=$1 probe out rc n=0 bad=0
    while IFS= read -r probe; do
        [ -z "$probe" ] || [ "${probe:0:2}" = "--" ] && continue
        n=$((n + 1))
        out=$(PGOPTIONS="-c statement_timeout=30s -c client_min_messages=warning" \
            psql -X -At -v ON_ERROR_STOP=1 -v VERBOSITY=verbose -U fuzz_user -d "$db" -c "$probe" 2>&1)
        rc=$?
        if [ "$rc" -eq 0 ]; then
            bad=$((bad + 1))
            printf 'plain role succeeded: %s\n\t-> %s\n' "$probe" "$(echo "$out" | head -3 | tr '\n' ' ' | cut -c1-300)" >>"$FUZZ_OUT/alarms.txt"
        elif [ "$rc" -eq 2 ]; then
            fuzz_wait_ready "$db"
        fi
        printf '%s\t%s\n' "$rc" "$(echo "$out" | grep -m1 -oE 'ERROR:  [0-9A-Z]{5}: .{0,120}')" >>"$FUZZ_OUT/probes.txt"
    done <"$FUZZ_DIR/probes_plain.sql"
    fuzz_note "plain-role probes: $n, $bad succeeded that should not have"
}

# Compares the state digests taken before and after the plain role's run.
fuzz_compare_state() { # before after label
    local d
    d=$(diff <(echo "$1") <(echo "$2") | grep '^>' | sed 's/^> //; s/=.*//')
    if [ -n "$d" ]; then
        echo "$3 changed: $(echo "$d" | tr '\n' ' ')" >>"$FUZZ_OUT/alarms.txt"
        fuzz_note "$3 changed: $(echo "$d" | tr '\n' ' ')"
    fi
}

# Every crash in the server log since byte OFFSET: the signal line and the query it names.
fuzz_report() { # [offset]
    local log offset=${1:-0} n
    log=$(fuzz_server_log)
    tail -c +"$((offset + 1))" "$log" | awk '
        /terminated by signal|was terminated by exception|PANIC: / {
            print "CRASH: " $0; want = 1; next }
        want && /DETAIL:  Failed process was running: / {
            sub(/.*DETAIL:  Failed process was running: /, ""); print "  QUERY: " substr($0, 1, 2000); want = 0; next }
        { want = 0 }' >>"$FUZZ_OUT/crashes.txt"
    n=$(grep -c '^CRASH: ' "$FUZZ_OUT/crashes.txt" || true)
    # internal errors of sqlsmith queries (their statements are not logged: see the message)
    tail -c +"$((offset + 1))" "$log" | grep -E '\] XX000 ' | sed -E 's/^[^]]*\] //' | sort | uniq -c | sort -rn \
        >"$FUZZ_OUT/server_xx000.txt"
    echo "$n"
}
