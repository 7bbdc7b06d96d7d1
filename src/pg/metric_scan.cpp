// popularity._metric_percentiles: the percentile value of every provider of a media table in one
// sequential scan, without the executor: each row's provider is looked up among the requested
// ones, its metric read from meta_data exactly as popularity_metric_value reads it, and the value
// appended to that provider's array; each array's percentile is then selected as percentile_disc
// would (core::select_percentile_disc). refresh_constants uses it for its single pass; the values
// are the same as those of popularity_percentile(popularity_metric_value(meta_data, metric), p)
// grouped by provider (tested), the work per row is a fraction of the executor's (join, hash
// aggregate and two function calls a row).
//
// Everything here is plain data in PostgreSQL memory (no C++ object with a destructor is alive),
// so an error raised by PostgreSQL anywhere in the scan unwinds nothing that needs destroying.
#include "../core/percentile.hpp"
#include "../core/popularity.hpp"

#include "guard.hpp"
#include "metric_jsonb.hpp"

extern "C" {
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/pg_type.h"
#include "executor/tuptable.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/lsyscache.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
}

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

int compare_names(const char *a, int a_length, const char *b, int b_length) {
    const int c = std::memcmp(a, b, static_cast<size_t>(Min(a_length, b_length)));
    return c != 0 ? c : a_length - b_length;
}

extern "C" int compare_provider_values(const void *a, const void *b) {
    const auto *x = static_cast<const ProviderValues *>(a);
    const auto *y = static_cast<const ProviderValues *>(b);
    return compare_names(x->name, x->name_length, y->name, y->name_length);
}

ProviderValues *find(ProviderValues *providers, int count, const char *name, int length) {
    int low = 0;
    int high = count - 1;
    while (low <= high) {
        const int mid = (low + high) / 2;
        const int c = compare_names(providers[mid].name, providers[mid].name_length, name, length);
        if (c == 0) {
            return &providers[mid];
        }
        if (c < 0) {
            low = mid + 1;
        } else {
            high = mid - 1;
        }
    }
    return nullptr;
}

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

// Reads the table and fills each provider's values (rows whose metric is unusable are left out,
// as the aggregate leaves out NULL).
void scan(Relation rel, ProviderValues *providers, int count) {
    const AttrNumber provider_att = get_attnum(RelationGetRelid(rel), "provider");
    const AttrNumber meta_att = get_attnum(RelationGetRelid(rel), "meta_data");
    if (provider_att == InvalidAttrNumber || meta_att == InvalidAttrNumber) {
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_COLUMN),
                        errmsg("table %s has no provider or meta_data column",
                               RelationGetRelationName(rel))));
    }
    MemoryContext row_context =
        AllocSetContextCreate(CurrentMemoryContext, "popularity metric row", ALLOCSET_SMALL_SIZES);
    TupleTableSlot *slot = table_slot_create(rel, nullptr);
    TableScanDesc scan = table_beginscan(rel, GetActiveSnapshot(), 0, nullptr);
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
        ProviderValues *p =
            find(providers, count, VARDATA_ANY(name), static_cast<int>(VARSIZE_ANY_EXHDR(name)));
        core::MetricValue value;
        if (p != nullptr) {
            value = pg::jsonb_metric(DatumGetJsonbP(meta), p->metric,
                                     static_cast<size_t>(p->metric_length));
        }
        MemoryContextSwitchTo(old);
        MemoryContextReset(row_context);
        if (p != nullptr && value.ok()) {
            append(*p, value.value);
        }
    }
    table_endscan(scan);
    ExecDropSingleTupleTableSlot(slot);
    MemoryContextDelete(row_context);
}

// Opens the table with the caller's rights (SELECT; no row-level security applying) and scans it.
void read_table(Oid relid, ProviderValues *providers, int count) {
    Relation rel = table_open(relid, AccessShareLock);
    if (pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) != ACLCHECK_OK) {
        ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                        errmsg("permission denied for table %s", RelationGetRelationName(rel))));
    }
    if (check_enable_rls(relid, InvalidOid, false) == RLS_ENABLED) {
        ereport(ERROR,
                (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                 errmsg("row-level security applies to table %s", RelationGetRelationName(rel)),
                 errhint("refresh_constants then reads the table with one query per provider.")));
    }
    scan(rel, providers, count);
    table_close(rel, AccessShareLock);
}

} // namespace

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
    qsort(providers, static_cast<size_t>(count), sizeof(ProviderValues), compare_provider_values);
    for (int i = 1; i < count; i++) {
        if (compare_names(providers[i - 1].name, providers[i - 1].name_length, providers[i].name,
                          providers[i].name_length) == 0) {
            throw pg::SqlError(ERRCODE_INVALID_PARAMETER_VALUE, "providers must be distinct");
        }
    }

    (void)pg::pg_call([&] {
        read_table(relid, providers, count);
        return 0;
    });

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
