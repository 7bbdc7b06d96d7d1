// Exact confidence intervals for a binomial proportion (Clopper-Pearson), with Boost.Math.
// Used by popularity.freshness() to bound the fraction of stale scores estimated from a sample.
#pragma once
#include "no_postgres.hpp"

#include <cstdint>

namespace popularity::core {

struct ProportionInterval {
    double lower;
    double upper;
};

// The exact (Clopper-Pearson) two-sided interval for a proportion after observing `successes` in
// `trials` independent draws, at the given confidence level (e.g. 0.99): each tail has probability
// (1 - confidence) / 2. Conventions: 0 successes give lower = 0, all successes give upper = 1, and
// 0 trials give [0, 1] (nothing is known). Throws Error(invalid_parameter) when successes >
// trials or the confidence is not strictly inside (0, 1).
ProportionInterval clopper_pearson(std::uint64_t successes, std::uint64_t trials,
                                   double confidence);

} // namespace popularity::core
