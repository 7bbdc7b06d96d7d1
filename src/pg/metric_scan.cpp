// popularity._metric_percentiles: the percentile value of every provider of a media table in one
// sequential scan (parallel, with as many workers as the planner would use for a parallel
// sequential scan of the table), without the executor: each row's provider is looked up among the
// requested ones, its metric read from meta_data exactly as popularity_metric_value reads it, and
// the value appended to that provider's array; each array's percentile is then selected as
// percentile_disc would (core::select_percentile_disc). refresh_constants uses it for its single
// pass; the values are the same as those of
// popularity_percentile(popularity_metric_value(meta_data, metric), p) grouped by provider
// (tested), the work per row is a fraction of the executor's (join, hash aggregate and two function
// calls a row).
//
// Everything here is plain data in PostgreSQL memory (no C++ object with a destructor is alive),
// so an error raised by PostgreSQL anywhere in the scan unwinds nothing that needs destroying.
#include "../core/percentile.hpp"
#include "../core/popularity.hpp"

#include "guard.hpp"
#include "metric_jsonb.hpp"
#include "name_lookup.hpp"
#include "relation_access.hpp"

extern "C" {
#include "access/heapam.h"
#include "access/parallel.h"
#include "access/xact.h"
#include "optimizer/cost.h"
#include "optimizer/paths.h"
#include "storage/bufmgr.h"
#include "storage/shm_mq.h"
#include "storage/shm_toc.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/pg_type.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "executor/tuptable.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
}

#include <algorithm>
#include <cstring>

using namespace popularity;

namespace {

struct ProviderValues {
    const char *name;
    int name_length;
    const char *metric;
    int metric_length;
    double percentile;
    double *values;
    Size count;
    Size capacity;
    int position; // in the caller's arrays
};

void append(ProviderValues &p, double value) {
    if (p.count == p.capacity) {
        p.capacity = p.capacity == 0 ? 1024 : p.capacity * 2;
        const Size bytes = sizeof(double) * p.capacity;
        p.values = static_cast<double *>(p.values == nullptr
                                             ? MemoryContextAllocHuge(CurrentMemoryContext, bytes)
                                             : repalloc_huge(p.values, bytes));
    }
    p.values[p.count++] = value;
}

Datum *text_items(ArrayType *array, int *count) {
    Datum *items = nullptr;
    bool *nulls = nullptr;
    deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT, &items, &nulls, count);
    for (int i = 0; i < *count; i++) {
        if (nulls[i]) {
            throw pg::SqlError(ERRCODE_NULL_VALUE_NOT_ALLOWED,
                               "providers and metrics must not contain NULL");
        }
    }
    return items;
}

// Reads the rows a scan returns and fills each provider's values (rows whose metric is unusable
// are left out, as the aggregate leaves out NULL).
void scan_rows(Relation rel, TableScanDesc scan, ProviderValues *providers, int count) {
    // Read as text and jsonb below: checked under the scan's lock, which keeps them so.
    const AttrNumber provider_att = pg::media_column(rel, "provider", TEXTOID, VARCHAROID);
    const AttrNumber meta_att = pg::media_column(rel, "meta_data", JSONBOID, JSONBOID);
    MemoryContext row_context =
        AllocSetContextCreate(CurrentMemoryContext, "popularity metric row", ALLOCSET_SMALL_SIZES);
    TupleTableSlot *slot = table_slot_create(rel, nullptr);
    uint64 rows = 0;
    while (table_scan_getnextslot(scan, ForwardScanDirection, slot)) {
        if ((++rows & 4095) == 0) {
            CHECK_FOR_INTERRUPTS();
        }
        bool isnull = false;
        const Datum provider_datum = slot_getattr(slot, provider_att, &isnull);
        if (isnull) {
            continue;
        }
        const Datum meta = slot_getattr(slot, meta_att, &isnull);
        if (isnull) {
            continue;
        }
        MemoryContext old = MemoryContextSwitchTo(row_context);
        text *name = DatumGetTextPP(provider_datum);
        ProviderValues *p = pg::find_by_name(providers, count, VARDATA_ANY(name),
                                             static_cast<int>(VARSIZE_ANY_EXHDR(name)));
        core::MetricValue value;
        if (p != nullptr) {
            value = pg::jsonb_metric_in_c_frame(DatumGetJsonbP(meta), p->metric,
                                                static_cast<size_t>(p->metric_length));
        }
        MemoryContextSwitchTo(old);
        MemoryContextReset(row_context);
        if (p != nullptr && value.ok()) {
            append(*p, value.value);
        }
    }
    ExecDropSingleTupleTableSlot(slot);
    MemoryContextDelete(row_context);
}

