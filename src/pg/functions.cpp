// Scalar SQL functions: standardized_popularity, popularity_constant, popularity_metric_value.
#include "../core/popularity.hpp"

#include "guard.hpp"
#include "metric_jsonb.hpp"

using namespace popularity;

POPULARITY_FUNCTION(standardized_popularity) {
    const double value = PG_GETARG_FLOAT8(0);
    const double constant = PG_GETARG_FLOAT8(1);
    const std::optional<double> score = core::standardized_popularity(value, constant);
    if (!score) {
        PG_RETURN_NULL();
    }
    PG_RETURN_FLOAT8(*score);
}

POPULARITY_FUNCTION(popularity_constant) {
    PG_RETURN_FLOAT8(core::popularity_constant(PG_GETARG_FLOAT8(0), PG_GETARG_FLOAT8(1)));
}

POPULARITY_FUNCTION(popularity_metric_value) {
    Jsonb *document = PG_GETARG_JSONB_P(0);
    text *key = PG_GETARG_TEXT_PP(1);
    const core::MetricValue metric =
        pg::jsonb_metric(document, VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key));
    if (!metric.ok()) {
        PG_RETURN_NULL();
    }
    PG_RETURN_FLOAT8(metric.value);
}
