// The backend's cache of configuration and its one invalidation mechanism (see config_cache.hpp),
// with the trigger functions of the configuration tables.
#include "config_cache.hpp"

#include "guard.hpp"
#include "owner_context.hpp"
#include "tag_rules_cache.hpp"
#include "trigger_call.hpp"

extern "C" {
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type_d.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
}

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

using namespace popularity;

namespace popularity::pg::config {

namespace {

// ---- The one invalidation mechanism -------------------------------------------------------------

// The configuration tables (in schema popularity): a relcache invalidation of any of them makes
// every cached part stale. Each has the statement trigger popularity._config_changed(). The runs
// are among them: a tag filter run starting or ending changes which media types the ingestion
// trigger filters.
constexpr const char *kConfigTables[] = {"media_types", "metrics", "tag_rules", "refresh_runs"};
constexpr int kConfigTableCount = sizeof(kConfigTables) / sizeof(kConfigTables[0]);

// Plain data only, for the callback (which must not allocate, raise or call out).
Oid config_relids[kConfigTableCount] = {};
std::uint64_t generation = 1; // counts invalidations of the configuration
bool callback_registered = false;
MediaColumns columns;

void on_relcache_invalidation(Datum, Oid relid) {
    if (relid == InvalidOid) { // all relations (e.g. after the invalidation queue overflowed)
        ++generation;
        columns.relid = InvalidOid;
        return;
    }
    for (const Oid config_relid : config_relids) {
        if (config_relid == relid) {
            ++generation;
            break;
        }
    }
    // Any change to the media table's definition (ALTER TABLE, also in this session and this
    // transaction): the positions are looked up again. The descriptor's address alone is not a
    // key, as a rebuilt descriptor may reuse the old one's memory.
    if (relid == columns.relid) {
        columns.relid = InvalidOid;
    }
}

void register_callback() {
    if (!callback_registered) {
        pg_call([] {
            CacheRegisterRelcacheCallback(on_relcache_invalidation, PointerGetDatum(nullptr));
        });
        callback_registered = true;
    }
}

// The one "is my cache current" check: reads the invalidations other backends committed (one
// unlocked flag test when there are none) and returns the generation to compare with.
std::uint64_t current_generation() {
    register_callback();
    pg_call([] { AcceptInvalidationMessages(); });
    return generation;
}

// Where a cached part stands.
struct Loaded {
    std::uint64_t generation = 0; // 0: never loaded
    // Loaded in parallel mode, with the statement's snapshot (the latest one cannot be taken
    // there): good for that statement only, which the transaction and the statement's start
    // identify (a later parallel statement must not take it for current: a change committed
    // after that snapshot, whose invalidation was read, would be missing).
    bool statement_snapshot = false;
    LocalTransactionId lxid = InvalidLocalTransactionId;
    TimestampTz statement_start = 0;

    Loaded() = default;
    Loaded(std::uint64_t loaded_generation, bool in_statement_snapshot)
        : generation(loaded_generation), statement_snapshot(in_statement_snapshot),
          lxid(MyProc->lxid), statement_start(GetCurrentStatementStartTimestamp()) {}

