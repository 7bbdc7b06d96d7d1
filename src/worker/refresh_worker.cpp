// A refresh worker: rescoring one task (a block range of a media table) in batches.
//
// Each batch is one transaction: it reads the current constants, finds the rows of the run's
// providers in its block range whose stored score differs from the recomputed one (no lock taken
// for rows that are already right), locks only those with FOR UPDATE SKIP LOCKED, rewrites them,
// records the rows it could not lock (by primary key) for a later revisit, and commits its progress
// marker and counters with the rows. After its range, the task revisits skipped rows until none is
// left. SIGTERM, SIGHUP, cancellation and postmaster death are handled between batches. A batch
// that fails with a transient error is retried after a pause; every error is recorded in the task
// (task_status.hpp).
#include "../core/float_compare.hpp"
#include "../core/popularity.hpp"

#include "../pg/guard.hpp"
#include "../pg/metric_jsonb.hpp"
#include "../pg/name_lookup.hpp"
#include "../pg/owner_context.hpp"
#include "../pg/relation_access.hpp"
#include "../pg/score_trigger.hpp"
#include "../pg/settings.hpp"
#include "refresh.hpp"
#include "task_status.hpp"

extern "C" {
#include "access/heapam.h"
#include "access/table.h"
#include "storage/bufmgr.h"
#include "storage/freespace.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "executor/tuptable.h"
#include "utils/acl.h"
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
    Oid relid;
    char *key_name; // unquoted
    Oid key_type_id;
    Oid relfilenode; // the table's file when the run was queued (InvalidOid: not recorded)
    // Attribute numbers in the media table, looked up again (with their types checked) by every
    // batch under its lock: DDL between batches never makes a batch read a column as another type.
    AttrNumber provider_att;
    AttrNumber meta_data_att;
    AttrNumber score_att;
    AttrNumber key_att;
    Oid key_output; // output function of the key's type (skipped rows are recorded as text)
    // Block ranges of this worker's last batches that wrote rows, oldest first: their old row
    // versions are dead once committed, and the space is reclaimed two batches later (when no
    // snapshot of the other workers can still see them) so new versions reuse it.
    int64 written_from[2];
    int64 written_to[2];
    int written_count;
    SPIPlanPtr update_plan; // rewrites the locked rows of a main-pass batch
    SPIPlanPtr counts_plan; // adds a batch's counters to refresh_progress
    SPIPlanPtr skip_plan;   // records rows a batch could not lock
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
    bool writers_ended; // every transaction in progress when the run was queued has ended
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

// The statement of a revisit batch (rows skipped earlier, found again by key): $1 providers, $2
// metrics, $3 constants, $4 tolerance, $5 task id, $6 the keys. Rows skipped again are recorded
// again. (Main-pass batches do the same in C: main_batch.)
char *revisit_sql(const Task &task) {
    const char *where = psprintf("t.%s = ANY ($6::text[]::%s[])", task.key_column, task.key_type);
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

// Opens the media table for a batch and resolves the columns the batch reads, under the batch's
// lock. The batch reads the table directly with the role's snapshot, so the role must still be
// allowed to read and update it (rights revoked during a run stop it at its next batch) and no
// row-level security policy may apply to it (the UPDATE would apply the policy, the scan would
// not).
Relation open_batch_table(Task &task) {
    Relation rel = pg::open_media_table(task.relid, RowExclusiveLock, ACL_SELECT | ACL_UPDATE,
                                        "refresh_popularity",
                                        "Refresh as the table owner or a role with BYPASSRLS.");
    if (task.relfilenode != InvalidOid && rel->rd_node.relNode != task.relfilenode) {
        ereport(
            ERROR,
            (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
             errmsg("table %s was rewritten while the refresh ran", task.table),
             errdetail("VACUUM FULL, CLUSTER or an ALTER TABLE that rewrites the table moves rows "
                       "between the block ranges the walk has passed and those it has not."),
             errhint("Start a new refresh: CALL refresh_popularity('%s', force => true).",
                     task.media_type)));
    }
    task.provider_att = pg::media_column(rel, "provider", TEXTOID, VARCHAROID);
    task.meta_data_att = pg::media_column(rel, "meta_data", JSONBOID, JSONBOID);
    task.score_att = pg::media_column(rel, "standardized_popularity", FLOAT8OID, FLOAT8OID);
    task.key_att = pg::media_column(rel, task.key_name, task.key_type_id, task.key_type_id);
    return rel;
}

// The UPDATE of a main-pass batch: $1 the locked rows, $2 their scores.
char *update_sql(const Task &task) {
    return psprintf("UPDATE %s AS t SET standardized_popularity = u.score%s"
                    " FROM unnest($1::tid[], $2::float8[]) AS u(tid, score) WHERE t.ctid = u.tid",
                    task.table, pg::refresh_touch_updated_on ? ", updated_on = now()" : "");
}

constexpr const char *kCountsSql =
    "INSERT INTO popularity.refresh_progress AS g (task_id, provider, rows_scanned, rows_updated,"
    " rows_skipped_locked)"
    " SELECT $1, u.provider, u.scanned, u.updated, u.skipped"
    " FROM unnest($2::text[], $3::int8[], $4::int8[], $5::int8[])"
    "   AS u(provider, scanned, updated, skipped)"
    " ON CONFLICT (task_id, provider) DO UPDATE SET"
    " rows_scanned = g.rows_scanned + excluded.rows_scanned,"
    " rows_updated = g.rows_updated + excluded.rows_updated,"
    " rows_skipped_locked = g.rows_skipped_locked + excluded.rows_skipped_locked";

constexpr const char *kSkipSql = "INSERT INTO popularity.refresh_skipped (task_id, row_key)"
                                 " SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING";

// Reads the task and its run; false when there is nothing (more) to do.
bool load_task(Task &task) {
    Oid types[1] = {INT8OID};
    Datum values[1] = {Int64GetDatum(task.task_id)};
    run("SELECT r.run_id, r.media_type, r.media_table::text, quote_ident(r.key_column),"
        "       format_type(a.atttypid, NULL), r.providers, t.end_block, t.next_block,"
        "       r.state, t.state,"
        "       (SELECT quote_ident(n.nspname) FROM pg_extension AS e"
        "        JOIN pg_namespace AS n ON n.oid = e.extnamespace WHERE e.extname = 'popularity'),"
        // relfilenode is read through to_jsonb: a 0.1.0 schema (new library, ALTER EXTENSION
        // UPDATE not run yet) has no such column, and then gives NULL.
        "       r.media_table::oid, r.key_column, a.atttypid, (to_jsonb(r) ->> 'relfilenode')::oid"
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
    task.relid =
        DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 12, &isnull));
    task.key_name = copy_value(13);
    task.key_type_id =
        DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 14, &isnull));
    const Datum relfilenode =
        SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 15, &isnull);
    task.relfilenode = isnull ? InvalidOid : DatumGetObjectId(relfilenode);
    bool key_varlena = false;
    getTypeOutputInfo(task.key_type_id, &task.key_output, &key_varlena);
    return true;
}

