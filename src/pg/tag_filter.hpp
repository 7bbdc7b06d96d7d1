// Applying the tag rules to jsonb tag arrays, in place of the document: the SQL functions
// popularity.filtered_tags and popularity._tag_drop_counts, and the hook for the ingestion trigger.
//
// A document whose tags all stay is walked without allocating and without copying: elements are
// read straight from jsonb's binary layout, names are lower-cased into reused buffers (or not at
// all when they are lower-case ASCII already). Only a document that loses a tag is rebuilt, from
// the original element objects, in their original order.
#pragma once

#include "pg_includes.hpp"

extern "C" {
#include "utils/jsonb.h"
}

namespace popularity::pg {

// For the ingestion trigger (catalog issue): the tags with the rules of `media_type` applied, or
// nullptr when nothing is dropped (the row keeps `tags` as is; also for tags that are not an
// array). `media_type` must be registered (else SqlError 42704); `record_provider` may be nullptr
// (unknown: machine-generated label exclusions do not apply). Both strings are NUL-terminated, in
// the database encoding. Call it from a guarded C++ frame (POPULARITY_FUNCTION): it throws
// SqlError / PgError. The result is palloc'd in the current memory context.
Jsonb *filter_tags_for_ingestion(const char *media_type, Jsonb *tags, const char *record_provider);

} // namespace popularity::pg
