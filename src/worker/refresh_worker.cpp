// A refresh worker: rescoring one task (a block range of a media table) in batches.
//
// Each batch is one transaction: it reads the current constants, finds the rows of the run's
// providers in its block range whose stored score differs from the recomputed one (no lock taken
// for rows that are already right), locks only those with FOR UPDATE SKIP LOCKED, rewrites them,
// records the rows it could not lock (by primary key) for a later revisit, and commits its progress
// marker and counters with the rows. After its range, the task revisits skipped rows until none is
// left. SIGTERM, SIGHUP, cancellation and postmaster death are handled between batches.
#include "../pg/guard.hpp"
#include "../pg/score_trigger.hpp"
#include "../pg/settings.hpp"
#include "refresh.hpp"

extern "C" {
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
}

#include <cstring>

using namespace popularity;

namespace {

volatile sig_atomic_t terminate_requested = false;

void handle_sigterm(SIGNAL_ARGS) {
    int saved_errno = errno;
    terminate_requested = true;
    SetLatch(MyLatch);
    errno = saved_errno;
}

// Everything the worker keeps across its batches (plain C data, in TopMemoryContext).
struct Task {
    int64 task_id;
    int64 run_id;
    char *media_type;
    char *table;      // qualified, quoted name
    char *key_column; // quoted
    char *key_type;   // e.g. uuid
    char *ext_schema; // quoted
    ArrayType *providers;
    int64 end_block;
    int64 next_block;
    SPIPlanPtr batch_plan;
    SPIPlanPtr revisit_plan;
    SPIPlanPtr context_plan;  // run state and the providers' current constants
    SPIPlanPtr progress_plan; // the progress marker of a main-pass batch
};

// What every batch reads first, in its own transaction.
struct BatchContext {
    bool active; // the run is still running (not cancelled, not failed)
    Datum providers;
    Datum metrics;
    Datum constants;
};

void begin_transaction(const char *activity) {
    SetCurrentStatementStartTimestamp();
    StartTransactionCommand();
    if (SPI_connect() != SPI_OK_CONNECT) {
        elog(ERROR, "SPI_connect failed");
    }
    PushActiveSnapshot(GetTransactionSnapshot());
    pgstat_report_activity(STATE_RUNNING, activity);
}

void commit_transaction() {
    SPI_finish();
    PopActiveSnapshot();
    CommitTransactionCommand();
    pgstat_report_stat(false);
    pgstat_report_activity(STATE_IDLE, nullptr);
}

// Runs a statement with parameters; raises on failure. Returns SPI_processed.
uint64 run(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls, int expected) {
    const int rc = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);
    if (rc != expected) {
        elog(ERROR, "popularity refresh: \"%s\" failed: %s", sql, SPI_result_code_string(rc));
    }
    return SPI_processed;
}