constexpr const char *kContextSql = "SELECT r.state = 'running',"
                                    "       coalesce(array_agg(m.provider ORDER BY m.provider) "
                                    "FILTER (WHERE m.constant IS NOT NULL), '{}'),"
                                    "       coalesce(array_agg(m.metric ORDER BY m.provider) "
                                    "FILTER (WHERE m.constant IS NOT NULL), '{}'),"
                                    "       coalesce(array_agg(m.constant ORDER BY m.provider) "
                                    "FILTER (WHERE m.constant IS NOT NULL), '{}'),"
                                    "       popularity._writers_ended(r.writers)"
                                    " FROM popularity.refresh_runs AS r"
                                    " LEFT JOIN popularity.metrics AS m ON m.media_type = "
                                    "r.media_type AND m.provider = ANY (r.providers)"
                                    " WHERE r.run_id = $1 GROUP BY r.state, r.writers";

constexpr const char *kProgressSql =
    "UPDATE popularity.refresh_tasks SET next_block = $2, batches = batches + $3, attempts = 0,"
    " rewalk = rewalk OR $4, longest_batch_ms = greatest(longest_batch_ms, $5),"
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
    context.writers_ended = DatumGetBool(SPI_getbinval(tuple, desc, 5, &isnull));
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

// A provider of the run in one transaction: its metric and constant, and the counters of the
// batch. Plain data (palloc'd), so that an error raised anywhere in the batch leaves nothing to
// destroy.
struct BatchProvider {
    const char *name;
    int name_length;
    const char *metric;
    int metric_length;
    double constant;
    int64 scanned;
    int64 updated;
    int64 skipped;
};

