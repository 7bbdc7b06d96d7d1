// SQL-callable helpers of the refresh.
#include "../core/float_compare.hpp"

#include "../pg/guard.hpp"
#include "../pg/shared_state.hpp"
#include "writers.hpp"

extern "C" {
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "storage/sinvaladt.h"
#include "utils/array.h"
}

using namespace popularity;

// popularity._wake_scheduler(): wake (or start) this database's scheduler at commit.
POPULARITY_FUNCTION(popularity_wake_scheduler) {
    pg::require_shared_state("The popularity refresh");
    pg::wake_scheduler_at_commit();
    PG_RETURN_VOID();
}

// popularity._in_transaction_block(): whether the current transaction is an explicit block
// (BEGIN ... or a procedure called inside one), where a procedure that commits cannot run. Unlike
// comparing transaction and statement timestamps, a CALL from a DO block after another procedure
// committed (a new transaction, the same statement) is not mistaken for one.
POPULARITY_FUNCTION(popularity_in_transaction_block) {
    PG_RETURN_BOOL(IsTransactionBlock());
}

// popularity._require_preload(): raises 55000 with a hint unless the library was preloaded, for
// the procedures that need the background workers (refresh_popularity), before they do anything.
POPULARITY_FUNCTION(popularity_require_preload) {
    pg::require_shared_state("The popularity refresh");
    PG_RETURN_VOID();
}

// popularity._score_differs(old, new, tolerance): must a stored score be rewritten? (NULL
// tolerance = 0). The same answer as the ingestion trigger and the refresh's scan.
POPULARITY_FUNCTION(popularity_score_differs) {
    const bool old_null = PG_ARGISNULL(0);
    const bool new_null = PG_ARGISNULL(1);
    PG_RETURN_BOOL(core::score_differs(old_null, old_null ? 0.0 : PG_GETARG_FLOAT8(0), new_null,
                                       new_null ? 0.0 : PG_GETARG_FLOAT8(1),
                                       PG_ARGISNULL(2) ? 0.0 : PG_GETARG_FLOAT8(2)));
}

// popularity._writers_in_progress(): the transactions of this database, other than the caller's,
// that have written (an xid) or are running a statement (a snapshot). VACUUM is left out. As text
// "backend/local-xid" (virtual transaction ids), for popularity._writers_ended(). 0.1.0's
// refresh_popularity records these; 0.2.0's records popularity._table_writers(table), which leaves
// out read-only snapshots (a run waited for every REPEATABLE READ reader to end).
POPULARITY_FUNCTION(popularity_writers_in_progress) {
    int count = 0;
    VirtualTransactionId *vxids = pg::pg_call([&] {
        return GetCurrentVirtualXIDs(InvalidTransactionId, false, false, PROC_IN_VACUUM, &count);
    });
    Datum *items = static_cast<Datum *>(palloc(sizeof(Datum) * Max(count, 1)));
    int kept = 0;
    for (int i = 0; i < count; i++) {
        const VirtualTransactionId &vxid = vxids[i];
        const PGPROC *proc = BackendIdGetProc(vxid.backendId);
        // Read without a lock: a backend with neither an xid nor a snapshot now has written nothing
        // and runs no statement, so any statement it runs later reads the current constants.
        if (proc != nullptr && !TransactionIdIsValid(proc->xid) &&
            !TransactionIdIsValid(proc->xmin)) {
            continue;
        }
        items[kept++] = CStringGetTextDatum(worker::vxid_text(vxid));
    }
    PG_RETURN_ARRAYTYPE_P(construct_array(items, kept, TEXTOID, -1, false, TYPALIGN_INT));
}

// popularity._table_writers(media_table): the transactions of this database, other than the
// caller's, that may commit rows of the table scored with constants older than the caller's: those
// holding a write lock on it (ROW EXCLUSIVE or stronger) or a transaction id, never read-only
// snapshots (see writers.cpp). As text "backend/local-xid", for popularity._writers_ended().
POPULARITY_FUNCTION(popularity_table_writers) {
    const Oid relid = PG_GETARG_OID(0);
    int count = 0;
    VirtualTransactionId *vxids = pg::pg_call([&] { return worker::table_writers(relid, &count); });
    Datum *items = static_cast<Datum *>(palloc(sizeof(Datum) * Max(count, 1)));
    for (int i = 0; i < count; i++) {
        items[i] = CStringGetTextDatum(worker::vxid_text(vxids[i]));
    }
    PG_RETURN_ARRAYTYPE_P(construct_array(items, count, TEXTOID, -1, false, TYPALIGN_INT));
}

// popularity._writers_ended(vxids): have all these transactions ended? Never waits.
POPULARITY_FUNCTION(popularity_writers_ended) {
    ArrayType *array = PG_GETARG_ARRAYTYPE_P(0);
    Datum *items = nullptr;
    bool *nulls = nullptr;
    int count = 0;
    deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT, &items, &nulls, &count);
    for (int i = 0; i < count; i++) {
        if (nulls[i]) {
            continue;
        }
        const char *item = TextDatumGetCString(items[i]);
        VirtualTransactionId vxid;
        if (!worker::parse_vxid(item, &vxid)) {
            throw pg::SqlError(ERRCODE_INVALID_PARAMETER_VALUE,
                               pg::strprintf("invalid virtual transaction id \"%s\"", item), "",
                               "Expected backend/local-xid, as _table_writers() gives.");
        }
        if (!pg::pg_call([&] { return VirtualXactLock(vxid, false); })) {
            PG_RETURN_BOOL(false);
        }
    }
    PG_RETURN_BOOL(true);
}
