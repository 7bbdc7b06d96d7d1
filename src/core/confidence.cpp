#include "confidence.hpp"

#include "error.hpp"
#include "format.hpp"

#include <boost/math/distributions/binomial.hpp>

#include <algorithm>
#include <cmath>

namespace popularity::core {

ProportionInterval clopper_pearson(std::uint64_t successes, std::uint64_t trials,
                                   double confidence) {
    if (!(confidence > 0.0 && confidence < 1.0)) {
        throw Error(ErrorCode::invalid_parameter,
                    "confidence level must be strictly between 0 and 1",
                    "The confidence level given was " + format_double(confidence) + ".",
                    "Use a level such as 0.99.");
    }
    if (successes > trials) {
        throw Error(ErrorCode::invalid_parameter, "successes must not exceed trials",
                    "There were " + std::to_string(successes) + " successes in " +
                        std::to_string(trials) + " trials.");
    }
    if (trials == 0) {
        return {0.0, 1.0};
    }
    using boost::math::binomial_distribution;
    const double alpha = (1.0 - confidence) / 2.0; // probability of each tail
    const double n = static_cast<double>(trials);
    const double k = static_cast<double>(successes);
    // Boost's default interval type is clopper_pearson_exact_interval: the bounds are quantiles
    // of the beta distribution, Beta(k, n - k + 1) and Beta(k + 1, n - k).
    const double lower =
        successes == 0 ? 0.0 : binomial_distribution<double>::find_lower_bound_on_p(n, k, alpha);
    const double upper = successes == trials
                             ? 1.0
                             : binomial_distribution<double>::find_upper_bound_on_p(n, k, alpha);
    return {lower, upper};
}

QuantileRanks quantile_ranks(std::uint64_t n, double p, double confidence) {
    if (n == 0) {
        throw Error(ErrorCode::invalid_parameter, "a quantile needs at least one sample value");
    }
    if (!(p > 0.0 && p < 1.0)) {
        throw Error(ErrorCode::invalid_parameter, "percentile must be strictly between 0 and 1",
                    "The percentile given was " + format_double(p) + ".");
    }
    if (!(confidence > 0.0 && confidence < 1.0)) {
        throw Error(ErrorCode::invalid_parameter,
                    "confidence level must be strictly between 0 and 1",
                    "The confidence level given was " + format_double(confidence) + ".",
                    "Use a level such as 0.99.");
    }
    const double nd = static_cast<double>(n);
    const boost::math::binomial_distribution<double> below(nd, p);
    const double alpha = (1.0 - confidence) / 2.0;
    // F(k) = P(B <= k), with F(-1) = 0 and F(n) = 1.
    auto cdf = [&](std::int64_t k) -> double {
        if (k < 0) {
            return 0.0;
        }
        if (static_cast<std::uint64_t>(k) >= n) {
            return 1.0;
        }
        return boost::math::cdf(below, static_cast<double>(k));
    };
    // lower - 1 = the largest k with F(k) <= alpha: P(x(lower) > quantile) = F(lower - 1).
    std::int64_t good = -1;
    std::int64_t bad = static_cast<std::int64_t>(n);
    while (bad - good > 1) {
        const std::int64_t mid = good + (bad - good) / 2;
        (cdf(mid) <= alpha ? good : bad) = mid;
    }
    const std::int64_t lower_minus_one = good;
    // upper - 1 = the smallest m with F(m) >= 1 - alpha: P(x(upper) < quantile) = 1 - F(upper - 1).
    std::int64_t fail = -1;
    std::int64_t pass = static_cast<std::int64_t>(n);
    while (pass - fail > 1) {
        const std::int64_t mid = fail + (pass - fail) / 2;
        (cdf(mid) >= 1.0 - alpha ? pass : fail) = mid;
    }
    QuantileRanks ranks{};
    ranks.estimate = std::max<std::uint64_t>(1, static_cast<std::uint64_t>(std::ceil(p * nd)));
    ranks.lower = static_cast<std::uint64_t>(lower_minus_one + 1);
    ranks.upper = static_cast<std::uint64_t>(pass + 1);
    ranks.coverage = cdf(pass) - cdf(lower_minus_one);
    return ranks;
}

} // namespace popularity::core