// A row of the range whose stored score differs from the recomputed one.
struct Candidate {
    ItemPointerData tid;
    double score;
    bool score_null;
    bool locked;
    int provider;
};

struct Batch {
    BatchProvider *providers;
    int provider_count;
    Candidate *candidates;
    int candidate_count;
    int candidate_capacity;
};

// The run's providers with their current metric and constant, sorted bytewise for lookup.
Batch make_batch(const BatchContext &context) {
    Datum *names = nullptr;
    Datum *metrics = nullptr;
    Datum *constants = nullptr;
    bool *nulls = nullptr;
    int n = 0;
    int n_metrics = 0;
    int n_constants = 0;
    deconstruct_array(DatumGetArrayTypeP(context.providers), TEXTOID, -1, false, TYPALIGN_INT,
                      &names, &nulls, &n);
    deconstruct_array(DatumGetArrayTypeP(context.metrics), TEXTOID, -1, false, TYPALIGN_INT,
                      &metrics, &nulls, &n_metrics);
    deconstruct_array(DatumGetArrayTypeP(context.constants), FLOAT8OID, sizeof(float8),
                      FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &constants, &nulls, &n_constants);
    if (n_metrics != n || n_constants != n) {
        elog(ERROR, "popularity refresh: inconsistent provider arrays");
    }
    Batch batch{};
    batch.providers = static_cast<BatchProvider *>(palloc0(sizeof(BatchProvider) * Max(n, 1)));
    batch.provider_count = n;
    for (int i = 0; i < n; i++) {
        text *name = DatumGetTextPP(names[i]);
        text *metric = DatumGetTextPP(metrics[i]);
        BatchProvider &p = batch.providers[i];
        p.name = VARDATA_ANY(name);
        p.name_length = static_cast<int>(VARSIZE_ANY_EXHDR(name));
        p.metric = VARDATA_ANY(metric);
        p.metric_length = static_cast<int>(VARSIZE_ANY_EXHDR(metric));
        p.constant = DatumGetFloat8(constants[i]);
        if (!std::isfinite(p.constant) || p.constant <= 0) {
            ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                            errmsg("the constant of provider \"%.*s\" is not a positive number",
                                   p.name_length, p.name),
                            errhint("Recompute it with popularity.refresh_constants().")));
        }
    }
    pg::sort_by_name(batch.providers, n);
    batch.candidate_capacity = 1024;
    batch.candidates =
        static_cast<Candidate *>(palloc(sizeof(Candidate) * batch.candidate_capacity));
    return batch;
}

int find_provider(const Batch &batch, const char *name, int length) {
    const BatchProvider *p = pg::find_by_name(batch.providers, batch.provider_count, name, length);
    return p == nullptr ? -1 : static_cast<int>(p - batch.providers);
}

