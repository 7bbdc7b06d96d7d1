// core::score_differs: the one "must a stored score be rewritten" of the trigger, the refresh and
// popularity._score_differs.
#include "float_compare.hpp"
#include "popularity.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <optional>
#include <random>

using popularity::core::score_differs;

namespace {
constexpr double kInf = std::numeric_limits<double>::infinity();
const double kNaN = std::nan("");
constexpr std::optional<double> kNull = std::nullopt;
} // namespace

TEST(ScoreDiffers, Nulls) {
    for (double tolerance : {0.0, 0.002, 1.0}) {
        EXPECT_FALSE(score_differs(kNull, kNull, tolerance));
        EXPECT_TRUE(score_differs(kNull, 0.5, tolerance));
        EXPECT_TRUE(score_differs(0.5, kNull, tolerance));
        EXPECT_TRUE(score_differs(0.0, kNull, tolerance));
        EXPECT_TRUE(score_differs(kNull, 0.0, tolerance));
        // The value beside a NULL flag is ignored.
        EXPECT_FALSE(score_differs(true, 0.25, true, 0.75, tolerance));
        EXPECT_TRUE(score_differs(true, 0.25, false, 0.25, tolerance));
        EXPECT_TRUE(score_differs(false, 0.25, true, 0.25, tolerance));
    }
}

TEST(ScoreDiffers, EqualValuesNeverDiffer) {
    for (double tolerance : {0.0, -1.0, 1e-300, 0.002, 1.0, kNaN}) {
        EXPECT_FALSE(score_differs(0.75, 0.75, tolerance));
        EXPECT_FALSE(score_differs(0.0, 0.0, tolerance));
        EXPECT_FALSE(score_differs(5e-324, 5e-324, tolerance));
        EXPECT_FALSE(score_differs(kInf, kInf, tolerance));
        EXPECT_FALSE(score_differs(-kInf, -kInf, tolerance));
    }
}

TEST(ScoreDiffers, SignedZerosAreTheSame) {
    for (double tolerance : {0.0, 0.002}) {
        EXPECT_FALSE(score_differs(-0.0, 0.0, tolerance));
        EXPECT_FALSE(score_differs(0.0, -0.0, tolerance));
    }
}

TEST(ScoreDiffers, ZeroToleranceIsExact) {
    const double one_up = std::nextafter(1.0, 2.0);
    EXPECT_TRUE(score_differs(1.0, one_up, 0.0));
    EXPECT_TRUE(score_differs(one_up, 1.0, 0.0));
    EXPECT_TRUE(score_differs(0.0, 5e-324, 0.0));
    EXPECT_TRUE(score_differs(0.5, 0.5000001, 0.0));
    // A negative or NaN tolerance is no tolerance.
    EXPECT_TRUE(score_differs(1.0, one_up, -0.5));
    EXPECT_TRUE(score_differs(1.0, one_up, kNaN));
    // Every pair of distinct doubles differs at tolerance 0.
    std::mt19937_64 rng(13);
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    for (int i = 0; i < 10000; ++i) {
        const double a = unit(rng);
        const double b = (i % 2 == 0) ? unit(rng) : std::nextafter(a, 1.0);
        EXPECT_EQ(score_differs(a, b, 0.0), a != b) << a << " " << b;
    }
}

TEST(ScoreDiffers, WithinAndOutsideTolerance) {
    EXPECT_FALSE(score_differs(1.0, std::nextafter(1.0, 2.0), 1e-15));
    EXPECT_FALSE(score_differs(0.5, 0.5005, 0.002)); // relative difference 0.001
    EXPECT_FALSE(score_differs(0.5005, 0.5, 0.002)); // symmetric
    EXPECT_TRUE(score_differs(0.5, 0.502, 0.002));   // 0.004
    EXPECT_TRUE(score_differs(0.502, 0.5, 0.002));
    // Relative to the smaller magnitude: 0.1 vs 0.2 is 1.0 (not 0.5).
    EXPECT_FALSE(score_differs(0.1, 0.2, 1.0));
    EXPECT_TRUE(score_differs(0.1, 0.2, 0.99));
    // Zero against a positive value is an unbounded relative difference.
    EXPECT_TRUE(score_differs(0.0, 1e-9, 1.0));
    EXPECT_TRUE(score_differs(1e-9, 0.0, 1.0));
    // Opposite signs.
    EXPECT_TRUE(score_differs(-0.5, 0.5, 1.0));
}

TEST(ScoreDiffers, NaNAndInfinities) {
    for (double tolerance : {0.0, 0.002, 1.0}) {
        EXPECT_FALSE(score_differs(kNaN, kNaN, tolerance));
        EXPECT_TRUE(score_differs(kNaN, 0.5, tolerance));
        EXPECT_TRUE(score_differs(0.5, kNaN, tolerance));
        EXPECT_TRUE(score_differs(kNaN, kInf, tolerance));
        EXPECT_TRUE(score_differs(kNaN, kNull, tolerance));
        EXPECT_TRUE(score_differs(kInf, 0.5, tolerance));
        EXPECT_TRUE(score_differs(0.5, kInf, tolerance));
        EXPECT_TRUE(score_differs(kInf, std::numeric_limits<double>::max(), tolerance));
        EXPECT_TRUE(score_differs(kInf, -kInf, tolerance));
    }
}

// What the trigger and the refresh compare: a stored score against the definition. A score
// written from the definition is never rewritten, at any tolerance.
TEST(ScoreDiffers, TheDefinitionIsFresh) {
    std::mt19937_64 rng(7);
    std::uniform_real_distribution<double> value(0.0, 1e6);
    std::uniform_real_distribution<double> constant(1e-3, 1e4);
    for (int i = 0; i < 10000; ++i) {
        const double c = constant(rng);
        const std::optional<double> score =
            popularity::core::standardized_popularity(value(rng), c);
        ASSERT_TRUE(score);
        EXPECT_FALSE(std::isnan(*score));
        EXPECT_FALSE(score_differs(score, score, 0.0));
        EXPECT_FALSE(score_differs(score, score, 0.002));
        EXPECT_TRUE(score_differs(kNull, score, 0.002));
    }
}
