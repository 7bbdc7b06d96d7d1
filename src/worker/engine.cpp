// The shared mechanics of a batch (engine.hpp): scanning, locking, recording skipped rows and
// counters, reclaiming space. The jobs (refresh_job.cpp, filter_job.cpp) decide per row and write.
#include "engine.hpp"

#include "../pg/citus.hpp"
#include "../pg/name_lookup.hpp"
#include "../pg/relation_access.hpp"
#include "../pg/settings.hpp"

extern "C" {
#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "pgstat.h"
#include "storage/bufmgr.h"
#include "storage/freespace.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/typcache.h"
#include "utils/syscache.h"
#include "catalog/pg_operator.h"
#include "catalog/partition.h"
#include "storage/lmgr.h"
#include "access/htup_details.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
}

namespace popularity::worker {

// A worker's own transaction, with an SPI connection and a snapshot (a background worker has no
// client statement to provide them).
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

char *qualified_equality(Oid type) {
    const TypeCacheEntry *entry = lookup_type_cache(type, TYPECACHE_EQ_OPR);
    if (!OidIsValid(entry->eq_opr)) {
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_FUNCTION),
                        errmsg("type %s has no equality operator", format_type_be(type))));
    }
    HeapTuple tuple = SearchSysCache1(OPEROID, ObjectIdGetDatum(entry->eq_opr));
    if (!HeapTupleIsValid(tuple)) {
        elog(ERROR, "cache lookup failed for operator %u", entry->eq_opr);
    }
    const Form_pg_operator op = reinterpret_cast<Form_pg_operator>(GETSTRUCT(tuple));
    char *result = MemoryContextStrdup(
        TopMemoryContext, psprintf("OPERATOR(%s.%s)",
                                   quote_identifier(get_namespace_name(op->oprnamespace)),
                                   NameStr(op->oprname)));
    ReleaseSysCache(tuple);
    return result;
}

uint64 run(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls, int expected) {
    const int rc = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);
    if (rc != expected) {
        elog(ERROR, "popularity worker: \"%s\" failed: %s", sql, SPI_result_code_string(rc));
    }
    return SPI_processed;
}

SPIPlanPtr prepare_kept(const char *sql, int nargs, Oid *types) {
    SPIPlanPtr plan = SPI_prepare(sql, nargs, types);
    if (plan == nullptr) {
        elog(ERROR, "popularity worker: preparing a statement failed: %s",
             SPI_result_code_string(SPI_result));
    }
    if (SPI_keepplan(plan) != 0) {
        elog(ERROR, "popularity worker: SPI_keepplan failed");
    }
    return plan;
}

bool leaf_present(const Task &task) {
    if (task.leaf == task.relid) {
        return true;
    }
    // Locked first (as a batch will open it), then looked up: a DROP or DETACH waits for this
    // transaction from now on, and one that committed before is seen.
    LockRelationOid(task.leaf, task.dry_run ? AccessShareLock : RowExclusiveLock);
    if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(task.leaf))) {
        return false;
    }
    List *ancestors = get_partition_ancestors(task.leaf);
    const bool member = list_member_oid(ancestors, task.relid);
    list_free(ancestors);
    if (member) {
        return true;
    }
    // Or a shard on this node of the Citus distributed table or of one of its partitions (a shard
    // moved away is dropped here).
    const Oid shard_of = pg::citus_shard_parent(task.leaf);
    if (!OidIsValid(shard_of)) {
        return false;
    }
    List *shard_ancestors = get_partition_ancestors(shard_of);
    const bool below = shard_of == task.relid || list_member_oid(shard_ancestors, task.relid);
    list_free(shard_ancestors);
    return below;
}

namespace {

// The relation's qualified, quoted name now (TopMemoryContext), or nullptr when it has none.
char *current_name(Oid relid) {
    const char *name = get_rel_name(relid);
    if (name == nullptr) {
        return nullptr;
    }
    return MemoryContextStrdup(
        TopMemoryContext, quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
                                                     name));
}

void forget_plan(SPIPlanPtr &plan) {
    if (plan != nullptr) {
        SPI_freeplan(plan);
        plan = nullptr;
    }
}

} // namespace

void refresh_names(Task &task) {
    char *table = current_name(task.relid);
    if (table != nullptr && strcmp(table, task.table) != 0) {
        task.table = table;
    }
    char *leaf = task.leaf == task.relid ? task.table : current_name(task.leaf);
    if (leaf == nullptr || strcmp(leaf, task.leaf_table) == 0) {
        return;
    }
    task.leaf_table = leaf;
    // The statements that name the leaf (the others name the extension's tables only).
    forget_plan(task.update_plan);
    forget_plan(task.keys_plan);
    prepare_statements(task);
}