// Scans the blocks [from, to) with the transaction's snapshot: every row of the run's providers is
// scored (the same computation as standardized_popularity(popularity_metric_value(meta_data,
// metric), constant)) and counted; the rows whose stored score differs are kept as candidates.
// Nothing is locked here.
void scan_blocks(Relation rel, const Task &task, Batch &batch, int64 from, int64 to,
                 MemoryContext row_context) {
    ItemPointerData min_tid;
    ItemPointerData max_tid;
    ItemPointerSet(&min_tid, static_cast<BlockNumber>(from), FirstOffsetNumber);
    ItemPointerSet(&max_tid, static_cast<BlockNumber>(to - 1), MaxOffsetNumber);
    TupleTableSlot *slot = table_slot_create(rel, nullptr);
    TableScanDesc scan = table_beginscan_tidrange(rel, GetActiveSnapshot(), &min_tid, &max_tid);
    const double tolerance = pg::score_tolerance;
    uint64 rows = 0;
    while (table_scan_getnextslot_tidrange(scan, ForwardScanDirection, slot)) {
        if ((++rows & 1023) == 0) {
            CHECK_FOR_INTERRUPTS();
        }
        bool isnull = false;
        const Datum provider_datum = slot_getattr(slot, task.provider_att, &isnull);
        if (isnull) {
            continue;
        }
        MemoryContext old = MemoryContextSwitchTo(row_context);
        text *provider_text = DatumGetTextPP(provider_datum);
        const int index = find_provider(batch, VARDATA_ANY(provider_text),
                                        static_cast<int>(VARSIZE_ANY_EXHDR(provider_text)));
        if (index < 0) {
            MemoryContextSwitchTo(old);
            MemoryContextReset(row_context);
            continue;
        }
        BatchProvider &provider = batch.providers[index];
        provider.scanned++;
        bool score_null = true;
        double score = 0.0;
        bool meta_null = false;
        const Datum meta = slot_getattr(slot, task.meta_data_att, &meta_null);
        if (!meta_null) {
            // Runs under PG_TRY: nothing here may throw (see guard.hpp).
            const core::MetricValue value = pg::jsonb_metric_in_c_frame(
                DatumGetJsonbP(meta), provider.metric, static_cast<size_t>(provider.metric_length));
            if (value.ok()) {
                // The constant was checked in make_batch.
                const std::optional<double> s =
                    core::score_with_checked_constant(value.value, provider.constant);
                if (s) {
                    score = *s;
                    score_null = false;
                }
            }
        }
        MemoryContextSwitchTo(old);
        MemoryContextReset(row_context);
        bool old_null = false;
        const double stored = DatumGetFloat8(slot_getattr(slot, task.score_att, &old_null));
        const bool differs = (old_null || score_null)
                                 ? old_null != score_null
                                 : !core::within_relative_tolerance(stored, score, tolerance);
        if (!differs) {
            continue;
        }
        if (batch.candidate_count == batch.candidate_capacity) {
            batch.candidate_capacity *= 2;
            batch.candidates = static_cast<Candidate *>(
                repalloc(batch.candidates, sizeof(Candidate) * batch.candidate_capacity));
        }
        Candidate &c = batch.candidates[batch.candidate_count++];
        c.tid = slot->tts_tid;
        c.score = score;
        c.score_null = score_null;
        c.locked = false;
        c.provider = index;
    }
    table_endscan(scan);
    ExecDropSingleTupleTableSlot(slot);
}

// Locks the candidates FOR UPDATE, skipping rows another transaction holds (or changed since the
// snapshot: their new version is found again by key in the revisit). Returns how many are locked.
int lock_candidates(Relation rel, Batch &batch) {
    if (batch.candidate_count == 0) {
        return 0;
    }
    TupleTableSlot *slot = table_slot_create(rel, nullptr);
    const CommandId cid = GetCurrentCommandId(true);
    int locked = 0;
    for (int i = 0; i < batch.candidate_count; i++) {
        Candidate &c = batch.candidates[i];
        TM_FailureData failure;
        const TM_Result result = table_tuple_lock(rel, &c.tid, GetActiveSnapshot(), slot, cid,
                                                  LockTupleExclusive, LockWaitSkip, 0, &failure);
        c.locked = result == TM_Ok;
        if (c.locked) {
            locked++;
        } else {
            batch.providers[c.provider].skipped++;
        }
    }
    ExecDropSingleTupleTableSlot(slot);
    return locked;
}

