// The batch engine of the background workers, shared by the two jobs a run can be: the popularity
// refresh (rescore the rows of the providers whose constant changed) and the tag filter (apply the
// tag rules in place). A task is a block range of the media table, or of one of its leaf partitions
// (a partitioned media table has tasks per leaf); each batch is one transaction:
//
//   scan a block range with the transaction's snapshot -> the job decides per row (nothing locked)
//   -> lock the rows to change by TID, FOR UPDATE SKIP LOCKED (a row updated since the snapshot is
//   followed to its last version and decided again) -> one UPDATE through SPI -> record the keys of
//   the rows it could not lock -> commit the rows, the counters and the progress marker together.
//
// After its range, a task revisits the skipped rows (found again by key, then the same decide /
// lock / write path) until none is left, and rewalks or walks the table's tail until the run has
// converged (refresh_worker.cpp, finish_walk). The jobs differ only in the per-row decision, the
// UPDATE they run and their own counters: the Job interface below.
//
// Everything here holds plain C data (palloc'd) only: an ERROR raised anywhere in a batch leaves
// nothing to destroy. The one C++ part that throws (the tag rules) runs under run_guarded per row.
#pragma once

#include "../core/tag_rules.hpp"
#include "../pg/pg_includes.hpp"

extern "C" {
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "utils/array.h"
#include "utils/jsonb.h"
#include "utils/rel.h"
}

