// Provider counts: the statement-level AFTER trigger that turns a statement's transition tables
// into per-provider deltas appended to popularity.stats_journal, the metric classification the
// reconciliation uses, and the Clopper-Pearson bounds of popularity.freshness().
//
// Per statement and per provider the trigger computes delta = f(new rows) - f(old rows), where f
// counts rows, rows whose configured metric is usable, rows with a score and rows whose metric is
// present but unusable. The old and new transition tables are summed separately, so an UPDATE needs
// no pairing of old and new versions: a provider change moves the row between keys, a no-op
// re-delivery gives 0 for every count and writes nothing. Only non-zero deltas are appended, in one
// INSERT per statement; the journal has no index and no unique key, so concurrent ingestion
// transactions never wait on each other because of the counts.
#include "../core/confidence.hpp"
#include "../core/constants_table.hpp"
#include "../core/popularity.hpp"

#include "config_cache.hpp"
#include "guard.hpp"
#include "trigger_call.hpp"
#include "metric_jsonb.hpp"
#include "owner_context.hpp"
#include "score_trigger.hpp"

extern "C" {
#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "utils/array.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"
#include "funcapi.h"
}

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>

using namespace popularity;

namespace {

constexpr int kCounts = 4; // rows, rows_with_metric, rows_scored, rows_invalid_metric

struct KeyCounts {
    std::int64_t counts[kCounts] = {0, 0, 0, 0};
    const core::ProviderMetric *metric = nullptr; // looked up once per key and statement
    bool nonzero() const {
        for (std::int64_t c : counts) {
            if (c != 0) {
                return true;
            }
        }
        return false;
    }
};

// The per-provider deltas of one statement. Ingestion statements are usually one provider, so the
// last key is memoised: a row of the same provider costs one string comparison.
class Deltas {
  public:
    Deltas(std::string_view media_type, const core::ConstantsTable &constants)
        : media_type_(media_type), constants_(constants) {}

    KeyCounts &of(const char *provider, std::size_t length) {
        if (provider == nullptr) {
            has_null_ = true; // a row without a provider has no metric
            return null_key_;
        }
        const std::string_view key(provider, length);
        if (last_ != nullptr && last_key_ == key) {
            return *last_;
        }
        auto [it, inserted] = by_provider_.try_emplace(std::string(key));
        if (inserted) {
            it->second.metric = constants_.find(media_type_, key);
        }
        last_ = &it->second;
        last_key_ = it->first; // a view of the map's own copy (node-based, so it stays put)
        return it->second;
    }

    template <typename Fn> void for_each_nonzero(Fn fn) const {
        if (has_null_ && null_key_.nonzero()) {
            fn(static_cast<const std::string *>(nullptr), null_key_);
        }
        for (const auto &[provider, counts] : by_provider_) {
            if (counts.nonzero()) {
                fn(&provider, counts);
            }
        }
    }

