#include "percentile.hpp"

#include "check.hpp"
#include "error.hpp"
#include "format.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
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
    POPULARITY_CHECK(k >= 1 && k <= n);
    double *nth = values + (k - 1);
    std::nth_element(values, nth, values + n, float8_less);
    return *nth;
}

namespace {
bool same_bits(double a, double b) {
    return std::memcmp(&a, &b, sizeof(double)) == 0;
}

// float8 order, with values it considers equal (-0 and +0, NaNs of any payload) ordered by their
// bits, so that bit-identical values end up adjacent.
bool total_less(double a, double b) {
    if (float8_less(a, b)) {
        return true;
    }
    if (float8_less(b, a)) {
        return false;
    }
    std::uint64_t x, y;
    std::memcpy(&x, &a, sizeof x);
    std::memcpy(&y, &b, sizeof y);
    return x < y;
}
} // namespace

std::size_t sort_and_count_runs(double *values, std::size_t n) {
    std::sort(values, values + n, total_less);
    std::size_t runs = 0;
    for (std::size_t i = 0; i < n; ++i) {
        if (i == 0 || !same_bits(values[i], values[i - 1])) {
            ++runs;
        }
    }
    return runs;
}

void write_runs(const double *values, std::size_t n, double *run_values,
                std::uint64_t *run_counts) {
    std::size_t run = 0;
    for (std::size_t i = 0; i < n; ++i) {
        if (i == 0 || !same_bits(values[i], values[i - 1])) {
            run_values[run] = values[i];
            run_counts[run] = 0;
            ++run;
        }
        POPULARITY_CHECK(run >= 1);
        ++run_counts[run - 1];
    }
}

} // namespace popularity::core
