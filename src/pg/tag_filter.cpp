#include "../core/tag_rules.hpp"
#include "../core/tag_undo.hpp"

#include "tag_filter.hpp"
#include "numeric_view.hpp"

#include "guard.hpp"
#include "tag_rules_cache.hpp"

extern "C" {
#include "catalog/pg_type_d.h"
#include "commands/trigger.h"
#include "common/hashfn.h"
#include "utils/array.h"
#include "utils/numeric.h"
#include "utils/tuplestore.h"
}

#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>
#include <vector>

using namespace popularity;

namespace popularity::pg {

namespace {

std::optional<std::string_view> string_member(JsonbContainer *object, const char *key,
                                              std::size_t key_length, bool *present = nullptr) {
    JsonbValue buffer;
    const JsonbValue *value =
        getKeyJsonValueFromContainer(object, key, static_cast<uint32>(key_length), &buffer);
    if (present != nullptr) {
        *present = value != nullptr;
    }
    if (value == nullptr || value->type != jbvString) {
        return std::nullopt;
    }
    return server_text_as_utf8(value->val.string.val,
                               static_cast<std::size_t>(value->val.string.len));
}

core::TagView read_tag(JsonbContainer *object) {
    core::TagView tag;
    tag.is_object = true;
    tag.name = string_member(object, "name", 4);
    tag.provider = string_member(object, "provider", 8);
    JsonbValue buffer;
    const JsonbValue *accuracy = getKeyJsonValueFromContainer(object, "accuracy", 8, &buffer);
    if (accuracy == nullptr) {
        tag.accuracy = core::TagView::Accuracy::absent;
    } else if (accuracy->type == jbvNumeric &&
               numeric_view(accuracy->val.numeric, tag.accuracy_value)) {
        tag.accuracy = core::TagView::Accuracy::number;
    } else if (accuracy->type == jbvString) {
        // Openverse reads it with Python's float(): the core parses it the same way.
        tag.accuracy = core::TagView::Accuracy::text;
        tag.accuracy_text = server_text_as_utf8(accuracy->val.string.val,
                                                static_cast<std::size_t>(accuracy->val.string.len));
    } else {
        tag.accuracy = core::TagView::Accuracy::not_number;
    }
    return tag;
}

// A kept element: an object container inside the input document.
struct KeptElement {
    JsonbContainer *object;
    uint32 length;
};

// Reused per backend, so that examining a document allocates nothing after warm-up.
core::TagClassifier classifier;
std::vector<KeptElement> kept_elements;
std::vector<uint32> dropped_positions; // of the last examine(), in the original array

} // namespace

// Classifies every element of `tags`; the kept ones are left in kept_elements.
Examination examine(Jsonb *tags, const core::TagRules &rules,
                    std::optional<std::string_view> record_provider) {
    Examination result;
    kept_elements.clear();
    dropped_positions.clear();
    JsonbContainer *array = &tags->root;
    if (!JsonContainerIsArray(array) || JsonContainerIsScalar(array)) {
        result.not_array = true;
        return result;
    }
    classifier.start_record(rules, record_provider);
    const uint32 count = JsonContainerSize(array);
    const char *base = reinterpret_cast<const char *>(&array->children[count]);
    uint32 offset = 0; // of element i's data, as JsonbIteratorNext computes it
    for (uint32 i = 0; i < count; ++i) {
        const JEntry entry = array->children[i];
        const uint32 start = offset;
        offset = JBE_HAS_OFF(entry) ? JBE_OFFLENFLD(entry) : offset + JBE_OFFLENFLD(entry);
        core::TagView tag; // not an object unless shown otherwise
        JsonbContainer *object = nullptr;
        if (JBE_ISCONTAINER(entry)) {
            object = reinterpret_cast<JsonbContainer *>(const_cast<char *>(base + INTALIGN(start)));
            if (JsonContainerIsObject(object)) {
                tag = read_tag(object);
            }
        }
        const core::TagVerdict verdict = classifier.classify(tag);
        ++result.counts[static_cast<std::size_t>(verdict)];
        if (verdict == core::TagVerdict::keep) {
            const auto padding = static_cast<uint32>(INTALIGN(start) - start);
            kept_elements.push_back({object, offset - start - padding});
        } else {
            ++result.dropped;
            dropped_positions.push_back(i);
        }
    }
    return result;
}

// A new array of the kept elements (only called when something was dropped).
Jsonb *build_kept_array() {
    KeptElement *items = kept_elements.data();
    const std::size_t n = kept_elements.size();
    return pg_call([items, n] {
        JsonbParseState *state = nullptr;
        pushJsonbValue(&state, WJB_BEGIN_ARRAY, nullptr);
        for (std::size_t i = 0; i < n; ++i) {
            JsonbValue value;
            value.type = jbvBinary;
            value.val.binary.data = items[i].object;
            value.val.binary.len = static_cast<int>(items[i].length);
            pushJsonbValue(&state, WJB_ELEM, &value);
        }
        return JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_ARRAY, nullptr));
    });
}

