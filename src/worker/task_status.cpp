// What a refresh task waits for, and retrying its batches after transient errors (task_status.hpp).
#include "task_status.hpp"

#include "../pg/owner_context.hpp"
#include "../pg/settings.hpp"
#include "engine.hpp"
#include "writers.hpp"

extern "C" {
#include "access/htup_details.h"
#include "storage/itemptr.h"
#include "access/multixact.h"
#include "access/subtrans.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "storage/bufmgr.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "storage/procarray.h"
#include "utils/array.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"
}

namespace popularity::worker {

namespace {

// The pause before the n-th retry of a batch: 0.1 s, doubled each time, at most 30 s.
constexpr long kFirstPauseMs = 100;
constexpr long kLongestPauseMs = 30000;
// Skipped rows whose holders are looked up, at most (per step that waits for them).
constexpr int kRowsLookedUp = 100;
constexpr int kMaxPids = 32;

constexpr const char *kWaitingForWriters = "writers";
constexpr const char *kWaitingForRows = "rows held by other transactions";
constexpr const char *kWaitingForDdl = "partition DDL on the media table";
constexpr const char *kWaitingToRetry = "retry";

// A small sorted set of process ids.
struct Pids {
    int items[kMaxPids];
    int count;

    void add(int pid) {
        if (pid == 0 || count == kMaxPids) {
            return;
        }
        int i = count;
        while (i > 0 && items[i - 1] > pid) {
            i--;
        }
        if (i > 0 && items[i - 1] == pid) {
            return;
        }
        for (int j = count; j > i; j--) {
            items[j] = items[j - 1];
        }
        items[i] = pid;
        count++;
    }

    bool operator==(const Pids &other) const {
        if (count != other.count) {
            return false;
        }
        for (int i = 0; i < count; i++) {
            if (items[i] != other.items[i]) {
                return false;
            }
        }
        return true;
    }

