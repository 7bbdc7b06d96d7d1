#include "percentile.hpp"

#include "error.hpp"
#include "format.hpp"

#include <algorithm>
#include <cmath>
#include <string>

namespace popularity::core {

void check_percentile_fraction(double p) {
    if (!(p >= 0.0 && p <= 1.0)) { // also rejects NaN
        throw Error(ErrorCode::numeric_out_of_range,
                    "percentile value " + format_double(p) + " is not between 0 and 1", {},
                    "Use a fraction such as 0.85 for the 85th percentile.");
    }
}

std::uint64_t percentile_disc_rank(std::uint64_t n, double p) {
    // Same arithmetic as percentile_disc_final(): (int64) ceil(percentile * number_of_rows).
    const double scaled = std::ceil(p * static_cast<double>(n));
    auto k = static_cast<std::uint64_t>(scaled);
    if (k < 1) {
        k = 1;
    }
    if (k > n) {
        k = n; // unreachable for p <= 1, kept so a rounding surprise can never read past the end
    }
    return k;
}

double select_percentile_disc(double *values, std::size_t n, double p) {
    if (n == 0) {
        throw Error(ErrorCode::internal, "percentile selection over an empty set");
    }
    const std::uint64_t k = percentile_disc_rank(n, p);
    double *nth = values + (k - 1);
    std::nth_element(values, nth, values + n, float8_less);
    return *nth;
}

} // namespace popularity::core
