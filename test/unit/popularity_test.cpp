// Unit tests of the score, the constant and metric parsing, with the reference page's bit-exact
// vectors (docs/semantics.md, "Reference values").
#include "error.hpp"
#include "format.hpp"
#include "percentile.hpp"
#include "popularity.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

using namespace popularity::core;

namespace {

double constant_of(std::vector<double> values, double p) {
    return popularity_constant(select_percentile_disc(values.data(), values.size(), p), p);
}

double score(double value, double constant) {
    return *standardized_popularity(value, constant);
}

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

} // namespace

TEST(ReferenceVectors, ViewsMedian) {
    std::vector<double> views{0, 50, 75, 150};
    EXPECT_EQ(select_percentile_disc(views.data(), views.size(), 0.5), 50.0);
    EXPECT_EQ(constant_of({0, 50, 75, 150}, 0.5), 50.0);
}

TEST(ReferenceVectors, Comments80) {
    EXPECT_EQ(constant_of({10, 50}, 0.8), 12.499999999999996);
}

TEST(ReferenceVectors, ZeroPercentileBecomesOne) {
    std::vector<double> views{0, 0, 0, 0, 10};
    EXPECT_EQ(select_percentile_disc(views.data(), views.size(), 0.8), 0.0);
    EXPECT_EQ(constant_of({0, 0, 0, 0, 10}, 0.8), 0.24999999999999994);
}

TEST(ReferenceVectors, SingleRow) {
    const double c = constant_of({150}, 0.8);
    EXPECT_EQ(c, 37.49999999999999);
    EXPECT_EQ(score(150, c), 0.8);
    EXPECT_EQ(score(0, c), 0.0);
}

TEST(ReferenceVectors, MedianScores) {
    const double c = constant_of({50}, 0.5);
    EXPECT_EQ(c, 50.0);
    EXPECT_EQ(score(50, c), 0.5);
    EXPECT_EQ(score(150, c), 0.75);
    EXPECT_EQ(score(450, c), 0.9);
}

TEST(ReferenceVectors, LikesZero) {
    const double c = constant_of({0}, 0.5);
    EXPECT_EQ(c, 1.0);
    EXPECT_EQ(score(3, c), 0.75);
    EXPECT_EQ(score(1, c), 0.5);
}

TEST(ReferenceVectors, ExistingRows) {
    const double c = constant_of({0, 50}, 0.8);
    EXPECT_EQ(c, 12.499999999999996);
    EXPECT_EQ(score(10, c), 0.44444444444444453);
    EXPECT_EQ(score(20, c), 0.6153846153846154);
}

TEST(ReferenceVectors, Wikimedia2020) {
    EXPECT_EQ(popularity_constant(1.0, 0.85), 0.17647058823529416);
}

TEST(Score, MatchesTheFormulaBitForBit) {
    std::mt19937_64 rng(7);
    std::lognormal_distribution<double> values(3.0, 3.0);
    for (int i = 0; i < 100000; ++i) {
        const double v = std::floor(values(rng));
        const double c = values(rng) + 1e-3;
        const volatile double expected = v / (v + c); // volatile: no folding, no contraction
        EXPECT_EQ(score(v, c), expected);
    }
}

TEST(Score, BadValuesGiveNoScore) {
    EXPECT_FALSE(standardized_popularity(-1.0, 1.0).has_value());
    EXPECT_FALSE(standardized_popularity(-1e-300, 1.0).has_value());
    EXPECT_FALSE(standardized_popularity(kNaN, 1.0).has_value());
    EXPECT_FALSE(standardized_popularity(kInf, 1.0).has_value());
    EXPECT_FALSE(standardized_popularity(-kInf, 1.0).has_value());
    EXPECT_EQ(score(-0.0, 1.0), 0.0);
}

TEST(Score, HugeValuesStayBelowOne) {
    const double big = std::numeric_limits<double>::max();
    const double s = score(big, big);
    EXPECT_EQ(s, 0.5);
    EXPECT_LE(score(big, 1.0), 1.0);
}

TEST(Score, BadConstantRaisesInvalidParameter) {
    for (double c : {0.0, -0.0, -1.0, kNaN, kInf, -kInf}) {
        try {
            standardized_popularity(1.0, c);
            ADD_FAILURE() << "no error for constant " << c;
        } catch (const Error &e) {
            EXPECT_EQ(e.code(), ErrorCode::invalid_parameter);
            EXPECT_FALSE(e.hint().empty());
        }
    }
}

TEST(Constant, OrderOfOperationsIsExact) {
    // ((1 - p) / p) * v, not (1 - p) * v / p: the two differ in the last bits.
    EXPECT_EQ(popularity_constant(1.0, 0.8), 0.24999999999999994);
    EXPECT_EQ(popularity_constant(10.0, 0.8), 2.4999999999999996); // the other order: ...999
    EXPECT_EQ(popularity_constant(150.0, 0.8), 37.49999999999999); // the other order: ...986
    EXPECT_EQ(popularity_constant(50.0, 0.85), 8.823529411764708);
}