// The parallel scan: the leader and its workers share one parallel table scan; each worker sends
// the values it read to the leader through its own message queue (messages: the provider's index
// in the sorted array, then values), and the leader appends them to its own.
constexpr uint64 kKeyConfig = UINT64CONST(0x504F50554C415201);
constexpr uint64 kKeyScan = UINT64CONST(0x504F50554C415202);
constexpr uint64 kKeyQueues = UINT64CONST(0x504F50554C415203);
constexpr uint64 kKeyLeaves = UINT64CONST(0x504F50554C415204);
// Leaves scanned by one parallel context; a tree with more is scanned a context per leaf.
constexpr int kMaxLeaves = 4096;

// The leaves of a partitioned table, for one parallel scan of the whole tree: every participant
// walks the leaves in this order, taking blocks of each from its own parallel scan (as a scan of
// one table would), so one set of workers serves every leaf.
struct SharedLeaves {
    int count;
    Oid relids[kMaxLeaves];
    Size offsets[kMaxLeaves]; // of each leaf's ParallelTableScanDesc in the kKeyScan chunk
};
constexpr Size kQueueSize = 256 * 1024;
constexpr int kValuesPerMessage = 8192;

// The providers in sorted order, as the workers need them: relation, count, then per provider
// int32 name length, name, int32 metric length, metric.
struct SharedConfig {
    Oid relid;
    int count;
    char data[FLEXIBLE_ARRAY_MEMBER];
};

Size config_size(const ProviderValues *providers, int count) {
    Size size = offsetof(SharedConfig, data);
    for (int i = 0; i < count; i++) {
        size += 2 * sizeof(int32) + providers[i].name_length + providers[i].metric_length;
    }
    return size;
}

void write_config(SharedConfig *config, Oid relid, const ProviderValues *providers, int count) {
    config->relid = relid;
    config->count = count;
    char *out = config->data;
    for (int i = 0; i < count; i++) {
        const int32 lengths[2] = {providers[i].name_length, providers[i].metric_length};
        const char *texts[2] = {providers[i].name, providers[i].metric};
        for (int k = 0; k < 2; k++) {
            std::memcpy(out, &lengths[k], sizeof(int32));
            out += sizeof(int32);
            std::memcpy(out, texts[k], static_cast<size_t>(lengths[k]));
            out += lengths[k];
        }
    }
}

ProviderValues *read_config(const SharedConfig *config) {
    auto *providers =
        static_cast<ProviderValues *>(palloc0(sizeof(ProviderValues) * Max(config->count, 1)));
    const char *in = config->data;
    for (int i = 0; i < config->count; i++) {
        int32 length = 0;
        std::memcpy(&length, in, sizeof(int32));
        in += sizeof(int32);
        providers[i].name = in;
        providers[i].name_length = length;
        in += length;
        std::memcpy(&length, in, sizeof(int32));
        in += sizeof(int32);
        providers[i].metric = in;
        providers[i].metric_length = length;
        in += length;
        providers[i].position = i;
    }
    return providers;
}

// Workers for a table of this size, as the planner would choose for a parallel sequential scan
// (one from min_parallel_table_scan_size, one more each time the size triples), capped by
// max_parallel_workers_per_gather; none under SERIALIZABLE or inside parallel mode.
// A leaf of a partitioned table and its size in blocks.
struct LeafSize {
    Oid relid;
    double pages;
};

// Parallel workers for a scan of `pages` blocks: as the planner would give a table of that size.
int choose_workers_for(double pages) {
    if (max_parallel_workers_per_gather <= 0 || IsolationIsSerializable() || IsInParallelMode()) {
        return 0;
    }
    double threshold = Max(min_parallel_table_scan_size, 1);
    if (pages < threshold) {
        return 0;
    }
    int workers = 1;
    while (workers < max_parallel_workers_per_gather && pages >= threshold * 3) {
        workers++;
        threshold *= 3;
    }
    return workers;
}