// The batch reads the table directly with the role's snapshot, so the role must still be allowed
// to read (and, unless the run is a dry run, update) it: rights revoked during a run stop it at
// its next batch; and no row-level security policy may apply to it (the UPDATE would apply the
// policy, the scan would not). A leaf partition is read and updated directly too: the role needs
// its rights on the partition as well (through the parent PostgreSQL checks only the parent's).
Relation open_batch_table(Task &task) {
    const bool writes = !task.dry_run;
    Relation rel =
        pg::open_media_table(task.leaf, writes ? RowExclusiveLock : AccessShareLock,
                             writes ? ACL_SELECT | ACL_UPDATE : ACL_SELECT, task.job->name,
                             "Run it as the table owner or a role with BYPASSRLS.");
    if (task.relfilenode != InvalidOid && rel->rd_node.relNode != task.relfilenode) {
        ereport(
            ERROR,
            (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
             errmsg("table %s was rewritten while the %s run ran", task.leaf_table, task.job->name),
             errdetail("VACUUM FULL, CLUSTER or an ALTER TABLE that rewrites the table moves "
                       "rows between the block ranges the walk has passed and those it has "
                       "not."),
             errhint("Start a new run of %s for media type \"%s\".", task.job->name,
                     task.media_type)));
    }
    task.provider_att = pg::media_column(rel, "provider", TEXTOID, VARCHAROID);
    for (int i = 0; i < task.key_count; i++) {
        task.key_atts[i] =
            pg::media_column(rel, task.key_names[i], task.key_type_ids[i], task.key_type_ids[i]);
    }
    task.job->resolve_columns(task, rel);
    return rel;
}

void init_batch(Batch &batch, Relation rel) {
    batch.rel = rel;
    batch.candidate_capacity = 1024;
    batch.candidate_count = 0;
    batch.candidates =
        static_cast<Candidate *>(palloc(sizeof(Candidate) * batch.candidate_capacity));
    batch.row_context =
        AllocSetContextCreate(CurrentMemoryContext, "popularity batch row", ALLOCSET_SMALL_SIZES);
}

namespace {

Candidate &next_candidate(Batch &batch) {
    if (batch.candidate_count == batch.candidate_capacity) {
        batch.candidate_capacity *= 2;
        batch.candidates = static_cast<Candidate *>(
            repalloc(batch.candidates, sizeof(Candidate) * batch.candidate_capacity));
    }
    return batch.candidates[batch.candidate_count];
}

void keep(Batch &batch, const ItemPointerData &tid) {
    Candidate &c = batch.candidates[batch.candidate_count++];
    c.tid = tid;
    c.locked = false;
    c.held = false;
    c.changes = true;
}

} // namespace

void scan_range(const Task &task, Batch &batch, int64 from, int64 to) {
    ItemPointerData min_tid;
    ItemPointerData max_tid;
    ItemPointerSet(&min_tid, static_cast<BlockNumber>(from), FirstOffsetNumber);
    ItemPointerSet(&max_tid, static_cast<BlockNumber>(to - 1), MaxOffsetNumber);
    TupleTableSlot *slot = table_slot_create(batch.rel, nullptr);
    TableScanDesc scan =
        table_beginscan_tidrange(batch.rel, GetActiveSnapshot(), &min_tid, &max_tid);
    uint64 rows = 0;
    while (table_scan_getnextslot_tidrange(scan, ForwardScanDirection, slot)) {
        if ((++rows & 1023) == 0) {
            CHECK_FOR_INTERRUPTS();
        }
        if (task.job->decide(task, batch, slot, next_candidate(batch), true)) {
            keep(batch, slot->tts_tid);
        }
    }
    table_endscan(scan);
    ExecDropSingleTupleTableSlot(slot);
}

void scan_tids(const Task &task, Batch &batch, const ItemPointerData *tids, int count) {
    TupleTableSlot *slot = table_slot_create(batch.rel, nullptr);
    for (int i = 0; i < count; i++) {
        ItemPointerData tid = tids[i];
        if (!table_tuple_fetch_row_version(batch.rel, &tid, GetActiveSnapshot(), slot)) {
            continue; // gone since the key lookup
        }
        if (task.job->decide(task, batch, slot, next_candidate(batch), true)) {
            keep(batch, tid);
        }
    }
    ExecDropSingleTupleTableSlot(slot);
}