// Rewrites the locked candidates with one UPDATE (through the executor, so the table's triggers
// and indexes see an ordinary UPDATE).
void update_locked(const Task &task, Batch &batch, int locked) {
    if (locked == 0) {
        return;
    }
    Datum *tids = static_cast<Datum *>(palloc(sizeof(Datum) * locked));
    Datum *scores = static_cast<Datum *>(palloc(sizeof(Datum) * locked));
    bool *score_nulls = static_cast<bool *>(palloc(sizeof(bool) * locked));
    int n = 0;
    for (int i = 0; i < batch.candidate_count; i++) {
        Candidate &c = batch.candidates[i];
        if (!c.locked) {
            continue;
        }
        tids[n] = PointerGetDatum(&c.tid);
        scores[n] = Float8GetDatum(c.score);
        score_nulls[n] = c.score_null;
        batch.providers[c.provider].updated++;
        n++;
    }
    int dims[1] = {n};
    int lbs[1] = {1};
    Datum values[2] = {
        PointerGetDatum(
            construct_array(tids, n, TIDOID, sizeof(ItemPointerData), false, TYPALIGN_SHORT)),
        PointerGetDatum(construct_md_array(scores, score_nulls, 1, dims, lbs, FLOAT8OID,
                                           sizeof(float8), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE))};
    const int rc = SPI_execute_plan(task.update_plan, values, nullptr, false, 0);
    if (rc != SPI_OK_UPDATE) {
        elog(ERROR, "popularity refresh: updating a batch failed: %s", SPI_result_code_string(rc));
    }
    if (SPI_processed != static_cast<uint64>(n)) {
        // A locked row not updated: something (a policy, a trigger returning NULL) hid it.
        ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR),
                        errmsg("popularity refresh: %d rows were locked but %llu were updated", n,
                               static_cast<unsigned long long>(SPI_processed)),
                        errhint("A trigger on the media table that skips updates (returns NULL) "
                                "or a row-level security policy prevents the refresh.")));
    }
}

// Records the keys of the rows that could not be locked, for the revisit pass.
void record_skipped(Relation rel, const Task &task, const Batch &batch, int skipped) {
    if (skipped == 0) {
        return;
    }
    // Their keys are read again from the scanned versions (rare: only rows another transaction
    // held), so that the scan keeps no per-row copy of the key.
    Datum *keys = static_cast<Datum *>(palloc(sizeof(Datum) * skipped));
    TupleTableSlot *slot = table_slot_create(rel, nullptr);
    int n = 0;
    for (int i = 0; i < batch.candidate_count; i++) {
        const Candidate &c = batch.candidates[i];
        if (c.locked) {
            continue;
        }
        ItemPointerData tid = c.tid;
        bool isnull = true;
        if (table_tuple_fetch_row_version(rel, &tid, GetActiveSnapshot(), slot)) {
            const Datum key = slot_getattr(slot, task.key_att, &isnull);
            if (!isnull) {
                keys[n++] = CStringGetTextDatum(OidOutputFunctionCall(task.key_output, key));
            }
        }
    }
    ExecDropSingleTupleTableSlot(slot);
    if (n == 0) {
        return;
    }
    Datum values[2] = {Int64GetDatum(task.task_id),
                       PointerGetDatum(construct_array(keys, n, TEXTOID, -1, false, TYPALIGN_INT))};
    const int rc = SPI_execute_plan(task.skip_plan, values, nullptr, false, 0);
    if (rc != SPI_OK_INSERT) {
        elog(ERROR, "popularity refresh: recording skipped rows failed: %s",
             SPI_result_code_string(rc));
    }
}