int choose_workers(Relation rel) {
    return choose_workers_for(RelationGetNumberOfBlocks(rel));
}

void send_values(shm_mq_handle *queue, const ProviderValues *providers, int count) {
    char *message = static_cast<char *>(palloc(sizeof(int64) + sizeof(double) * kValuesPerMessage));
    for (int i = 0; i < count; i++) {
        const ProviderValues &p = providers[i];
        for (Size sent = 0; sent < p.count; sent += kValuesPerMessage) {
            const Size n = Min(p.count - sent, static_cast<Size>(kValuesPerMessage));
            const int64 index = i;
            std::memcpy(message, &index, sizeof(int64));
            std::memcpy(message + sizeof(int64), p.values + sent, n * sizeof(double));
            const shm_mq_result result =
                shm_mq_send(queue, sizeof(int64) + n * sizeof(double), message, false, true);
            if (result != SHM_MQ_SUCCESS) {
                ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR),
                                errmsg("popularity: could not send metric values to the leader")));
            }
        }
    }
}

void receive_values(shm_mq_handle *queue, ProviderValues *providers, int count) {
    for (;;) {
        Size bytes = 0;
        void *data = nullptr;
        const shm_mq_result result = shm_mq_receive(queue, &bytes, &data, false);
        if (result == SHM_MQ_DETACHED) {
            return;
        }
        if (result != SHM_MQ_SUCCESS || bytes < sizeof(int64) ||
            (bytes - sizeof(int64)) % sizeof(double) != 0) {
            ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR),
                            errmsg("popularity: invalid message from a parallel worker")));
        }
        int64 index = 0;
        std::memcpy(&index, data, sizeof(int64));
        if (index < 0 || index >= count) {
            ereport(ERROR, (errcode(ERRCODE_INTERNAL_ERROR),
                            errmsg("popularity: invalid provider from a parallel worker")));
        }
        const char *values = static_cast<const char *>(data) + sizeof(int64);
        const Size n = (bytes - sizeof(int64)) / sizeof(double);
        for (Size k = 0; k < n; k++) {
            double value = 0;
            std::memcpy(&value, values + k * sizeof(double), sizeof(double));
            append(providers[index], value);
        }
    }
}

// Scans every leaf, each through its parallel scan in `scans` (see SharedLeaves).
void scan_leaves(const SharedLeaves *leaves, char *scans, ProviderValues *providers, int count) {
    for (int i = 0; i < leaves->count; i++) {
        Relation leaf = table_open(leaves->relids[i], AccessShareLock);
        TableScanDesc scan = table_beginscan_parallel(
            leaf, reinterpret_cast<ParallelTableScanDesc>(scans + leaves->offsets[i]));
        scan_rows(leaf, scan, providers, count);
        table_endscan(scan);
        table_close(leaf, AccessShareLock);
    }
}