    // An int4[] datum, or 0 when empty (stored as NULL).
    Datum array() const {
        Datum *values = static_cast<Datum *>(palloc(sizeof(Datum) * Max(count, 1)));
        for (int i = 0; i < count; i++) {
            values[i] = Int32GetDatum(items[i]);
        }
        return PointerGetDatum(
            construct_array(values, count, INT4OID, sizeof(int32), true, TYPALIGN_INT));
    }
};

// What this worker last wrote in its task's row.
const char *noted_waiting_for = nullptr;
Pids noted_pids{};
// Failures in a row of the current batch. The task's row may count some (this worker's, or those
// of a worker before it that stopped while retrying): the next step that commits resets them.
int failures = 0;
bool failures_pending = true;
TimestampTz retry_at = 0;
TimestampTz statement_deadline = 0;


bool same_text(const char *a, const char *b) {
    return a == b || (a != nullptr && b != nullptr && strcmp(a, b) == 0);
}

// The process of a transaction (or subtransaction) in progress.
void add_transaction(TransactionId xid, Pids &pids) {
    if (!TransactionIdIsValid(xid) || !TransactionIdIsInProgress(xid)) {
        return;
    }
    pids.add(BackendXidGetPid(SubTransGetTopmostTransaction(xid)));
}

// The transactions that hold (have locked, updated or deleted) the row version at `tid`: its xmax,
// or the members of its multixact.
void add_row_holders(Relation rel, ItemPointerData tid, Pids &pids) {
    const Buffer buffer = ReadBuffer(rel, ItemPointerGetBlockNumber(&tid));
    LockBuffer(buffer, BUFFER_LOCK_SHARE);
    const Page page = BufferGetPage(buffer);
    const OffsetNumber offset = ItemPointerGetOffsetNumber(&tid);
    TransactionId xmax = InvalidTransactionId;
    uint16 infomask = 0;
    if (offset >= FirstOffsetNumber && offset <= PageGetMaxOffsetNumber(page)) {
        const ItemId item = PageGetItemId(page, offset);
        if (ItemIdIsNormal(item)) {
            const auto header = reinterpret_cast<HeapTupleHeader>(PageGetItem(page, item));
            xmax = HeapTupleHeaderGetRawXmax(header);
            infomask = header->t_infomask;
        }
    }
    UnlockReleaseBuffer(buffer);
    if (!TransactionIdIsValid(xmax) || (infomask & HEAP_XMAX_INVALID) != 0) {
        return;
    }
    if ((infomask & HEAP_XMAX_IS_MULTI) == 0) {
        add_transaction(xmax, pids);
        return;
    }
    if (HEAP_LOCKED_UPGRADED(infomask)) {
        return; // a lock from before pg_upgrade: nobody holds it
    }
    MultiXactMember *members = nullptr;
    const int count =
        GetMultiXactIdMembers(xmax, &members, false, HEAP_XMAX_IS_LOCKED_ONLY(infomask));
    for (int i = 0; i < count; i++) {
        add_transaction(members[i].xid, pids);
    }
}

// The processes holding (some of) the rows the task has left to revisit: found again by key with
// the step's snapshot, then the holders of the versions found.
void row_holder_pids(const TaskRef &task, Pids &pids) {
    const char *sql = psprintf(
        "SELECT t.ctid FROM %s AS t, (SELECT s.row_key AS key FROM popularity.refresh_skipped AS s"
        " WHERE s.task_id OPERATOR(pg_catalog.=) $1 LIMIT %d) AS k WHERE %s",
        task.leaf_table, kRowsLookedUp, task.key_match);
    Oid types[1] = {INT8OID};
    Datum values[1] = {Int64GetDatum(task.task_id)};
    const int rc = SPI_execute_with_args(sql, 1, types, values, nullptr, true, 0);
    if (rc != SPI_OK_SELECT || SPI_processed == 0) {
        return;
    }
    const uint64 count = SPI_processed;
    auto *tids = static_cast<ItemPointerData *>(palloc(sizeof(ItemPointerData) * count));
    for (uint64 i = 0; i < count; i++) {
        bool isnull = false;
        tids[i] = *reinterpret_cast<ItemPointer>(DatumGetPointer(
            SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull)));
    }
    Relation rel = table_open(task.leaf, AccessShareLock);
    for (uint64 i = 0; i < count && pids.count < kMaxPids; i++) {
        add_row_holders(rel, tids[i], pids);
    }
    table_close(rel, NoLock);
}

// The processes holding a lock on the table that a batch's ROW EXCLUSIVE lock waits for.
void lock_holder_pids(Oid relid, Pids &pids) {
    LOCKTAG tag;
    SET_LOCKTAG_RELATION(tag, MyDatabaseId, relid);
    int count = 0;
    VirtualTransactionId *holders = GetLockConflicts(&tag, RowExclusiveLock, &count);
    for (int i = 0; i < count; i++) {
        pids.add(vxid_pid(holders[i]));
    }
}

// The text recorded for an error: its message, and its detail when it has one.
char *error_text(const ErrorData *error) {
    const char *message = error->message != nullptr ? error->message : "unknown error";
    if (error->detail != nullptr && error->detail[0] != '\0') {
        return psprintf("%s: %s", message, error->detail);
    }
    return pstrdup(message);
}

long pause_ms(int failures) {
    long ms = kFirstPauseMs;
    for (int i = 1; i < failures && ms < kLongestPauseMs; i++) {
        ms *= 2;
    }
    return Min(ms, kLongestPauseMs);
}

} // namespace

void arm_batch_timeout() {
    statement_deadline = 0;
    if (pg::batch_statement_timeout > 0) {
        enable_timeout_after(STATEMENT_TIMEOUT, pg::batch_statement_timeout);
        statement_deadline = get_timeout_finish_time(STATEMENT_TIMEOUT);
    }
}

void disarm_batch_timeout() {
    disable_timeout(STATEMENT_TIMEOUT, false);
    statement_deadline = 0;
}

bool transient_error(const ErrorData *error) {
    switch (error->sqlerrcode) {
    case ERRCODE_LOCK_NOT_AVAILABLE:
    case ERRCODE_T_R_SERIALIZATION_FAILURE:
    case ERRCODE_T_R_DEADLOCK_DETECTED:
        return true;
    case ERRCODE_QUERY_CANCELED:
        // The statement timeout and a cancel request raise the same SQLSTATE (the timeout sends
        // the process SIGINT); the batch's deadline tells them apart.
        return statement_deadline != 0 && GetCurrentTimestamp() >= statement_deadline;
    default:
        return false;
    }
}

