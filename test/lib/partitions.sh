# shellcheck shell=bash
# A partitioned catalog for tests and benchmarks (issue 14): the Openverse-shaped `image` table of
# test/lib/ingest.sh, partitioned by RANGE on created_on with primary key (identifier, created_on),
# one partition a month made by pg_partman (Debian's postgresql-15-partman, 4.7: native
# partitioning through partman.create_parent, a default partition, `premake` partitions ahead of
# the current month, partman.run_maintenance to make the next ones). Source it after
# test/lib/cluster.sh and test/lib/ingest.sh, then:
#   partman_ensure                     makes pg_partman installable in $PG_CONFIG's tree (copies the
#                                      Debian package's files there when that tree is not /usr)
#   partitions_catalog DB ROWS         ingest_catalog's database DB (same generator, same rows, same
#                                      registration), the table partitioned by pg_partman: monthly
#                                      partitions over the INGEST_MONTHS catalog months (default 13)
#                                      and PARTITIONS_PREMAKE (default 2) ahead, the default partition
#                                      holding the rows from 2001 (INGEST_OLD_ROWS); sets the pgbench
#                                      scripts' layout (ingest_scripts after it writes upserts on
#                                      (identifier, created_on))
#   partitions_plain_copy DB SRC DST   the same rows in an ordinary table DST (ingest_catalog's plain
#                                      layout: primary key identifier, same indexes, and the column
#                                      standardized_popularity), in the order of a scan of SRC (its
#                                      partitions one after the other), vacuumed and analyzed
#   partitions_leaves DB [TABLE]       the leaf partitions of TABLE (default image), one a line
#
# The table's unique indexes include the partition key, as PostgreSQL requires on a partitioned
# table: (provider, md5(foreign_identifier), created_on) and (url, created_on).

PARTITIONS_PREMAKE=${PARTITIONS_PREMAKE:-2}

partman_ensure() {
    local share lib
    share=$("$PG_CONFIG" --sharedir)/extension
    lib=$("$PG_CONFIG" --pkglibdir)
    [ -e "$share/pg_partman.control" ] && return 0
    if [ ! -e /usr/share/postgresql/15/extension/pg_partman.control ]; then
        echo "pg_partman is not installed (test/install-deps installs postgresql-15-partman)" >&2
        return 1
    fi
    # An install tree other than Debian's (e.g. a copy of it under another prefix): the package's
    # extension files, as `make install` puts ours there.
    echo "installing pg_partman from /usr/share/postgresql/15 into $share" >&2
    cp /usr/share/postgresql/15/extension/pg_partman* "$share/" &&
        cp /usr/lib/postgresql/15/lib/pg_partman_bgw.so "$lib/"
}

# The partitioned table's DDL, made from the plain layout's (same columns, defaults and indexes):
# the primary key and the unique indexes take created_on, the table is partitioned by range on it.
_partitions_table_sql() {
    local sql=$INGEST_PLAIN_TABLE_SQL
    sql=${sql/identifier uuid PRIMARY KEY DEFAULT/identifier uuid NOT NULL DEFAULT}
    sql=${sql/$'\n) WITH (fillfactor = 100);'/$',\n    PRIMARY KEY (identifier, created_on)\n) PARTITION BY RANGE (created_on);'}
    sql=${sql/ON image (provider, md5(foreign_identifier));/ON image (provider, md5(foreign_identifier), created_on);}
    sql=${sql/ON image (url);/ON image (url, created_on);}
    # Every substitution must have happened (the plain DDL may change under us).
    if [[ "$sql" != *"PARTITION BY RANGE (created_on)"* || "$sql" == *"PRIMARY KEY DEFAULT"* ||
        "$sql" != *"md5(foreign_identifier), created_on)"* || "$sql" != *"(url, created_on)"* ]]; then
        echo "partitions.sh: the plain table's DDL changed; update _partitions_table_sql" >&2
        return 1
    fi
    cat <<SQL
CREATE SCHEMA partman;
CREATE EXTENSION pg_partman SCHEMA partman;
$sql
-- pg_partman: one partition a month from the oldest catalog month to PARTITIONS_PREMAKE months
-- ahead, and the default partition; infinite_time_partitions: run_maintenance keeps premake
-- partitions ahead of now, whatever the data.
SELECT partman.create_parent('public.image', 'created_on', 'native', 'monthly',
                             p_premake => $PARTITIONS_PREMAKE,
                             p_start_partition => (date_trunc('month', now()) - interval '$((INGEST_MONTHS - 1)) months')::text);
UPDATE partman.part_config SET infinite_time_partitions = true WHERE parent_table = 'public.image';
SQL
}

partitions_catalog() { # db rows
    local table_sql
    partman_ensure || return 1
    table_sql=$(_partitions_table_sql) || return 1
    # shellcheck disable=SC2034 # read by ingest_scripts (test/lib/ingest.sh)
    INGEST_LAYOUT=partitioned
    INGEST_TABLE_SQL=$table_sql ingest_catalog "$1" "$2" || return 1
    psql -X -q -v ON_ERROR_STOP=1 -d "$1" -c "UPDATE ingest_months SET hi = $PARTITIONS_PREMAKE" || return 1
}

partitions_leaves() { # db [table]
    psql -X -At -v ON_ERROR_STOP=1 -d "$1" \
        -c "SELECT relid::regclass FROM pg_partition_tree('${2:-image}') WHERE isleaf ORDER BY relid::regclass::text"
}

partitions_plain_copy() { # db src dst
    local db=$1 src=$2 dst=$3 sql=$INGEST_PLAIN_TABLE_SQL
    sql=${sql//CREATE TABLE image (/CREATE TABLE $dst (}
    sql=${sql//ON image (/ON $dst (}
    sql=${sql//INDEX image_/INDEX ${dst}_}
    psql -X -q -v ON_ERROR_STOP=1 -d "$db" <<SQL || return 1
$sql
ALTER TABLE $dst ADD COLUMN standardized_popularity double precision;
INSERT INTO $dst SELECT * FROM $src;
VACUUM (ANALYZE) $dst;
SQL
}