// Scans the table with `workers` parallel workers and the leader (block by block), or, given
// `leaf_relids`, the leaves of the partitioned table `rel` (leaf by leaf: one parallel context for
// the whole tree); false when no dynamic shared memory segment could be made (the caller then
// scans alone).
bool parallel_scan(Relation rel, ProviderValues *providers, int count, int workers,
                   const Oid *leaf_relids = nullptr, int leaf_count = 0) {
    Snapshot snapshot = GetActiveSnapshot();
    EnterParallelMode();
    ParallelContext *pcxt = CreateParallelContext("$libdir/popularity",
                                                  "popularity_metric_percentiles_worker", workers);
    const Size config_bytes = config_size(providers, count);
    SharedLeaves *leaves = nullptr;
    Size scan_bytes = 0;
    if (leaf_relids == nullptr) {
        scan_bytes = table_parallelscan_estimate(rel, snapshot);
    } else {
        leaves = static_cast<SharedLeaves *>(palloc(sizeof(SharedLeaves)));
        leaves->count = leaf_count;
        for (int i = 0; i < leaf_count; i++) {
            Relation leaf = table_open(leaf_relids[i], AccessShareLock);
            leaves->relids[i] = leaf_relids[i];
            leaves->offsets[i] = scan_bytes;
            scan_bytes += MAXALIGN(table_parallelscan_estimate(leaf, snapshot));
            table_close(leaf, NoLock);
        }
        shm_toc_estimate_chunk(&pcxt->estimator, sizeof(SharedLeaves));
    }
    shm_toc_estimate_chunk(&pcxt->estimator, config_bytes);
    shm_toc_estimate_chunk(&pcxt->estimator, Max(scan_bytes, 1));
    shm_toc_estimate_chunk(&pcxt->estimator, mul_size(kQueueSize, workers));
    shm_toc_estimate_keys(&pcxt->estimator, 4);
    InitializeParallelDSM(pcxt);
    if (pcxt->seg == nullptr) {
        DestroyParallelContext(pcxt);
        ExitParallelMode();
        return false;
    }
    auto *config = static_cast<SharedConfig *>(shm_toc_allocate(pcxt->toc, config_bytes));
    write_config(config, RelationGetRelid(rel), providers, count);
    shm_toc_insert(pcxt->toc, kKeyConfig, config);
    char *scans = static_cast<char *>(shm_toc_allocate(pcxt->toc, Max(scan_bytes, 1)));
    if (leaves == nullptr) {
        table_parallelscan_initialize(rel, reinterpret_cast<ParallelTableScanDesc>(scans),
                                      snapshot);
    } else {
        for (int i = 0; i < leaves->count; i++) {
            Relation leaf = table_open(leaves->relids[i], AccessShareLock);
            table_parallelscan_initialize(
                leaf, reinterpret_cast<ParallelTableScanDesc>(scans + leaves->offsets[i]),
                snapshot);
            table_close(leaf, NoLock);
        }
        auto *shared =
            static_cast<SharedLeaves *>(shm_toc_allocate(pcxt->toc, sizeof(SharedLeaves)));
        std::memcpy(shared, leaves, sizeof(SharedLeaves));
        shm_toc_insert(pcxt->toc, kKeyLeaves, shared);
    }
    shm_toc_insert(pcxt->toc, kKeyScan, scans);
    char *queues = static_cast<char *>(shm_toc_allocate(pcxt->toc, mul_size(kQueueSize, workers)));
    for (int i = 0; i < workers; i++) {
        shm_mq *queue = shm_mq_create(queues + i * kQueueSize, kQueueSize);
        shm_mq_set_receiver(queue, MyProc);
    }
    shm_toc_insert(pcxt->toc, kKeyQueues, queues);
    LaunchParallelWorkers(pcxt);
    elog(DEBUG1, "popularity: metric scan of %s with %d parallel workers planned",
         RelationGetRelationName(rel), workers);
    elog(DEBUG2, "popularity: %d parallel workers launched", pcxt->nworkers_launched);
    auto **handles =
        static_cast<shm_mq_handle **>(palloc(sizeof(shm_mq_handle *) * Max(workers, 1)));
    for (int i = 0; i < pcxt->nworkers_launched; i++) {
        handles[i] = shm_mq_attach(reinterpret_cast<shm_mq *>(queues + i * kQueueSize), pcxt->seg,
                                   pcxt->worker[i].bgwhandle);
    }
    if (leaves != nullptr) {
        scan_leaves(leaves, scans, providers, count);
    } else {
        TableScanDesc scan =
            table_beginscan_parallel(rel, reinterpret_cast<ParallelTableScanDesc>(scans));
        scan_rows(rel, scan, providers, count);
        table_endscan(scan);
    }
    for (int i = 0; i < pcxt->nworkers_launched; i++) {
        receive_values(handles[i], providers, count);
    }
    WaitForParallelWorkersToFinish(pcxt);
    DestroyParallelContext(pcxt);
    ExitParallelMode();
    return true;
}