// Adds the batch's counters to refresh_progress (same transaction as the rows and the marker).
void record_counts(const Task &task, const Batch &batch) {
    const int n = batch.provider_count;
    Datum *names = static_cast<Datum *>(palloc(sizeof(Datum) * Max(n, 1)));
    Datum *scanned = static_cast<Datum *>(palloc(sizeof(Datum) * Max(n, 1)));
    Datum *updated = static_cast<Datum *>(palloc(sizeof(Datum) * Max(n, 1)));
    Datum *skipped = static_cast<Datum *>(palloc(sizeof(Datum) * Max(n, 1)));
    int k = 0;
    for (int i = 0; i < n; i++) {
        const BatchProvider &p = batch.providers[i];
        if (p.scanned == 0) {
            continue;
        }
        names[k] = PointerGetDatum(cstring_to_text_with_len(p.name, p.name_length));
        scanned[k] = Int64GetDatum(p.scanned);
        updated[k] = Int64GetDatum(p.updated);
        skipped[k] = Int64GetDatum(p.skipped);
        k++;
    }
    if (k == 0) {
        return;
    }
    auto int8_array = [k](Datum *items) {
        return PointerGetDatum(
            construct_array(items, k, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
    };
    Datum values[5] = {Int64GetDatum(task.task_id),
                       PointerGetDatum(construct_array(names, k, TEXTOID, -1, false, TYPALIGN_INT)),
                       int8_array(scanned), int8_array(updated), int8_array(skipped)};
    const int rc = SPI_execute_plan(task.counts_plan, values, nullptr, false, 0);
    if (rc != SPI_OK_INSERT) {
        elog(ERROR, "popularity refresh: recording counters failed: %s",
             SPI_result_code_string(rc));
    }
}

// Prunes the pages of a range this worker rewrote earlier (as any backend reading them would) and
// records their free space in the free space map, so that the new row versions of later batches
// fill them instead of extending the table (a full rescore would otherwise double its size and
// make the workers queue on the relation extension lock). Pages whose dead versions some snapshot
// can still see are left as they are.
void reclaim_space(Relation rel, int64 from, int64 to) {
    const BlockNumber blocks = RelationGetNumberOfBlocks(rel);
    to = Min(to, static_cast<int64>(blocks));
    if (from >= to) {
        return;
    }
    for (int64 block = from; block < to; block++) {
        const Buffer buffer = ReadBuffer(rel, static_cast<BlockNumber>(block));
        heap_page_prune_opt(rel, buffer);
        LockBuffer(buffer, BUFFER_LOCK_SHARE);
        const Size free = PageGetHeapFreeSpace(BufferGetPage(buffer));
        UnlockReleaseBuffer(buffer);
        if (free >= BLCKSZ / 4) {
            RecordPageWithFreeSpace(rel, static_cast<BlockNumber>(block), free);
        }
    }
    FreeSpaceMapVacuumRange(rel, static_cast<BlockNumber>(from), static_cast<BlockNumber>(to));
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
    Batch batch = make_batch(context);
    MemoryContext row_context =
        AllocSetContextCreate(CurrentMemoryContext, "popularity refresh row", ALLOCSET_SMALL_SIZES);
    const TimestampTz started = GetCurrentTimestamp();
    int64 position = task.next_block;
    int batches = 0;
    do {
        const int64 end = Min(task.end_block, position + pg::batch_blocks);
        scan_blocks(rel, task, batch, position, end, row_context);
        position = end;
        batches++;
    } while (batch.candidate_count == 0 && position < task.end_block &&
             batches < kCleanBatchesPerTransaction &&
             !TimestampDifferenceExceeds(started, GetCurrentTimestamp(), kCleanScanMillis));
    const int locked = lock_candidates(rel, batch);
    update_locked(task, batch, locked);
    record_skipped(rel, task, batch, batch.candidate_count - locked);
    record_counts(task, batch);
    long seconds = 0;
    int microseconds = 0;
    TimestampDifference(GetCurrentTransactionStartTimestamp(), GetCurrentTimestamp(), &seconds,
                        &microseconds);
    const double batch_ms = locked > 0 ? seconds * 1000.0 + microseconds / 1000.0 : 0.0;
    Datum progress[5] = {Int64GetDatum(task.task_id), Int64GetDatum(position),
                         Int32GetDatum(batches), BoolGetDatum(!context.writers_ended),
                         Float8GetDatum(batch_ms)};
    const int rc = SPI_execute_plan(task.progress_plan, progress, nullptr, false, 0);
    if (rc != SPI_OK_UPDATE) {
        elog(ERROR, "popularity refresh: recording progress failed: %s",
             SPI_result_code_string(rc));
    }
    MemoryContextDelete(row_context);
    table_close(rel, NoLock);
    if (locked > 0) {
        task.written_from[task.written_count] = task.next_block;
        task.written_to[task.written_count] = position;
        task.written_count++;
    }
    task.next_block = position;
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

enum class Step { more, wait, finished };

// The task has walked its range and no skipped row is left. Rows that transactions in progress
// when the run was queued (its writers) inserted were invisible to batches that ran before those
// transactions ended, and may carry the old constants: so the task is done only once they have
// all ended and, if any of its batches ran before that, it has walked its range once more; the last
// task also walks the blocks added since the run was queued. Otherwise it is done.
Step finish_walk(Task &task, const BatchContext &context) {
    if (!context.writers_ended) {
        return Step::wait;
    }
    Oid types[1] = {INT8OID};
    Datum id[1] = {Int64GetDatum(task.task_id)};
    run("WITH t AS (SELECT t.task_id, t.rewalk, t.tail_checked, t.first_block, t.end_block,"
        "   cardinality(r.writers) > 0 AND t.segment = (SELECT max(x.segment) FROM"
        "     popularity.refresh_tasks AS x WHERE x.run_id = t.run_id) AS last_with_writers,"
        "   pg_catalog.pg_relation_size(r.media_table)"
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
                           task.table,   task.key_column, task.key_type};
}

constexpr const char *kRlsHint = "Refresh as the table owner or a role with BYPASSRLS.";

// One transaction of work. May raise (the caller records the error).
Step do_step(Task &task) {
    begin_transaction("popularity refresh batch");
    set_batch_settings();
    worker::arm_batch_timeout(); // the worker loop disarms it after the batch, whatever happened
    // First, whatever the step: the role may still read and update the table (without these
    // rights it could not even see its run, and would stop as if the run had been cancelled).
    pg::check_media_table(task.relid, ACL_SELECT | ACL_UPDATE, "refresh_popularity", kRlsHint);
    const BatchContext context = load_context(task);
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
    begin_transaction("popularity refresh: starting");
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
    pg::check_media_table(task.relid, ACL_SELECT | ACL_UPDATE, "refresh_popularity", kRlsHint);
    // Prepared once (a start-up that failed and is retried keeps those it made).
    if (task.update_plan == nullptr) {
        Oid update_types[2] = {TIDARRAYOID, FLOAT8ARRAYOID};
        task.update_plan = prepare_kept(update_sql(task), 2, update_types);
    }
    if (task.counts_plan == nullptr) {
        Oid counts_types[5] = {INT8OID, TEXTARRAYOID, INT8ARRAYOID, INT8ARRAYOID, INT8ARRAYOID};
        task.counts_plan = prepare_kept(kCountsSql, 5, counts_types);
    }
    if (task.skip_plan == nullptr) {
        Oid skip_types[2] = {INT8OID, TEXTARRAYOID};
        task.skip_plan = prepare_kept(kSkipSql, 2, skip_types);
    }
    if (task.revisit_plan == nullptr) {
        Oid revisit_types[6] = {TEXTARRAYOID, TEXTARRAYOID, FLOAT8ARRAYOID,
                                FLOAT8OID,    INT8OID,      TEXTARRAYOID};
        task.revisit_plan = prepare_kept(revisit_sql(task), 6, revisit_types);
    }
    if (task.context_plan == nullptr) {
        Oid context_types[1] = {INT8OID};
        task.context_plan = prepare_kept(kContextSql, 1, context_types);
    }
    if (task.progress_plan == nullptr) {
        Oid progress_types[5] = {INT8OID, INT8OID, INT4OID, BOOLOID, FLOAT8OID};
        task.progress_plan = prepare_kept(kProgressSql, 5, progress_types);
    }
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
    pgstat_report_appname("popularity refresh worker");
    pg::scoring_trigger_bypassed = true;

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
