// The writers a refresh run waits for: the transactions that may commit rows of the media table
// scored with constants older than the run's (see writers.cpp for why these and no others).
//
// C-style: these may raise with ereport (they never throw). Call them from frames that hold no C++
// object with a non-trivial destructor, or through pg::pg_call.
#pragma once

#include "../pg/pg_includes.hpp"

extern "C" {
#include "storage/lock.h"
}

namespace popularity::worker {

// The transactions of this database, other than the caller's and VACUUM's, that hold a lock on
// table `relid` that only a writer takes (ROW EXCLUSIVE or stronger, SHARE UPDATE EXCLUSIVE and
// SHARE excepted) or have a transaction id. A palloc'd array; *count gets its length.
VirtualTransactionId *table_writers(Oid relid, int *count);

// A virtual transaction id as text ("backend/local", as pg_locks.virtualxid shows it) and back.
char *vxid_text(const VirtualTransactionId &vxid);
bool parse_vxid(const char *text, VirtualTransactionId *vxid);

// The process running that transaction now, or 0 (ended, or a prepared transaction).
int vxid_pid(const VirtualTransactionId &vxid);

} // namespace popularity::worker