void worker_scan(dsm_segment *seg, shm_toc *toc) {
    const auto *config = static_cast<const SharedConfig *>(shm_toc_lookup(toc, kKeyConfig, false));
    char *queues = static_cast<char *>(shm_toc_lookup(toc, kKeyQueues, false));
    shm_mq *queue = reinterpret_cast<shm_mq *>(queues + ParallelWorkerNumber * kQueueSize);
    shm_mq_set_sender(queue, MyProc);
    shm_mq_handle *handle = shm_mq_attach(queue, seg, nullptr);
    ProviderValues *providers = read_config(config);
    auto *leaves = static_cast<SharedLeaves *>(shm_toc_lookup(toc, kKeyLeaves, true));
    char *scans = static_cast<char *>(shm_toc_lookup(toc, kKeyScan, false));
    if (leaves != nullptr) {
        scan_leaves(leaves, scans, providers, config->count);
    } else {
        auto pscan = reinterpret_cast<ParallelTableScanDesc>(scans);
        Relation rel = table_open(config->relid, AccessShareLock);
        TableScanDesc scan = table_beginscan_parallel(rel, pscan);
        scan_rows(rel, scan, providers, config->count);
        table_endscan(scan);
        table_close(rel, AccessShareLock);
    }
    send_values(handle, providers, config->count);
    shm_mq_detach(handle);
}

// Scans one ordinary table (opened and locked), with parallel workers when it is large enough.
void scan_table(Relation rel, ProviderValues *providers, int count) {
    const int workers = choose_workers(rel);
    if (workers == 0 || !parallel_scan(rel, providers, count, workers)) {
        TableScanDesc scan = table_beginscan(rel, GetActiveSnapshot(), 0, nullptr);
        scan_rows(rel, scan, providers, count);
        table_endscan(scan);
    }
}

// Opens the table with the caller's rights (SELECT; no row-level security applying) and scans it:
// an ordinary table, or every leaf of a partitioned one, whose values are gathered per provider
// as one state (the percentile over the whole tree). The leaves are read as a SELECT through the
// parent reads them: locked, with the parent's rights checked (PostgreSQL checks no partition's).
void read_table(Oid relid, ProviderValues *providers, int count) {
    Relation rel = pg::open_media_table(
        relid, AccessShareLock, ACL_SELECT, "refresh_constants",
        "refresh_constants reads such a table through the executor instead.", true);
    if (rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE) {
        scan_table(rel, providers, count);
        table_close(rel, AccessShareLock);
        return;
    }
    List *tree = find_all_inheritors(relid, AccessShareLock, nullptr);
    const int members = list_length(tree);
    auto *leaves = static_cast<LeafSize *>(palloc(sizeof(LeafSize) * Max(members, 1)));
    int leaf_count = 0;
    double pages = 0;
    ListCell *cell = nullptr;
    foreach (cell, tree) {
        const Oid member = lfirst_oid(cell);
        const char relkind = get_rel_relkind(member);
        if (relkind == RELKIND_PARTITIONED_TABLE) {
            continue; // its rows are in its leaves
        }
        if (relkind != RELKIND_RELATION) {
            ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                            errmsg("partition %s of media table %s is not an ordinary table",
                                   get_rel_name(member), RelationGetRelationName(rel)),
                            errhint("refresh_constants reads the leaf partitions' rows directly; "
                                    "foreign partitions are not supported.")));
        }
        Relation leaf = table_open(member, AccessShareLock);
        leaves[leaf_count].relid = member;
        leaves[leaf_count].pages = RelationGetNumberOfBlocks(leaf);
        pages += leaves[leaf_count].pages;
        leaf_count++;
        table_close(leaf, NoLock);
    }
    list_free(tree);
    // Largest first.
    std::sort(leaves, leaves + leaf_count,
              [](const LeafSize &a, const LeafSize &b) { return a.pages > b.pages; });
    Oid *relids = static_cast<Oid *>(palloc(sizeof(Oid) * Max(leaf_count, 1)));
    for (int i = 0; i < leaf_count; i++) {
        relids[i] = leaves[i].relid;
    }
    // One parallel context for the whole tree (one per leaf would start workers as often as there
    // are leaves), with as many workers as a table of the tree's size would get.
    const int workers = leaf_count <= kMaxLeaves ? choose_workers_for(pages) : 0;
    if (workers == 0 || !parallel_scan(rel, providers, count, workers, relids, leaf_count)) {
        for (int i = 0; i < leaf_count; i++) {
            Relation leaf = table_open(relids[i], AccessShareLock);
            scan_table(leaf, providers, count); // (in parallel on its own when large enough)
            table_close(leaf, AccessShareLock);
        }
    }
    table_close(rel, AccessShareLock);
}

} // namespace

