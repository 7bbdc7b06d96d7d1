// The ingestion trigger: computes standardized_popularity for every inserted row and every row
// whose provider or meta_data is updated, from the row as stored (so an upsert's merged meta_data
// is what is scored), with the constants of popularity.metrics cached per backend.
#include "../core/constants_table.hpp"
#include "../core/popularity.hpp"

#include "guard.hpp"
#include "trigger_call.hpp"
#include "metric_jsonb.hpp"
#include "owner_context.hpp"
#include "score_trigger.hpp"
#include "settings.hpp"
#include "shared_state.hpp"
#include "tag_filter.hpp"

extern "C" {
#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "storage/proc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
}

#include <algorithm>
#include <cstring>
#include <string_view>

using namespace popularity;

bool popularity::pg::scoring_trigger_bypassed = false;

namespace {

core::ConstantsTable constants; // this backend's copy of popularity.metrics

// The second way the copy learns of changes, which needs no shared memory: a committed change of
// popularity.metrics or popularity.media_types sends a relcache invalidation of that table
// (popularity._config_changed), which every backend receives through PostgreSQL's invalidation
// queue and counts here. Without the preloaded library (no shared version counter) the trigger
// reads the queue before each row, so a change committed before the row's statement (or row)
// started is always seen. It also covers this backend's own changes, including rolled-back ones:
// PostgreSQL replays a transaction's invalidations locally after each command and on abort.
// Plain data only: the callback must not allocate, raise or call out.
Oid metrics_relid = InvalidOid;
Oid media_types_relid = InvalidOid;
Oid runs_relid = InvalidOid; // a tag filter run starting or ending changes what is filtered
std::uint64_t invalidations = 0;
std::uint64_t loaded_invalidations = 0;
bool callback_registered = false;

void constants_relcache_callback(Datum, Oid relid) {
    if (relid == InvalidOid || relid == metrics_relid || relid == media_types_relid ||
        relid == runs_relid) {
        ++invalidations;
    }
}

// The configuration tables' OIDs, for the callback (looked up at every load: the extension may
// have been dropped and created again). Calls PostgreSQL: through pg_call.
void find_configuration_relids() {
    const Oid schema = get_namespace_oid("popularity", true);
    metrics_relid = schema == InvalidOid ? InvalidOid : get_relname_relid("metrics", schema);
    media_types_relid =
        schema == InvalidOid ? InvalidOid : get_relname_relid("media_types", schema);
    runs_relid = schema == InvalidOid ? InvalidOid : get_relname_relid("refresh_runs", schema);
}

// The (sub)transaction that last queued the relcache invalidation, so that a statement trigger
// firing once per UPDATE of a long loop queues it once: a subtransaction's queued invalidations
// are dropped when it aborts, so a new one queues again.
LocalTransactionId invalidation_queued_lxid = InvalidLocalTransactionId;
SubTransactionId invalidation_queued_subxid = InvalidSubTransactionId;

struct ConstantRow {
    char *media_type;
    char *provider; // NULL for a row that only says "this media type filters tags at ingestion"
    char *metric;
    double constant;
    bool has_constant;
};

// Reads popularity.metrics with the latest snapshot into `context`. Plain C data only: it runs
// SPI, which may raise, so it is called through pg_call.
int fetch_constant_rows(MemoryContext context, ConstantRow **rows_out) {
    if (SPI_connect() != SPI_OK_CONNECT) {
        elog(ERROR, "SPI_connect failed");
    }
    SPIPlanPtr plan = SPI_prepare(
        "SELECT media_type, provider, metric, constant FROM popularity.metrics"
        " UNION ALL SELECT m.media_type, NULL, NULL, NULL FROM popularity.media_types AS m"
        " WHERE m.filter_tags_at_ingestion"
        // ... or while a tag filter run (not a dry run) is active: a row that ingestion
        // moves behind the run's walk is then filtered by the trigger. Read through
        // to_jsonb: a 0.1.0 schema has no job column.
        "    OR EXISTS (SELECT FROM popularity.refresh_runs AS r"
        "               WHERE r.media_type OPERATOR(pg_catalog.=) m.media_type"
        "                 AND r.state OPERATOR(pg_catalog.=) ANY"
        "                     (ARRAY['queued', 'running']::pg_catalog.text[])"
        "                 AND pg_catalog.to_jsonb(r) OPERATOR(pg_catalog.@>)"
        "                     '{\"job\": \"filter_tags\", \"dry_run\": false}'"
        "                     ::pg_catalog.jsonb)",
        0, nullptr);
    if (plan == nullptr) {
        elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
    }
    // The latest snapshot, not the statement's: a version bump we observed is then always
    // matched by the committed data it announces.
    // As the extension's owner: the ingesting role needs no right on popularity.metrics, and the
    // policies that filter it for roles never hide another media type's constants from the cache.
    const pg::SavedUser saved = pg::become_extension_owner();
    int rc = SPI_execute_snapshot(plan, nullptr, nullptr, GetLatestSnapshot(), InvalidSnapshot,
                                  true, false, 0);
    pg::restore_user(saved);
    if (rc != SPI_OK_SELECT) {
        elog(ERROR, "reading popularity.metrics failed: %s", SPI_result_code_string(rc));
    }
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

void refresh_constants_cache() {
    if (!pg::shared_state_available()) {
        // No version counter: read the invalidations other backends committed (one unlocked
        // flag test when there are none).
        pg::pg_call([] { AcceptInvalidationMessages(); });
    }
    const std::uint64_t version = pg::config_version(pg::ConfigKind::constants);
    if (constants.loaded && constants.loaded_version == version &&
        loaded_invalidations == invalidations) {
        return;
    }
    pg::pg_call([] {
        if (!callback_registered) {
            CacheRegisterRelcacheCallback(constants_relcache_callback, PointerGetDatum(nullptr));
            callback_registered = true;
        }
        find_configuration_relids();
    });
    // Taken before the snapshot: an invalidation that arrives while loading makes the next row
    // load again.
    const std::uint64_t generation = invalidations;
    MemoryContext context =
        AllocSetContextCreate(CurrentMemoryContext, "popularity constants", ALLOCSET_SMALL_SIZES);
    ConstantRow *rows = nullptr;
    const int n = pg::pg_call([&] { return fetch_constant_rows(context, &rows); });
    try {
        constants.clear();
        for (int i = 0; i < n; ++i) {
            if (rows[i].provider == nullptr) {
                constants.add_tag_filtering(rows[i].media_type);
                continue;
            }
            constants.add(rows[i].media_type, rows[i].provider, rows[i].metric,
                          rows[i].has_constant ? std::optional<double>(rows[i].constant)
                                               : std::nullopt);
        }
        constants.loaded_version = version;
        constants.loaded = true;
        loaded_invalidations = generation;
    } catch (...) {
        constants.clear();
        MemoryContextDelete(context);
        throw;
    }
    MemoryContextDelete(context);
}

// Column positions in the media table, remembered for the relation's current tuple descriptor.
struct Columns {
    Oid relid = InvalidOid;
    TupleDesc desc = nullptr;
    int natts = 0;
    int provider = 0;
    int meta_data = 0;
    int score = 0;
    int tags = 0; // 0 when the table has no jsonb tags column
    // The score is the last column, a by-value float8: rows that have every column can take the
    // byte-copy path (see score_is_last).
    bool score_last = false;
};
Columns columns;

int column_number(Relation rel, const char *name, Oid expected_type, Oid other_type = InvalidOid) {
    const int attnum = SPI_fnumber(RelationGetDescr(rel), name);
    if (attnum <= 0) {
        throw pg::SqlError(
            ERRCODE_UNDEFINED_COLUMN,
            pg::strprintf("table \"%s\" has no column \"%s\"", RelationGetRelationName(rel), name),
            {}, "Register the media type again with popularity.register_media_type().");
    }
    const Oid actual = TupleDescAttr(RelationGetDescr(rel), attnum - 1)->atttypid;
    if (actual != expected_type && actual != other_type) {
        throw pg::SqlError(ERRCODE_DATATYPE_MISMATCH,
                           pg::strprintf("column \"%s\" of table \"%s\" has the wrong type", name,
                                         RelationGetRelationName(rel)),
                           {},
                           "Register the media type again with popularity.register_media_type().");
    }
    return attnum;
}

// Any change to the media table's definition (ALTER TABLE, also in this session and this
// transaction) sends a relcache invalidation: the positions are then looked up again. The
// descriptor's address alone is not a key, as a rebuilt descriptor may reuse the old one's memory.
void forget_columns(Datum, Oid relid) {
    if (relid == InvalidOid || relid == columns.relid) {
        columns.relid = InvalidOid;
    }
}

const Columns &columns_of(Relation rel) {
    static bool callback_registered = false;
    if (!callback_registered) {
        CacheRegisterRelcacheCallback(forget_columns, Datum(0));
        callback_registered = true;
    }
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
        columns = Columns{
            RelationGetRelid(rel), desc, desc->natts, provider, meta_data, score, tags, score_last};
    }
    return columns;
}

std::string_view text_view(Datum datum) {
    text *value = DatumGetTextPP(datum);
    return std::string_view(VARDATA_ANY(value), VARSIZE_ANY_EXHDR(value));
}

// The score is the table's last column (as register_media_type adds it, and as in Openverse's
// tables) and this tuple has every column of the descriptor: the score is then read from the last
// 8 bytes of the tuple and written by copying bytes, without deforming the whole row or forming it
// again. Heap tuples are stored tightly (heap_fill_tuple: the data ends with the last non-null
// column), which is what makes the last 8 bytes the score when it is not null.
bool score_is_last(const Columns &cols, HeapTuple tuple) {
    return cols.score_last && HeapTupleHeaderGetNatts(tuple->t_data) == cols.natts &&
           !HeapTupleHasExternal(tuple);
}

bool last_is_null(HeapTuple tuple, int natts) {
    return HeapTupleHasNulls(tuple) && att_isnull(natts - 1, tuple->t_data->t_bits);
}

double last_float8(HeapTuple tuple) {
    double value;
    std::memcpy(&value,
                reinterpret_cast<const char *>(tuple->t_data) + tuple->t_len - sizeof(double),
                sizeof(double));
    return value;
}

// `tuple` with its last column (a float8, NULL when `was_null`) set to `value`: the same bytes
// heap_form_tuple would produce from the deformed row, except that a null bitmap whose bits are now
// all set is kept (readers go by the bits; heap_form_tuple would leave the bitmap out).
HeapTuple with_last_float8(HeapTuple tuple, TupleDesc desc, bool was_null, double value) {
    HeapTupleHeader old_header = tuple->t_data;
    const int natts = desc->natts;
    const Size hoff = old_header->t_hoff;
    const Size old_data = tuple->t_len - hoff;
    const Size offset = was_null ? TYPEALIGN(ALIGNOF_DOUBLE, old_data) : old_data - sizeof(double);
    const Size length = hoff + offset + sizeof(double);
    // Not palloc0: every byte is written below (the copy, the alignment padding, the score).
    auto *result = static_cast<HeapTuple>(palloc(HEAPTUPLESIZE + length));
    auto *header =
        reinterpret_cast<HeapTupleHeader>(reinterpret_cast<char *>(result) + HEAPTUPLESIZE);
    if (was_null) {
        std::memcpy(header, old_header, tuple->t_len);
        std::memset(reinterpret_cast<char *>(header) + tuple->t_len, 0,
                    hoff + offset - tuple->t_len);
    } else {
        std::memcpy(header, old_header, hoff + offset);
    }
    std::memcpy(reinterpret_cast<char *>(header) + hoff + offset, &value, sizeof(double));
    if (was_null) {
        header->t_bits[(natts - 1) >> 3] |= static_cast<bits8>(1 << ((natts - 1) & 7));
    }
    // The header fields heap_form_tuple sets; the rest (visibility) is set when it is stored.
    HeapTupleHeaderSetDatumLength(header, length);
    HeapTupleHeaderSetTypeId(header, desc->tdtypeid);
    HeapTupleHeaderSetTypMod(header, desc->tdtypmod);
    header->t_infomask &= (HEAP_HASNULL | HEAP_HASVARWIDTH | HEAP_HASEXTERNAL);
    HeapTupleHeaderSetNatts(header, natts);
    header->t_ctid = old_header->t_ctid;
    result->t_len = static_cast<uint32>(length);
    result->t_self = tuple->t_self;
    result->t_tableOid = tuple->t_tableOid;
    result->t_data = header;
    return result;
}

} // namespace

