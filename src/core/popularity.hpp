// Standardized popularity: the score formula, the per-provider constant, and how a raw metric value
// is read. Exact semantics: docs/semantics.md.
#pragma once
#include "no_postgres.hpp"

#include <optional>
#include <string_view>

namespace popularity::core {

// What reading a row's metric gave.
enum class MetricStatus {
    ok,      // a finite, non-negative number
    missing, // no key, JSON null, or meta_data that is not an object
    invalid, // present but unusable: negative, NaN, infinite, non-numeric text, array, object, bool
};

struct MetricValue {
    MetricStatus status = MetricStatus::missing;
    double value = 0.0; // meaningful only when status == ok; never -0.0

    static MetricValue missing() { return {MetricStatus::missing, 0.0}; }
    static MetricValue invalid() { return {MetricStatus::invalid, 0.0}; }
    bool ok() const { return status == MetricStatus::ok; }
};

// Classifies a number already decoded as a double: negative, NaN and infinite are invalid.
// -0.0 is normalised to +0.0 so that results are the same whatever sign the zero was written with.
MetricValue classify_metric(double value) noexcept;

// Reads a metric stored as a JSON string, the way `(text)::double precision` would, but never
// raises: surrounding ASCII white space is ignored, an optional sign is accepted, and the rest must
// be a decimal floating-point literal (correctly rounded). Anything else ("1k", "", "0x10", "inf",
// "NaN", values that overflow or underflow a double) is invalid.
MetricValue parse_metric_text(std::string_view text) noexcept;

// score = value / (value + constant), in double precision, bit-identical to the SQL expression.
// Returns nullopt for a value that is negative, NaN or infinite (bad data never aborts a
// statement). Throws Error(invalid_parameter) when the constant is not finite and > 0.
std::optional<double> standardized_popularity(double value, double constant);

// The same score for a constant the caller has already checked (finite and > 0): never throws,
// for the C-style scan loops that run under PG_TRY.
std::optional<double> score_with_checked_constant(double value, double constant) noexcept;

// constant = ((1 - p) / p) * v, in that order, with v = 1 when the percentile value is exactly 0.
// Throws Error(invalid_parameter) when p is not strictly inside (0, 1), v is negative/not finite,
// or the result is not a finite number > 0 (v near DBL_MAX at a small p overflows, a subnormal v at
// a large p underflows to 0).
double popularity_constant(double percentile_value, double percentile);

} // namespace popularity::core