namespace popularity::worker {

enum class JobKind { refresh, filter_tags };

// The counters a filter run keeps beside rows scanned/updated/skipped, keyed by name in
// popularity.refresh_counters: tags dropped per verdict (by the verdict's name; keep excluded),
// and rows whose tags are not an array.
constexpr int kFilterCounterCount = static_cast<int>(core::kTagVerdictCount);
constexpr int kRowsNotArrayCounter = 0; // index 0 is the keep verdict's slot, never a drop
constexpr const char *kRowsNotArrayName = "rows_not_an_array";

struct Job;

// Everything a worker keeps across its batches (plain C data, in TopMemoryContext).
struct Task {
    int64 task_id;
    int64 run_id;
    JobKind kind;
    const Job *job;
    bool dry_run;        // filter: count what would change, write nothing
    bool record_removed; // filter: record what each row loses (popularity.tag_filter_removed)
    int batch_blocks;    // blocks per batch (the run's, or popularity.batch_blocks)
    char *media_type;
    char *table; // the media table: qualified, quoted name
    int64 end_block;
    int64 next_block;
    Oid relid; // the media table (ordinary or partitioned)
    // The relation the task walks: the media table itself, or one of its leaf partitions; its
    // qualified, quoted name; its file when the task was created (InvalidOid: not recorded).
    Oid leaf;
    char *leaf_table;
    Oid relfilenode;
    // The primary key, any number of columns (key.cpp says how a key is written as text).
    int key_count;
    char **key_names; // unquoted
    Oid *key_type_ids;
    Oid *key_outputs;     // output functions of the key types
    AttrNumber *key_atts; // in the leaf, resolved by every batch
    char *key_text_sql;   // the key of `t` as text (SQL)
    char *key_match_sql;  // `t`'s key equals the key text `k.key` (SQL)
    // Attribute numbers in the media table, looked up again (with their types checked) by every
    // batch under its lock: DDL between batches never makes a batch read a column as another type.
    AttrNumber provider_att;
    AttrNumber meta_data_att; // refresh
    AttrNumber score_att;     // refresh
    AttrNumber tags_att;      // filter
    // Block ranges of this worker's last batches that wrote rows, oldest first: their old row
    // versions are dead once committed, and the space is reclaimed two batches later (when no
    // snapshot of the other workers can still see them) so new versions reuse it.
    int64 written_from[2];
    int64 written_to[2];
    int written_count;
    SPIPlanPtr update_plan;   // the job's UPDATE of the locked rows
    SPIPlanPtr counts_plan;   // adds a batch's counters to refresh_progress
    SPIPlanPtr counters_plan; // adds a batch's job counters to refresh_counters
    SPIPlanPtr skip_plan;     // records rows a batch could not lock
    SPIPlanPtr keys_plan;     // finds skipped rows again by key
    SPIPlanPtr context_plan;  // run state and the providers' current constants
    SPIPlanPtr progress_plan; // the progress marker of a main-pass batch
};

// What every batch reads first, in its own transaction.
struct BatchContext {
    bool active; // the run is still running (not cancelled, not failed)
    Datum providers;
    Datum metrics;
    Datum constants;
    bool writers_ended; // every transaction in progress when the run was queued has ended
    bool other_job_active; // a run of the other job (not a dry run) on the media type is active
};

// A group of rows counted together in refresh_progress: a provider of a refresh run (with its
// metric and constant), or the one group of a filter run (every row, provider '').
struct Group {
    const char *name;
    int name_length;
    const char *metric;
    int metric_length;
    double constant;
    int64 scanned;
    int64 updated;
    int64 skipped;
};

// A row version the job changes.
struct Candidate {
    ItemPointerData tid; // the version scanned, then the version locked
    int group;
    bool locked;
    bool held;    // not locked because another transaction holds it: revisited later
    bool changes; // false when the version locked no longer needs the change
    double score; // refresh: the new score
    bool score_null;
    Jsonb *tags;    // filter: the new tags (not built in a dry run)
    Jsonb *removed; // filter: [[position, tag], ...] when the run records what it removes
    int32 drops[kFilterCounterCount]; // filter: tags dropped per verdict
};

struct Batch {
    Relation rel;
    Group *groups;
    int group_count;
    Candidate *candidates;
    int candidate_count;
    int candidate_capacity;
    int64 counters[kFilterCounterCount]; // the job's own counters (filter)
    const core::TagRules *rules;         // filter
    MemoryContext row_context;           // reset after every row
};

// What makes a job a job.
struct Job {
    const char *name;     // as in refresh_runs.job
    const char *activity; // pg_stat_activity text of its batches
    // Resolves (and type-checks) the columns the job reads, under the batch's lock.
    void (*resolve_columns)(Task &task, Relation rel);
    // Per transaction: the run's groups and what the decision needs (constants, rules).
    void (*begin_batch)(const Task &task, const BatchContext &context, Batch &batch);
    // Decides for the row in `slot` (in the batch's memory context). Returns true, with `c` filled
    // (but for tid/locked/held), when the row must change. `count`: count the row as scanned (the
    // first look at it; false when a locked later version is decided again).
    bool (*decide)(const Task &task, Batch &batch, TupleTableSlot *slot, Candidate &c, bool count);
    // The statement that writes the changing rows: prepared once per worker.
    char *(*update_sql)(const Task &task, Oid *types, int *nargs);
    // Runs the prepared UPDATE on the locked candidates that change; returns the rows written.
    uint64 (*write)(const Task &task, Batch &batch, int changing);
    // Adds the job's own counters of the batch to refresh_counters (may do nothing).
    void (*record_counters)(const Task &task, const Batch &batch);
};

const Job &refresh_job();
const Job &filter_job();

// Shared mechanics (engine.cpp).

// Starts and commits a worker's transaction (SPI connected, a snapshot pushed, the activity shown
// in pg_stat_activity).
void begin_transaction(const char *activity);
void commit_transaction();
// Runs a statement with parameters; raises on failure. Returns SPI_processed.
uint64 run(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls, int expected);
// The equality operator of a type, schema-qualified for SQL text ("OPERATOR(pg_catalog.=)"), in
// TopMemoryContext; raises when the type has none.
char *qualified_equality(Oid type);
// Prepares the task's statements (statements.cpp) that are not prepared yet; after load_task.
void prepare_statements(Task &task);
// Prepares and keeps a plan; raises on failure.
SPIPlanPtr prepare_kept(const char *sql, int nargs, Oid *types);
// Whether the task's leaf is still part of the media table (locked: it stays so until the
// transaction ends); false when it was detached or dropped during the run.
bool leaf_present(const Task &task);
// Names the task's relations as they are called now (after leaf_present, under its lock): when
// the leaf or the media table was renamed, the statements that name them are prepared again.
void refresh_names(Task &task);
// Opens the task's relation (the media table or its leaf) for a batch (kind, rights, row-level
// security, rewrite checked) and has the job resolve its columns. After leaf_present.
Relation open_batch_table(Task &task);
// The key of the row in `slot` as text (as key_text_sql writes it), in the current memory context.
char *key_text(const Task &task, TupleTableSlot *slot);
// Fills the key fields of the task from the key columns of the media table (names given) and
// builds its key SQL (key.cpp).
void resolve_key(Task &task, char **names, int count);
// Allocates the candidate list and the row context of a batch (the groups are the job's).
void init_batch(Batch &batch, Relation rel);
// Scans the blocks [from, to) with the active snapshot; keeps the rows the job changes.
void scan_range(const Task &task, Batch &batch, int64 from, int64 to);
// Reads the row versions at `tids` (visible to the active snapshot) and keeps those the job
// changes: the revisit of skipped rows, found again by key.
void scan_tids(const Task &task, Batch &batch, const ItemPointerData *tids, int count);
// Locks the candidates FOR UPDATE SKIP LOCKED, following updated rows to their last version and
// deciding again. Returns how many locked candidates change.
int lock_candidates(const Task &task, Batch &batch);
// Records the keys of the candidates another transaction held, for the revisit.
void record_skipped(const Task &task, const Batch &batch);
// Adds the batch's per-group counters to refresh_progress, and the job's own counters.
void record_counts(const Task &task, const Batch &batch);
// Prunes pages this worker rewrote and records their free space (see engine.cpp).
void reclaim_space(Relation rel, int64 from, int64 to);

// A group by name in a batch whose groups are sorted by name; -1 when absent.
int find_group(const Batch &batch, const char *name, int length);

} // namespace popularity::worker
