// A job worker: runs one task (a block range of a media table) of a run, refresh or tag filter,
// in batches (the batch engine: engine.hpp). This file is the loop: it claims the task, runs one
// transaction per step (a main-pass batch, a revisit of skipped rows, or the end-of-walk check),
// and handles SIGTERM, SIGHUP, cancellation and postmaster death between steps. A step that fails
// with a transient error is retried after a pause; every error is recorded in the task
// (task_status.hpp).
#include "../pg/guard.hpp"
#include "../pg/owner_context.hpp"
#include "../pg/relation_access.hpp"
#include "../pg/score_trigger.hpp"
#include "../pg/settings.hpp"
#include "engine.hpp"
#include "refresh.hpp"
#include "task_status.hpp"

extern "C" {
#include "access/table.h"
#include "storage/lmgr.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/pmsignal.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"
}

#include <cmath>
#include <cstdlib>
#include <cstring>

using namespace popularity;
using namespace popularity::worker;

namespace {

volatile sig_atomic_t terminate_requested = false;

void handle_sigterm(SIGNAL_ARGS) {
    int saved_errno = errno;
    terminate_requested = true;
    SetLatch(MyLatch);
    errno = saved_errno;
}


char *copy_value(int column) {
    char *value = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, column);
    return value == nullptr ? nullptr : MemoryContextStrdup(TopMemoryContext, value);
}

int64 int64_value(int column) {
    bool isnull = false;
    Datum d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, column, &isnull);
    return isnull ? 0 : DatumGetInt64(d);
}

// Sets the per-batch settings for the current transaction only: timeouts, and asynchronous
// commit (a batch lost in a crash is simply redone: its progress marker commits with its rows).
void set_batch_settings() {
    set_config_option("synchronous_commit", "off", PGC_USERSET, PGC_S_SESSION, GUC_ACTION_LOCAL,
                      true, 0, false);
    char value[32];
    snprintf(value, sizeof value, "%d", pg::batch_statement_timeout);
    set_config_option("statement_timeout", value, PGC_USERSET, PGC_S_SESSION, GUC_ACTION_LOCAL,
                      true, 0, false);
    snprintf(value, sizeof value, "%d", pg::batch_lock_timeout);
    set_config_option("lock_timeout", value, PGC_USERSET, PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0,
                      false);
}

// The OID of task `t`'s leaf, read through to_jsonb (a 0.1.0 schema has no such column: NULL).
// to_jsonb writes a regclass as regclassout does: its name, or once the relation is dropped its
// OID in digits (a name made of digits only is written in double quotes): a name is looked up
// (the leaf exists), an OID is taken as it is.
#define LEAF_OID_SQL                                                                               \
    "CASE WHEN (to_jsonb(t) ->> 'leaf') ~ '^[0-9]+$'"                                              \
    " THEN (to_jsonb(t) ->> 'leaf')::pg_catalog.oid"                                               \
    " ELSE (to_jsonb(t) ->> 'leaf')::pg_catalog.regclass::pg_catalog.oid END"