Datum text_datum(const char *value) {
    return CStringGetTextDatum(value);
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

// The statement of a batch. $1 providers, $2 metrics, $3 constants, $4 tolerance, $5 task id,
// then either $6/$7 the block range (main pass) or $6 the keys to revisit.
char *batch_sql(const Task &task, bool revisit) {
    const char *where =
        revisit ? psprintf("t.%s = ANY ($6::text[]::%s[])", task.key_column, task.key_type)
                : "t.ctid >= $6 AND t.ctid < $7";
    const char *touch = pg::refresh_touch_updated_on ? ", updated_on = now()" : "";
    // One pass over the range: every row is scored and counted, but only the rows whose stored
    // score differs are kept (aggregated per provider), then locked and rewritten.
    return psprintf(
        "WITH p AS MATERIALIZED ("
        "  SELECT * FROM unnest($1::text[], $2::text[], $3::float8[]) AS p(provider, metric, "
        "constant)),"
        " scanned AS MATERIALIZED ("
        "  SELECT s.provider, count(*) AS rows,"
        "         coalesce(array_agg(s.tid) FILTER (WHERE s.differs), '{}') AS tids,"
        "         coalesce(array_agg(s.score) FILTER (WHERE s.differs), '{}') AS scores,"
        "         coalesce(array_agg(s.row_key::text) FILTER (WHERE s.differs), '{}') AS row_keys"
        "  FROM (SELECT p.provider, t.ctid AS tid, t.%s AS row_key, x.score,"
        "               popularity._score_differs(t.standardized_popularity, x.score, $4) AS "
        "differs"
        "        FROM %s AS t JOIN p ON p.provider = t.provider,"
        "        LATERAL (SELECT %s.standardized_popularity("
        "                   %s.popularity_metric_value(t.meta_data, p.metric), p.constant) AS "
        "score OFFSET 0) AS x"
        "        WHERE %s) AS s"
        "  GROUP BY s.provider),"
        " cand AS MATERIALIZED ("
        "  SELECT c.provider, u.tid, u.score, u.row_key"
        "  FROM scanned AS c, unnest(c.tids, c.scores, c.row_keys) AS u(tid, score, row_key)),"
        " locked AS MATERIALIZED ("
        "  SELECT t.ctid AS tid FROM %s AS t WHERE t.ctid = ANY (ARRAY(SELECT c.tid FROM cand AS "
        "c))"
        "  FOR UPDATE OF t SKIP LOCKED),"
        " upd AS ("
        "  UPDATE %s AS t SET standardized_popularity = c.score%s FROM cand AS c"
        "  WHERE t.ctid = c.tid AND c.tid IN (SELECT l.tid FROM locked AS l) RETURNING c.provider),"
        " skipped AS ("
        "  INSERT INTO popularity.refresh_skipped (task_id, row_key)"
        "  SELECT $5, c.row_key FROM cand AS c WHERE c.tid NOT IN (SELECT l.tid FROM locked AS l)"
        "  ON CONFLICT DO NOTHING RETURNING row_key),"
        " counts AS ("
        "  SELECT s.provider, s.rows AS scanned,"
        "         (SELECT count(*) FROM upd AS u WHERE u.provider = s.provider) AS updated,"
        "         cardinality(s.tids) - (SELECT count(*) FROM cand AS c JOIN locked AS l USING "
        "(tid)"
        "                                WHERE c.provider = s.provider) AS skipped"
        "  FROM scanned AS s),"
        " progress AS ("
        "  INSERT INTO popularity.refresh_progress AS g (task_id, provider, rows_scanned, "
        "rows_updated, rows_skipped_locked)"
        "  SELECT $5, c.provider, c.scanned, c.updated, c.skipped FROM counts AS c"
        "  ON CONFLICT (task_id, provider) DO UPDATE SET rows_scanned = g.rows_scanned + "
        "excluded.rows_scanned,"
        "     rows_updated = g.rows_updated + excluded.rows_updated,"
        "     rows_skipped_locked = g.rows_skipped_locked + excluded.rows_skipped_locked RETURNING "
        "1)"
        " SELECT (SELECT count(*) FROM progress), (SELECT count(*) FROM skipped)",
        task.key_column, task.table, task.ext_schema, task.ext_schema, where, task.table,
        task.table, touch);
}

// Reads the task and its run; false when there is nothing (more) to do.
bool load_task(Task &task) {
    Oid types[1] = {INT8OID};
    Datum values[1] = {Int64GetDatum(task.task_id)};
    run("SELECT r.run_id, r.media_type, r.media_table::text, quote_ident(r.key_column),"
        "       format_type(a.atttypid, NULL), r.providers, t.end_block, t.next_block,"
        "       r.state, t.state,"
        "       (SELECT quote_ident(n.nspname) FROM pg_extension AS e"
        "        JOIN pg_namespace AS n ON n.oid = e.extnamespace WHERE e.extname = 'popularity')"
        " FROM popularity.refresh_tasks AS t JOIN popularity.refresh_runs AS r USING (run_id)"
        " JOIN pg_attribute AS a ON a.attrelid = r.media_table AND a.attname = r.key_column"
        " WHERE t.task_id = $1",
        1, types, values, nullptr, SPI_OK_SELECT);
    if (SPI_processed != 1) {
        return false;
    }
    const char *run_state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 9);
    const char *task_state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 10);
    if (strcmp(run_state, "running") != 0 || strcmp(task_state, "done") == 0 ||
        strcmp(task_state, "failed") == 0 || strcmp(task_state, "cancelled") == 0) {
        return false;
    }
    task.run_id = int64_value(1);
    task.media_type = copy_value(2);
    task.table = copy_value(3);
    task.key_column = copy_value(4);
    task.key_type = copy_value(5);
    bool isnull = false;
    Datum providers = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 6, &isnull);
    MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
    task.providers = DatumGetArrayTypePCopy(providers);
    MemoryContextSwitchTo(old);
    task.end_block = int64_value(7);
    task.next_block = int64_value(8);
    task.ext_schema = copy_value(11);
    return true;
}

