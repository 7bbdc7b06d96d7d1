// "Must a stored score be rewritten?": the one answer used by the ingestion trigger, the refresh's
// scan and popularity._score_differs (SQL), so that they never disagree about which rows are fresh.
// The invariant all three keep is "stored score = definition under the current constants, within
// popularity.score_tolerance" (relative, Boost.Math).
#pragma once
#include "no_postgres.hpp"

#include <boost/math/special_functions/relative_difference.hpp>
#include <cmath>
#include <optional>

namespace popularity::core {

// Whether a stored score (NULL when stored_null) must be rewritten with the computed one (NULL
// when computed_null), given a relative tolerance. For C frames: plain values, no allocation, never
// throws. The values of a NULL side are ignored.
//   - NULL and NULL are the same; NULL and a number differ.
//   - Equal values (==) never differ, whatever the tolerance: +0.0 and -0.0 are the same
//   (PostgreSQL's
//     float8 comparisons and sort do not tell them apart, so no reader can; the score formula never
//     produces -0.0, so a stored -0.0 comes from elsewhere and is left alone), so are two equal
//     infinities.
//   - NaN is the same as NaN (as PostgreSQL's float8 `=` has it: rewriting would store the same
//     value) and differs from every number. A computed score is never NaN.
//   - Tolerance 0 (or negative, or NaN): any other pair of values differs, e.g. 1.0 and the next
//     double: bit-exact up to the sign of zero.
//   - Tolerance t > 0: finite values differ when their relative difference (Boost.Math
//     relative_difference: |a - b| / min(|a|, |b|), values below the smallest normal taken as it)
//     exceeds t; an infinity differs from every finite value.
inline bool score_differs(bool stored_null, double stored, bool computed_null, double computed,
                          double tolerance) noexcept {
    if (stored_null || computed_null) {
        return stored_null != computed_null;
    }
    const bool stored_nan = std::isnan(stored);
    const bool computed_nan = std::isnan(computed);
    if (stored_nan || computed_nan) {
        return stored_nan != computed_nan;
    }
    if (stored == computed) {
        return false;
    }
    if (!(tolerance > 0.0) || std::isinf(stored) || std::isinf(computed)) {
        return true;
    }
    return boost::math::relative_difference(stored, computed) > tolerance;
}

// The same with std::optional (nullopt = NULL).
inline bool score_differs(std::optional<double> stored, std::optional<double> computed,
                          double tolerance) noexcept {
    return score_differs(!stored, stored.value_or(0.0), !computed, computed.value_or(0.0),
                         tolerance);
}

} // namespace popularity::core