// Reads the task and its run; false when there is nothing (more) to do.
bool load_task(Task &task) {
    Oid types[1] = {INT8OID};
    Datum values[1] = {Int64GetDatum(task.task_id)};
    run("SELECT r.run_id, r.media_type, r.media_table::text, r.providers, t.end_block,"
        "       t.next_block, r.state, t.state, r.media_table::oid,"
        // Columns a 0.1.0 schema (new library, ALTER EXTENSION UPDATE not run yet) does not have
        // are read through to_jsonb, and then have their 0.1.0 meaning: the run's relfilenode and
        // table, a refresh, its single-column key.
        "       coalesce((to_jsonb(t) ->> 'leaf_relfilenode')::oid,"
        "                (to_jsonb(r) ->> 'relfilenode')::oid),"
        "       coalesce(to_jsonb(r) ->> 'job', 'refresh'),"
        "       coalesce((to_jsonb(r) ->> 'dry_run')::boolean, false),"
        "       coalesce((to_jsonb(r) ->> 'records_removed')::boolean, false),"
        "       (to_jsonb(r) ->> 'batch_blocks')::integer,"
        "       coalesce(" LEAF_OID_SQL ", r.media_table::oid),"
        "       ARRAY(SELECT jsonb_array_elements_text(coalesce("
        "         nullif(to_jsonb(r) -> 'key_columns', 'null'), to_jsonb(ARRAY[r.key_column]))))"
        " FROM popularity.refresh_tasks AS t JOIN popularity.refresh_runs AS r USING (run_id)"
        " WHERE t.task_id = $1",
        1, types, values, nullptr, SPI_OK_SELECT);
    if (SPI_processed != 1) {
        return false;
    }
    HeapTuple row = SPI_tuptable->vals[0];
    TupleDesc desc = SPI_tuptable->tupdesc;
    const char *run_state = SPI_getvalue(row, desc, 7);
    const char *task_state = SPI_getvalue(row, desc, 8);
    if (strcmp(run_state, "running") != 0 || strcmp(task_state, "done") == 0 ||
        strcmp(task_state, "failed") == 0 || strcmp(task_state, "cancelled") == 0) {
        return false;
    }
    bool isnull = false;
    task.run_id = int64_value(1);
    task.media_type = copy_value(2);
    task.table = copy_value(3);
    task.end_block = int64_value(5);
    task.next_block = int64_value(6);
    task.relid = DatumGetObjectId(SPI_getbinval(row, desc, 9, &isnull));
    const Datum relfilenode = SPI_getbinval(row, desc, 10, &isnull);
    task.relfilenode = isnull ? InvalidOid : DatumGetObjectId(relfilenode);
    const char *job = SPI_getvalue(row, desc, 11);
    if (strcmp(job, "refresh") == 0) {
        task.kind = JobKind::refresh;
        task.job = &refresh_job();
    } else if (strcmp(job, "filter_tags") == 0) {
        task.kind = JobKind::filter_tags;
        task.job = &filter_job();
    } else {
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("run %lld has an unknown job \"%s\"",
                               static_cast<long long>(task.run_id), job)));
    }
    task.dry_run = DatumGetBool(SPI_getbinval(row, desc, 12, &isnull));
    task.record_removed = !task.dry_run && DatumGetBool(SPI_getbinval(row, desc, 13, &isnull));
    const Datum blocks = SPI_getbinval(row, desc, 14, &isnull);
    task.batch_blocks = isnull ? 0 : DatumGetInt32(blocks);
    task.leaf = DatumGetObjectId(SPI_getbinval(row, desc, 15, &isnull));
    // The leaf's name as it is now (a leaf dropped since has none: its task ends, see do_step).
    const char *leaf_name = get_rel_name(task.leaf);
    if (task.leaf == task.relid) {
        task.leaf_table = task.table;
    } else if (leaf_name == nullptr) {
        task.leaf_table = MemoryContextStrdup(TopMemoryContext,
                                              psprintf("dropped partition (OID %u)", task.leaf));
    } else {
        task.leaf_table = MemoryContextStrdup(
            TopMemoryContext, quote_qualified_identifier(
                                  get_namespace_name(get_rel_namespace(task.leaf)), leaf_name));
    }
    ArrayType *key_array = DatumGetArrayTypeP(SPI_getbinval(row, desc, 16, &isnull));
    Datum *key_items = nullptr;
    int key_count = 0;
    deconstruct_array(key_array, TEXTOID, -1, false, TYPALIGN_INT, &key_items, nullptr, &key_count);
    char **key_names = static_cast<char **>(
        MemoryContextAlloc(TopMemoryContext, sizeof(char *) * Max(key_count, 1)));
    for (int i = 0; i < key_count; i++) {
        key_names[i] = MemoryContextStrdup(TopMemoryContext, TextDatumGetCString(key_items[i]));
    }
    resolve_key(task, key_names, key_count);
    return true;
}

// The run's state and the current constants of its providers (read by every batch, so a
// constant changed during the run is used from the next batch on).
BatchContext load_context(const Task &task) {
    Datum values[1] = {Int64GetDatum(task.run_id)};
    const int rc = SPI_execute_plan(task.context_plan, values, nullptr, true, 1);
    if (rc != SPI_OK_SELECT) {
        elog(ERROR, "popularity refresh: reading the run failed: %s", SPI_result_code_string(rc));
    }
    BatchContext context{};
    if (SPI_processed != 1) {
        return context; // the run is gone
    }
    bool isnull = false;
    HeapTuple tuple = SPI_tuptable->vals[0];
    TupleDesc desc = SPI_tuptable->tupdesc;
    context.active = DatumGetBool(SPI_getbinval(tuple, desc, 1, &isnull));
    context.providers = SPI_getbinval(tuple, desc, 2, &isnull);
    context.metrics = SPI_getbinval(tuple, desc, 3, &isnull);
    context.constants = SPI_getbinval(tuple, desc, 4, &isnull);
    context.writers_ended = DatumGetBool(SPI_getbinval(tuple, desc, 5, &isnull));
    context.other_job_active = DatumGetBool(SPI_getbinval(tuple, desc, 6, &isnull));
    return context;
}