    bool current(std::uint64_t now) const {
        return generation == now &&
               (!statement_snapshot ||
                (IsInParallelMode() && lxid == MyProc->lxid &&
                 statement_start == GetCurrentStatementStartTimestamp()));
    }
};

// The tables' OIDs, for the callback; looked up at every load (the extension may have been dropped
// and created again: dropping it invalidates the old tables, so the next use loads again).
void find_config_relids() {
    pg_call([] {
        const Oid schema = get_namespace_oid("popularity", true);
        for (int i = 0; i < kConfigTableCount; ++i) {
            config_relids[i] =
                schema == InvalidOid ? InvalidOid : get_relname_relid(kConfigTables[i], schema);
        }
    });
}

// Runs a read-only query as the extension's owner (the configuration applies whoever ingests or
// filters, and the policies that filter the configuration tables for roles never hide rows from
// the cache) with the latest snapshot: an invalidation already read is then always matched by the
// committed data it announces. In parallel mode (PARALLEL SAFE functions) only the statement's
// snapshot can be used: *statement_snapshot says so. SPI must be connected. Calls PostgreSQL:
// through pg_call.
void run_config_query(const char *query, bool *statement_snapshot) {
    SPIPlanPtr plan = SPI_prepare(query, 0, nullptr);
    if (plan == nullptr) {
        elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
    }
    *statement_snapshot = IsInParallelMode();
    Snapshot snapshot = *statement_snapshot ? GetActiveSnapshot() : GetLatestSnapshot();
    const SavedUser saved = become_extension_owner();
    const int rc =
        SPI_execute_snapshot(plan, nullptr, nullptr, snapshot, InvalidSnapshot, true, false, 0);
    restore_user(saved);
    if (rc != SPI_OK_SELECT) {
        elog(ERROR, "reading the popularity configuration failed: %s", SPI_result_code_string(rc));
    }
}

// ---- Scoring constants ------------------------------------------------------------------------

core::ConstantsTable constants_table;
Loaded constants_loaded;

struct ConstantRow {
    char *media_type;
    char *provider; // NULL for a row that only says "this media type filters tags at ingestion"
    char *metric;
    double constant;
    bool has_constant;
};

// Reads popularity.metrics into `context`. Plain C data only: it runs SPI, which may raise, so it
// is called through pg_call.
int fetch_constant_rows(MemoryContext context, ConstantRow **rows_out, bool *statement_snapshot) {
    if (SPI_connect() != SPI_OK_CONNECT) {
        elog(ERROR, "SPI_connect failed");
    }
    run_config_query(
        "SELECT media_type, provider, metric, constant FROM popularity.metrics"
        " UNION ALL SELECT m.media_type, NULL, NULL, NULL FROM popularity.media_types AS m"
        " WHERE m.filter_tags_at_ingestion"
        // ... or while a tag filter run (not a dry run) is active: a row that ingestion moves
        // behind the run's walk is then filtered by the trigger. Read through to_jsonb: a 0.1.0
        // schema has no job column. (Operators qualified: the caller's search_path applies.)
        "    OR EXISTS (SELECT FROM popularity.refresh_runs AS r"
        "               WHERE r.media_type OPERATOR(pg_catalog.=) m.media_type"
        "                 AND r.state OPERATOR(pg_catalog.=) ANY (ARRAY['queued', 'running'])"
        "                 AND pg_catalog.to_jsonb(r) OPERATOR(pg_catalog.@>)"
        "                     '{\"job\": \"filter_tags\", \"dry_run\": false}'::pg_catalog.jsonb)",
        statement_snapshot);
    const int n = static_cast<int>(SPI_processed);
    auto *rows = static_cast<ConstantRow *>(
        MemoryContextAllocZero(context, sizeof(ConstantRow) * static_cast<Size>(n > 0 ? n : 1)));
    for (int i = 0; i < n; ++i) {
        HeapTuple tuple = SPI_tuptable->vals[i];
        TupleDesc desc = SPI_tuptable->tupdesc;
        rows[i].media_type = MemoryContextStrdup(context, SPI_getvalue(tuple, desc, 1));
        char *provider = SPI_getvalue(tuple, desc, 2);
        rows[i].provider = provider ? MemoryContextStrdup(context, provider) : nullptr;
        rows[i].metric =
            provider ? MemoryContextStrdup(context, SPI_getvalue(tuple, desc, 3)) : nullptr;
        bool isnull = false;
        Datum constant = SPI_getbinval(tuple, desc, 4, &isnull);
        rows[i].has_constant = !isnull;
        rows[i].constant = isnull ? 0.0 : DatumGetFloat8(constant);
    }
    SPI_finish();
    *rows_out = rows;
    return n;
}

void load_constants(std::uint64_t now) {
    find_config_relids();
    MemoryContext context =
        AllocSetContextCreate(CurrentMemoryContext, "popularity constants", ALLOCSET_SMALL_SIZES);
    ConstantRow *rows = nullptr;
    bool statement_snapshot = false;
    const int n = pg_call([&] { return fetch_constant_rows(context, &rows, &statement_snapshot); });
    constants_loaded = Loaded{};
    try {
        constants_table.clear();
        for (int i = 0; i < n; ++i) {
            if (rows[i].provider == nullptr) {
                constants_table.add_tag_filtering(rows[i].media_type);
                continue;
            }
            constants_table.add(rows[i].media_type, rows[i].provider, rows[i].metric,
                                rows[i].has_constant ? std::optional<double>(rows[i].constant)
                                                     : std::nullopt);
        }
    } catch (...) {
        constants_table.clear();
        MemoryContextDelete(context);
        throw;
    }
    MemoryContextDelete(context);
    // `now` was taken before the snapshot: an invalidation read while loading makes the next use
    // load again.
    constants_loaded = Loaded{now, statement_snapshot};
}

// ---- Tag rules --------------------------------------------------------------------------------

constexpr const char *kRulesQuery =
    "SELECT media_type, min_accuracy::pg_catalog.text, filtered_providers, exact_denylist, "
    "substring_denylist, machine_labels FROM popularity.effective_tag_rules";

struct RulesCache {
    std::unique_ptr<core::TagRules> global;
    std::unordered_map<std::string, std::unique_ptr<core::TagRules>> by_media_type;
};

std::unique_ptr<RulesCache> rules_cache;
Loaded rules_loaded;

// A text datum as a string: converted to UTF-8 for the core, or left in the database encoding
// (media type names, compared with the caller's text).
std::string datum_text(Datum value, bool to_utf8 = true) {
    auto *detoasted = pg_call([value] {
        return pg_detoast_datum_packed(reinterpret_cast<struct varlena *>(DatumGetPointer(value)));
    });
    if (!to_utf8) {
        return std::string(VARDATA_ANY(detoasted), VARSIZE_ANY_EXHDR(detoasted));
    }
    return std::string(server_text_as_utf8(VARDATA_ANY(detoasted), VARSIZE_ANY_EXHDR(detoasted)));
}

std::vector<std::string> datum_text_array(Datum value) {
    ArrayType *array = pg_call([value] { return DatumGetArrayTypeP(value); });
    Datum *elements = nullptr;
    bool *nulls = nullptr;
    int count = 0;
    pg_call([&] {
        deconstruct_array(array, TEXTOID, -1, false, TYPALIGN_INT, &elements, &nulls, &count);
    });
    std::vector<std::string> out;
    out.reserve(static_cast<std::size_t>(count));
    for (int i = 0; i < count; ++i) {
        if (!nulls[i]) { // the table's CHECK constraints forbid NULL entries
            out.push_back(datum_text(elements[i]));
        }
    }
    return out;
}

Datum column(SPITupleTable *table, std::uint64_t row, int column_number, bool *isnull) {
    HeapTuple tuple = table->vals[row];
    TupleDesc desc = table->tupdesc;
    return pg_call([=] { return SPI_getbinval(tuple, desc, column_number, isnull); });
}

void load_rules(std::uint64_t now) {
    find_config_relids();
    auto fresh = std::make_unique<RulesCache>();
    bool statement_snapshot = false;
    pg_call([&statement_snapshot] {
        if (SPI_connect() != SPI_OK_CONNECT) {
            elog(ERROR, "SPI_connect failed");
        }
        run_config_query(kRulesQuery, &statement_snapshot);
    });
    SPITupleTable *table = SPI_tuptable;
    const std::uint64_t rows = SPI_processed;
    for (std::uint64_t row = 0; row < rows; ++row) {
        bool isnull = false;
        const Datum media_type = column(table, row, 1, &isnull);
        const bool global = isnull;
        std::string name = global ? std::string() : datum_text(media_type, false);
        core::TagRuleConfig rule_config;
        rule_config.min_accuracy = datum_text(column(table, row, 2, &isnull));
        rule_config.filtered_providers = datum_text_array(column(table, row, 3, &isnull));
        rule_config.exact_denylist = datum_text_array(column(table, row, 4, &isnull));
        rule_config.substring_denylist = datum_text_array(column(table, row, 5, &isnull));
        rule_config.machine_labels = datum_text_array(column(table, row, 6, &isnull));
        auto rules = std::make_unique<core::TagRules>(rule_config);
        if (global) {
            fresh->global = std::move(rules);
        } else {
            fresh->by_media_type.emplace(std::move(name), std::move(rules));
        }
    }
    pg_call([] { SPI_finish(); });
    if (!fresh->global) {
        throw SqlError(ERRCODE_INTERNAL_ERROR, "popularity.effective_tag_rules has no global row",
                       "", "Reinstall the popularity extension.");
    }
    rules_cache = std::move(fresh);
    rules_loaded = Loaded{now, statement_snapshot};
}

// ---- Media table columns ----------------------------------------------------------------------

int column_number(Relation rel, const char *name, Oid expected_type, Oid other_type = InvalidOid) {
    const int attnum = SPI_fnumber(RelationGetDescr(rel), name);
    if (attnum <= 0) {
        throw SqlError(
            ERRCODE_UNDEFINED_COLUMN,
            strprintf("table \"%s\" has no column \"%s\"", RelationGetRelationName(rel), name), {},
            "Register the media type again with popularity.register_media_type().");
    }
    const Oid actual = TupleDescAttr(RelationGetDescr(rel), attnum - 1)->atttypid;
    if (actual != expected_type && actual != other_type) {
        throw SqlError(ERRCODE_DATATYPE_MISMATCH,
                       strprintf("column \"%s\" of table \"%s\" has the wrong type", name,
                                 RelationGetRelationName(rel)),
                       {}, "Register the media type again with popularity.register_media_type().");
    }
    return attnum;
}

// The (sub)transaction that last queued the relcache invalidation, so that a statement trigger
// firing once per UPDATE of a long loop queues it once: a subtransaction's queued invalidations
// are dropped when it aborts, so a new one queues again.
LocalTransactionId invalidation_queued_lxid = InvalidLocalTransactionId;
SubTransactionId invalidation_queued_subxid = InvalidSubTransactionId;

} // namespace

const core::ConstantsTable &constants() {
    const std::uint64_t now = current_generation();
    if (!constants_loaded.current(now)) {
        load_constants(now);
    }
    return constants_table;
}

const core::TagRules &tag_rules(std::optional<std::string_view> media_type) {
    const std::uint64_t now = current_generation();
    if (!rules_cache || !rules_loaded.current(now)) {
        load_rules(now);
    }
    if (!media_type) {
        return *rules_cache->global;
    }
    const std::string key(*media_type);
    auto it = rules_cache->by_media_type.find(key);
    if (it == rules_cache->by_media_type.end()) {
        // Registered since the rules were loaded, by this transaction's current command?
        load_rules(current_generation());
        it = rules_cache->by_media_type.find(key);
        if (it == rules_cache->by_media_type.end()) {
            throw SqlError(ERRCODE_UNDEFINED_OBJECT,
                           strprintf("unknown media type \"%s\"", key.c_str()), "",
                           "Media types are registered in popularity.media_types.");
        }
    }
    return *it->second;
}

const MediaColumns &media_columns(Relation rel) {
    register_callback();
    TupleDesc desc = RelationGetDescr(rel);
    if (columns.relid != RelationGetRelid(rel) || columns.desc != desc ||
        columns.natts != desc->natts) {
        columns.relid = InvalidOid; // stays invalid if a lookup below throws
        const int provider = column_number(rel, "provider", TEXTOID, VARCHAROID);
        const int meta_data = column_number(rel, "meta_data", JSONBOID);
        const int score = column_number(rel, "standardized_popularity", FLOAT8OID);
        int tags = SPI_fnumber(desc, "tags");
        if (tags <= 0 || TupleDescAttr(desc, tags - 1)->atttypid != JSONBOID) {
            tags = 0;
        }
        const Form_pg_attribute score_att = TupleDescAttr(desc, score - 1);
        const bool score_last = score == desc->natts && score_att->attlen == sizeof(double) &&
                                score_att->attbyval && score_att->attalign == TYPALIGN_DOUBLE;
        columns = MediaColumns{
            RelationGetRelid(rel), desc, desc->natts, provider, meta_data, score, tags, score_last};
    }
    return columns;
}

void changed(Relation config_table) {
    // Through PostgreSQL's invalidation queue, once per (sub)transaction: every backend of the
    // database reads it after the commit (or this backend after this command, or on abort).
    const SubTransactionId subxid = GetCurrentSubTransactionId();
    if (invalidation_queued_lxid != MyProc->lxid || invalidation_queued_subxid != subxid) {
        pg_call([config_table] { CacheInvalidateRelcache(config_table); });
        invalidation_queued_lxid = MyProc->lxid;
        invalidation_queued_subxid = subxid;
    }
    // This backend reloads at its next use in any case, even within this command.
    ++generation;
}

} // namespace popularity::pg::config

