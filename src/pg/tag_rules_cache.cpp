#include "tag_rules_cache.hpp"

#include "guard.hpp"
#include "owner_context.hpp"

extern "C" {
#include "catalog/pg_type_d.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
}

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace popularity::pg {

namespace {

constexpr const char *kRulesQuery =
    "SELECT media_type, min_accuracy::pg_catalog.text, filtered_providers, exact_denylist, "
    "substring_denylist, machine_labels, "
    "pg_catalog.to_regclass('popularity.tag_rules')::pg_catalog.oid "
    "FROM popularity.effective_tag_rules";

struct RulesCache {
    std::unique_ptr<core::TagRules> global;
    std::unordered_map<std::string, std::unique_ptr<core::TagRules>> by_media_type;
};

std::unique_ptr<RulesCache> cache;
// Plain data for the invalidation callback (which must not allocate, throw or call out).
Oid rules_relid = InvalidOid;
std::uint64_t invalidations = 0;
std::uint64_t loaded_generation = 0;
bool callback_registered = false;

void rules_relcache_callback(Datum, Oid relid) {
    if (relid == InvalidOid || relid == rules_relid) {
        ++invalidations;
    }
}

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

void load() {
    if (!callback_registered) {
        pg_call([] {
            CacheRegisterRelcacheCallback(rules_relcache_callback, PointerGetDatum(nullptr));
        });
        callback_registered = true;
    }
    const std::uint64_t generation = invalidations;
    auto fresh = std::make_unique<RulesCache>();
    Oid relid = InvalidOid;

    pg_call([] {
        if (SPI_connect() != SPI_OK_CONNECT) {
            elog(ERROR, "SPI_connect failed");
        }
    });
    // As the extension's owner: the rules apply whoever ingests or filters, and the policies that
    // filter popularity.tag_rules for roles never hide rules from the cache.
    const int rc = pg_call([] {
        const SavedUser saved = become_extension_owner();
        const int result = SPI_execute(kRulesQuery, true, 0);
        restore_user(saved);
        return result;
    });
    if (rc != SPI_OK_SELECT) {
        throw SqlError(ERRCODE_INTERNAL_ERROR,
                       strprintf("could not read the tag rules (SPI %d)", rc));
    }
    SPITupleTable *table = SPI_tuptable;
    const std::uint64_t rows = SPI_processed;
    for (std::uint64_t row = 0; row < rows; ++row) {
        bool isnull = false;
        const Datum media_type = column(table, row, 1, &isnull);
        const bool global = isnull;
        std::string name = global ? std::string() : datum_text(media_type, false);
        core::TagRuleConfig config;
        config.min_accuracy = datum_text(column(table, row, 2, &isnull));
        config.filtered_providers = datum_text_array(column(table, row, 3, &isnull));
        config.exact_denylist = datum_text_array(column(table, row, 4, &isnull));
        config.substring_denylist = datum_text_array(column(table, row, 5, &isnull));
        config.machine_labels = datum_text_array(column(table, row, 6, &isnull));
        relid = DatumGetObjectId(column(table, row, 7, &isnull));
        auto rules = std::make_unique<core::TagRules>(config);
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
    cache = std::move(fresh);
    rules_relid = relid;
    loaded_generation = generation;
}

} // namespace

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

const core::TagRules &tag_rules_for(std::optional<std::string_view> media_type) {
    if (!cache || loaded_generation != invalidations) {
        load();
    }
    if (!media_type) {
        return *cache->global;
    }
    const std::string key(*media_type);
    auto it = cache->by_media_type.find(key);
    if (it == cache->by_media_type.end()) {
        load(); // registered since the cache was loaded?
        it = cache->by_media_type.find(key);
        if (it == cache->by_media_type.end()) {
            throw SqlError(ERRCODE_UNDEFINED_OBJECT,
                           strprintf("unknown media type \"%s\"", key.c_str()), "",
                           "Media types are registered in popularity.media_types.");
        }
    }
    return *it->second;
}

} // namespace popularity::pg