// [[position, element], ...] of the elements the last examine() dropped from `tags`.
Jsonb *build_removed_array(Jsonb *tags) {
    const uint32 *positions = dropped_positions.data();
    const std::size_t n = dropped_positions.size();
    JsonbContainer *array = &tags->root;
    return pg_call([positions, n, array] {
        JsonbParseState *state = nullptr;
        pushJsonbValue(&state, WJB_BEGIN_ARRAY, nullptr);
        for (std::size_t i = 0; i < n; ++i) {
            pushJsonbValue(&state, WJB_BEGIN_ARRAY, nullptr);
            JsonbValue position;
            position.type = jbvNumeric;
            position.val.numeric = int64_to_numeric(positions[i]);
            pushJsonbValue(&state, WJB_ELEM, &position);
            pushJsonbValue(&state, WJB_ELEM, getIthJsonbValueFromContainer(array, positions[i]));
            pushJsonbValue(&state, WJB_END_ARRAY, nullptr);
        }
        return JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_ARRAY, nullptr));
    });
}

namespace {

std::optional<std::string_view> optional_text_arg(FunctionCallInfo fcinfo, int n) {
    if (PG_NARGS() <= n || PG_ARGISNULL(n)) {
        return std::nullopt;
    }
    text *value = pg_call([fcinfo, n] { return PG_GETARG_TEXT_PP(n); });
    return std::string_view(VARDATA_ANY(value), VARSIZE_ANY_EXHDR(value));
}

std::optional<std::string_view> utf8_or_null(std::optional<std::string_view> text) {
    if (!text) {
        return std::nullopt;
    }
    return server_text_as_utf8(text->data(), text->size());
}

} // namespace

Jsonb *filter_tags_for_ingestion(const char *media_type, Jsonb *tags, const char *record_provider) {
    const core::TagRules &rules = tag_rules_for(std::string_view(media_type));
    std::optional<std::string_view> provider;
    if (record_provider != nullptr) {
        provider = server_text_as_utf8(record_provider, std::strlen(record_provider));
    }
    const Examination examination = examine(tags, rules, provider);
    if (examination.not_array || examination.dropped == 0) {
        return nullptr;
    }
    return build_kept_array();
}

} // namespace popularity::pg

namespace {
// Reads (tags, record_provider, media_type) and examines the tags with the media type's rules.
pg::Examination examine_arguments(FunctionCallInfo fcinfo, Jsonb **tags) {
    *tags = pg::pg_call([fcinfo] { return PG_GETARG_JSONB_P(0); });
    const auto media_type = pg::optional_text_arg(fcinfo, 2);
    const core::TagRules &rules = pg::tag_rules_for(media_type);
    const auto provider = pg::utf8_or_null(pg::optional_text_arg(fcinfo, 1));
    return pg::examine(*tags, rules, provider);
}
} // namespace

// popularity.filtered_tags(tags jsonb, record_provider text, media_type text) -> jsonb: the kept
// tags, or the input itself when nothing is dropped (also for a document that is not an array).
POPULARITY_FUNCTION(popularity_filtered_tags) {
    if (PG_ARGISNULL(0)) {
        PG_RETURN_NULL();
    }
    Jsonb *tags = nullptr;
    const pg::Examination examination = examine_arguments(fcinfo, &tags);
    if (examination.not_array || examination.dropped == 0) {
        PG_RETURN_JSONB_P(tags);
    }
    PG_RETURN_JSONB_P(pg::build_kept_array());
}

