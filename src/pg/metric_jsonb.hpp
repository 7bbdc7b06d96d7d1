// Reading a row's metric value straight out of a jsonb document.
#pragma once

#include "../core/popularity.hpp"

#include "pg_includes.hpp"

extern "C" {
#include "utils/jsonb.h"
#include "utils/numeric.h"
}

#include <cstddef>

namespace popularity::pg {

// meta_data->>key read as double precision, never raising on data (see core::MetricStatus).
// For C++ frames: a PostgreSQL error on the way (only numeric_out's, out of memory) is rethrown as
// PgError.
core::MetricValue jsonb_metric(Jsonb *document, const char *key, std::size_t key_length);

// The same for C-style loops (table scans run under PG_TRY or with no guard of their own): never
// throws; a PostgreSQL error on the way is raised as usual (longjmp).
core::MetricValue jsonb_metric_in_c_frame(Jsonb *document, const char *key,
                                          std::size_t key_length) noexcept;

} // namespace popularity::pg