constexpr const char *kContextSql = "SELECT r.state = 'running',"
                                    "       coalesce(array_agg(m.provider ORDER BY m.provider) "
                                    "FILTER (WHERE m.constant IS NOT NULL), '{}'),"
                                    "       coalesce(array_agg(m.metric ORDER BY m.provider) "
                                    "FILTER (WHERE m.constant IS NOT NULL), '{}'),"
                                    "       coalesce(array_agg(m.constant ORDER BY m.provider) "
                                    "FILTER (WHERE m.constant IS NOT NULL), '{}')"
                                    " FROM popularity.refresh_runs AS r"
                                    " LEFT JOIN popularity.metrics AS m ON m.media_type = "
                                    "r.media_type AND m.provider = ANY (r.providers)"
                                    " WHERE r.run_id = $1 GROUP BY r.state";

constexpr const char *kProgressSql =
    "UPDATE popularity.refresh_tasks SET next_block = $2, batches = batches + 1, attempts = 0,"
    " state = CASE WHEN $2 >= end_block THEN 'revisiting' ELSE 'running' END"
    " WHERE task_id = $1";

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
    return context;
}

SPIPlanPtr prepare_kept(const char *sql, int nargs, Oid *types) {
    SPIPlanPtr plan = SPI_prepare(sql, nargs, types);
    if (plan == nullptr) {
        elog(ERROR, "popularity refresh: preparing a batch failed: %s",
             SPI_result_code_string(SPI_result));
    }
    if (SPI_keepplan(plan) != 0) {
        elog(ERROR, "popularity refresh: SPI_keepplan failed");
    }
    return plan;
}

Datum block_tid(int64 block) {
    auto *tid = static_cast<ItemPointer>(palloc(sizeof(ItemPointerData)));
    ItemPointerSet(tid, static_cast<BlockNumber>(block), 0);
    return PointerGetDatum(tid);
}

// One main-pass batch over [next_block, next_block + batch_blocks).
void main_batch(Task &task, const BatchContext &context) {
    const int64 end = Min(task.end_block, task.next_block + pg::batch_blocks);
    Datum values[7] = {context.providers,
                       context.metrics,
                       context.constants,
                       Float8GetDatum(pg::score_tolerance),
                       Int64GetDatum(task.task_id),
                       block_tid(task.next_block),
                       block_tid(end)};
    int rc = SPI_execute_plan(task.batch_plan, values, nullptr, false, 0);
    if (rc != SPI_OK_SELECT) {
        elog(ERROR, "popularity refresh batch failed: %s", SPI_result_code_string(rc));
    }
    Datum progress[2] = {Int64GetDatum(task.task_id), Int64GetDatum(end)};
    rc = SPI_execute_plan(task.progress_plan, progress, nullptr, false, 0);
    if (rc != SPI_OK_UPDATE) {
        elog(ERROR, "popularity refresh: recording progress failed: %s",
             SPI_result_code_string(rc));
    }
    task.next_block = end;
}

// One revisit pass over (up to 10000 of) the rows skipped so far. Returns how many remain.
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
    if (ArrayGetNItems(ARR_NDIM(DatumGetArrayTypeP(keys)), ARR_DIMS(DatumGetArrayTypeP(keys))) >
        0) {
        Datum values[6] = {context.providers,           context.metrics,
                           context.constants,           Float8GetDatum(pg::score_tolerance),
                           Int64GetDatum(task.task_id), keys};
        const int rc = SPI_execute_plan(task.revisit_plan, values, nullptr, false, 0);
        if (rc != SPI_OK_SELECT) {
            elog(ERROR, "popularity refresh revisit failed: %s", SPI_result_code_string(rc));
        }
    }
    run("UPDATE popularity.refresh_tasks SET revisit_passes = revisit_passes + 1, attempts = 0"
        " WHERE task_id = $1",
        1, types, id, nullptr, SPI_OK_UPDATE);
    run("SELECT count(*) FROM popularity.refresh_skipped WHERE task_id = $1", 1, types, id, nullptr,
        SPI_OK_SELECT);
    return int64_value(1);
}

