// The ingestion trigger: computes standardized_popularity for every inserted row and every row
// whose provider or meta_data is updated, from the row as stored (so an upsert's merged meta_data
// is what is scored), with the constants of popularity.metrics cached per backend (config_cache).
#include "../core/constants_table.hpp"
#include "../core/float_compare.hpp"
#include "../core/popularity.hpp"

#include "config_cache.hpp"
#include "guard.hpp"
#include "trigger_call.hpp"
#include "metric_jsonb.hpp"
#include "score_trigger.hpp"
#include "settings.hpp"
#include "tag_filter.hpp"

extern "C" {
#include "access/htup_details.h"
#include "commands/trigger.h"
#include "utils/rel.h"
}

#include <algorithm>
#include <cstring>
#include <string_view>

using namespace popularity;

popularity::pg::TriggerBypass popularity::pg::trigger_bypass = popularity::pg::TriggerBypass::none;
Oid popularity::pg::trigger_bypass_relid = InvalidOid;

namespace {

std::string_view text_view(Datum datum) {
    text *value = DatumGetTextPP(datum);
    return std::string_view(VARDATA_ANY(value), VARSIZE_ANY_EXHDR(value));
}

// The score is the table's last column (as register_media_type adds it, and as in Openverse's
// tables) and this tuple has every column of the descriptor: the score is then read from the last
// 8 bytes of the tuple and written by copying bytes, without deforming the whole row or forming it
// again. Heap tuples are stored tightly (heap_fill_tuple: the data ends with the last non-null
// column), which is what makes the last 8 bytes the score when it is not null.
bool score_is_last(const pg::config::MediaColumns &cols, HeapTuple tuple) {
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
    const pg::TriggerBypass bypass = RelationGetRelid(trigger_data->tg_relation) == pg::trigger_bypass_relid
                                         ? pg::trigger_bypass
                                         : pg::TriggerBypass::none;
    if (bypass == pg::TriggerBypass::all) {
        return PointerGetDatum(TRIGGER_FIRED_BY_INSERT(event) ? trigger_data->tg_trigtuple
                                                              : trigger_data->tg_newtuple);
    }
    // First, as it may process invalidations (relcache entries are rebuilt in place).
    const core::ConstantsTable &constants = pg::config::constants();
    const std::string_view media_type(trigger_data->tg_trigger->tgargs[0]);
    // A refresh worker writes the scores itself: the trigger leaves them alone, but still filters
    // the tags of a media type that filters them now (a tag filter run may be walking the table).
    const bool score_bypassed = bypass == pg::TriggerBypass::score;
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
    const pg::config::MediaColumns &cols = pg::config::media_columns(rel);
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

    // The columns to change: the score when it differs from the stored one as the refresh judges
    // it (core::score_differs within popularity.score_tolerance: a stored score the refresh would
    // leave alone is left alone here too), and the tags when this media type filters them at
    // ingestion and a tag is dropped.
    int attnums[2];
    Datum values[2];
    bool nulls[2];
    int changes = 0;
    // (A refresh worker's own write: its score is left as the refresh computed it.)
    if (!score_bypassed && core::score_differs(old_score_null, old_value, !score,
                                               score.value_or(0.0), pg::score_tolerance)) {
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
