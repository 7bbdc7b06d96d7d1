// What a refresh task's row says beyond its progress marker, kept by its worker: what the task
// waits for, since when and for which processes (refresh_tasks.waiting_for, waiting_since,
// waiting_pids), and the transient errors its batches are retried after (failures, retries,
// last_error; popularity.batch_retries).
//
// C-style: these may raise with ereport (they never throw); call them from the worker's C-style
// frames.
#pragma once

#include "../pg/pg_includes.hpp"

namespace popularity::worker {

// The task, as these functions need it.
struct TaskRef {
    int64 task_id;
    int64 run_id;
    Oid relid;              // the media table
    Oid leaf;               // the relation the task walks (the media table or a leaf partition)
    const char *leaf_table; // qualified, quoted
    const char *key_match;  // `t`'s key equals the key text `k.key` (Task::key_match_sql)
};

// What a step that committed leaves the task waiting for.
enum class Wait {
    none,
    writers, // the walk is done; transactions in progress when the run was queued have not ended
    rows,    // rows other transactions hold are left to revisit
    ddl,     // the walk is done; partition DDL on the media table (ATTACH, DETACH CONCURRENTLY,
             // ANALYZE) holds the lock finishing it needs
};

// A background worker runs no client statement, so statement_timeout is never armed for it: each
// batch arms popularity.batch_statement_timeout itself, and the worker disarms it after the batch,
// whatever happened (before it records anything).
void arm_batch_timeout();
void disarm_batch_timeout();

// Whether a batch's error (copied with CopyErrorData, before disarm_batch_timeout) is transient:
// a lock timeout (55P03), the batch's own statement timeout (57014; a cancel request, also 57014,
// is not), a serialization failure (40001) or a deadlock (40P01). Such a batch is retried.
bool transient_error(const ErrorData *error);

// Whether refresh_tasks has the columns these functions write (a 0.1.0 schema, with this library
// before ALTER EXTENSION UPDATE, has not: then nothing but a failure is recorded).
bool has_task_status_columns();

// In the step's transaction, before it commits: records what the task now waits for (and the
// processes holding the rows it waits for) and that its batches no longer fail; writes the task's
// row only when something changed. Returns true when the worker is to stop and leave the task to a
// later worker, to free its slot: a task waiting for the run's writers (the scheduler starts a
// worker again once they have all ended), or for rows while tasks of a running run have no worker
// yet (the scheduler starts workers for tasks that wait last).
bool note_step(const TaskRef &task, Wait wait);

// After a failed batch (its transaction aborted, the timeout disarmed), in a transaction of its
// own and as the extension's owner (the role may have lost the rights the policies of
// refresh_tasks ask for: the error must be recorded all the same): counts the failure in the task
// with its error, and fails the task when the error is not transient or the same batch has failed
// more than popularity.batch_retries times in a row in this worker. Returns true when the task is
// to be retried (after retry_pending() is over), false when it has failed.
bool record_failure(const TaskRef &task, const ErrorData *error, bool transient);

// Whether the worker is pausing before it retries a batch.
bool retry_pending();
// Waits up to a second of the pause (a SIGTERM or cancel request ends the wait at once); false when
// the run is no longer running (cancelled, failed): the worker stops.
bool pause_for_retry(const TaskRef &task);

} // namespace popularity::worker
