# shellcheck shell=bash
# Continuous ingestion for tests and benchmarks: an Openverse-shaped `image` catalog, and pgbench
# clients upserting into it in the background. Source it after test/lib/cluster.sh (it uses PG_BIN
# and a running cluster), then:
#   ingest_catalog DB ROWS            creates database DB: the extension, `image` registered with the
#                                     Openverse metrics, ROWS rows scored under the current constants,
#                                     about 90% of them with tags the default rules drop; then frees
#                                     space at the start of the table (sets INGEST_CATALOG_ROWS)
#   ingest_scripts DIR                writes the pgbench scripts into DIR (sets INGEST_DIR)
#   ingest_start ID DB EXISTING NEW   pgbench in the background (INGEST_CLIENTS clients, default 3)
#   ingest_stop                       stops it at the end of its current 2 s slice
#   ingest_latency ID TITLE [FROM TO] p50, p99 and max of the upserts of ID within [FROM, TO]
#   ingest_latency_values ID [FROM TO] the same as numbers: count p50 p99 max (ms)
#   ingest_failed_slices ID           number of pgbench slices of ID that did not exit 0
#
# INGEST_LAYOUT (default plain) picks the table's shape: plain is the table above (primary key
# identifier); partitioned is left to test/lib/partitions.sh, which sets INGEST_TABLE_SQL (the
# table's DDL, run before registration) and INGEST_LAYOUT=partitioned (the upserts then name
# created_on, the partition key, in their rows and conflict targets).
#
# Every catalog row g has a created_on of its own, the same in every layout: created_of(g) is in one
# of the INGEST_MONTHS (default 13) months up to the catalog's creation month (month offset
# (g % INGEST_MONTHS) - (INGEST_MONTHS - 1)), and with INGEST_OLD_ROWS=true (default) about 1% of
# rows (g % 101 = 50) are from 2001 (in a partitioned table: its default partition). New rows
# (partitioned layout) take a month offset in [ingest_months.lo, ingest_months.hi] not in the array
# ingest_months.skip (new_created_on(v); skipped months must not be adjacent), and the existing-row
# upserts leave alone the catalog rows whose g % INGEST_MONTHS is one of INGEST_SKIP_RESIDUES (at
# most two, at least 3 apart: a skipped key moves by 2). INGEST_FREE_SPACE=false keeps the first quarter's
# even keys (no free space made).
#
# Every upsert logs, in its own statement (so its own transaction), the key and the values it
# stored in the table `ingest_log` (log_id, identifier, kind: existing or new, meta_data, tags,
# logged_at): a check can then tell that no ingested row was lost.
#
# The scripts (weights: 3 existing, 1 new):
#   existing_refresh.sql  an existing catalog row: new metric values, meta_data grows by 200-900
#                         bytes (its new version rarely fits in its page: it moves), and one time in
#                         three new tags (dirty ones);
#   existing_filter.sql   the same, meta_data only;
#   new_dirty.sql         a new key (a sequence), tags the rules mostly drop;
#   new_clean.sql         a new key, tags as the rules leave them (an ingester that filters).

INGEST_CLIENTS=${INGEST_CLIENTS:-3}
INGEST_PGBENCH=${INGEST_PGBENCH:-$PG_BIN/pgbench}

# The plain layout's table.
INGEST_PLAIN_TABLE_SQL=$(cat <<'SQL'
-- Openverse's image table (the columns that matter here), pages filled completely.
CREATE TABLE image (
    identifier uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_on timestamptz NOT NULL DEFAULT now(),
    updated_on timestamptz NOT NULL DEFAULT now(),
    ingestion_type varchar(80) DEFAULT 'provider_api',
    provider varchar(80) NOT NULL,
    source varchar(80),
    foreign_identifier text NOT NULL,
    foreign_landing_url text,
    url text NOT NULL,
    license varchar(50) NOT NULL DEFAULT 'by',
    title text,
    meta_data jsonb,
    tags jsonb,
    removed_from_source boolean NOT NULL DEFAULT false
) WITH (fillfactor = 100);
CREATE UNIQUE INDEX image_provider_fid_key ON image (provider, md5(foreign_identifier));
CREATE UNIQUE INDEX image_url_key ON image (url);
SQL
)
INGEST_LAYOUT=${INGEST_LAYOUT:-plain}
INGEST_MONTHS=${INGEST_MONTHS:-13}         # catalog months: created_of(g) spreads rows over them
INGEST_OLD_ROWS=${INGEST_OLD_ROWS:-true}   # about 1% of the catalog from 2001 (g % 101 = 50)
INGEST_FREE_SPACE=${INGEST_FREE_SPACE:-true} # delete the even keys of the first quarter (see above)