  private:
    std::string_view media_type_;
    const core::ConstantsTable &constants_;
    std::unordered_map<std::string, KeyCounts> by_provider_;
    KeyCounts null_key_;
    bool has_null_ = false;
    std::string_view last_key_;
    KeyCounts *last_ = nullptr;
};

struct StatsColumns {
    int provider;
    int meta_data;
    int score;
};

// One row of a transition table, read without C++ objects in the frame (it may raise).
struct RowFields {
    const char *provider; // nullptr for a NULL provider
    std::size_t provider_length;
    Datum meta_data;
    bool meta_null;
    bool scored;
};

bool next_row(Tuplestorestate *store, TupleTableSlot *slot, const StatsColumns *cols,
              RowFields *out) {
    if (!tuplestore_gettupleslot(store, true, false, slot)) {
        return false;
    }
    bool isnull = false;
    const Datum provider = slot_getattr(slot, cols->provider, &isnull);
    if (isnull) {
        out->provider = nullptr;
        out->provider_length = 0;
    } else {
        text *value = DatumGetTextPP(provider);
        out->provider = VARDATA_ANY(value);
        out->provider_length = VARSIZE_ANY_EXHDR(value);
    }
    out->meta_data = slot_getattr(slot, cols->meta_data, &out->meta_null);
    slot_getattr(slot, cols->score, &isnull);
    out->scored = !isnull;
    return true;
}

// Adds sign * f(row) for every row of a transition table to `deltas`.
void accumulate(Tuplestorestate *store, TupleTableSlot *slot, const StatsColumns &cols, int sign,
                Deltas &deltas) {
    // A read pointer of our own: other AFTER triggers of the statement share the tuplestore.
    const int pointer =
        pg::pg_call([store] { return tuplestore_alloc_read_pointer(store, EXEC_FLAG_REWIND); });
    pg::pg_call([store, pointer] {
        tuplestore_select_read_pointer(store, pointer);
        tuplestore_rescan(store);
    });
    RowFields row;
    RowFields *row_ptr = &row;
    const StatsColumns *cols_ptr = &cols;
    while (pg::pg_call([=] { return next_row(store, slot, cols_ptr, row_ptr); })) {
        KeyCounts &key = deltas.of(row.provider, row.provider_length);
        key.counts[0] += sign;
        if (row.scored) {
            key.counts[2] += sign;
        }
        if (key.metric == nullptr || row.meta_null) {
            continue; // no metric configured, or no meta_data: the value is missing
        }
        const Datum meta = row.meta_data;
        Jsonb *document = pg::pg_call([meta] { return DatumGetJsonbP(meta); });
        const core::MetricValue value =
            pg::jsonb_metric(document, key.metric->metric.data(), key.metric->metric.size());
        if (reinterpret_cast<Pointer>(document) != DatumGetPointer(meta)) {
            pfree(document);
        }
        if (value.ok()) {
            key.counts[1] += sign;
        } else if (value.status == core::MetricStatus::invalid) {
            key.counts[3] += sign;
        }
    }
}

struct JournalRows {
    int n;
    Datum *providers;
    bool *provider_nulls;
    Datum *counts[kCounts];
};

SPIPlanPtr journal_plan = nullptr;

// Appends the deltas in one INSERT, as the extension's owner (pg::become_extension_owner)
// (ingestion roles need no right on the extension's tables, as with foreign-key checks). The
// statement is fully schema-qualified because it runs with the owner's rights under the caller's
// search_path. It inserts only when `relid` is the registered table of the media type or one of
// its partitions, so the trigger function cannot be used to forge counts from another table.
// Plain C: may raise.
void write_journal(const char *media_type, Oid relid, const JournalRows *rows) {
    if (SPI_connect() != SPI_OK_CONNECT) {
        elog(ERROR, "SPI_connect failed");
    }
    if (journal_plan == nullptr) {
        Oid types[7] = {TEXTOID,      TEXTARRAYOID, INT8ARRAYOID, INT8ARRAYOID,
                        INT8ARRAYOID, INT8ARRAYOID, OIDOID};
        SPIPlanPtr plan = SPI_prepare(
            "INSERT INTO popularity.stats_journal"
            " (media_type, provider, rows, rows_with_metric, rows_scored, rows_invalid_metric)"
            " SELECT m.media_type, d.provider, d.rows, d.rows_with_metric, d.rows_scored,"
            "        d.rows_invalid_metric"
            " FROM popularity.media_types AS m,"
            "      ROWS FROM (pg_catalog.unnest($2), pg_catalog.unnest($3), pg_catalog.unnest($4),"
            "                 pg_catalog.unnest($5), pg_catalog.unnest($6))"
            "        AS d(provider, rows, rows_with_metric, rows_scored, rows_invalid_metric)"
            " WHERE m.media_type OPERATOR(pg_catalog.=) $1"
            // The statement's table: the registered table, or one of its partitions (each has
            // the counts triggers, which fire for statements that name it).
            "   AND m.media_table::pg_catalog.oid OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT"
            "     a.relid::pg_catalog.oid FROM pg_catalog.pg_partition_ancestors($7) AS a(relid))"
            "     OPERATOR(pg_catalog.||) $7)",
            7, types);
        if (plan == nullptr) {
            elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
        }
        if (SPI_keepplan(plan) != 0) {
            elog(ERROR, "SPI_keepplan failed");
        }
        journal_plan = plan;
    }
    int dims[1] = {rows->n};
    int lbs[1] = {1};
    Datum values[7];
    char nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
    values[0] = CStringGetTextDatum(media_type);
    values[1] = PointerGetDatum(construct_md_array(rows->providers, rows->provider_nulls, 1, dims,
                                                   lbs, TEXTOID, -1, false, TYPALIGN_INT));
    for (int c = 0; c < kCounts; ++c) {
        values[2 + c] = PointerGetDatum(construct_array(
            rows->counts[c], rows->n, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
    }
    values[6] = ObjectIdGetDatum(relid);

    const pg::SavedUser saved = pg::become_extension_owner();
    const int rc = SPI_execute_plan(journal_plan, values, nulls, false, 0);
    pg::restore_user(saved);
    if (rc != SPI_OK_INSERT) {
        elog(ERROR, "appending to popularity.stats_journal failed: %s", SPI_result_code_string(rc));
    }
    if (SPI_processed != static_cast<uint64>(rows->n)) {
        ereport(ERROR, (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
                        errmsg("table \"%s\" is not the registered table of media type \"%s\"",
                               get_rel_name(relid), media_type),
                        errhint("The counts trigger is installed by "
                                "popularity.register_media_type().")));
    }
    SPI_finish();
}

} // namespace

// popularity._stats_trigger(media_type): AFTER INSERT / UPDATE / DELETE, FOR EACH STATEMENT, with
// the statement's transition tables (REFERENCING NEW TABLE and/or OLD TABLE).
POPULARITY_FUNCTION(popularity_stats_trigger) {
    TriggerData *trigger_data = pg::trigger_call(fcinfo, "popularity._stats_trigger()");
    const TriggerEvent event = trigger_data->tg_event;
    const bool insert = TRIGGER_FIRED_BY_INSERT(event);
    const bool update = TRIGGER_FIRED_BY_UPDATE(event);
    const bool del = TRIGGER_FIRED_BY_DELETE(event);
    if (!TRIGGER_FIRED_AFTER(event) || TRIGGER_FIRED_FOR_ROW(event) || !(insert || update || del) ||
        trigger_data->tg_trigger->tgnargs != 1 ||
        ((insert || update) && trigger_data->tg_newtable == nullptr) ||
        ((update || del) && trigger_data->tg_oldtable == nullptr)) {
        throw pg::SqlError(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                           "popularity._stats_trigger() must be fired AFTER INSERT, UPDATE or "
                           "DELETE FOR EACH STATEMENT with its transition tables and the media "
                           "type as its argument",
                           {}, "Register the table with popularity.register_media_type().");
    }
    const char *media_type = trigger_data->tg_trigger->tgargs[0];
    Relation rel = trigger_data->tg_relation;
    TupleDesc desc = RelationGetDescr(rel);
    const StatsColumns cols{SPI_fnumber(desc, "provider"), SPI_fnumber(desc, "meta_data"),
                            SPI_fnumber(desc, "standardized_popularity")};
    if (cols.provider <= 0 || cols.meta_data <= 0 || cols.score <= 0 ||
        (TupleDescAttr(desc, cols.provider - 1)->atttypid != TEXTOID &&
         TupleDescAttr(desc, cols.provider - 1)->atttypid != VARCHAROID) ||
        TupleDescAttr(desc, cols.meta_data - 1)->atttypid != JSONBOID) {
        throw pg::SqlError(ERRCODE_UNDEFINED_COLUMN,
                           pg::strprintf("table \"%s\" lacks the columns the counts read",
                                         RelationGetRelationName(rel)),
                           "The counts read provider (text or varchar), meta_data (jsonb) and "
                           "standardized_popularity.",
                           "Register the media type again with popularity.register_media_type().");
    }
    const core::ConstantsTable &constants = pg::config::constants();

    TupleTableSlot *slot =
        pg::pg_call([desc] { return MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple); });
    Deltas deltas(media_type, constants);
    if (trigger_data->tg_newtable != nullptr) {
        accumulate(trigger_data->tg_newtable, slot, cols, +1, deltas);
    }
    if (trigger_data->tg_oldtable != nullptr) {
        accumulate(trigger_data->tg_oldtable, slot, cols, -1, deltas);
    }
    pg::pg_call([slot] { ExecDropSingleTupleTableSlot(slot); });

    int n = 0;
    deltas.for_each_nonzero([&n](const std::string *, const KeyCounts &) { ++n; });
    if (n == 0) {
        return PointerGetDatum(nullptr); // e.g. a no-op re-delivery: nothing to append
    }
    JournalRows rows{};
    rows.n = n;
    const Size size = sizeof(Datum) * static_cast<Size>(n);
    rows.providers = static_cast<Datum *>(pg::pg_call([size] { return palloc(size); }));
    rows.provider_nulls = static_cast<bool *>(
        pg::pg_call([n] { return palloc(sizeof(bool) * static_cast<Size>(n)); }));
    for (int c = 0; c < kCounts; ++c) {
        rows.counts[c] = static_cast<Datum *>(pg::pg_call([size] { return palloc(size); }));
    }
    int i = 0;
    deltas.for_each_nonzero([&](const std::string *provider, const KeyCounts &key) {
        rows.provider_nulls[i] = provider == nullptr;
        rows.providers[i] = provider == nullptr ? Datum(0) : pg::pg_call([provider] {
            return PointerGetDatum(
                cstring_to_text_with_len(provider->data(), static_cast<int>(provider->size())));
        });
        for (int c = 0; c < kCounts; ++c) {
            rows.counts[c][i] = Int64GetDatum(key.counts[c]);
        }
        ++i;
    });
    const Oid relid = RelationGetRelid(rel);
    const JournalRows *rows_ptr = &rows;
    pg::pg_call([media_type, relid, rows_ptr] { write_journal(media_type, relid, rows_ptr); });
    return PointerGetDatum(nullptr);
}

// popularity._metric_status(meta_data jsonb, metric text): 'ok', 'missing' or 'invalid', exactly
// as the counts trigger classifies a row (NULL metric: NULL, no metric configured).
POPULARITY_FUNCTION(popularity_metric_status) {
    Jsonb *document = PG_GETARG_JSONB_P(0);
    text *key = PG_GETARG_TEXT_PP(1);
    const core::MetricValue value =
        pg::jsonb_metric(document, VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key));
    const char *status = value.ok()                                    ? "ok"
                         : value.status == core::MetricStatus::invalid ? "invalid"
                                                                       : "missing";
    PG_RETURN_TEXT_P(cstring_to_text(status));
}

