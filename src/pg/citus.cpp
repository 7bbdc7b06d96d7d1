// Citus shards (see citus.hpp).
#include "citus.hpp"

extern "C" {
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "utils/lsyscache.h"
}

#include <cstdlib>
#include <cstring>

namespace popularity::pg {

Oid citus_shard_parent(Oid relid) {
    if (!OidIsValid(get_extension_oid("citus", true))) {
        return InvalidOid;
    }
    const char *name = get_rel_name(relid);
    if (name == nullptr) {
        return InvalidOid;
    }
    // <table>_<shard id>: the digits after the last '_' (a shard id fits in 18 of them).
    const std::size_t len = std::strlen(name);
    std::size_t digits = len;
    while (digits > 0 && name[digits - 1] >= '0' && name[digits - 1] <= '9') {
        --digits;
    }
    if (digits == len || digits < 2 || name[digits - 1] != '_' || len - digits > 18) {
        return InvalidOid;
    }
    char *base = pnstrdup(name, digits - 1);
    const Oid table = get_relname_relid(base, get_rel_namespace(relid));
    pfree(base);
    if (!OidIsValid(table)) {
        return InvalidOid;
    }
    if (SPI_connect() != SPI_OK_CONNECT) {
        elog(ERROR, "SPI_connect failed");
    }
    // The name only proposes: the shard must be placed on this node, and its name (as Citus makes
    // it) must be this very relation; a table named like a shard is not one.
    Oid types[3] = {OIDOID, INT8OID, OIDOID};
    Datum values[3] = {ObjectIdGetDatum(table),
                       Int64GetDatum(std::strtoll(name + digits, nullptr, 10)),
                       ObjectIdGetDatum(relid)};
    const int rc = SPI_execute_with_args(
        "SELECT FROM pg_catalog.pg_dist_shard AS s"
        " JOIN pg_catalog.pg_dist_placement AS p ON p.shardid OPERATOR(pg_catalog.=) s.shardid"
        " WHERE s.logicalrelid::pg_catalog.oid OPERATOR(pg_catalog.=) $1"
        "   AND s.shardid OPERATOR(pg_catalog.=) $2"
        "   AND p.groupid OPERATOR(pg_catalog.=)"
        "       (SELECT g.groupid FROM pg_catalog.pg_dist_local_group AS g)"
        "   AND pg_catalog.to_regclass(pg_catalog.shard_name(s.logicalrelid, s.shardid, false))"
        "       ::pg_catalog.oid OPERATOR(pg_catalog.=) $3",
        3, types, values, nullptr, true, 1);
    if (rc != SPI_OK_SELECT) {
        elog(ERROR, "reading pg_dist_shard failed: %s", SPI_result_code_string(rc));
    }
    const bool shard = SPI_processed == 1;
    SPI_finish();
    return shard ? table : InvalidOid;
}

List *citus_local_shards(Oid relid, List *list) {
    if (!OidIsValid(get_extension_oid("citus", true))) {
        return list;
    }
    MemoryContext caller = CurrentMemoryContext;
    if (SPI_connect() != SPI_OK_CONNECT) {
        elog(ERROR, "SPI_connect failed");
    }
    Oid types[1] = {OIDOID};
    Datum values[1] = {ObjectIdGetDatum(relid)};
    const int rc = SPI_execute_with_args(
        "SELECT pg_catalog.to_regclass(pg_catalog.shard_name(s.logicalrelid, s.shardid, false))"
        "           ::pg_catalog.oid"
        " FROM pg_catalog.pg_dist_shard AS s"
        " JOIN pg_catalog.pg_dist_placement AS p ON p.shardid OPERATOR(pg_catalog.=) s.shardid"
        " JOIN pg_catalog.pg_dist_partition AS d ON d.logicalrelid OPERATOR(pg_catalog.=) "
        "s.logicalrelid"
        " WHERE s.logicalrelid::pg_catalog.oid OPERATOR(pg_catalog.=) ANY (ARRAY("
        "     SELECT t.relid::pg_catalog.oid FROM pg_catalog.pg_partition_tree($1) AS t)"
        "     OPERATOR(pg_catalog.||) $1)"
        "   AND d.partmethod OPERATOR(pg_catalog.=) 'h'"
        "   AND p.groupid OPERATOR(pg_catalog.=)"
        "       (SELECT g.groupid FROM pg_catalog.pg_dist_local_group AS g)",
        1, types, values, nullptr, true, 0);
    if (rc != SPI_OK_SELECT) {
        elog(ERROR, "reading Citus's shard placements failed: %s", SPI_result_code_string(rc));
    }
    for (uint64 i = 0; i < SPI_processed; i++) {
        bool isnull = false;
        const Datum shard = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull);
        if (!isnull) {
            MemoryContext spi = MemoryContextSwitchTo(caller);
            list = lappend_oid(list, DatumGetObjectId(shard));
            MemoryContextSwitchTo(spi);
        }
    }
    SPI_finish();
    return list;
}

} // namespace popularity::pg
