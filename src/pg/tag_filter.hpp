// Applying the tag rules to jsonb tag arrays, in place of the document: the SQL functions
// popularity.filtered_tags and popularity._tag_drop_counts, and the hook for the ingestion trigger.
//
// A document whose tags all stay is walked without allocating and without copying: elements are
// read straight from jsonb's binary layout, names are lower-cased into reused buffers (or not at
// all when they are lower-case ASCII already). Only a document that loses a tag is rebuilt, from
// the original element objects, in their original order.
#pragma once

#include "../core/tag_rules.hpp"

#include "pg_includes.hpp"

extern "C" {
#include "utils/jsonb.h"
}

#include <optional>
#include <string_view>

namespace popularity::pg {

// For the ingestion trigger (catalog issue): the tags with the rules of `media_type` applied, or
// nullptr when nothing is dropped (the row keeps `tags` as is; also for tags that are not an
// array). `media_type` must be registered (else SqlError 42704); `record_provider` may be nullptr
// (unknown: machine-generated label exclusions do not apply). Both strings are NUL-terminated, in
// the database encoding. Call it from a guarded C++ frame (POPULARITY_FUNCTION): it throws
// SqlError / PgError. The result is palloc'd in the current memory context.
Jsonb *filter_tags_for_ingestion(const char *media_type, Jsonb *tags, const char *record_provider);

// What the rules do to one document (plain data).
struct Examination {
    bool not_array = false; // the document is not an array: left as is, counted as malformed
    long long dropped = 0;
    core::TagVerdictCounts counts{};
};

// Classifies every element of `tags` with `rules` (record_provider in UTF-8, nullopt when
// unknown). Allocates nothing after warm-up; the kept elements are remembered for
// build_kept_array(), until the next call. Throws SqlError / PgError.
Examination examine(Jsonb *tags, const core::TagRules &rules,
                    std::optional<std::string_view> record_provider);

// The kept elements of the last examine() as a new array, palloc'd in the current memory context
// (call it only when something was dropped, while `tags` is still allocated). Throws PgError.
Jsonb *build_kept_array();

// The dropped elements of the last examine() as [[position, element], ...] (positions in `tags`,
// increasing), palloc'd in the current memory context: the record a filter run keeps so that it
// can be undone. Same conditions as build_kept_array(). Throws PgError.
Jsonb *build_removed_array(Jsonb *tags);

} // namespace popularity::pg