// The candidates of a batch: locked (SKIP LOCKED), the ones that still change written with the
// job's one UPDATE, the held ones recorded for the revisit, the counters added. A dry run locks
// and writes nothing: it counts the rows that would change. Returns the rows written.
int lock_and_write(Task &task, Batch &batch) {
    int written = 0;
    if (task.dry_run) {
        for (int i = 0; i < batch.candidate_count; i++) {
            batch.groups[batch.candidates[i].group].updated++;
        }
    } else {
        const int changing = lock_candidates(task, batch);
        if (changing > 0) {
            const uint64 rows = task.job->write(task, batch, changing);
            if (rows != static_cast<uint64>(changing)) {
                // A locked row not written: something (a policy, a trigger returning NULL) hid it.
                ereport(ERROR,
                        (errcode(ERRCODE_INTERNAL_ERROR),
                         errmsg("popularity %s: %d rows were locked but %llu were updated",
                                task.job->name, changing, static_cast<unsigned long long>(rows)),
                         errhint("A trigger on the media table that skips updates (returns NULL) "
                                 "or a row-level security policy prevents the run.")));
            }
            written = changing;
        }
        record_skipped(task, batch);
    }
    record_counts(task, batch);
    return written;
}

// How many batches of blocks one transaction may scan while it finds nothing to write. A batch with
// rows to write ends the transaction right after it, so ingestion never waits on more than one
// batch's locks; batches with nothing to write take no lock, so several share one commit.
constexpr int kCleanBatchesPerTransaction = 16;
constexpr long kCleanScanMillis = 100;

// One main-pass transaction: batches of popularity.batch_blocks blocks from next_block, scanned
// until one has rows to write (or kCleanBatchesPerTransaction / kCleanScanMillis is reached); those
// rows are locked FOR UPDATE SKIP LOCKED and rewritten, and the progress marker is committed with
// them.
void main_batch(Task &task, const BatchContext &context) {
    Relation rel = open_batch_table(task);
    if (task.written_count == 2) {
        if (pg::refresh_reclaim_space) {
            reclaim_space(rel, task.written_from[0], task.written_to[0]);
        }
        task.written_from[0] = task.written_from[1];
        task.written_to[0] = task.written_to[1];
        task.written_count = 1;
    }
    Batch batch{};
    init_batch(batch, rel);
    task.job->begin_batch(task, context, batch);
    const int blocks_per_batch = task.batch_blocks > 0 ? task.batch_blocks : pg::batch_blocks;
    const TimestampTz started = GetCurrentTimestamp();
    int64 position = task.next_block;
    int batches = 0;
    do {
        const int64 end = Min(task.end_block, position + blocks_per_batch);
        scan_range(task, batch, position, end);
        position = end;
        batches++;
    } while (batch.candidate_count == 0 && position < task.end_block &&
             batches < kCleanBatchesPerTransaction &&
             !TimestampDifferenceExceeds(started, GetCurrentTimestamp(), kCleanScanMillis));
    const int written = lock_and_write(task, batch);
    long seconds = 0;
    int microseconds = 0;
    TimestampDifference(GetCurrentTransactionStartTimestamp(), GetCurrentTimestamp(), &seconds,
                        &microseconds);
    const double batch_ms = written > 0 ? seconds * 1000.0 + microseconds / 1000.0 : 0.0;
    Datum progress[5] = {Int64GetDatum(task.task_id), Int64GetDatum(position),
                         Int32GetDatum(batches), BoolGetDatum(!context.writers_ended),
                         Float8GetDatum(batch_ms)};
    const int rc = SPI_execute_plan(task.progress_plan, progress, nullptr, false, 0);
    if (rc != SPI_OK_UPDATE) {
        elog(ERROR, "popularity worker: recording progress failed: %s",
             SPI_result_code_string(rc));
    }
    MemoryContextDelete(batch.row_context);
    table_close(rel, NoLock);
    if (written > 0) {
        task.written_from[task.written_count] = task.next_block;
        task.written_to[task.written_count] = position;
        task.written_count++;
    }
    task.next_block = position;
}

