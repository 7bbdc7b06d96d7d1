// Float comparisons with Boost.Math, for tolerances that are relative rather than absolute.
#pragma once
#include "no_postgres.hpp"

#include <boost/math/special_functions/relative_difference.hpp>
#include <cmath>

namespace popularity::core {

// True when a and b are equal within a relative tolerance (0 = bit-exact equality of values).
// NaN is never within any tolerance of anything; +0.0 and -0.0 are equal.
inline bool within_relative_tolerance(double a, double b, double tolerance) {
    if (std::isnan(a) || std::isnan(b)) {
        return false;
    }
    if (a == b) {
        return true;
    }
    if (tolerance <= 0.0) {
        return false;
    }
    return boost::math::relative_difference(a, b) <= tolerance;
}

} // namespace popularity::core