namespace {

core::ProportionInterval interval_arguments(FunctionCallInfo fcinfo) {
    const std::int64_t successes = PG_GETARG_INT64(0);
    const std::int64_t trials = PG_GETARG_INT64(1);
    if (successes < 0 || trials < 0) {
        throw pg::SqlError(
            ERRCODE_INVALID_PARAMETER_VALUE, "successes and trials must not be negative",
            pg::strprintf("There were %lld successes in %lld trials.",
                          static_cast<long long>(successes), static_cast<long long>(trials)));
    }
    return core::clopper_pearson(static_cast<std::uint64_t>(successes),
                                 static_cast<std::uint64_t>(trials), PG_GETARG_FLOAT8(2));
}

} // namespace

// popularity.clopper_pearson_lower(successes, trials, confidence): exact lower bound.
POPULARITY_FUNCTION(popularity_clopper_pearson_lower) {
    PG_RETURN_FLOAT8(interval_arguments(fcinfo).lower);
}

// popularity.clopper_pearson_upper(successes, trials, confidence): exact upper bound.
POPULARITY_FUNCTION(popularity_clopper_pearson_upper) {
    PG_RETURN_FLOAT8(interval_arguments(fcinfo).upper);
}

// popularity.quantile_ranks(n, percentile, confidence): the ranks of a sorted sample of n values
// that estimate and bound the percentile (see core::quantile_ranks); NULL bounds when the sample is
// too small.
POPULARITY_FUNCTION(popularity_quantile_ranks) {
    const std::int64_t n = PG_GETARG_INT64(0);
    if (n < 1) {
        throw pg::SqlError(
            ERRCODE_INVALID_PARAMETER_VALUE, "a quantile needs at least one sample value",
            pg::strprintf("The sample size given was %lld.", static_cast<long long>(n)));
    }
    const core::QuantileRanks ranks = core::quantile_ranks(
        static_cast<std::uint64_t>(n), PG_GETARG_FLOAT8(1), PG_GETARG_FLOAT8(2));
    TupleDesc desc = nullptr;
    if (pg::pg_call([fcinfo, &desc] { return get_call_result_type(fcinfo, nullptr, &desc); }) !=
        TYPEFUNC_COMPOSITE) {
        throw pg::SqlError(ERRCODE_FEATURE_NOT_SUPPORTED,
                           "popularity.quantile_ranks() must return a record");
    }
    Datum values[4] = {Int64GetDatum(static_cast<std::int64_t>(ranks.estimate)),
                       Int64GetDatum(static_cast<std::int64_t>(ranks.lower)),
                       Int64GetDatum(static_cast<std::int64_t>(ranks.upper)),
                       Float8GetDatum(ranks.coverage)};
    bool nulls[4] = {false, ranks.lower == 0, ranks.upper > static_cast<std::uint64_t>(n), false};
    Datum *values_ptr = values;
    bool *nulls_ptr = nulls;
    return pg::pg_call([desc, values_ptr, nulls_ptr] {
        return HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values_ptr, nulls_ptr));
    });
}