// popularity._tag_drop_counts(tags jsonb, record_provider text, media_type text) -> integer[]:
// NULL when the document is an array and nothing is dropped (or tags is NULL); otherwise
// {not_an_array (0 or 1), malformed, low_accuracy, filtered_provider, exact_denylist,
//  substring_denylist, machine_label}: the number of tags dropped for each reason.
POPULARITY_FUNCTION(popularity_tag_drop_counts) {
    if (PG_ARGISNULL(0)) {
        PG_RETURN_NULL();
    }
    Jsonb *tags = nullptr;
    const pg::Examination examination = examine_arguments(fcinfo, &tags);
    if (!examination.not_array && examination.dropped == 0) {
        PG_RETURN_NULL();
    }
    Datum values[core::kTagVerdictCount];
    values[0] = Int32GetDatum(examination.not_array ? 1 : 0);
    for (std::size_t i = 1; i < core::kTagVerdictCount; ++i) {
        const long long n = examination.counts[i];
        values[i] = Int32GetDatum(n > PG_INT32_MAX ? PG_INT32_MAX : static_cast<int32>(n));
    }
    Datum *datums = values;
    ArrayType *array = pg::pg_call([datums] {
        return construct_array(datums, static_cast<int>(core::kTagVerdictCount), INT4OID,
                               sizeof(int32), true, TYPALIGN_INT);
    });
    PG_RETURN_ARRAYTYPE_P(array);
}

// popularity._removed_tags(tags jsonb, record_provider text, media_type text) -> jsonb: what the
// rules remove from tags, as [[position, element], ...] (positions in tags, increasing); NULL when
// nothing is removed or tags is not an array. The record a filter run keeps for undo.
POPULARITY_FUNCTION(popularity_removed_tags) {
    if (PG_ARGISNULL(0)) {
        PG_RETURN_NULL();
    }
    Jsonb *tags = nullptr;
    const pg::Examination examination = examine_arguments(fcinfo, &tags);
    if (examination.not_array || examination.dropped == 0) {
        PG_RETURN_NULL();
    }
    PG_RETURN_JSONB_P(pg::build_removed_array(tags));
}

namespace {
bool is_array(JsonbContainer *container) {
    return JsonContainerIsArray(container) && !JsonContainerIsScalar(container);
}

// Reads a record [[position, element], ...] into palloc'd arrays; false when it has another shape.
bool read_removed(JsonbContainer *list, uint32 n, int32 *positions, JsonbValue **elements) {
    for (uint32 i = 0; i < n; ++i) {
        JsonbValue *pair = getIthJsonbValueFromContainer(list, i);
        if (pair == nullptr || pair->type != jbvBinary || !is_array(pair->val.binary.data) ||
            JsonContainerSize(pair->val.binary.data) != 2) {
            return false;
        }
        JsonbValue *position = getIthJsonbValueFromContainer(pair->val.binary.data, 0);
        if (position == nullptr || position->type != jbvNumeric) {
            return false;
        }
        bool error = false;
        positions[i] = numeric_int4_opt_error(position->val.numeric, &error);
        if (error) {
            return false;
        }
        elements[i] = getIthJsonbValueFromContainer(pair->val.binary.data, 1);
    }
    return true;
}
} // namespace

// popularity._restored_tags(tags jsonb, removed jsonb) -> jsonb: tags with the elements of a
// record [[position, element], ...] (popularity._removed_tags) put back at their positions. Raises
// 22023 when the record does not fit tags (not arrays, positions beyond the restored array).
POPULARITY_FUNCTION(popularity_restored_tags) {
    Jsonb *tags = pg::pg_call([fcinfo] { return PG_GETARG_JSONB_P(0); });
    Jsonb *removed = pg::pg_call([fcinfo] { return PG_GETARG_JSONB_P(1); });
    JsonbContainer *current = &tags->root;
    JsonbContainer *list = &removed->root;
    if (!is_array(current) || !is_array(list)) {
        throw pg::SqlError(ERRCODE_INVALID_PARAMETER_VALUE,
                           "the tags and the record of removed tags must be arrays", "",
                           "The record is a popularity.tag_filter_removed.removed value.");
    }
    const uint32 n = JsonContainerSize(list);
    auto *positions =
        static_cast<int32 *>(pg::pg_call([n] { return palloc(sizeof(int32) * Max(n, 1U)); }));
    auto *elements = static_cast<JsonbValue **>(
        pg::pg_call([n] { return palloc(sizeof(JsonbValue *) * Max(n, 1U)); }));
    const bool well_formed = pg::pg_call(
        [list, n, positions, elements] { return read_removed(list, n, positions, elements); });
    std::optional<std::vector<core::RestoreSlot>> plan;
    if (well_formed) {
        plan = core::restore_plan(JsonContainerSize(current),
                                  std::vector<std::int64_t>(positions, positions + n));
    }
    if (!plan) {
        throw pg::SqlError(ERRCODE_INVALID_PARAMETER_VALUE,
                           "the record of removed tags does not fit the tags",
                           "A record is [[position, element], ...] with increasing positions "
                           "inside the restored array.",
                           "");
    }
    const core::RestoreSlot *slots = plan->data();
    const std::size_t total = plan->size();
    Jsonb *restored = pg::pg_call([slots, total, current, elements] {
        JsonbParseState *state = nullptr;
        pushJsonbValue(&state, WJB_BEGIN_ARRAY, nullptr);
        for (std::size_t i = 0; i < total; ++i) {
            JsonbValue *value =
                slots[i].removed
                    ? elements[slots[i].index]
                    : getIthJsonbValueFromContainer(current, static_cast<uint32>(slots[i].index));
            pushJsonbValue(&state, WJB_ELEM, value);
        }
        return JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_ARRAY, nullptr));
    });
    PG_RETURN_JSONB_P(restored);
}