int lock_candidates(const Task &task, Batch &batch) {
    if (batch.candidate_count == 0) {
        return 0;
    }
    TupleTableSlot *slot = table_slot_create(batch.rel, nullptr);
    const CommandId cid = GetCurrentCommandId(true);
    int changing = 0;
    for (int i = 0; i < batch.candidate_count; i++) {
        Candidate &c = batch.candidates[i];
        TM_FailureData failure;
        // Workers run READ COMMITTED: a row updated since the snapshot is followed to its last
        // version (as FOR UPDATE in a statement would), locked, and decided again.
        const TM_Result result =
            table_tuple_lock(batch.rel, &c.tid, GetActiveSnapshot(), slot, cid, LockTupleExclusive,
                             LockWaitSkip, TUPLE_LOCK_FLAG_FIND_LAST_VERSION, &failure);
        c.locked = result == TM_Ok;
        c.held = result == TM_WouldBlock;
        if (c.held) {
            batch.groups[c.group].skipped++;
        }
        if (!c.locked) {
            continue; // held (revisited later) or deleted
        }
        // The version locked (the last one when the row was updated since the scan), which the
        // UPDATE addresses by TID.
        const ItemPointerData locked_tid = slot->tts_tid;
        if (failure.traversed) {
            // Decided again on the last version, as it stands now.
            Candidate again = c;
            c.changes = task.job->decide(task, batch, slot, again, false);
            if (c.changes) {
                c = again;
                c.locked = true;
                c.held = false;
                c.changes = true;
            }
        }
        c.tid = locked_tid;
        if (c.changes) {
            changing++;
        }
    }
    ExecDropSingleTupleTableSlot(slot);
    return changing;
}

void record_skipped(const Task &task, const Batch &batch) {
    int held = 0;
    for (int i = 0; i < batch.candidate_count; i++) {
        held += batch.candidates[i].held ? 1 : 0;
    }
    if (held == 0) {
        return;
    }
    // Their keys are read again from the scanned versions (rare: only rows another transaction
    // held), so that the scan keeps no per-row copy of the key.
    Datum *keys = static_cast<Datum *>(palloc(sizeof(Datum) * held));
    TupleTableSlot *slot = table_slot_create(batch.rel, nullptr);
    int n = 0;
    for (int i = 0; i < batch.candidate_count; i++) {
        const Candidate &c = batch.candidates[i];
        if (!c.held) {
            continue;
        }
        ItemPointerData tid = c.tid;
        if (table_tuple_fetch_row_version(batch.rel, &tid, GetActiveSnapshot(), slot)) {
            const char *key = key_text(task, slot);
            if (key != nullptr) {
                keys[n++] = CStringGetTextDatum(key);
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
        elog(ERROR, "popularity worker: recording skipped rows failed: %s",
             SPI_result_code_string(rc));
    }
}

void record_counts(const Task &task, const Batch &batch) {
    const int n = batch.group_count;
    Datum *names = static_cast<Datum *>(palloc(sizeof(Datum) * Max(n, 1)));
    Datum *scanned = static_cast<Datum *>(palloc(sizeof(Datum) * Max(n, 1)));
    Datum *updated = static_cast<Datum *>(palloc(sizeof(Datum) * Max(n, 1)));
    Datum *skipped = static_cast<Datum *>(palloc(sizeof(Datum) * Max(n, 1)));
    int k = 0;
    for (int i = 0; i < n; i++) {
        const Group &g = batch.groups[i];
        if (g.scanned == 0 && g.skipped == 0) {
            continue;
        }
        names[k] = PointerGetDatum(cstring_to_text_with_len(g.name, g.name_length));
        scanned[k] = Int64GetDatum(g.scanned);
        updated[k] = Int64GetDatum(g.updated);
        skipped[k] = Int64GetDatum(g.skipped);
        k++;
    }
    if (k > 0) {
        auto int8_array = [k](Datum *items) {
            return PointerGetDatum(construct_array(items, k, INT8OID, sizeof(int64),
                                                   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
        };
        Datum values[5] = {
            Int64GetDatum(task.task_id),
            PointerGetDatum(construct_array(names, k, TEXTOID, -1, false, TYPALIGN_INT)),
            int8_array(scanned), int8_array(updated), int8_array(skipped)};
        const int rc = SPI_execute_plan(task.counts_plan, values, nullptr, false, 0);
        if (rc != SPI_OK_INSERT) {
            elog(ERROR, "popularity worker: recording counters failed: %s",
                 SPI_result_code_string(rc));
        }
    }
    task.job->record_counters(task, batch);
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

int find_group(const Batch &batch, const char *name, int length) {
    const Group *g = pg::find_by_name(batch.groups, batch.group_count, name, length);
    return g == nullptr ? -1 : static_cast<int>(g - batch.groups);
}

} // namespace popularity::worker
