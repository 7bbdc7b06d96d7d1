#include "popularity.hpp"

#include "error.hpp"
#include "format.hpp"
#include "text_scan.hpp"

#include <charconv>
#include <cmath>
#include <string>
#include <system_error>

namespace popularity::core {

MetricValue classify_metric(double value) noexcept {
    if (!std::isfinite(value) || value < 0.0) {
        return MetricValue::invalid();
    }
    // -0.0 + 0.0 == +0.0 under round-to-nearest.
    return {MetricStatus::ok, value + 0.0};
}

MetricValue parse_metric_text(std::string_view text) noexcept {
    text = trim_ascii_space(text);
    const bool negative = take_sign(text);
    // from_chars would accept "inf", "infinity" and "nan"; a metric value must be a decimal
    // literal.
    if (text.empty() ||
        !(std::isdigit(static_cast<unsigned char>(text.front())) || text.front() == '.')) {
        return MetricValue::invalid();
    }
    double value = 0.0;
    const char *first = text.data();
    const char *last = text.data() + text.size();
    auto [ptr, ec] = std::from_chars(first, last, value, std::chars_format::general);
    if (ec != std::errc() || ptr != last) {
        return MetricValue::invalid(); // not a number, trailing garbage, overflow or underflow
    }
    return classify_metric(negative ? -value : value);
}

std::optional<double> standardized_popularity(double value, double constant) {
    if (!std::isfinite(constant) || !(constant > 0.0)) {
        throw Error(ErrorCode::invalid_parameter,
                    "popularity constant must be a finite number greater than zero",
                    "The constant given was " + format_double(constant) + ".",
                    "Constants come from popularity_constant(); recompute the provider's "
                    "constant instead of passing it by hand.");
    }
    return score_with_checked_constant(value, constant);
}

std::optional<double> score_with_checked_constant(double value, double constant) noexcept {
    if (!std::isfinite(value) || value < 0.0) {
        return std::nullopt;
    }
    value += 0.0; // -0.0 becomes +0.0: a zero count scores 0.0, never -0.0
    const double sum = value + constant;
    if (std::isinf(sum)) {
        // Only for values within a constant of DBL_MAX; the SQL expression would overflow here.
        return 1.0 / (1.0 + constant / value);
    }
    return value / sum;
}

double popularity_constant(double percentile_value, double percentile) {
    if (!(percentile > 0.0 && percentile < 1.0)) { // also rejects NaN
        throw Error(ErrorCode::invalid_parameter, "percentile must be strictly between 0 and 1",
                    "The percentile given was " + format_double(percentile) + ".",
                    "Use a fraction such as 0.85 for the 85th percentile.");
    }
    if (!std::isfinite(percentile_value) || percentile_value < 0.0) {
        throw Error(ErrorCode::invalid_parameter,
                    "percentile value must be a finite number that is not negative",
                    "The percentile value given was " + format_double(percentile_value) + ".",
                    "Percentile values come from popularity_percentile() over "
                    "popularity_metric_value(), which never yields such values.");
    }
    const double value = percentile_value == 0.0 ? 1.0 : percentile_value;
    const double constant = ((1.0 - percentile) / percentile) * value;
    // A huge value at a small percentile overflows to infinity; a tiny (subnormal) value at a
    // large percentile underflows to 0. Neither can score a row (standardized_popularity rejects
    // it), so it is an error here, where the inputs that caused it are known.
    if (!std::isfinite(constant) || !(constant > 0.0)) {
        throw Error(ErrorCode::invalid_parameter, "popularity constant is out of range",
                    "((1 - p) / p) * v is " + format_double(constant) +
                        " for the percentile value " + format_double(percentile_value) +
                        " at percentile " + format_double(percentile) +
                        "; a constant must be a finite number greater than zero.",
                    "Use a percentile closer to 0.5 for this provider, or check its metric values: "
                    "the percentile value is too large or too small for this percentile.");
    }
    return constant;
}

} // namespace popularity::core
