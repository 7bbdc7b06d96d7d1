// The refresh job of the batch engine: a row of one of the run's providers changes when its stored
// standardized_popularity differs from the score under the provider's current constant (the same
// computation as standardized_popularity(popularity_metric_value(meta_data, metric), constant)).
#include "../core/float_compare.hpp"
#include "../core/popularity.hpp"

#include "../pg/metric_jsonb.hpp"
#include "../pg/name_lookup.hpp"
#include "../pg/relation_access.hpp"
#include "../pg/settings.hpp"
#include "engine.hpp"

extern "C" {
#include "catalog/pg_type.h"
#include "utils/builtins.h"
}

#include <cmath>

namespace popularity::worker {
namespace {

void resolve_columns(Task &task, Relation rel) {
    task.meta_data_att = pg::media_column(rel, "meta_data", JSONBOID, JSONBOID);
    task.score_att = pg::media_column(rel, "standardized_popularity", FLOAT8OID, FLOAT8OID);
}

// The run's providers with their current metric and constant, sorted bytewise for lookup.
void begin_batch(const Task &, const BatchContext &context, Batch &batch) {
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
    batch.groups = static_cast<Group *>(palloc0(sizeof(Group) * Max(n, 1)));
    batch.group_count = n;
    for (int i = 0; i < n; i++) {
        text *name = DatumGetTextPP(names[i]);
        text *metric = DatumGetTextPP(metrics[i]);
        Group &g = batch.groups[i];
        g.name = VARDATA_ANY(name);
        g.name_length = static_cast<int>(VARSIZE_ANY_EXHDR(name));
        g.metric = VARDATA_ANY(metric);
        g.metric_length = static_cast<int>(VARSIZE_ANY_EXHDR(metric));
        g.constant = DatumGetFloat8(constants[i]);
        if (!std::isfinite(g.constant) || g.constant <= 0) {
            ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                            errmsg("the constant of provider \"%.*s\" is not a positive number",
                                   g.name_length, g.name),
                            errhint("Recompute it with popularity.refresh_constants().")));
        }
    }
    pg::sort_by_name(batch.groups, n);
}

bool decide(const Task &task, Batch &batch, TupleTableSlot *slot, Candidate &c, bool count) {
    bool isnull = false;
    const Datum provider_datum = slot_getattr(slot, task.provider_att, &isnull);
    if (isnull) {
        return false;
    }
    MemoryContext old = MemoryContextSwitchTo(batch.row_context);
    text *provider_text = DatumGetTextPP(provider_datum);
    const int index = find_group(batch, VARDATA_ANY(provider_text),
                                 static_cast<int>(VARSIZE_ANY_EXHDR(provider_text)));
    if (index < 0) {
        MemoryContextSwitchTo(old);
        MemoryContextReset(batch.row_context);
        return false;
    }
    Group &group = batch.groups[index];
    if (count) {
        group.scanned++;
    }
    bool score_null = true;
    double score = 0.0;
    bool meta_null = false;
    const Datum meta = slot_getattr(slot, task.meta_data_att, &meta_null);
    if (!meta_null) {
        // Runs under PG_TRY: nothing here may throw (see guard.hpp).
        const core::MetricValue value = pg::jsonb_metric_in_c_frame(
            DatumGetJsonbP(meta), group.metric, static_cast<size_t>(group.metric_length));
        if (value.ok()) {
            // The constant was checked in begin_batch.
            const std::optional<double> s =
                core::score_with_checked_constant(value.value, group.constant);
            if (s) {
                score = *s;
                score_null = false;
            }
        }
    }
    MemoryContextSwitchTo(old);
    MemoryContextReset(batch.row_context);
    bool old_null = false;
    const double stored = DatumGetFloat8(slot_getattr(slot, task.score_att, &old_null));
    const bool differs =
        core::score_differs(old_null, stored, score_null, score, pg::score_tolerance);
    if (!differs) {
        return false;
    }
    c.group = index;
    c.score = score;
    c.score_null = score_null;
    return true;
}

// $1 the locked rows, $2 their scores.
char *update_sql(const Task &task, Oid *types, int *nargs) {
    types[0] = TIDARRAYOID;
    types[1] = FLOAT8ARRAYOID;
    *nargs = 2;
    // (The table's OID too: the statement names it, and a name can change hands.)
    return psprintf("UPDATE %s AS t SET standardized_popularity = u.score%s"
                    " FROM unnest($1::tid[], $2::float8[]) AS u(tid, score) WHERE t.ctid = u.tid"
                    " AND t.tableoid = %u::oid",
                    task.leaf_table, pg::refresh_touch_updated_on ? ", updated_on = now()" : "",
                    task.leaf);
}

uint64 write(const Task &task, Batch &batch, int changing) {
    Datum *tids = static_cast<Datum *>(palloc(sizeof(Datum) * changing));
    Datum *scores = static_cast<Datum *>(palloc(sizeof(Datum) * changing));
    bool *score_nulls = static_cast<bool *>(palloc(sizeof(bool) * changing));
    int n = 0;
    for (int i = 0; i < batch.candidate_count; i++) {
        Candidate &c = batch.candidates[i];
        if (!c.locked || !c.changes) {
            continue;
        }
        tids[n] = PointerGetDatum(&c.tid);
        scores[n] = Float8GetDatum(c.score);
        score_nulls[n] = c.score_null;
        batch.groups[c.group].updated++;
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
    return SPI_processed;
}

void record_counters(const Task &, const Batch &) {}

const Job kRefresh = {"refresh",       "popularity refresh batch",
                      resolve_columns, begin_batch,
                      decide,          update_sql,
                      write,           record_counters};

} // namespace

const Job &refresh_job() {
    return kRefresh;
}

} // namespace popularity::worker
