// Which transactions a refresh run waits for before it may finish.
//
// A run's constants commit before it is queued. A row scored with the older constants may still
// become visible after the walk has passed its block: it is written by a transaction in progress
// when the run was queued (rows that committed earlier are visible to every batch). The ingestion
// trigger reads the constants' version for every row it scores (score_trigger.cpp,
// refresh_constants_cache), and the version is bumped in the commit callback of the transaction
// that changed them, before refresh_popularity queues the run. So a row scored with the old
// constants was scored by a trigger that read the version before the bump, fired by a statement
// that had taken its ROW EXCLUSIVE lock on the table before that (locks are taken when a statement
// is parsed and planned, before it runs) and holds it until its transaction ends. Such a
// transaction therefore holds a write lock on the table when the run is queued. A session that
// had not locked the table by then scores every row it writes later with the new constants,
// whatever its snapshot: a REPEATABLE READ reader (pg_dump), a session idle in a transaction or
// sleeping in a statement writes nothing stale, so the run never waits for it.
//
// Transactions with a transaction id are counted too (they have written something, perhaps through
// a path this reasoning does not see); VACUUM, ANALYZE and CREATE INDEX CONCURRENTLY (SHARE UPDATE
// EXCLUSIVE) and CREATE INDEX (SHARE) write no row of the table and are not.
#include "writers.hpp"

#include "../pg/citus.hpp"

extern "C" {
#include "catalog/pg_inherits.h"
#include "utils/syscache.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "storage/sinvaladt.h"
}

#include <cstdio>

namespace popularity::worker {

namespace {

constexpr LOCKMASK kWriteModes = LOCKBIT_ON(RowExclusiveLock) | LOCKBIT_ON(ShareRowExclusiveLock) |
                                 LOCKBIT_ON(ExclusiveLock) | LOCKBIT_ON(AccessExclusiveLock);

bool same(const VirtualTransactionId &a, const VirtualTransactionId &b) {
    return a.backendId == b.backendId && a.localTransactionId == b.localTransactionId;
}

} // namespace

VirtualTransactionId *table_writers(Oid relid, int *count) {
    // Holders of a write lock on the table or any of its partitions (an INSERT straight into a
    // partition does not lock the parent), or any of its Citus shards on this node (a write
    // through the coordinator locks the shard only), fast-path locks included.
    // (A table dropped since the run was queued has no partitions nor shards: its run fails in its
    // workers, with the reason; here it must not fail the scheduler, which starts every run.)
    List *tree = SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid))
                     ? pg::citus_local_shards(relid, find_all_inheritors(relid, NoLock, nullptr))
                     : list_make1_oid(relid);
    LockData *locks = GetLockStatusData();
    auto *holders = static_cast<VirtualTransactionId *>(
        palloc(sizeof(VirtualTransactionId) * Max(locks->nelements, 1)));
    int holder_count = 0;
    for (int i = 0; i < locks->nelements; i++) {
        const LockInstanceData &lock = locks->locks[i];
        if (lock.locktag.locktag_type == LOCKTAG_RELATION &&
            lock.locktag.locktag_lockmethodid == DEFAULT_LOCKMETHOD &&
            lock.locktag.locktag_field1 == MyDatabaseId &&
            list_member_oid(tree, lock.locktag.locktag_field2) &&
            (lock.holdMask & kWriteModes) != 0) {
            holders[holder_count].backendId = lock.backend;
            holders[holder_count].localTransactionId = lock.lxid;
            holder_count++;
        }
    }
    // Every transaction of this database but the caller's and VACUUM's (prepared ones included).
    int all_count = 0;
    VirtualTransactionId *all =
        GetCurrentVirtualXIDs(InvalidTransactionId, false, false, PROC_IN_VACUUM, &all_count);
    int kept = 0;
    for (int i = 0; i < all_count; i++) {
        const VirtualTransactionId &vxid = all[i];
        // Read without a lock: a transaction that ends meanwhile is no longer waited for anyway.
        const PGPROC *proc = BackendIdGetProc(vxid.backendId);
        bool writer = proc == nullptr; // a prepared transaction: it has a transaction id
        if (!writer && proc->lxid == vxid.localTransactionId && TransactionIdIsValid(proc->xid)) {
            writer = true;
        }
        for (int j = 0; !writer && j < holder_count; j++) {
            writer = same(holders[j], vxid);
        }
        if (writer) {
            all[kept++] = vxid;
        }
    }
    pfree(holders);
    list_free(tree);
    *count = kept;
    return all;
}

char *vxid_text(const VirtualTransactionId &vxid) {
    return psprintf("%d/%u", vxid.backendId, static_cast<unsigned>(vxid.localTransactionId));
}

bool parse_vxid(const char *text, VirtualTransactionId *vxid) {
    int backend = 0;
    unsigned local = 0;
    char extra = '\0';
    if (sscanf(text, "%d/%u%c", &backend, &local, &extra) != 2) {
        return false;
    }
    vxid->backendId = backend;
    vxid->localTransactionId = local;
    return true;
}

int vxid_pid(const VirtualTransactionId &vxid) {
    const PGPROC *proc = BackendIdGetProc(vxid.backendId);
    if (proc == nullptr || proc->lxid != vxid.localTransactionId) {
        return 0;
    }
    return proc->pid;
}

} // namespace popularity::worker
