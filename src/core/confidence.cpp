#include "confidence.hpp"

#include "error.hpp"
#include "format.hpp"

#include <boost/math/distributions/binomial.hpp>

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

} // namespace popularity::core