// A task whose leaf partition was detached or dropped during the run: its rows are no longer the
// media table's, and its task ends (done, with what it did so far).
void end_detached_task(const Task &task) {
    ereport(LOG, (errmsg("popularity %s run %lld: partition %s left media table %s during the "
                         "run; its task %lld ends",
                         task.job->name, static_cast<long long>(task.run_id), task.leaf_table,
                         task.table, static_cast<long long>(task.task_id))));
    Oid types[1] = {INT8OID};
    Datum id[1] = {Int64GetDatum(task.task_id)};
    run("DELETE FROM popularity.refresh_skipped WHERE task_id = $1", 1, types, id, nullptr,
        SPI_OK_DELETE);
    run("UPDATE popularity.refresh_tasks SET state = 'done', finished_at = clock_timestamp(),"
        " rewalk = false, leaf_left = true WHERE task_id = $1",
        1, types, id, nullptr, SPI_OK_UPDATE);
}

// One revisit pass over (up to 10000 of) the rows skipped so far: found again by key, then
// decided, locked and written as in a main-pass batch (rows held again are recorded again).
// Returns how many remain.
int64 revisit_batch(Task &task, const BatchContext &context) {
    Oid types[1] = {INT8OID};
    Datum id[1] = {Int64GetDatum(task.task_id)};
    run("WITH d AS (DELETE FROM popularity.refresh_skipped"
        " WHERE (task_id, row_key) IN (SELECT task_id, row_key FROM popularity.refresh_skipped"
        "   WHERE task_id = $1 LIMIT 10000) RETURNING row_key)"
        " SELECT coalesce(array_agg(row_key), '{}') FROM d",
        1, types, id, nullptr, SPI_OK_SELECT);
    bool isnull = false;
    Datum keys = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
    ArrayType *key_array = DatumGetArrayTypeP(keys);
    if (ArrayGetNItems(ARR_NDIM(key_array), ARR_DIMS(key_array)) > 0) {
        Datum args[1] = {keys};
        const int rc = SPI_execute_plan(task.keys_plan, args, nullptr, true, 0);
        if (rc != SPI_OK_SELECT) {
            elog(ERROR, "popularity worker: finding skipped rows failed: %s",
                 SPI_result_code_string(rc));
        }
        const int count = static_cast<int>(SPI_processed);
        ItemPointerData *tids =
            static_cast<ItemPointerData *>(palloc(sizeof(ItemPointerData) * Max(count, 1)));
        for (int i = 0; i < count; i++) {
            const Datum tid = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1,
                                            &isnull);
            tids[i] = *reinterpret_cast<ItemPointer>(DatumGetPointer(tid));
        }
        Relation rel = open_batch_table(task);
        Batch batch{};
        init_batch(batch, rel);
        task.job->begin_batch(task, context, batch);
        scan_tids(task, batch, tids, count);
        lock_and_write(task, batch);
        MemoryContextDelete(batch.row_context);
        table_close(rel, NoLock);
    }
    run("UPDATE popularity.refresh_tasks SET revisit_passes = revisit_passes + 1, attempts = 0"
        " WHERE task_id = $1",
        1, types, id, nullptr, SPI_OK_UPDATE);
    run("SELECT count(*) FROM popularity.refresh_skipped WHERE task_id = $1", 1, types, id, nullptr,
        SPI_OK_SELECT);
    return int64_value(1);
}

enum class Step { more, wait, finished };

