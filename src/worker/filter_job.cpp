// The tag filter job of the batch engine: a row changes when the tag rules of its media type drop
// at least one of its tags (a row whose tags are not an array is left as it is and counted). The
// rules run once per row, reading jsonb's binary layout; only a row that loses a tag is rebuilt.
// With the run's record on, the UPDATE also writes what each row lost, with its position, to
// popularity.tag_filter_removed in the same statement (popularity.undo_filter_tags).
#include "../pg/guard.hpp"
#include "../pg/relation_access.hpp"
#include "../pg/tag_filter.hpp"
#include "../pg/tag_rules_cache.hpp"
#include "engine.hpp"

extern "C" {
#include "catalog/pg_type.h"
#include "utils/builtins.h"
}

#include <cstring>
#include <optional>
#include <string_view>

namespace popularity::worker {
namespace {

void resolve_columns(Task &task, Relation rel) {
    task.tags_att = pg::media_column(rel, "tags", JSONBOID, JSONBOID);
}

// One group for the whole run (every row is filtered, whatever its provider); the rules of the
// media type as they are now (a change of the rules applies from the next batch on).
void begin_batch(const Task &task, const BatchContext &, Batch &batch) {
    batch.groups = static_cast<Group *>(palloc0(sizeof(Group)));
    batch.groups[0].name = "";
    batch.group_count = 1;
    const char *media_type = task.media_type;
    const core::TagRules *rules = nullptr;
    pg::run_guarded("popularity tag filter",
                    [&] { rules = &pg::tag_rules_for(std::string_view(media_type)); });
    batch.rules = rules;
}

bool decide(const Task &task, Batch &batch, TupleTableSlot *slot, Candidate &c, bool count) {
    if (count) {
        batch.groups[0].scanned++;
    }
    bool isnull = false;
    const Datum tags = slot_getattr(slot, task.tags_att, &isnull);
    if (isnull) {
        return false;
    }
    bool provider_null = false;
    const Datum provider = slot_getattr(slot, task.provider_att, &provider_null);
    MemoryContext batch_context = MemoryContextSwitchTo(batch.row_context);
    Jsonb *document = DatumGetJsonbP(tags);
    bool changes = false;
    bool not_array = false;
    const bool build = !task.dry_run;
    const bool record = task.record_removed;
    // The rules are C++ that may throw: one guarded call per row (no cost unless it throws).
    pg::run_guarded("popularity tag filter", [&] {
        std::optional<std::string_view> record_provider;
        if (!provider_null) {
            text *provider_text = DatumGetTextPP(provider);
            record_provider = pg::server_text_as_utf8(VARDATA_ANY(provider_text),
                                                      VARSIZE_ANY_EXHDR(provider_text));
        }
        const pg::Examination examination = pg::examine(document, *batch.rules, record_provider);
        not_array = examination.not_array;
        changes = !examination.not_array && examination.dropped > 0;
        if (!changes) {
            return;
        }
        for (int i = 0; i < kFilterCounterCount; i++) {
            c.drops[i] = static_cast<int32>(examination.counts[static_cast<std::size_t>(i)]);
        }
        c.drops[kRowsNotArrayCounter] = 0;
        c.tags = nullptr;
        c.removed = nullptr;
        if (build) {
            // Built from `document`, before the row context is reset.
            MemoryContextSwitchTo(batch_context);
            c.tags = pg::build_kept_array();
            if (record) {
                c.removed = pg::build_removed_array(document);
            }
        }
    });
    MemoryContextSwitchTo(batch_context);
    MemoryContextReset(batch.row_context);
    if (not_array && count) {
        batch.counters[kRowsNotArrayCounter]++;
    }
    if (changes) {
        c.group = 0;
        if (task.dry_run && count) {
            for (int i = 1; i < kFilterCounterCount; i++) {
                batch.counters[i] += c.drops[i];
            }
        }
    }
    return changes;
}

// $1 the locked rows, $2 their new tags; with the record, $3 what each lost and $4 the run.
char *update_sql(const Task &task, Oid *types, int *nargs) {
    types[0] = TIDARRAYOID;
    types[1] = JSONBARRAYOID;
    if (!task.record_removed) {
        *nargs = 2;
        // (The table's OID too: the statement names it, and a name can change hands.)
        return psprintf("UPDATE %s AS t SET tags = u.tags FROM unnest($1::tid[], $2::jsonb[])"
                        " AS u(tid, tags) WHERE t.ctid = u.tid AND t.tableoid = %u::oid",
                        task.leaf_table, task.leaf);
    }
    types[2] = JSONBARRAYOID;
    types[3] = INT8OID;
    *nargs = 4;
    // The record is one row for the batch (arrays with one element per row), written by the
    // statement that rewrites the rows; it returns how many rows the UPDATE wrote.
    return psprintf("WITH w AS (UPDATE %s AS t SET tags = u.tags"
                    " FROM unnest($1::tid[], $2::jsonb[], $3::jsonb[]) AS u(tid, tags, removed)"
                    " WHERE t.ctid = u.tid AND t.tableoid = %u::oid"
                    " RETURNING %s AS row_key, t.tags, u.removed),"
                    " r AS (INSERT INTO popularity.tag_filter_removed"
                    "   (run_id, row_keys, removed, tags_hashes)"
                    "   SELECT $4, array_agg(w.row_key), array_agg(w.removed),"
                    "          array_agg(popularity._tags_hash(w.tags)) FROM w HAVING count(*) > 0"
                    "   RETURNING cardinality(row_keys) AS n)"
                    " SELECT coalesce((SELECT n FROM r), 0)",
                    task.leaf_table, task.leaf, task.key_text_sql);
}

uint64 write(const Task &task, Batch &batch, int changing) {
    Datum *tids = static_cast<Datum *>(palloc(sizeof(Datum) * changing));
    Datum *tags = static_cast<Datum *>(palloc(sizeof(Datum) * changing));
    Datum *removed = static_cast<Datum *>(palloc(sizeof(Datum) * changing));
    int n = 0;
    for (int i = 0; i < batch.candidate_count; i++) {
        Candidate &c = batch.candidates[i];
        if (!c.locked || !c.changes) {
            continue;
        }
        tids[n] = PointerGetDatum(&c.tid);
        tags[n] = JsonbPGetDatum(c.tags);
        removed[n] = JsonbPGetDatum(c.removed);
        for (int r = 1; r < kFilterCounterCount; r++) {
            batch.counters[r] += c.drops[r];
        }
        batch.groups[c.group].updated++;
        n++;
    }
    Datum values[4] = {PointerGetDatum(construct_array(tids, n, TIDOID, sizeof(ItemPointerData),
                                                       false, TYPALIGN_SHORT)),
                       PointerGetDatum(construct_array(tags, n, JSONBOID, -1, false, TYPALIGN_INT)),
                       task.record_removed ? PointerGetDatum(construct_array(
                                                 removed, n, JSONBOID, -1, false, TYPALIGN_INT))
                                           : Datum(0),
                       Int64GetDatum(task.run_id)};
    const int rc = SPI_execute_plan(task.update_plan, values, nullptr, false, 0);
    if (rc != (task.record_removed ? SPI_OK_SELECT : SPI_OK_UPDATE)) {
        elog(ERROR, "popularity tag filter: updating a batch failed: %s",
             SPI_result_code_string(rc));
    }
    if (!task.record_removed) {
        return SPI_processed;
    }
    bool isnull = false;
    const Datum rows = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
    return isnull ? 0 : static_cast<uint64>(DatumGetInt32(rows));
}

// Tags dropped per verdict (by name) and rows whose tags are not an array.
void record_counters(const Task &task, const Batch &batch) {
    Datum names[kFilterCounterCount];
    Datum values[kFilterCounterCount];
    int k = 0;
    for (int i = 0; i < kFilterCounterCount; i++) {
        if (batch.counters[i] == 0) {
            continue;
        }
        const char *name = i == kRowsNotArrayCounter
                               ? kRowsNotArrayName
                               : core::tag_verdict_name(static_cast<core::TagVerdict>(i));
        names[k] = CStringGetTextDatum(name);
        values[k] = Int64GetDatum(batch.counters[i]);
        k++;
    }
    if (k == 0) {
        return;
    }
    Datum args[3] = {Int64GetDatum(task.task_id),
                     PointerGetDatum(construct_array(names, k, TEXTOID, -1, false, TYPALIGN_INT)),
                     PointerGetDatum(construct_array(values, k, INT8OID, sizeof(int64),
                                                     FLOAT8PASSBYVAL, TYPALIGN_DOUBLE))};
    const int rc = SPI_execute_plan(task.counters_plan, args, nullptr, false, 0);
    if (rc != SPI_OK_INSERT) {
        elog(ERROR, "popularity tag filter: recording counters failed: %s",
             SPI_result_code_string(rc));
    }
}

const Job kFilter = {"filter_tags",   "popularity tag filter batch",
                     resolve_columns, begin_batch,
                     decide,          update_sql,
                     write,           record_counters};

} // namespace

const Job &filter_job() {
    return kFilter;
}

} // namespace popularity::worker