ingest_catalog() { # db rows
    local db=$1 rows=$2
    INGEST_ROWS=$rows
    INGEST_QUARTER=$((rows / 4))
    psql -X -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE $db" || return 1
    {
        echo 'CREATE EXTENSION popularity;'
        echo "${INGEST_TABLE_SQL:-$INGEST_PLAIN_TABLE_SQL}"
        cat <<'SQL'
-- Registered while empty (the counts are exact from the start), with the Openverse metrics
-- (flickr, wikimedia, rawpixel, nappy, stocksnap; smithsonian has none).
SELECT popularity.register_media_type('image', 'image');

-- Tags: a few the default rules keep, and tags they drop: low-accuracy machine tags (the accuracy
-- a JSON number, or a JSON string as Openverse stores many of them), denylisted names, the
-- filtered provider rekognition. About 83% of keys lose at least one tag.
CREATE FUNCTION make_tags(g bigint, record_provider text) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_array(
               jsonb_build_object('name', w[(1 + g % 40)::int]),
               jsonb_build_object('name', w[(1 + g * 7 % 40)::int], 'provider', record_provider),
               jsonb_build_object('name', w[(1 + g * 13 % 40)::int], 'provider', 'clarifai',
                                  'accuracy', (ARRAY[0.97, 0.5, 0.93])[(1 + g % 3)::int]),
               jsonb_build_object('name', w[(1 + g * 17 % 40)::int], 'provider', 'clarifai',
                                  'accuracy', (ARRAY['0.98224', '0.31', ' 9.5e-1 ', '0.8999'])[(1 + g % 4)::int]))
           || CASE g % 5 WHEN 0 THEN '[{"name": "cc0"}]' WHEN 1 THEN '[{"name": "Uploaded:By=Instagram"}]'
                         WHEN 2 THEN '[{"name": "No Person"}]' ELSE '[]' END::jsonb
           || CASE WHEN g % 7 = 0 THEN '[{"name": "Person", "provider": "rekognition", "accuracy": 0.99}]'
                   ELSE '[]' END::jsonb
    FROM (SELECT ARRAY['sunset', 'mountain', 'river', 'portrait', 'street', 'architecture', 'beach',
                       'forest', 'dog', 'cat', 'bird', 'flower', 'city', 'night', 'snow', 'travel',
                       'food', 'museum', 'painting', 'sculpture', 'bridge', 'car', 'train', 'boat',
                       'sky', 'cloud', 'tree', 'lake', 'garden', 'church', 'castle', 'market',
                       'Café', 'Zürich', 'São Paulo', 'straße', 'İstanbul', 'Москва', '東京', 'Kraków']
                  AS w) AS words $$;

-- The provider of key g (flickr 50%, wikimedia 20%, rawpixel 10%, nappy 5%, stocksnap 5%,
-- smithsonian 10%) and its metric in meta_data (stocksnap's as a numeric string).
CREATE FUNCTION provider_of(g bigint) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (ARRAY['flickr', 'flickr', 'flickr', 'flickr', 'flickr', 'wikimedia', 'wikimedia',
                  'rawpixel', 'nappy', 'stocksnap', 'smithsonian', 'flickr', 'flickr', 'flickr',
                  'flickr', 'flickr', 'wikimedia', 'wikimedia', 'rawpixel', 'smithsonian'])[(1 + g % 20)::int] $$;
CREATE FUNCTION metric_data(record_provider text, v bigint) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE record_provider
               WHEN 'flickr' THEN jsonb_build_object('views', v, 'license_url', 'https://creativecommons.org/licenses/by/2.0/')
               WHEN 'wikimedia' THEN jsonb_build_object('global_usage_count', v % 50)
               WHEN 'rawpixel' THEN jsonb_build_object('download_count', v)
               WHEN 'nappy' THEN jsonb_build_object('downloads', v)
               WHEN 'stocksnap' THEN jsonb_build_object('downloads_raw', v::text)
               ELSE jsonb_build_object('unit_code', 'NMNH') END $$;

-- Creation times: created_of(g) for catalog row g, new_created_on(v) for a new row (see the top
-- of test/lib/ingest.sh). The months count from the month the catalog was made in (a constant of
-- the functions, so that a run crossing a month's end keeps its keys).
CREATE TABLE ingest_months (lo integer NOT NULL, hi integer NOT NULL, skip integer[]);
INSERT INTO ingest_months VALUES (1 - :months, 2, NULL); -- the catalog's months and two ahead
SELECT format($f$
    CREATE FUNCTION created_of(g bigint) RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
        SELECT CASE WHEN %s AND g %% 101 = 50 THEN timestamptz '2001-01-01 00:00+00' + (g %% 365) * interval '1 day'
                    ELSE %L::timestamptz + ((g %% %s) - %s) * interval '1 month' END
               + (g * 7919 %% 2419200) * interval '1 second' $$$f$,
    :'old_rows', date_trunc('month', now()), :months, :months - 1) \gexec
SELECT format($f$
    CREATE FUNCTION month_start(m integer) RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
        SELECT %L::timestamptz + m * interval '1 month' $$$f$, date_trunc('month', now())) \gexec
CREATE FUNCTION new_created_on(v bigint) RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT month_start(CASE WHEN m = ANY (skip) THEN CASE WHEN m < hi THEN m + 1 ELSE m - 1 END ELSE m END)
           + (v * 7919 % 2419200) * interval '1 second'
    FROM (SELECT lo + (v % (hi - lo + 1))::int AS m, hi, skip FROM ingest_months) AS s $$;

CREATE TABLE ingest_log (
    log_id bigserial PRIMARY KEY,
    identifier uuid NOT NULL,
    kind text NOT NULL,
    meta_data jsonb,
    tags jsonb,
    logged_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE SEQUENCE new_key;

-- The constants come from a sample first, so that every catalog row is scored at ingestion with
-- them: the catalog starts with every score right.
CREATE TABLE catalog_src AS
SELECT md5('c' || g)::uuid AS identifier, created_of(g) AS created_on, provider_of(g) AS provider, 'c' || g AS foreign_identifier,
       'https://' || provider_of(g) || '.example.org/photos/' || g AS foreign_landing_url,
       'https://cdn.example.org/' || provider_of(g) || '/' || md5(g::text) || '.jpg' AS url,
       'Photograph number ' || g || ' of the collection' AS title,
       metric_data(provider_of(g), floor(exp(random() * 9))::bigint)
           || jsonb_build_object('description', repeat('d', 40 + (g % 60)::int)) AS meta_data,
       make_tags(g, provider_of(g)) AS tags
FROM generate_series(1, :rows) AS g;
INSERT INTO image (identifier, created_on, provider, foreign_identifier, foreign_landing_url, url, title, meta_data, tags)
SELECT * FROM catalog_src WHERE right(foreign_identifier, 1) = '7';
SELECT count(*) FROM popularity.refresh_constants('image');
DELETE FROM image;
VACUUM image;
INSERT INTO image (identifier, created_on, provider, foreign_identifier, foreign_landing_url, url, title, meta_data, tags)
SELECT * FROM catalog_src ORDER BY substr(foreign_identifier, 2)::bigint;
DROP TABLE catalog_src;
-- The rows of the first quarter of the table with an even key are deleted: VACUUM records their
-- space, and upserted rows that do not fit in their page move there, behind a job's walk.
DELETE FROM image WHERE :free_space AND substr(foreign_identifier, 2)::bigint <= :quarter AND substr(foreign_identifier, 2)::bigint % 2 = 0;
VACUUM (ANALYZE) image;
CHECKPOINT;
SQL
    } | psql -X -q -v ON_ERROR_STOP=1 -d "$db" -v rows="$rows" -v quarter="$INGEST_QUARTER" \
        -v months="$INGEST_MONTHS" -v old_rows="$INGEST_OLD_ROWS" -v free_space="$INGEST_FREE_SPACE" >/dev/null || return 1
    # shellcheck disable=SC2034 # for the caller
    INGEST_CATALOG_ROWS=$(psql -X -At -d "$db" -c "SELECT count(*) FROM image")
}

ingest_scripts() { # dir
    INGEST_DIR=$1
    # An existing key: a catalog row still there (the deleted ones are even keys of the first quarter).
    cat >"$INGEST_DIR/existing_refresh.sql" <<'SQL'
\set n random(1, :rows)
\set n case when :n <= :quarter and :n % 2 = 0 then :n - 1 else :n end
\set v random(0, 200000)
\set len random(200, 900)
\set t random(0, 2)
WITH up AS (
    INSERT INTO image AS old (identifier, provider, foreign_identifier, url, meta_data, tags)
    VALUES (md5('c' || :n)::uuid, provider_of(:n), 'c' || :n, 'https://cdn.example.org/x/' || :n, '{}', '[]')
    ON CONFLICT (identifier) DO UPDATE
        SET meta_data = old.meta_data || metric_data(old.provider, :v)
                        || jsonb_build_object('note', repeat('u', :len)),
            tags = CASE WHEN :t = 0 THEN make_tags(:v, old.provider) ELSE old.tags END,
            updated_on = now()
    RETURNING identifier, meta_data, tags)
INSERT INTO ingest_log (identifier, kind, meta_data, tags) SELECT identifier, 'existing', meta_data, tags FROM up;
SQL
    grep -v '^            tags = CASE' "$INGEST_DIR/existing_refresh.sql" >"$INGEST_DIR/existing_filter.sql"
    local tags
    for tags in dirty clean; do
        {
            echo '\set v random(0, 200000)'
            echo '\set p random(0, 19)'
            cat <<'SQL'
WITH k AS (SELECT nextval('new_key') AS n), up AS (
    INSERT INTO image AS old (identifier, provider, foreign_identifier, url, title, meta_data, tags)
    SELECT md5('n' || k.n)::uuid, provider_of(:p), 'n' || k.n, 'https://cdn.example.org/new/' || k.n,
           'New photograph ' || k.n, metric_data(provider_of(:p), :v),
SQL
            if [ "$tags" = dirty ]; then
                echo "           make_tags(:v, provider_of(:p))"
            else
                echo "           popularity.filtered_tags(make_tags(:v, provider_of(:p)), provider_of(:p), 'image')"
            fi
            cat <<'SQL'
    FROM k
    ON CONFLICT (identifier) DO UPDATE SET meta_data = old.meta_data || excluded.meta_data, updated_on = now()
    RETURNING identifier, meta_data, tags)
INSERT INTO ingest_log (identifier, kind, meta_data, tags) SELECT identifier, 'new', meta_data, tags FROM up;
SQL
        } >"$INGEST_DIR/new_$tags.sql"
    done
    [ "$INGEST_LAYOUT" = partitioned ] || return 0
    # Partitioned: the rows name their partition key, which the conflict target includes; catalog
    # rows of the months (g % :months = :skip or :skip2) that a test detaches or drops are never
    # upserted (after a detach the upsert would insert them anew, in the default partition; n +- 2
    # is of the same parity, so a key the first rule made odd, or one beyond the first quarter,
    # stays a catalog row), and new rows are created in the months of ingest_months.
    sed -i -e 's/^\\set n case when :n <= :quarter .*$/&\n\\set n case when :n % :months = :skip or :n % :months = :skip2 then (case when :n + 2 <= :rows then :n + 2 else :n - 2 end) else :n end/' \
        -e 's/INSERT INTO image AS old (identifier, provider,/INSERT INTO image AS old (identifier, created_on, provider,/' \
        -e "s/VALUES (md5('c' || :n)::uuid, /VALUES (md5('c' || :n)::uuid, created_of(:n), /" \
        -e "s/SELECT md5('n' || k.n)::uuid, /SELECT md5('n' || k.n)::uuid, new_created_on(:v), /" \
        -e 's/ON CONFLICT (identifier) DO UPDATE/ON CONFLICT (identifier, created_on) DO UPDATE/' \
        "$INGEST_DIR"/existing_refresh.sql "$INGEST_DIR"/existing_filter.sql "$INGEST_DIR"/new_dirty.sql "$INGEST_DIR"/new_clean.sql
}

# pgbench in slices of 2 s until ingest_stop (it has no other clean stop): per-transaction logs in
# $INGEST_DIR/lat.<id>.<slice>.<pid>, output in <id>.pgbench, one exit status a line in <id>.status.
ingest_start() { # id db existing.sql new.sql
    local id=$1 db=$2 existing=$3 new=$4 skip1 skip2
    read -r skip1 skip2 _ <<<"${INGEST_SKIP_RESIDUES:-} -1 -1"
    rm -f "$INGEST_DIR/stop"
    : >"$INGEST_DIR/$id.status"
    (
        i=0
        while [ ! -e "$INGEST_DIR/stop" ]; do
            i=$((i + 1))
            rc=0
            "$INGEST_PGBENCH" -n -c "$INGEST_CLIENTS" -j 1 -T 2 -l --log-prefix="$INGEST_DIR/lat.$id.$i" \
                -D rows="$INGEST_ROWS" -D quarter="$INGEST_QUARTER" -D skip="$skip1" -D skip2="$skip2" -D months="$INGEST_MONTHS" \
                -f "$INGEST_DIR/$existing@3" -f "$INGEST_DIR/$new@1" "$db" \
                >>"$INGEST_DIR/$id.pgbench" 2>&1 || rc=$?
            echo "$rc" >>"$INGEST_DIR/$id.status"
        done
    ) &
    INGEST_PID=$!
}

ingest_stop() {
    [ -n "${INGEST_PID:-}" ] || return 0
    touch "$INGEST_DIR/stop"
    wait "$INGEST_PID" || true
    INGEST_PID=
}

ingest_failed_slices() { # id
    grep -cv '^0$' "$INGEST_DIR/$1.status" || true
}

# Prints "N P50 P99 MAX" (ms; "0" when none) of the upserts of ingestion ID that started and ended
# within [FROM, TO] (epoch seconds; default: all). pgbench's log lines: client, transaction,
# latency (us), script, end time (s, us).
ingest_latency_values() { # id [from to]
    cat "$INGEST_DIR"/lat."$1".* | awk -v from="${2:-0}" -v to="${3:-1e12}" '{
        finish = $5 + $6 / 1e6; start = finish - $3 / 1e6
        if (start >= from && finish <= to) print $3 / 1000 }' | LC_ALL=C sort -n | awk '
        { v[NR] = $1 }
        END {
            if (NR == 0) { print 0; exit }
            printf "%d %.3f %.3f %.3f\n", NR, v[int((NR - 1) * 0.50) + 1], v[int((NR - 1) * 0.99) + 1], v[NR] }'
}

# Prints "TITLE: N upserts  p50 ... ms  p99 ... ms  max ... ms" (see ingest_latency_values).
ingest_latency() { # id title [from to]
    ingest_latency_values "$1" "${3:-0}" "${4:-1e12}" | awk -v title="$2" '{
        if ($1 == 0) printf "%-34s no upserts\n", title ":"
        else printf "%-34s %6d upserts  p50 %7.2f ms  p99 %8.2f ms  max %8.2f ms\n", title ":", $1, $2, $3, $4 }'
}
