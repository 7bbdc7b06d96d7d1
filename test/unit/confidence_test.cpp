// Unit tests of the Clopper-Pearson interval against known values. The reference values were
// computed independently with mpmath at 40 digits (bisection on the regularized incomplete beta
// function); 5/10 at 95% is the textbook example (0.1871, 0.8129).
#include "confidence.hpp"
#include "error.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>

using namespace popularity::core;

namespace {

void expect_close(double actual, double expected) {
    EXPECT_NEAR(actual, expected, 1e-12 * std::max(1.0, std::fabs(expected)) + 1e-15)
        << "expected " << expected;
}

struct Known {
    std::uint64_t k;
    std::uint64_t n;
    double confidence;
    double lower;
    double upper;
};

constexpr Known kKnown[] = {
    {5, 10, 0.95, 0.18708602844739853, 0.81291397155260147},
    {1, 10, 0.95, 0.0025285785444617845, 0.44501611702819542},
    {0, 1000, 0.99, 0.0, 0.0052843060394974434},
    {3, 100, 0.99, 0.0034070701031797575, 0.10548125372507826},
    {50, 10000, 0.99, 0.0033689641721382334, 0.0071190272761824521},
    {10, 10, 0.99, 0.58870401865247463, 1.0},
    {0, 10, 0.99, 0.0, 0.41129598134752537},
    {7, 20, 0.99, 0.11387976326673216, 0.65656858423192135},
};

} // namespace

TEST(ClopperPearson, KnownValues) {
    for (const Known &known : kKnown) {
        SCOPED_TRACE(testing::Message() << known.k << "/" << known.n << " at " << known.confidence);
        const ProportionInterval interval = clopper_pearson(known.k, known.n, known.confidence);
        expect_close(interval.lower, known.lower);
        expect_close(interval.upper, known.upper);
    }
}

TEST(ClopperPearson, ClosedFormsAtTheEdges) {
    // No success: upper = 1 - (alpha/2)^(1/n); all successes: lower = (alpha/2)^(1/n).
    for (std::uint64_t n : {1u, 2u, 30u, 530u, 10000u, 1000000u}) {
        const double edge = std::pow(0.005, 1.0 / static_cast<double>(n));
        const ProportionInterval none = clopper_pearson(0, n, 0.99);
        EXPECT_EQ(none.lower, 0.0);
        expect_close(none.upper, 1.0 - edge);
        const ProportionInterval all = clopper_pearson(n, n, 0.99);
        expect_close(all.lower, edge);
        EXPECT_EQ(all.upper, 1.0);
    }
}

TEST(ClopperPearson, UpperBoundBelowOnePercentFromAbout530CleanRows) {
    // What freshness() relies on after a refresh: a clean sample of n rows bounds the stale
    // fraction below 1% at 99% confidence once n >= 528.
    EXPECT_GE(clopper_pearson(0, 527, 0.99).upper, 0.01);
    EXPECT_LT(clopper_pearson(0, 528, 0.99).upper, 0.01);
    EXPECT_LT(clopper_pearson(0, 10000, 0.99).upper, 0.00053);
}

TEST(ClopperPearson, SymmetricAndContainsTheEstimate) {
    for (std::uint64_t n : {1u, 7u, 50u, 999u}) {
        for (std::uint64_t k = 0; k <= n; k += (n / 7) + 1) {
            const ProportionInterval a = clopper_pearson(k, n, 0.99);
            const ProportionInterval b = clopper_pearson(n - k, n, 0.99);
            expect_close(a.lower, 1.0 - b.upper);
            expect_close(a.upper, 1.0 - b.lower);
            const double p = static_cast<double>(k) / static_cast<double>(n);
            EXPECT_LE(a.lower, p);
            EXPECT_GE(a.upper, p);
            // A higher confidence gives a wider interval.
            const ProportionInterval narrow = clopper_pearson(k, n, 0.9);
            EXPECT_LE(a.lower, narrow.lower);
            EXPECT_GE(a.upper, narrow.upper);
        }
    }
}

TEST(ClopperPearson, NoTrialsMeansNothingIsKnown) {
    const ProportionInterval interval = clopper_pearson(0, 0, 0.99);
    EXPECT_EQ(interval.lower, 0.0);
    EXPECT_EQ(interval.upper, 1.0);
}

TEST(ClopperPearson, RejectsBadArguments) {
    EXPECT_THROW(clopper_pearson(3, 2, 0.99), Error);
    EXPECT_THROW(clopper_pearson(1, 2, 0.0), Error);
    EXPECT_THROW(clopper_pearson(1, 2, 1.0), Error);
    EXPECT_THROW(clopper_pearson(1, 2, std::nan("")), Error);
}

TEST(QuantileRanks, TextbookMedianInterval) {
    // n = 100, median, 95%: x(40) and x(61), exact coverage 0.9648 (every nonparametric textbook).
    const QuantileRanks ranks = quantile_ranks(100, 0.5, 0.95);
    EXPECT_EQ(ranks.estimate, 50u);
    EXPECT_EQ(ranks.lower, 40u);
    EXPECT_EQ(ranks.upper, 61u);
    expect_close(ranks.coverage, 0.9647997997822952);
}

TEST(QuantileRanks, KnownValues) {
    // Reference ranks computed independently (exact binomial sums in Python).
    struct Case {
        std::uint64_t n;
        double p;
        double confidence;
        std::uint64_t lower;
        std::uint64_t upper;
        double coverage;
    };
    const Case cases[] = {
        {100, 0.85, 0.99, 75, 94, 0.9923325039192673},
        {10, 0.5, 0.95, 2, 9, 0.978515625},
        {1000, 0.85, 0.99, 820, 879, 0.9910116790667175},
        {20, 0.85, 0.99, 12, 21, 0.9986710916152031}, // no upper bound: 21 = n + 1
        {5, 0.5, 0.99, 0, 6, 1.0},                    // too small for any bound
    };
    for (const Case &c : cases) {
        SCOPED_TRACE(testing::Message() << c.n << " values, p " << c.p);
        const QuantileRanks ranks = quantile_ranks(c.n, c.p, c.confidence);
        EXPECT_EQ(ranks.lower, c.lower);
        EXPECT_EQ(ranks.upper, c.upper);
        EXPECT_NEAR(ranks.coverage, c.coverage, 1e-9);
        EXPECT_GE(ranks.coverage, c.confidence);
    }
}

TEST(QuantileRanks, EstimateIsPercentileDiscRank) {
    EXPECT_EQ(quantile_ranks(4, 0.5, 0.99).estimate, 2u);
    EXPECT_EQ(quantile_ranks(5, 0.8, 0.99).estimate, 4u);
    EXPECT_EQ(quantile_ranks(1, 0.01, 0.99).estimate, 1u);
    EXPECT_EQ(quantile_ranks(10000, 0.85, 0.99).estimate, 8500u);
}

TEST(QuantileRanks, RejectsBadArguments) {
    EXPECT_THROW(quantile_ranks(0, 0.5, 0.99), Error);
    EXPECT_THROW(quantile_ranks(10, 0.0, 0.99), Error);
    EXPECT_THROW(quantile_ranks(10, 1.0, 0.99), Error);
    EXPECT_THROW(quantile_ranks(10, 0.5, 1.0), Error);
}