// The entry of the parallel workers of _metric_percentiles (see parallel_scan).
extern "C" PGDLLEXPORT void popularity_metric_percentiles_worker(dsm_segment *seg, shm_toc *toc) {
    pg::run_guarded("popularity_metric_percentiles_worker", [&] { worker_scan(seg, toc); });
}

// popularity._metric_percentiles(media_table regclass, providers text[], metrics text[],
// percentiles float8[], OUT vals float8[]): vals[i] = the percentiles[i] discrete percentile of
// metric metrics[i] over the rows of provider providers[i]; NULL where it has no value.
POPULARITY_FUNCTION(popularity_metric_percentiles) {
    const Oid relid = PG_GETARG_OID(0);
    int count = 0;
    int metric_count = 0;
    int percentile_count = 0;
    Datum *names = text_items(PG_GETARG_ARRAYTYPE_P(1), &count);
    Datum *metrics = text_items(PG_GETARG_ARRAYTYPE_P(2), &metric_count);
    Datum *percentiles = nullptr;
    bool *percentile_nulls = nullptr;
    deconstruct_array(PG_GETARG_ARRAYTYPE_P(3), FLOAT8OID, sizeof(float8), FLOAT8PASSBYVAL,
                      TYPALIGN_DOUBLE, &percentiles, &percentile_nulls, &percentile_count);
    if (metric_count != count || percentile_count != count) {
        throw pg::SqlError(ERRCODE_ARRAY_SUBSCRIPT_ERROR,
                           "providers, metrics and percentiles must have the same length");
    }
    auto *providers =
        static_cast<ProviderValues *>(palloc0(sizeof(ProviderValues) * Max(count, 1)));
    for (int i = 0; i < count; i++) {
        text *name = DatumGetTextPP(names[i]);
        text *metric = DatumGetTextPP(metrics[i]);
        ProviderValues &p = providers[i];
        p.name = VARDATA_ANY(name);
        p.name_length = static_cast<int>(VARSIZE_ANY_EXHDR(name));
        p.metric = VARDATA_ANY(metric);
        p.metric_length = static_cast<int>(VARSIZE_ANY_EXHDR(metric));
        if (percentile_nulls[i]) {
            throw pg::SqlError(ERRCODE_NULL_VALUE_NOT_ALLOWED, "percentiles must not contain NULL");
        }
        p.percentile = DatumGetFloat8(percentiles[i]);
        core::check_percentile_fraction(p.percentile);
        p.position = i;
    }
    pg::sort_by_name(providers, count);
    for (int i = 1; i < count; i++) {
        if (pg::compare_names(providers[i - 1].name, providers[i - 1].name_length,
                              providers[i].name, providers[i].name_length) == 0) {
            throw pg::SqlError(ERRCODE_INVALID_PARAMETER_VALUE, "providers must be distinct");
        }
    }

    // A C-style call (it raises with ereport): no C++ object with a destructor is alive in this
    // frame, and nothing in the scan throws.
    read_table(relid, providers, count);

    Datum *vals = static_cast<Datum *>(palloc(sizeof(Datum) * Max(count, 1)));
    bool *val_nulls = static_cast<bool *>(palloc(sizeof(bool) * Max(count, 1)));
    for (int i = 0; i < count; i++) {
        ProviderValues &p = providers[i];
        val_nulls[p.position] = p.count == 0;
        vals[p.position] =
            p.count == 0
                ? Datum(0)
                : Float8GetDatum(core::select_percentile_disc(p.values, p.count, p.percentile));
        if (p.values != nullptr) {
            pfree(p.values);
        }
    }
    int dims[1] = {count};
    int lbs[1] = {1};
    PG_RETURN_ARRAYTYPE_P(pg::pg_call([&] {
        return construct_md_array(vals, val_nulls, 1, dims, lbs, FLOAT8OID, sizeof(float8),
                                  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
    }));
}