bool has_task_status_columns() {
    const Oid schema = get_namespace_oid("popularity", true);
    const Oid relid =
        schema == InvalidOid ? InvalidOid : get_relname_relid("refresh_tasks", schema);
    return relid != InvalidOid && get_attnum(relid, "waiting_for") != InvalidAttrNumber;
}

bool note_step(const TaskRef &task, Wait wait) {
    failures = 0;
    if (!has_task_status_columns()) {
        return false; // a 0.1.0 schema: the worker waits itself, as 0.1.0's did
    }
    const char *waiting_for = wait == Wait::writers ? kWaitingForWriters
                              : wait == Wait::rows  ? kWaitingForRows
                              : wait == Wait::ddl   ? kWaitingForDdl
                                                    : nullptr;
    // The writers' processes are looked up by refresh_status itself (they end one by one).
    Pids pids{};
    if (wait == Wait::rows) {
        row_holder_pids(task, pids);
    }
    if (failures_pending || !same_text(waiting_for, noted_waiting_for) || !(pids == noted_pids)) {
        Oid types[3] = {INT8OID, TEXTOID, INT4ARRAYOID};
        Datum values[3] = {Int64GetDatum(task.task_id),
                           waiting_for != nullptr ? CStringGetTextDatum(waiting_for) : Datum(0),
                           pids.count > 0 ? pids.array() : Datum(0)};
        const char nulls[3] = {' ', waiting_for != nullptr ? ' ' : 'n', pids.count > 0 ? ' ' : 'n'};
        const int rc = SPI_execute_with_args(
            "UPDATE popularity.refresh_tasks SET failures = 0, waiting_for = $2,"
            " waiting_pids = $3,"
            " waiting_since = CASE WHEN $2 IS NULL THEN NULL"
            "                      WHEN waiting_for IS NOT DISTINCT FROM $2 THEN waiting_since"
            "                      ELSE pg_catalog.clock_timestamp() END"
            " WHERE task_id = $1",
            3, types, values, nulls, false, 0);
        if (rc != SPI_OK_UPDATE) {
            elog(ERROR, "popularity refresh: recording what the task waits for failed: %s",
                 SPI_result_code_string(rc));
        }
        noted_waiting_for = waiting_for;
        noted_pids = pids;
        failures_pending = false;
    }
    if (wait == Wait::writers) {
        return true; // the scheduler starts a worker again once the writers have ended
    }
    if (wait == Wait::rows) {
        // Tasks no worker has started yet get this worker's slot first.
        const int rc = SPI_execute("SELECT FROM popularity.refresh_tasks AS t"
                                   " JOIN popularity.refresh_runs AS r USING (run_id)"
                                   " WHERE r.state = 'running' AND t.state = 'pending' LIMIT 1",
                                   true, 1);
        return rc == SPI_OK_SELECT && SPI_processed > 0;
    }
    return false;
}