// The task has walked its range and no skipped row is left. Rows that transactions in progress
// when the run was queued (its writers) inserted were invisible to batches that ran before those
// transactions ended, and may carry the old constants: so the task is done only once they have
// all ended and, if any of its batches ran before that, it has walked its range once more; the last
// task of each leaf also walks the blocks added to it since the run was queued, and the partitions
// created or attached meanwhile get tasks. Otherwise it is done.
Step finish_walk(Task &task, const BatchContext &context) {
    if (!context.writers_ended) {
        return Step::wait;
    }
    Oid types[1] = {INT8OID};
    Datum id[1] = {Int64GetDatum(task.task_id)};
    if (task.leaf != task.relid) {
        // Partitions created or attached since the run was queued get tasks of their own (the
        // parent is locked against ATTACH / DETACH CONCURRENTLY meanwhile: do_step), so the run
        // does not finish before they are walked.
        Datum run_id[1] = {Int64GetDatum(task.run_id)};
        run("SELECT popularity._create_tasks($1)", 1, types, run_id, nullptr, SPI_OK_SELECT);
        bool isnull = false;
        if (DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) >
            0) {
            run("SELECT popularity._wake_scheduler()", 0, nullptr, nullptr, nullptr, SPI_OK_SELECT);
        }
    }
    // The last task of each leaf (a 0.1.0 schema has no leaves: the table's last task).
    run("WITH t AS (SELECT t.task_id, t.rewalk, t.tail_checked, t.first_block, t.end_block,"
        "   cardinality(r.writers) > 0 AND t.segment = (SELECT max(x.segment) FROM"
        "     popularity.refresh_tasks AS x WHERE x.run_id = t.run_id"
        "       AND to_jsonb(x) -> 'leaf' IS NOT DISTINCT FROM to_jsonb(t) -> 'leaf')"
        "     AS last_with_writers,"
        "   pg_catalog.pg_relation_size(coalesce(" LEAF_OID_SQL ", r.media_table::oid))"
        "     / pg_catalog.current_setting('block_size')::bigint AS blocks_now"
        "   FROM popularity.refresh_tasks AS t JOIN popularity.refresh_runs AS r USING (run_id)"
        "   WHERE t.task_id = $1)"
        " UPDATE popularity.refresh_tasks AS u SET"
        "   next_block = CASE WHEN t.rewalk THEN t.first_block ELSE u.next_block END,"
        "   end_block = CASE WHEN NOT t.rewalk AND t.last_with_writers AND NOT t.tail_checked"
        "                    THEN greatest(t.end_block, t.blocks_now) ELSE u.end_block END,"
        "   tail_checked = u.tail_checked OR (NOT t.rewalk AND t.last_with_writers),"
        "   rewalk = false,"
        "   state = CASE WHEN t.rewalk OR (t.last_with_writers AND NOT t.tail_checked"
        "                                  AND t.blocks_now > t.end_block)"
        "                THEN 'running' ELSE 'done' END,"
        "   finished_at = CASE WHEN t.rewalk OR (t.last_with_writers AND NOT t.tail_checked"
        "                                        AND t.blocks_now > t.end_block)"
        "                      THEN NULL ELSE clock_timestamp() END"
        " FROM t WHERE u.task_id = t.task_id RETURNING u.state, u.next_block, u.end_block",
        1, types, id, nullptr, SPI_OK_UPDATE_RETURNING);
    if (SPI_processed != 1) {
        return Step::finished; // the task is gone
    }
    const char *state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
    task.next_block = int64_value(2);
    task.end_block = int64_value(3);
    return strcmp(state, "done") == 0 ? Step::finished : Step::more;
}

// What task_status.cpp needs of the task.
worker::TaskRef task_ref(const Task &task) {
    return worker::TaskRef{task.task_id, task.run_id,     task.relid,
                           task.leaf,    task.leaf_table, task.key_match_sql};
}

constexpr const char *kRlsHint = "Run it as the table owner or a role with BYPASSRLS.";

// The rights a task's role needs on its table: SELECT, and UPDATE unless the run is a dry run.
AclMode task_rights(const Task &task) {
    return task.dry_run ? ACL_SELECT : ACL_SELECT | ACL_UPDATE;
}

