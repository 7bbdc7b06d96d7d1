#include "settings.hpp"

#include "pg_includes.hpp"

namespace popularity::pg {

bool strict_metrics = false;

void define_settings() {
    DefineCustomBoolVariable(
        "popularity.strict_metrics",
        "Raise an error for metric values that cannot be scored instead of scoring NULL.",
        "Negative, NaN, infinite and non-numeric metric values give a NULL score by default, so "
        "bad data never aborts an ingestion batch. When on, such a value raises SQLSTATE 22P02 "
        "naming the row's provider and metric.",
        &strict_metrics, false, PGC_USERSET, 0, nullptr, nullptr, nullptr);
}

} // namespace popularity::pg
