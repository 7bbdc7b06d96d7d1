// The refresh launcher and the per-database schedulers (see refresh.hpp).
//
// A scheduler wakes on its latch (work queued, a worker stopped) or every popularity.naptime, then
// in one transaction: finishes runs whose tasks are all done (or one failed), starts queued runs,
// and starts a worker for every task of a running run that has none, up to popularity.max_workers
// (a task that waits for the run's writers only once they have all ended; one that waits for rows
// other transactions hold after the others). A task no worker could be started for (no free
// background-worker slot) waits for a slot, and no attempt is counted; one whose role can no longer
// connect fails with that reason. After a crash or restart, tasks interrupted mid-way have no
// worker and are simply picked up again: their progress marker says where to resume.
#include "../pg/guard.hpp"
#include "../pg/settings.hpp"
#include "../pg/shared_state.hpp"
#include "refresh.hpp"
#include "task_status.hpp"

extern "C" {
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/snapmgr.h"
#include "utils/varlena.h"
}

#include <cstring>

using namespace popularity;

namespace {

// Workers this launcher started, to avoid starting a second one for a task whose worker has not
// yet taken its advisory lock.
struct Started {
    int64 task_id;
    BackgroundWorkerHandle *handle;
};
constexpr int kMaxTracked = 256;
Started started[kMaxTracked];
int started_count = 0;

// A background worker of this library: its entry function, name and type, restart policy.
BackgroundWorker describe_worker(const char *function, const char *type, bool database,
                                 int restart_time) {
    BackgroundWorker worker;
    std::memset(&worker, 0, sizeof worker);
    worker.bgw_flags =
        BGWORKER_SHMEM_ACCESS | (database ? BGWORKER_BACKEND_DATABASE_CONNECTION : 0);
    worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
    worker.bgw_restart_time = restart_time;
    snprintf(worker.bgw_library_name, BGW_MAXLEN, "popularity");
    snprintf(worker.bgw_function_name, BGW_MAXLEN, "%s", function);
    snprintf(worker.bgw_name, BGW_MAXLEN, "%s", type);
    snprintf(worker.bgw_type, BGW_MAXLEN, "%s", type);
    return worker;
}

bool worker_alive(BackgroundWorkerHandle *handle) {
    pid_t pid;
    const BgwHandleStatus status = GetBackgroundWorkerPid(handle, &pid);
    return status == BGWH_STARTED || status == BGWH_NOT_YET_STARTED;
}

void forget_stopped_workers() {
    int kept = 0;
    for (int i = 0; i < started_count; ++i) {
        if (worker_alive(started[i].handle)) {
            started[kept++] = started[i];
        } else {
            pfree(started[i].handle);
        }
    }
    started_count = kept;
}

bool tracked(int64 task_id) {
    for (int i = 0; i < started_count; ++i) {
        if (started[i].task_id == task_id) {
            return true;
        }
    }
    return false;
}

bool start_worker(int64 task_id, Oid role) {
    BackgroundWorker worker = describe_worker("popularity_refresh_worker_main",
                                              "popularity refresh worker", true, BGW_NEVER_RESTART);
    snprintf(worker.bgw_name, BGW_MAXLEN, "popularity refresh worker (task %lld)",
             static_cast<long long>(task_id));
    worker::WorkerArgs args{MyDatabaseId, role, task_id};
    static_assert(sizeof args <= BGW_EXTRALEN);
    std::memcpy(worker.bgw_extra, &args, sizeof args);
    worker.bgw_notify_pid = MyProcPid;
    BackgroundWorkerHandle *handle = nullptr;
    MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
    const bool ok = RegisterDynamicBackgroundWorker(&worker, &handle);
    MemoryContextSwitchTo(old);
    if (!ok) {
        return false; // no free worker slot: try again on the next round
    }
    if (started_count < kMaxTracked) {
        started[started_count++] = Started{task_id, handle};
    }
    return true;
}

// Workers started for a task in a row that stopped before committing a batch or recording an error
// (every error a worker meets is recorded in its task): terminated, or killed by a crash.
constexpr int kMaxAttempts = 5;

void run_task_update(const char *sql, int64 task_id, const char *text) {
    Oid types[2] = {INT8OID, TEXTOID};
    Datum values[2] = {Int64GetDatum(task_id), text != nullptr ? CStringGetTextDatum(text) : 0};
    const char nulls[2] = {' ', text != nullptr ? ' ' : 'n'};
    const int rc = SPI_execute_with_args(sql, 2, types, values, nulls, false, 0);
    if (rc != SPI_OK_UPDATE) {
        elog(ERROR, "popularity scheduler: updating task %lld failed: %s",
             static_cast<long long>(task_id), SPI_result_code_string(rc));
    }
}

// Whether refresh_tasks has the status columns (waiting_for, ...), read once per round.
bool status_columns = false;

// Fails a task no worker can run, with the reason (the next round fails its run with it).
void fail_task(int64 task_id, const char *error) {
    run_task_update(status_columns
                        ? "UPDATE popularity.refresh_tasks SET state = 'failed', error = $2,"
                          " last_error = $2, last_error_at = clock_timestamp(),"
                          " finished_at = clock_timestamp(),"
                          " waiting_for = NULL, waiting_since = NULL, waiting_pids = NULL"
                          " WHERE task_id = $1 AND state IN ('pending', 'running', 'revisiting')"
                        : "UPDATE popularity.refresh_tasks SET state = 'failed', error = $2,"
                          " finished_at = clock_timestamp()"
                          " WHERE task_id = $1 AND state IN ('pending', 'running', 'revisiting')",
                    task_id, error);
}

// A worker was started for the task: one more attempt, and it no longer waits for a slot.
void count_attempt(int64 task_id) {
    run_task_update(
        status_columns
            ? "UPDATE popularity.refresh_tasks SET attempts = attempts + 1,"
              " waiting_since = CASE WHEN waiting_for = 'worker slot' THEN NULL"
              "                      ELSE waiting_since END,"
              " waiting_for = CASE WHEN waiting_for = 'worker slot' THEN NULL ELSE waiting_for END"
              " WHERE task_id = $1"
            : "UPDATE popularity.refresh_tasks SET attempts = attempts + 1 WHERE task_id = $1",
        task_id, nullptr);
}

// No background-worker slot was free for the task's worker: not an attempt (the next round tries
// again), but what the task waits for, from now on (refresh_status shows it).
void note_no_slot(int64 task_id) {
    if (!status_columns) {
        return;
    }
    run_task_update("UPDATE popularity.refresh_tasks SET waiting_for = 'worker slot',"
                    " waiting_since = clock_timestamp(), waiting_pids = NULL"
                    " WHERE task_id = $1 AND waiting_for IS DISTINCT FROM 'worker slot'",
                    task_id, nullptr);
}

void notify_finished(const char *sql_returning_payloads) {
    const int rc = SPI_execute(sql_returning_payloads, false, 0);
    if (rc != SPI_OK_UPDATE_RETURNING) {
        elog(ERROR, "popularity launcher: finishing runs failed: %s", SPI_result_code_string(rc));
    }
    for (uint64 i = 0; i < SPI_processed; ++i) {
        char *payload = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
        Async_Notify("popularity", payload);
    }
}

// One round; returns whether any run of this database is queued or running.
bool tick() {
    bool active = false;
    SetCurrentStatementStartTimestamp();
    StartTransactionCommand();
    if (SPI_connect() != SPI_OK_CONNECT) {
        elog(ERROR, "SPI_connect failed");
    }
    PushActiveSnapshot(GetTransactionSnapshot());
    pgstat_report_activity(STATE_RUNNING, "popularity launcher: scheduling");

    int rc = SPI_execute("SELECT 1 FROM pg_extension WHERE extname = 'popularity'", true, 1);
    if (rc == SPI_OK_SELECT && SPI_processed == 1) {
        notify_finished(
            "UPDATE popularity.refresh_runs AS r SET state = 'failed', finished_at = "
            "clock_timestamp(),"
            " error = coalesce((SELECT t.error FROM popularity.refresh_tasks AS t"
            "                   WHERE t.run_id = r.run_id AND t.state = 'failed'"
            "                   ORDER BY t.error IS NULL, t.segment LIMIT 1),"
            "                  'a task failed without recording why; see the server log')"
            " WHERE r.state = 'running' AND EXISTS (SELECT FROM popularity.refresh_tasks AS t"
            "                                       WHERE t.run_id = r.run_id AND t.state = "
            "'failed')"
            " RETURNING json_build_object('event', 'refresh_finished', 'run_id', r.run_id,"
            "                             'media_type', r.media_type, 'state', r.state,"
            "                             'job', coalesce(to_jsonb(r) ->> 'job', "
            "'refresh'))::text");
        notify_finished(
            "UPDATE popularity.refresh_runs AS r SET state = 'succeeded', finished_at = "
            "clock_timestamp()"
            " WHERE r.state = 'running' AND NOT EXISTS (SELECT FROM popularity.refresh_tasks AS t"
            "                                           WHERE t.run_id = r.run_id AND t.state <> "
            "'done')"
            " RETURNING json_build_object('event', 'refresh_finished', 'run_id', r.run_id,"
            "                             'media_type', r.media_type, 'state', r.state,"
            "                             'job', coalesce(to_jsonb(r) ->> 'job', 'refresh'))::text");
        // A filter run is queued without its writers (filter_tags, resume_refresh): they are the
        // transactions in progress once the queued run is committed (from then on the ingestion
        // trigger filters), which is now. (A 0.1.0 schema has no such runs, nor the function.)
        if (worker::has_task_status_columns()) {
            rc = SPI_execute("UPDATE popularity.refresh_runs AS r"
                             " SET writers = popularity._table_writers(r.media_table)"
                             " WHERE r.state = 'queued' AND r.writers IS NULL",
                             false, 0);
            if (rc != SPI_OK_UPDATE) {
                elog(ERROR, "popularity launcher: recording the writers of runs failed");
            }
        }
        rc = SPI_execute("UPDATE popularity.refresh_runs SET state = 'running',"
                         " started_at = coalesce(started_at, clock_timestamp())"
                         " WHERE state = 'queued' AND writers IS NOT NULL",
                         false, 0);
        if (rc != SPI_OK_UPDATE) {
            elog(ERROR, "popularity launcher: starting runs failed");
        }
        // refresh_tasks of a 0.1.0 schema (this library before ALTER EXTENSION UPDATE) has no
        // waiting_for: nothing is written to it nor read from it then.
        status_columns = worker::has_task_status_columns();
        // Tasks that need a worker: not finished, of a running run, and no worker holds their lock.
        // A worker connects as the role that queued the run: a role that can no longer connect
        // fails the task here, with the reason (the worker could only write it to the server log).
        char *sql = psprintf(
            "SELECT t.task_id, r.requested_by,"
            "       (SELECT count(*) FROM pg_locks AS l WHERE l.locktype = 'advisory'"
            "          AND l.database = (SELECT oid FROM pg_database WHERE datname = "
            "current_database())"
            "          AND l.classid = %d AND l.objsubid = 2 AND l.granted) AS live,"
            "       t.attempts,"
            "       CASE WHEN a.oid IS NULL THEN format('the role that queued the run (OID %%s)"
            " no longer exists', r.requested_by)"
            "            WHEN NOT a.rolcanlogin THEN format('role %%s cannot log in, and refresh"
            " workers run as the role that queued the run (ALTER ROLE %%s LOGIN, then resume"
            " the run)', quote_ident(a.rolname), quote_ident(a.rolname))"
            "            WHEN NOT has_database_privilege(a.oid, current_database(), 'CONNECT')"
            "            THEN format('role %%s may not connect to database %%s, and refresh workers"
            " run as the role that queued the run', quote_ident(a.rolname),"
            " quote_ident(current_database())) END AS cannot_start"
            " FROM popularity.refresh_tasks AS t JOIN popularity.refresh_runs AS r USING (run_id)"
            " LEFT JOIN pg_roles AS a ON a.oid = r.requested_by"
            " WHERE r.state = 'running' AND t.state IN ('pending', 'running', 'revisiting')"
            "   AND NOT EXISTS (SELECT FROM pg_locks AS l WHERE l.locktype = 'advisory'"
            "          AND l.database = (SELECT oid FROM pg_database WHERE datname = "
            "current_database())"
            "          AND l.classid = %d AND l.objid = t.task_id::oid AND l.objsubid = 2 AND "
            "l.granted)"
            "%s"
            " ORDER BY %s t.run_id, t.segment",
            worker::kTaskLockSpace, worker::kTaskLockSpace,
            // A task whose worker left it to wait for the run's writers needs one again once they
            // have all ended; one waiting for rows other transactions hold, after the others.
            status_columns ? " AND (t.waiting_for IS DISTINCT FROM 'writers'"
                             "      OR popularity._writers_ended(r.writers))"
                           : "",
            status_columns ? "t.waiting_for IS NOT DISTINCT FROM 'rows held by other transactions',"
                           : "");
        // Not read-only: the statement must see the runs this round has just started (a read-only
        // statement would run with the round's first snapshot, and a run queued just before the
        // round would wait for the next one, popularity.naptime later).
        rc = SPI_execute(sql, false, 0);
        if (rc != SPI_OK_SELECT) {
            elog(ERROR, "popularity launcher: listing tasks failed");
        }
        active = SPI_processed > 0;
        forget_stopped_workers();
        // Copied out first: the updates below run statements that replace SPI_tuptable (the
        // strings SPI_getvalue returns live until SPI_finish).
        const uint64 candidates = SPI_processed;
        auto *task_ids = static_cast<int64 *>(palloc(sizeof(int64) * (candidates + 1)));
        auto *roles = static_cast<Oid *>(palloc(sizeof(Oid) * (candidates + 1)));
        auto *attempts = static_cast<int *>(palloc(sizeof(int) * (candidates + 1)));
        auto *cannot_start = static_cast<char **>(palloc(sizeof(char *) * (candidates + 1)));
        int live = 0;
        for (uint64 i = 0; i < candidates; ++i) {
            HeapTuple tuple = SPI_tuptable->vals[i];
            TupleDesc desc = SPI_tuptable->tupdesc;
            bool isnull = false;
            task_ids[i] = DatumGetInt64(SPI_getbinval(tuple, desc, 1, &isnull));
            roles[i] = DatumGetObjectId(SPI_getbinval(tuple, desc, 2, &isnull));
            attempts[i] = DatumGetInt32(SPI_getbinval(tuple, desc, 4, &isnull));
            cannot_start[i] = SPI_getvalue(tuple, desc, 5);
            if (i == 0) {
                // Workers holding a task, or started by this scheduler and not yet holding one.
                const int holding =
                    static_cast<int>(DatumGetInt64(SPI_getbinval(tuple, desc, 3, &isnull)));
                live = Max(holding, started_count);
            }
        }
        for (uint64 i = 0; i < candidates && live < pg::max_workers; ++i) {
            if (tracked(task_ids[i])) {
                continue;
            }
            if (cannot_start[i] != nullptr) {
                fail_task(task_ids[i], cannot_start[i]);
                SetLatch(MyLatch); // the next round fails the run at once
                continue;
            }
            // A task whose workers keep stopping before they commit a batch (terminated, or a
            // crash) fails instead of being restarted forever.
            if (attempts[i] >= kMaxAttempts) {
                fail_task(task_ids[i],
                          psprintf("%d workers in a row stopped before committing a batch or "
                                   "recording an error (terminated, or the server crashed); see "
                                   "the server log",
                                   attempts[i]));
                SetLatch(MyLatch);
                continue;
            }
            if (!start_worker(task_ids[i], roles[i])) {
                // No free background-worker slot: not an attempt; the next round tries again.
                note_no_slot(task_ids[i]);
                break;
            }
            count_attempt(task_ids[i]);
            ++live;
        }
    }
    if (!active) {
        rc = SPI_execute("SELECT 1 FROM pg_extension WHERE extname = 'popularity'", true, 1);
        if (rc == SPI_OK_SELECT && SPI_processed == 1) {
            rc = SPI_execute(
                "SELECT 1 FROM popularity.refresh_runs WHERE state IN ('queued', 'running')", true,
                1);
            active = rc == SPI_OK_SELECT && SPI_processed > 0;
        }
    }
    SPI_finish();
    PopActiveSnapshot();
    CommitTransactionCommand();
    pgstat_report_stat(false);
    pgstat_report_activity(STATE_IDLE, nullptr);
    return active || started_count > 0;
}

// Runs tick() with errors logged rather than fatal: the next round starts from the tables again.
bool guarded_tick() {
    MemoryContext context = CurrentMemoryContext;
    volatile bool active = true;
    PG_TRY();
    { active = tick(); }
    PG_CATCH();
    {
        MemoryContextSwitchTo(context);
        EmitErrorReport();
        FlushErrorState();
        AbortCurrentTransaction();
    }
    PG_END_TRY();
    return active;
}

void scheduler_main() {
    worker::SchedulerArgs args;
    std::memcpy(&args, MyBgworkerEntry->bgw_extra, sizeof args);
    pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
    pqsignal(SIGHUP, SignalHandlerForConfigReload);
    BackgroundWorkerUnblockSignals();
    if (args.database_name[0] != '\0') {
        BackgroundWorkerInitializeConnection(args.database_name, nullptr, 0);
    } else {
        BackgroundWorkerInitializeConnectionByOid(args.database, InvalidOid, 0);
    }
    worker::pin_search_path(); // before any statement (refresh.hpp)
    pgstat_report_appname("popularity scheduler");
    if (!pg::claim_scheduler_slot(MyDatabaseId)) {
        proc_exit(0); // another scheduler serves this database
    }

    while (!ShutdownRequestPending) {
        if (ConfigReloadPending) {
            ConfigReloadPending = false;
            ProcessConfigFile(PGC_SIGHUP);
        }
        if (!guarded_tick()) {
            // Nothing to do: give up the slot, then look once more, so that a run queued just
            // before the slot was released (whose wake-up reached this process) is not missed;
            // one queued after it starts a new scheduler.
            pg::release_scheduler_slot();
            if (guarded_tick() && pg::claim_scheduler_slot(MyDatabaseId)) {
                continue;
            }
            break;
        }
        (void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
                        pg::launcher_naptime, PG_WAIT_EXTENSION);
        ResetLatch(MyLatch);
        CHECK_FOR_INTERRUPTS();
    }
    pg::release_scheduler_slot();
    proc_exit(0);
}

// The launcher: no database connection; starts a scheduler for each configured database now and
// every minute (a scheduler exits at once when its database has no active run).
void launcher_main() {
    pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
    pqsignal(SIGHUP, SignalHandlerForConfigReload);
    BackgroundWorkerUnblockSignals();
    while (!ShutdownRequestPending) {
        if (ConfigReloadPending) {
            ConfigReloadPending = false;
            ProcessConfigFile(PGC_SIGHUP);
        }
        char *names = pstrdup(pg::refresh_database != nullptr ? pg::refresh_database : "");
        List *databases = NIL;
        if (!SplitIdentifierString(names, ',', &databases)) {
            ereport(LOG, (errmsg("popularity.database is not a valid list of database names")));
        } else {
            ListCell *cell;
            foreach (cell, databases) {
                worker::start_scheduler(InvalidOid, static_cast<const char *>(lfirst(cell)));
            }
        }
        list_free(databases);
        pfree(names);
        (void)WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 60000L,
                        PG_WAIT_EXTENSION);
        ResetLatch(MyLatch);
    }
    proc_exit(0);
}

} // namespace

void popularity::worker::register_launcher() {
    BackgroundWorker worker =
        describe_worker("popularity_launcher_main", "popularity launcher", false, 5);
    RegisterBackgroundWorker(&worker);
}

bool popularity::worker::start_scheduler(Oid database, const char *database_name) {
    BackgroundWorker worker = describe_worker("popularity_scheduler_main", "popularity scheduler",
                                              true, BGW_NEVER_RESTART);
    SchedulerArgs args{};
    args.database = database;
    if (database_name != nullptr) {
        strlcpy(args.database_name, database_name, sizeof args.database_name);
    }
    static_assert(sizeof args <= BGW_EXTRALEN);
    std::memcpy(worker.bgw_extra, &args, sizeof args);
    return RegisterDynamicBackgroundWorker(&worker, nullptr);
}

extern "C" void popularity_launcher_main(Datum) {
    pg::run_guarded("popularity launcher", [] { launcher_main(); });
}

extern "C" void popularity_scheduler_main(Datum) {
    pg::run_guarded("popularity scheduler", [] { scheduler_main(); });
}