void popularity::pg::refresh_scoring_cache() {
    refresh_constants_cache();
}

const core::ProviderMetric *popularity::pg::configured_metric(std::string_view media_type,
                                                              std::string_view provider) {
    return constants.find(media_type, provider);
}

// popularity._score_trigger(media_type): BEFORE INSERT OR UPDATE OF provider, meta_data, FOR EACH
// ROW.
POPULARITY_FUNCTION(popularity_score_trigger) {
    TriggerData *trigger_data = pg::trigger_call(fcinfo, "popularity._score_trigger()");
    const TriggerEvent event = trigger_data->tg_event;
    if (!TRIGGER_FIRED_BEFORE(event) || !TRIGGER_FIRED_FOR_ROW(event) ||
        !(TRIGGER_FIRED_BY_INSERT(event) || TRIGGER_FIRED_BY_UPDATE(event))) {
        throw pg::SqlError(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                           "popularity._score_trigger() must be fired BEFORE INSERT OR UPDATE "
                           "FOR EACH ROW");
    }
    if (trigger_data->tg_trigger->tgnargs != 1) {
        throw pg::SqlError(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                           "popularity._score_trigger() needs the media type as its argument", {},
                           "Register the table with popularity.register_media_type().");
    }
    // First, as it may process invalidations (relcache entries are rebuilt in place).
    refresh_constants_cache();
    const std::string_view media_type(trigger_data->tg_trigger->tgargs[0]);
    // A refresh worker writes the scores itself: the trigger leaves them alone, but still filters
    // the tags of a media type that filters them now (a tag filter run may be walking the table).
    const bool score_bypassed = pg::scoring_trigger_bypassed;
    if (score_bypassed && !constants.filters_tags(media_type)) {
        return PointerGetDatum(TRIGGER_FIRED_BY_INSERT(event) ? trigger_data->tg_trigtuple
                                                              : trigger_data->tg_newtuple);
    }
    HeapTuple tuple =
        TRIGGER_FIRED_BY_INSERT(event) ? trigger_data->tg_trigtuple : trigger_data->tg_newtuple;
    // The executor's slot holding that tuple: its columns are deformed once, as far as needed,
    // instead of walking the tuple from its start for every column read. Every BEFORE ROW
    // INSERT/UPDATE firing passes it (ExecBRInsertTriggers, ExecBRUpdateTriggers).
    TupleTableSlot *slot =
        TRIGGER_FIRED_BY_INSERT(event) ? trigger_data->tg_trigslot : trigger_data->tg_newslot;
    if (slot == nullptr) {
        throw pg::SqlError(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                           "popularity._score_trigger() was fired without the row's slot");
    }
    Relation rel = trigger_data->tg_relation;
    const Columns &cols = columns_of(rel);
    TupleDesc desc = cols.desc;

    const bool last = score_is_last(cols, tuple);
    // With the score last, the slot is deformed only up to provider and meta_data.
    const int needed = std::max(cols.provider, cols.meta_data);
    slot_getsomeattrs(slot, last ? needed : std::max(needed, cols.score));
    const Datum provider_datum = slot->tts_values[cols.provider - 1];
    const bool provider_null = slot->tts_isnull[cols.provider - 1];
    const Datum meta_datum = slot->tts_values[cols.meta_data - 1];
    const bool meta_null = slot->tts_isnull[cols.meta_data - 1];
    const bool old_score_null =
        last ? last_is_null(tuple, cols.natts) : slot->tts_isnull[cols.score - 1];
    double old_value = 0.0;
    if (!old_score_null) {
        old_value = last ? last_float8(tuple) : DatumGetFloat8(slot->tts_values[cols.score - 1]);
    }

    std::optional<double> score;
    if (!score_bypassed && !provider_null && !meta_null) {
        const std::string_view provider = text_view(provider_datum);
        const core::ProviderMetric *metric = constants.find(media_type, provider);
        if (metric != nullptr && metric->constant) {
            Jsonb *document = DatumGetJsonbP(meta_datum);
            const core::MetricValue value =
                pg::jsonb_metric(document, metric->metric.data(), metric->metric.size());
            if (value.ok()) {
                score = core::standardized_popularity(value.value, *metric->constant);
            } else if (value.status == core::MetricStatus::invalid && pg::strict_metrics) {
                throw pg::SqlError(
                    ERRCODE_INVALID_TEXT_REPRESENTATION,
                    pg::strprintf("invalid value for metric \"%s\" of provider \"%.*s\"",
                                  metric->metric.c_str(), static_cast<int>(provider.size()),
                                  provider.data()),
                    "The value is not a finite, non-negative number.",
                    "Fix the row's meta_data, or set popularity.strict_metrics = off to score "
                    "such rows NULL.");
            }
            if (reinterpret_cast<Pointer>(document) != DatumGetPointer(meta_datum)) {
                pfree(document);
            }
        }
    }

    // The columns to change: the score when it is not already right (bit for bit), and the tags
    // when this media type filters them at ingestion and a tag is dropped.
    int attnums[2];
    Datum values[2];
    bool nulls[2];
    int changes = 0;
    bool score_right = score_bypassed;
    if (score_bypassed) {
        // left as the refresh wrote it
    } else if (!score) {
        score_right = old_score_null;
    } else if (!old_score_null) {
        score_right = std::memcmp(&old_value, &*score, sizeof(double)) == 0;
    }
    if (!score_right) {
        attnums[changes] = cols.score;
        values[changes] = score ? Float8GetDatum(*score) : Datum(0);
        nulls[changes] = !score;
        ++changes;
    }
    if (cols.tags > 0 && constants.filters_tags(media_type)) {
        bool tags_null = false;
        const Datum tags = slot_getattr(slot, cols.tags, &tags_null);
        if (!tags_null) {
            const char *provider = provider_null ? nullptr : TextDatumGetCString(provider_datum);
            Jsonb *filtered = pg::filter_tags_for_ingestion(trigger_data->tg_trigger->tgargs[0],
                                                            DatumGetJsonbP(tags), provider);
            if (filtered != nullptr) {
                attnums[changes] = cols.tags;
                values[changes] = JsonbPGetDatum(filtered);
                nulls[changes] = false;
                ++changes;
            }
        }
    }
    if (changes == 0) {
        return PointerGetDatum(tuple);
    }
    if (last && changes == 1 && attnums[0] == cols.score && !nulls[0]) {
        return PointerGetDatum(
            with_last_float8(tuple, desc, old_score_null, DatumGetFloat8(values[0])));
    }
    // heap_modify_tuple_by_cols, from the slot's deformed columns instead of deforming again.
    slot_getallattrs(slot);
    const auto natts = static_cast<Size>(desc->natts);
    auto *all_values = static_cast<Datum *>(palloc(natts * sizeof(Datum)));
    auto *all_nulls = static_cast<bool *>(palloc(natts * sizeof(bool)));
    std::memcpy(all_values, slot->tts_values, natts * sizeof(Datum));
    std::memcpy(all_nulls, slot->tts_isnull, natts * sizeof(bool));
    for (int i = 0; i < changes; ++i) {
        all_values[attnums[i] - 1] = values[i];
        all_nulls[attnums[i] - 1] = nulls[i];
    }
    HeapTuple result = heap_form_tuple(desc, all_values, all_nulls);
    result->t_data->t_ctid = tuple->t_data->t_ctid;
    result->t_self = tuple->t_self;
    result->t_tableOid = tuple->t_tableOid;
    pfree(all_values);
    pfree(all_nulls);
    return PointerGetDatum(result);
}

