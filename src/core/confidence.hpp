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

// Distribution-free confidence bounds on a p-quantile from a sample of n values (order statistics).
// With the sample sorted, x(k) is the k-th smallest (1-based). `estimate` is percentile_disc's
// rank, max(1, ceil(p * n)) in double precision. [x(lower), x(upper)] contains the population's
// p-quantile with probability at least `coverage` >= confidence whatever the distribution (the
// number of sample values below the quantile is Binomial(n, p); ties only raise the coverage), with
// at most (1 - confidence) / 2 in each tail. lower = 0 (upper = n + 1) when no order statistic
// bounds the quantile from below (above) at this confidence: the sample is too small. Throws
// Error(invalid_parameter) when n = 0, p is not strictly inside (0, 1) or the confidence is not.
struct QuantileRanks {
    std::uint64_t estimate;
    std::uint64_t lower;
    std::uint64_t upper;
    double coverage; // P(lower <= B <= upper - 1), B ~ Binomial(n, p), with missing bounds open
};
QuantileRanks quantile_ranks(std::uint64_t n, double p, double confidence);

} // namespace popularity::core