// One transaction of work. May raise (the caller records the error).
Step do_step(Task &task) {
    begin_transaction(task.job->activity);
    set_batch_settings();
    worker::arm_batch_timeout(); // the worker loop disarms it after the batch, whatever happened
    // First, whatever the step: the role may still read and update the table (without these
    // rights it could not even see its run, and would stop as if the run had been cancelled).
    pg::check_media_table(task.relid, task_rights(task), task.job->name, kRlsHint, true);
    if (!task.dry_run) {
        // The table's write lock first, then the look at the other job's runs: a run of the other
        // job queued after the look counts this transaction among its writers (it waits for it
        // and walks again what it walked meanwhile), so what this batch writes past the ingestion
        // trigger is caught by that run.
        LockRelationOid(task.relid, RowExclusiveLock);
    }
    if (task.leaf != task.relid && task.next_block >= task.end_block &&
        !ConditionalLockRelationOid(task.relid, ShareUpdateExclusiveLock)) {
        // The walk of the leaf is over: this step revisits or finishes, and finishing covers the
        // partitions created or attached meanwhile (finish_walk). ATTACH PARTITION, DETACH
        // CONCURRENTLY and ANALYZE take this lock too (for as long as they validate or wait): the
        // task waits for them without holding anything, rather than queue behind them (a lock
        // timeout would fail the run), and is done once they have committed and are seen. Taken
        // before the leaf's lock (an ATTACH may wait for the default partition's).
        worker::note_step(task_ref(task), worker::Wait::ddl);
        commit_transaction();
        return Step::wait;
    }
    if (!leaf_present(task)) {
        end_detached_task(task);
        commit_transaction();
        return Step::finished;
    }
    // A rename of the leaf (or of the table) since the statements were prepared: they name it.
    refresh_names(task);
    const BatchContext context = load_context(task);
    // The ingestion trigger on this worker's own rows: it has nothing to add while the other job
    // is not running on the media type (a refresh worker writes the score itself, a filter
    // worker's rows have their tags filtered already and keep their scores); while it is, the
    // rows this worker moves must carry what that job establishes (a refresh worker's rows get
    // their tags filtered, a filter worker's rows their scores).
    pg::trigger_bypass_relid = task.leaf;
    if (!context.other_job_active) {
        pg::trigger_bypass = pg::TriggerBypass::all;
    } else {
        pg::trigger_bypass =
            task.kind == JobKind::refresh ? pg::TriggerBypass::score : pg::TriggerBypass::none;
    }
    if (!context.active) {
        commit_transaction();
        return Step::finished;
    }
    Step step = Step::more;
    worker::Wait wait = worker::Wait::none;
    if (task.next_block < task.end_block) {
        main_batch(task, context);
    } else if (revisit_batch(task, context) > 0) {
        step = Step::wait; // rows still held by other transactions: try again shortly
        wait = worker::Wait::rows;
    } else {
        step = finish_walk(task, context);
        if (step == Step::wait) {
            wait = worker::Wait::writers;
        }
    }
    if (worker::note_step(task_ref(task), wait)) {
        step = Step::finished; // this worker's slot is better used elsewhere meanwhile
    }
    commit_transaction();
    return step;
}

// The start-up transaction: claims the task (a session lock: held until this process exits),
// loads it and prepares the plans. False when another worker has it or there is nothing left to
// do. *claimed says whether the lock was taken (an error after that belongs to the task).
bool start_task(Task &task, volatile bool *claimed) {
    begin_transaction("popularity worker: starting");
    // Preparing the plans locks the table: with a batch's timeouts (a lock held long, by a CREATE
    // INDEX say, makes the start-up retried like a batch).
    set_batch_settings();
    worker::arm_batch_timeout();
    {
        Oid types[2] = {INT4OID, INT4OID};
        Datum values[2] = {Int32GetDatum(worker::kTaskLockSpace),
                           Int32GetDatum(static_cast<int32>(task.task_id))};
        run("SELECT pg_try_advisory_lock($1, $2)", 2, types, values, nullptr, SPI_OK_SELECT);
        bool isnull = false;
        *claimed =
            DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
    }
    // The queue is read as the extension's owner: a role that lost its rights on the table no
    // longer sees its run (the policies), and must fail it with the reason, not stop unseen.
    bool found = false;
    if (*claimed) {
        const pg::SavedUser saved = pg::become_extension_owner();
        found = load_task(task);
        pg::restore_user(saved);
    }
    if (!found) {
        commit_transaction();
        return false;
    }
    pg::check_media_table(task.relid, task_rights(task), task.job->name, kRlsHint, true);
    if (!leaf_present(task)) {
        end_detached_task(task);
        commit_transaction();
        return false;
    }
    refresh_names(task);
    // Prepared once (a start-up that failed and is retried keeps those it made).
    prepare_statements(task);
    // (What the ingestion trigger does on this worker's rows is decided per transaction: do_step.)
    {
        Oid types[1] = {INT8OID};
        Datum values[1] = {Int64GetDatum(task.task_id)};
        // Whatever the task waited for, a worker has it now (a 0.1.0 schema has no such columns).
        run(worker::has_task_status_columns()
                ? "UPDATE popularity.refresh_tasks SET"
                  " state = CASE WHEN next_block >= end_block THEN 'revisiting' ELSE 'running' END,"
                  " waiting_for = NULL, waiting_since = NULL, waiting_pids = NULL,"
                  " started_at = coalesce(started_at, clock_timestamp()) WHERE task_id = $1"
                : "UPDATE popularity.refresh_tasks SET"
                  " state = CASE WHEN next_block >= end_block THEN 'revisiting' ELSE 'running' END,"
                  " started_at = coalesce(started_at, clock_timestamp()) WHERE task_id = $1",
            1, types, values, nullptr, SPI_OK_UPDATE);
    }
    commit_transaction();
    return true;
}

