// Citus shards: a distributed table's triggers fire on its shards, and each worker node's jobs walk
// its own shards (sql/install/65_citus.sql). PostgreSQL-side only.
#pragma once

#include "pg_includes.hpp"

extern "C" {
#include "nodes/pg_list.h"
}

namespace popularity::pg {

// The Citus distributed table of which `relid` is a shard, or InvalidOid (not a shard, or Citus is
// not installed in this database). A shard is the relation named <table>_<shard id> in the
// table's schema whose shard id Citus's metadata (pg_dist_shard) lists for that table. Plain C:
// may raise; connects to SPI itself.
Oid citus_shard_parent(Oid relid);

// The shards of the Citus distributed table `relid` (and of its partitions, when partitioned)
// placed on this node, appended to `list`
// (allocated in the caller's memory context); `list` unchanged when relid is not distributed or
// Citus is not installed. Plain C: may raise; connects to SPI itself.
List *citus_local_shards(Oid relid, List *list);

} // namespace popularity::pg