void set_task_state(const Task &task, const char *state, const char *error) {
    Oid types[3] = {INT8OID, TEXTOID, TEXTOID};
    Datum values[3] = {Int64GetDatum(task.task_id), text_datum(state),
                       error ? text_datum(error) : Datum(0)};
    const char nulls[3] = {' ', ' ', error ? ' ' : 'n'};
    run("UPDATE popularity.refresh_tasks SET state = $2, error = $3,"
        " finished_at = CASE WHEN $2 IN ('done', 'failed', 'cancelled') THEN clock_timestamp() END"
        " WHERE task_id = $1",
        3, types, values, nulls, SPI_OK_UPDATE);
}

enum class Step { more, wait, finished };

// One transaction of work. May raise (the caller records the error).
Step do_step(Task &task) {
    begin_transaction("popularity refresh batch");
    set_batch_settings();
    const BatchContext context = load_context(task);
    if (!context.active) {
        commit_transaction();
        return Step::finished;
    }
    Step step = Step::more;
    if (task.next_block < task.end_block) {
        main_batch(task, context);
    } else if (revisit_batch(task, context) > 0) {
        step = Step::wait; // rows still held by other transactions: try again shortly
    } else {
        set_task_state(task, "done", nullptr);
        step = Step::finished;
    }
    commit_transaction();
    return step;
}

void worker_main(Datum) {
    worker::WorkerArgs args;
    std::memcpy(&args, MyBgworkerEntry->bgw_extra, sizeof args);
    pqsignal(SIGTERM, handle_sigterm);
    pqsignal(SIGHUP, SignalHandlerForConfigReload);
    BackgroundWorkerUnblockSignals();
    BackgroundWorkerInitializeConnectionByOid(args.database, args.role, 0);
    pgstat_report_appname("popularity refresh worker");
    pg::scoring_trigger_bypassed = true;

    Task task{};
    task.task_id = args.task_id;

    // Claim the task (a session lock: held until this process exits) and prepare the plans.
    begin_transaction("popularity refresh: starting");
    {
        Oid types[2] = {INT4OID, INT4OID};
        Datum values[2] = {Int32GetDatum(worker::kTaskLockSpace),
                           Int32GetDatum(static_cast<int32>(task.task_id))};
        run("SELECT pg_try_advisory_lock($1, $2)", 2, types, values, nullptr, SPI_OK_SELECT);
        bool isnull = false;
        if (!DatumGetBool(
                SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) ||
            !load_task(task)) {
            commit_transaction();
            proc_exit(0); // another worker has it, or there is nothing left to do
        }
    }
    Oid batch_types[7] = {TEXTARRAYOID, TEXTARRAYOID, FLOAT8ARRAYOID, FLOAT8OID,
                          INT8OID,      TIDOID,       TIDOID};
    task.batch_plan = prepare_kept(batch_sql(task, false), 7, batch_types);
    Oid revisit_types[6] = {TEXTARRAYOID, TEXTARRAYOID, FLOAT8ARRAYOID,
                            FLOAT8OID,    INT8OID,      TEXTARRAYOID};
    task.revisit_plan = prepare_kept(batch_sql(task, true), 6, revisit_types);
    Oid context_types[1] = {INT8OID};
    task.context_plan = prepare_kept(kContextSql, 1, context_types);
    Oid progress_types[2] = {INT8OID, INT8OID};
    task.progress_plan = prepare_kept(kProgressSql, 2, progress_types);
    {
        Oid types[1] = {INT8OID};
        Datum values[1] = {Int64GetDatum(task.task_id)};
        run("UPDATE popularity.refresh_tasks SET"
            " state = CASE WHEN next_block >= end_block THEN 'revisiting' ELSE 'running' END,"
            " started_at = coalesce(started_at, clock_timestamp()) WHERE task_id = $1",
            1, types, values, nullptr, SPI_OK_UPDATE);
    }
    commit_transaction();

    long wait_ms = 50;
    for (;;) {
        CHECK_FOR_INTERRUPTS();
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
        { step = do_step(task); }
        PG_CATCH();
        {
            MemoryContextSwitchTo(loop_context);
            failure = CopyErrorData();
            FlushErrorState();
            AbortCurrentTransaction();
        }
        PG_END_TRY();
        if (failure != nullptr) {
            // The batch rolled back as a whole; record why, and stop (the run is marked failed
            // by the launcher and can be resumed once the cause is fixed).
            ereport(LOG, (errmsg("popularity refresh task %lld failed: %s",
                                 static_cast<long long>(task.task_id), failure->message)));
            begin_transaction("popularity refresh: recording a failure");
            set_task_state(task, "failed", failure->message);
            commit_transaction();
            proc_exit(0);
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