void worker_main(Datum) {
    worker::WorkerArgs args;
    std::memcpy(&args, MyBgworkerEntry->bgw_extra, sizeof args);
    pqsignal(SIGTERM, handle_sigterm);
    pqsignal(SIGHUP, SignalHandlerForConfigReload);
    BackgroundWorkerUnblockSignals();
    BackgroundWorkerInitializeConnectionByOid(args.database, args.role, 0);
    worker::pin_search_path(); // before any statement (refresh.hpp)
    pgstat_report_appname("popularity worker");

    Task task{};
    task.task_id = args.task_id;

    long wait_ms = 50;
    volatile bool claimed = false; // this worker holds the task's lock: its errors are the task's
    volatile bool started = false;
    for (;;) {
        if (!PostmasterIsAlive()) {
            proc_exit(1);
        }
        if (terminate_requested) {
            ereport(LOG, (errmsg("popularity refresh worker of task %lld stopping on request; "
                                 "the task resumes from its last committed batch",
                                 static_cast<long long>(task.task_id))));
            proc_exit(0);
        }
        if (ConfigReloadPending) {
            ConfigReloadPending = false;
            ProcessConfigFile(PGC_SIGHUP);
        }
        MemoryContext loop_context = CurrentMemoryContext;
        ErrorData *volatile failure = nullptr;
        volatile Step step = Step::more; // volatile: assigned between setjmp and a possible longjmp
        PG_TRY();
        {
            // Here, not before the PG_TRY: a cancel request (pg_cancel_backend) between batches
            // fails the task with its reason, as one during a batch does.
            CHECK_FOR_INTERRUPTS();
            if (worker::retry_pending()) {
                step = worker::pause_for_retry(task_ref(task)) ? Step::more : Step::finished;
            } else if (!started) {
                // Nothing to do when another worker has the task or it is over.
                started = start_task(task, &claimed);
                step = started ? Step::more : Step::finished;
            } else {
                step = do_step(task);
            }
        }
        PG_CATCH();
        {
            MemoryContextSwitchTo(loop_context);
            failure = CopyErrorData();
            FlushErrorState();
            AbortCurrentTransaction();
        }
        PG_END_TRY();
        const bool transient = failure != nullptr && worker::transient_error(failure);
        worker::disarm_batch_timeout();
        if (failure != nullptr) {
            if (!claimed) {
                ereport(LOG, (errmsg("popularity refresh worker of task %lld could not start: %s",
                                     static_cast<long long>(task.task_id), failure->message)));
                proc_exit(0);
            }
            // The batch (or the start-up) rolled back as a whole. A transient error (a lock or
            // statement timeout, a serialization failure, a deadlock) is retried after a pause,
            // up to popularity.batch_retries times in a row; any other error (the role lost its
            // rights, row-level security now applies), or one too many, fails the task with its
            // reason, and the scheduler fails the run with it (it can be resumed once the cause
            // is fixed).
            if (!worker::record_failure(task_ref(task), failure, transient)) {
                proc_exit(0);
            }
            FreeErrorData(failure);
            continue;
        }
        if (step == Step::finished) {
            proc_exit(0);
        }
        if (step == Step::wait) {
            (void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, wait_ms,
                            PG_WAIT_EXTENSION);
            ResetLatch(MyLatch);
            wait_ms = Min(wait_ms * 2, 1000);
        } else {
            wait_ms = 50;
        }
    }
}

} // namespace

extern "C" void popularity_refresh_worker_main(Datum arg) {
    pg::run_guarded("popularity refresh worker", [arg] { worker_main(arg); });
}