namespace popularity::pg {

const core::TagRules &tag_rules_for(std::optional<std::string_view> media_type) {
    return config::tag_rules(media_type);
}

std::string_view server_text_as_utf8(const char *text, std::size_t length) {
    const int encoding = GetDatabaseEncoding();
    if (encoding == PG_UTF8 || encoding == PG_SQL_ASCII) {
        return std::string_view(text, length);
    }
    const char *converted =
        pg_call([=] { return pg_server_to_any(text, static_cast<int>(length), PG_UTF8); });
    if (converted == text) {
        return std::string_view(text, length);
    }
    return std::string_view(converted);
}

} // namespace popularity::pg

namespace {
void configuration_changed(FunctionCallInfo fcinfo, const char *function_name) {
    TriggerData *trigger_data = pg::trigger_call(fcinfo, function_name);
    const Trigger *trigger = trigger_data->tg_trigger;
    // No argument; 'constants' and 'tag_rules' are what version 0.1.0's triggers pass.
    const std::string_view kind = trigger->tgnargs == 1 ? trigger->tgargs[0] : "";
    if (trigger->tgnargs > 1 ||
        (trigger->tgnargs == 1 && kind != "constants" && kind != "tag_rules")) {
        throw pg::SqlError(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                           pg::strprintf("%s takes no argument", function_name));
    }
    pg::config::changed(trigger_data->tg_relation);
}
} // namespace

// popularity._config_changed(): AFTER ... FOR EACH STATEMENT on every configuration table; makes
// every backend reload its cached configuration once the change is visible to it.
POPULARITY_FUNCTION(popularity_config_changed) {
    configuration_changed(fcinfo, "popularity._config_changed()");
    return PointerGetDatum(nullptr);
}

// Version 0.1.0's trigger on popularity.tag_rules: the same (0.2.0 uses _config_changed()).
POPULARITY_FUNCTION(popularity_tag_rules_changed) {
    configuration_changed(fcinfo, "popularity._tag_rules_changed()");
    return PointerGetDatum(nullptr);
}
