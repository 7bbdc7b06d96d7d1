// percentile_disc semantics by selection, checked against sorting.
#include "error.hpp"
#include "percentile.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

using namespace popularity::core;

namespace {

// percentile_disc as PostgreSQL computes it: sort, then take row max(1, ceil(p * n)).
double by_sorting(std::vector<double> values, double p) {
    std::sort(values.begin(), values.end(), float8_less);
    auto k = static_cast<std::size_t>(std::ceil(p * static_cast<double>(values.size())));
    return values[std::max<std::size_t>(k, 1) - 1];
}

bool same(double a, double b) {
    return (std::isnan(a) && std::isnan(b)) || a == b;
}

} // namespace

TEST(PercentileRank, MatchesPercentileDisc) {
    EXPECT_EQ(percentile_disc_rank(4, 0.5), 2u);
    EXPECT_EQ(percentile_disc_rank(5, 0.8), 4u);
    EXPECT_EQ(percentile_disc_rank(1, 0.0), 1u);
    EXPECT_EQ(percentile_disc_rank(10, 0.0), 1u);
    EXPECT_EQ(percentile_disc_rank(10, 1.0), 10u);
    EXPECT_EQ(percentile_disc_rank(20, 0.85), 17u);
    EXPECT_EQ(percentile_disc_rank(21, 0.85), 18u); // ceil(17.85)
    for (std::uint64_t n = 1; n < 5000; ++n) {      // float8 arithmetic, as in PostgreSQL
        ASSERT_EQ(percentile_disc_rank(n, 0.85),
                  std::max<std::uint64_t>(1, static_cast<std::uint64_t>(std::ceil(0.85 * n))));
    }
}

TEST(Percentile, RejectsFractionsOutsideZeroOne) {
    for (double p : {-0.01, 1.01, std::numeric_limits<double>::quiet_NaN()}) {
        try {
            check_percentile_fraction(p);
            ADD_FAILURE() << p;
        } catch (const Error &e) {
            EXPECT_EQ(e.code(), ErrorCode::numeric_out_of_range);
        }
    }
    EXPECT_NO_THROW(check_percentile_fraction(0.0));
    EXPECT_NO_THROW(check_percentile_fraction(1.0));
}

TEST(Percentile, EmptyInputIsAnError) {
    EXPECT_THROW(select_percentile_disc(nullptr, 0, 0.5), Error);
}

TEST(Percentile, AgreesWithSortingOnManyDistributions) {
    std::mt19937_64 rng(3);
    const double fractions[] = {0.0, 0.01, 0.1, 0.25, 0.5, 0.8, 0.85, 0.9, 0.99, 1.0};
    for (int trial = 0; trial < 2000; ++trial) {
        const std::size_t n = std::uniform_int_distribution<std::size_t>(1, 500)(rng);
        std::vector<double> values(n);
        switch (trial % 5) {
        case 0: // heavy ties: small integers
            for (auto &v : values)
                v = std::uniform_int_distribution<int>(0, 3)(rng);
            break;
        case 1: // skewed counts, like views
            for (auto &v : values)
                v = std::floor(std::lognormal_distribution<double>(2, 2)(rng));
            break;
        case 2: // all equal
            std::fill(values.begin(), values.end(), 7.0);
            break;
        case 3: // with NaN and infinities, which float8 ordering places at the top
            for (auto &v : values) {
                const int r = std::uniform_int_distribution<int>(0, 9)(rng);
                v = r == 0   ? std::numeric_limits<double>::quiet_NaN()
                    : r == 1 ? std::numeric_limits<double>::infinity()
                             : std::uniform_real_distribution<double>(-5, 5)(rng);
            }
            break;
        default: // sorted descending (adversarial for naive quickselect)
            for (std::size_t i = 0; i < n; ++i)
                values[i] = static_cast<double>(n - i);
        }
        for (double p : fractions) {
            std::vector<double> work = values;
            const double got = select_percentile_disc(work.data(), work.size(), p);
            ASSERT_TRUE(same(got, by_sorting(values, p))) << "trial " << trial << " p " << p;
        }
    }
}

TEST(PercentileRuns, RoundTripKeepsTheMultiset) {
    std::mt19937_64 rng(5);
    for (int trial = 0; trial < 200; ++trial) {
        const std::size_t n = std::uniform_int_distribution<std::size_t>(0, 2000)(rng);
        std::vector<double> values(n);
        for (auto &v : values) {
            const int r = std::uniform_int_distribution<int>(0, 20)(rng);
            v = r == 0 ? std::numeric_limits<double>::quiet_NaN() : r == 1 ? -0.0 : r % 7;
        }
        std::vector<double> work = values;
        const std::size_t runs = sort_and_count_runs(work.data(), work.size());
        std::vector<double> run_values(runs);
        std::vector<std::uint64_t> run_counts(runs);
        write_runs(work.data(), work.size(), run_values.data(), run_counts.data());
        std::vector<double> expanded;
        for (std::size_t r = 0; r < runs; ++r) {
            ASSERT_GT(run_counts[r], 0u);
            expanded.insert(expanded.end(), run_counts[r], run_values[r]);
        }
        ASSERT_EQ(expanded.size(), n);
        if (n > 0) {
            for (double p : {0.0, 0.3, 0.85, 1.0}) {
                std::vector<double> a = values;
                std::vector<double> b = expanded;
                ASSERT_TRUE(same(select_percentile_disc(a.data(), n, p),
                                 select_percentile_disc(b.data(), n, p)));
            }
        }
        // Runs are of bit-identical values: -0 and +0 stay apart, so no sign is lost.
        EXPECT_LE(runs, 9u);
    }
}