bool record_failure(const TaskRef &task, const ErrorData *error, bool transient) {
    const int retries_allowed = pg::batch_retries;
    failures++;
    const bool retry = transient && failures <= retries_allowed;
    begin_transaction("popularity refresh: recording a failure");
    const pg::SavedUser saved = pg::become_extension_owner();
    char *text = error_text(error);
    char *task_error = text;
    if (transient && !retry) {
        task_error = psprintf("%s (the same batch failed %d times in a row; "
                              "popularity.batch_retries is %d)",
                              text, failures, retries_allowed);
    }
    Pids pids{};
    if (retry && error->sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE && task.relid != InvalidOid) {
        lock_holder_pids(task.relid, pids);
        if (task.leaf != task.relid && task.leaf != InvalidOid) {
            lock_holder_pids(task.leaf, pids);
        }
    }
    Oid types[6] = {INT8OID, TEXTOID, TEXTOID, BOOLOID, INT4OID, INT4ARRAYOID};
    Datum values[6] = {Int64GetDatum(task.task_id),     CStringGetTextDatum(text),
                       CStringGetTextDatum(task_error), BoolGetDatum(retry),
                       Int32GetDatum(failures),         pids.count > 0 ? pids.array() : Datum(0)};
    const char nulls[6] = {' ', ' ', ' ', ' ', ' ', pids.count > 0 ? ' ' : 'n'};
    // $2 the error, $3 the task's error if it fails, $4 whether it retries.
    const char *sql = has_task_status_columns()
                          ? "UPDATE popularity.refresh_tasks SET"
                            "   failures = $5, retries = retries + CASE WHEN $4 THEN 1 ELSE 0 END,"
                            "   last_error = $2, last_error_at = pg_catalog.clock_timestamp(),"
                            "   state = CASE WHEN $4 THEN state ELSE 'failed' END,"
                            "   error = CASE WHEN $4 THEN error ELSE $3 END,"
                            "   finished_at = CASE WHEN $4 THEN finished_at ELSE "
                            "pg_catalog.clock_timestamp() END,"
                            "   waiting_for = CASE WHEN $4 THEN 'retry' END,"
                            "   waiting_since = CASE WHEN NOT $4 THEN NULL"
                            "                        WHEN waiting_for = 'retry' THEN waiting_since"
                            "                        ELSE pg_catalog.clock_timestamp() END,"
                            "   waiting_pids = CASE WHEN $4 THEN $6 END"
                            " WHERE task_id = $1"
                          // A 0.1.0 schema: the failure only.
                          : "UPDATE popularity.refresh_tasks SET state = 'failed', error = $3,"
                            "   finished_at = pg_catalog.clock_timestamp()"
                            " WHERE task_id = $1 AND NOT $4";
    const int rc = SPI_execute_with_args(sql, 6, types, values, nulls, false, 0);
    if (rc != SPI_OK_UPDATE) {
        elog(ERROR, "popularity refresh: recording a failure failed: %s",
             SPI_result_code_string(rc));
    }
    pg::restore_user(saved);
    commit_transaction();
    if (retry) {
        const long ms = pause_ms(failures);
        ereport(LOG, (errmsg("popularity refresh task %lld retries its batch in %ld ms (failure "
                             "%d in a row; popularity.batch_retries is %d): %s",
                             static_cast<long long>(task.task_id), ms, failures, retries_allowed,
                             error->message)));
        retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);
        noted_waiting_for = kWaitingToRetry;
        noted_pids = pids;
        failures_pending = true;
    } else {
        ereport(LOG, (errmsg("popularity refresh task %lld failed: %s",
                             static_cast<long long>(task.task_id), task_error)));
    }
    return retry;
}

bool retry_pending() {
    return retry_at != 0;
}

bool pause_for_retry(const TaskRef &task) {
    const TimestampTz now = GetCurrentTimestamp();
    if (now >= retry_at) {
        retry_at = 0;
        return true;
    }
    const long ms = Min(TimestampDifferenceMilliseconds(now, retry_at), 1000L);
    (void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, ms,
                    PG_WAIT_EXTENSION);
    ResetLatch(MyLatch);
    // A run cancelled (or failed by another task) meanwhile stops the worker now, not after the
    // pause.
    begin_transaction("popularity refresh: waiting to retry a batch");
    const pg::SavedUser saved = pg::become_extension_owner();
    // By the task: a start-up that failed may not have read its run yet.
    Oid types[1] = {INT8OID};
    Datum values[1] = {Int64GetDatum(task.task_id)};
    const int rc = SPI_execute_with_args(
        "SELECT r.state = 'running' FROM popularity.refresh_tasks AS t"
        " JOIN popularity.refresh_runs AS r USING (run_id) WHERE t.task_id = $1",
        1, types, values, nullptr, true, 1);
    bool running = false;
    if (rc == SPI_OK_SELECT && SPI_processed == 1) {
        bool isnull = false;
        running =
            DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
    }
    pg::restore_user(saved);
    commit_transaction();
    return running;
}

} // namespace popularity::worker