// popularity._config_changed(kind): AFTER ... FOR EACH STATEMENT on a configuration table; makes
// every backend reload its cache of that configuration after this transaction commits.
POPULARITY_FUNCTION(popularity_config_changed) {
    TriggerData *trigger_data = pg::trigger_call(fcinfo, "popularity._config_changed()");
    const Trigger *trigger = trigger_data->tg_trigger;
    const std::string_view kind = trigger->tgnargs == 1 ? trigger->tgargs[0] : "";
    if (kind == "constants") {
        pg::bump_config_version_at_commit(pg::ConfigKind::constants);
        // Also through PostgreSQL's invalidation queue (see constants_relcache_callback), once
        // per (sub)transaction; this backend reloads before its next row in any case.
        const SubTransactionId subxid = GetCurrentSubTransactionId();
        if (invalidation_queued_lxid != MyProc->lxid || invalidation_queued_subxid != subxid) {
            Relation relation = trigger_data->tg_relation;
            pg::pg_call([relation] { CacheInvalidateRelcache(relation); });
            invalidation_queued_lxid = MyProc->lxid;
            invalidation_queued_subxid = subxid;
        }
        constants.loaded = false;
    } else if (kind == "tag_rules") {
        pg::bump_config_version_at_commit(pg::ConfigKind::tag_rules);
    } else {
        throw pg::SqlError(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
                           "popularity._config_changed() needs 'constants' or 'tag_rules' as "
                           "its argument");
    }
    return PointerGetDatum(nullptr);
}