// popularity._tags_hash(tags jsonb) -> bigint: a 64-bit hash of the binary value, which a filter
// run records for the tags it wrote and undo compares with the tags a row has now.
// (jsonb_hash_extended ignores the nesting: '[]' and '{}', or [{"a": 1}] and {"a": 1}, hash alike.)
// Equal binary values are equal jsonb; equal jsonb values with different binary forms (1.0 and
// 1.00) count as changed, which only keeps undo away from such a row.
POPULARITY_FUNCTION(popularity_tags_hash) {
    Jsonb *tags = pg::pg_call([fcinfo] { return PG_GETARG_JSONB_P(0); });
    const uint64 hash = hash_bytes_extended(reinterpret_cast<const unsigned char *>(VARDATA(tags)),
                                            static_cast<int>(VARSIZE(tags) - VARHDRSZ), 0);
    PG_RETURN_INT64(static_cast<int64>(hash));
}

namespace {
// A text[] of the strings (ASCII: the built-in rules). Calls PostgreSQL: through pg_call.
Datum text_array(const std::vector<std::string> &strings) {
    auto *items = static_cast<Datum *>(palloc(sizeof(Datum) * (strings.size() + 1)));
    for (std::size_t i = 0; i < strings.size(); ++i) {
        items[i] = PointerGetDatum(
            cstring_to_text_with_len(strings[i].data(), static_cast<int>(strings[i].size())));
    }
    return PointerGetDatum(
        construct_array(items, static_cast<int>(strings.size()), TEXTOID, -1, false, TYPALIGN_INT));
}
} // namespace

// popularity.builtin_tag_rules() -> (min_accuracy numeric, filtered_providers text[],
// exact_denylist text[], substring_denylist text[], machine_labels text[]): the library's built-in
// rules (core::TagRuleConfig's defaults), which the view popularity.tag_rule_defaults shows, so
// that the rules in SQL and in C++ have one definition.
POPULARITY_FUNCTION(popularity_builtin_tag_rules) {
    const core::TagRuleConfig defaults;
    const Datum result = pg::pg_call([&] {
        TupleDesc desc = nullptr;
        if (get_call_result_type(fcinfo, nullptr, &desc) != TYPEFUNC_COMPOSITE ||
            desc->natts != 5) {
            elog(ERROR, "popularity.builtin_tag_rules: the result type is not the 5 rule columns");
        }
        desc = BlessTupleDesc(desc);
        Datum values[5] = {
            DirectFunctionCall3(numeric_in, CStringGetDatum(defaults.min_accuracy.c_str()),
                                ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1)),
            text_array(defaults.filtered_providers), text_array(defaults.exact_denylist),
            text_array(defaults.substring_denylist), text_array(defaults.machine_labels)};
        bool nulls[5] = {false, false, false, false, false};
        return HeapTupleGetDatum(heap_form_tuple(desc, values, nulls));
    });
    return result;
}

// popularity._tag_verdicts() -> SETOF text: the verdicts' names in the order of core::TagVerdict
// ('kept' first), the one list (POPULARITY_TAG_VERDICTS) drop counts can be keyed by: element k >=
// 2 of popularity._tag_drop_counts() counts the k-th verdict.
POPULARITY_FUNCTION(popularity_tag_verdicts) {
    pg::pg_call([fcinfo] {
        InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
        auto *rsinfo = reinterpret_cast<ReturnSetInfo *>(fcinfo->resultinfo);
        for (const char *name : core::kTagVerdictNames) {
            Datum value = CStringGetTextDatum(name);
            bool null = false;
            tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &value, &null);
        }
    });
    return Datum(0);
}