TEST(Constant, RejectsBadInput) {
    for (double p : {0.0, 1.0, -0.5, 1.5, kNaN, kInf}) {
        EXPECT_THROW(popularity_constant(10.0, p), Error) << p;
    }
    for (double v : {-1.0, kNaN, kInf}) {
        EXPECT_THROW(popularity_constant(v, 0.85), Error) << v;
    }
}

TEST(Constant, RejectsResultsThatCannotScore) {
    // Overflow to infinity and underflow to 0: 22023 naming the inputs, never a constant that
    // standardized_popularity would then reject for every row.
    const double denormal_min = std::numeric_limits<double>::denorm_min(); // 5e-324
    const double big = 1e308;
    const std::vector<std::pair<double, double>> cases{
        {big, 0.01},
        {std::numeric_limits<double>::max(), 0.5 - 1e-9},
        {denormal_min, 0.99},
        {denormal_min, 0.85},
        {denormal_min, 0.7}};
    for (const auto &[v, p] : cases) {
        try {
            const double c = popularity_constant(v, p);
            ADD_FAILURE() << "no error for v = " << v << ", p = " << p << ": " << c;
        } catch (const Error &e) {
            EXPECT_EQ(e.code(), ErrorCode::invalid_parameter);
            EXPECT_EQ(std::string(e.what()), "popularity constant is out of range");
            EXPECT_NE(e.detail().find(format_double(v)), std::string::npos) << e.detail();
            EXPECT_FALSE(e.hint().empty());
        }
    }
    // The edges that still give a usable constant are unchanged.
    EXPECT_EQ(popularity_constant(big, 0.5), big);
    EXPECT_EQ(popularity_constant(denormal_min, 0.5), denormal_min);
    EXPECT_EQ(popularity_constant(std::numeric_limits<double>::max(), 0.5),
              std::numeric_limits<double>::max());
    EXPECT_GT(popularity_constant(1e-300, 0.99), 0.0);
}

TEST(MetricText, AcceptsDecimalNumbers) {
    EXPECT_EQ(parse_metric_text("150").value, 150.0);
    EXPECT_EQ(parse_metric_text(" 150\t\n").value, 150.0);
    EXPECT_EQ(parse_metric_text("+5").value, 5.0);
    EXPECT_EQ(parse_metric_text("1.5e3").value, 1500.0);
    EXPECT_EQ(parse_metric_text(".5").value, 0.5);
    EXPECT_EQ(parse_metric_text("0.1").value, 0.1);
    const MetricValue negative_zero = parse_metric_text("-0");
    ASSERT_TRUE(negative_zero.ok());
    EXPECT_FALSE(std::signbit(negative_zero.value));
}

TEST(MetricText, RejectsEverythingElse) {
    for (const char *text : {"",
                             " ",
                             "1k",
                             "k1",
                             "-5",
                             "-0.1",
                             "inf",
                             "Infinity",
                             "-inf",
                             "NaN",
                             "nan",
                             "0x10",
                             "1e400",
                             "1e-400",
                             "1 2",
                             "1,5",
                             "++1",
                             "+-1",
                             "e5",
                             "\xc2\xa0"
                             "5"}) {
        EXPECT_EQ(parse_metric_text(text).status, MetricStatus::invalid) << '"' << text << '"';
    }
}

TEST(MetricText, AgreesWithStrtodOnRandomDecimals) {
    std::mt19937_64 rng(11);
    std::uniform_int_distribution<int> digits(1, 25);
    std::uniform_int_distribution<int> digit(0, 9);
    std::uniform_int_distribution<int> exponent(-30, 30);
    for (int i = 0; i < 50000; ++i) {
        std::string text;
        const int n = digits(rng);
        const int point = std::uniform_int_distribution<int>(0, n)(rng);
        for (int d = 0; d < n; ++d) {
            if (d == point) {
                text += '.';
            }
            text += static_cast<char>('0' + digit(rng));
        }
        if (i % 3 == 0) {
            text += "e" + std::to_string(exponent(rng));
        }
        const double expected = std::strtod(text.c_str(), nullptr);
        const MetricValue got = parse_metric_text(text);
        ASSERT_TRUE(got.ok()) << text;
        EXPECT_EQ(got.value, expected) << text;
    }
}

TEST(MetricClassify, InvalidNumbers) {
    EXPECT_EQ(classify_metric(-1.0).status, MetricStatus::invalid);
    EXPECT_EQ(classify_metric(kNaN).status, MetricStatus::invalid);
    EXPECT_EQ(classify_metric(kInf).status, MetricStatus::invalid);
    EXPECT_TRUE(classify_metric(0.0).ok());
    EXPECT_FALSE(std::signbit(classify_metric(-0.0).value));
}

TEST(Format, ShortestRoundTrip) {
    EXPECT_EQ(format_double(1.5), "1.5");
    EXPECT_EQ(format_double(0.85), "0.85");
    EXPECT_EQ(format_double(12.499999999999996), "12.499999999999996");
    EXPECT_EQ(format_double(kNaN), "NaN");
    EXPECT_EQ(format_double(-kInf), "-Infinity");
}
