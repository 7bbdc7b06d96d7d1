// Unit and property tests of Python's float(str) (src/core/python_float.hpp). The expected values
// are Python's own results, written down from CPython's documented grammar and source (see the
// header); no Python is needed to run them. A C++ floating literal is correctly rounded by the
// compiler, as Python rounds, so `0.98224` below is float("0.98224").
#include "python_float.hpp"

#include <gtest/gtest.h>

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

using namespace popularity::core;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Case {
    const char *text;             // UTF-8
    std::optional<double> python; // nullopt: float(text) raises ValueError
};

// Bit-exact comparison (distinguishes -0.0 from 0.0); any NaN equals any NaN of the same sign.
::testing::AssertionResult same_double(const std::string &text, std::optional<double> got,
                                       std::optional<double> want) {
    if (!got && !want) {
        return ::testing::AssertionSuccess();
    }
    if (got.has_value() != want.has_value()) {
        return ::testing::AssertionFailure()
               << "float(" << ::testing::PrintToString(text) << "): got "
               << (got ? std::to_string(*got) : "ValueError") << ", Python gives "
               << (want ? std::to_string(*want) : "ValueError");
    }
    const bool same = (std::isnan(*got) && std::isnan(*want))
                          ? std::signbit(*got) == std::signbit(*want)
                          : (*got == *want && std::signbit(*got) == std::signbit(*want));
    if (same) {
        return ::testing::AssertionSuccess();
    }
    char buffer[128];
    std::snprintf(buffer, sizeof buffer, "got %.17g, Python gives %.17g", *got, *want);
    return ::testing::AssertionFailure()
           << "float(" << ::testing::PrintToString(text) << "): " << buffer;
}

// Python's results.
const std::vector<Case> &python_table() {
    static const std::vector<Case> table = {
        // Openverse's real data, and plain decimals.
        {"0.98224", 0.98224},
        {"0.90", 0.90},
        {"0.9", 0.9},
        {"0.89999", 0.89999},
        {"1", 1.0},
        {"0", 0.0},
        {"-0", -0.0},
        {"+0.0", 0.0},
        {"-0.0", -0.0},
        {"99.4", 99.4},
        {"007", 7.0},
        {"1.", 1.0},
        {".5", 0.5},
        {"-.5", -0.5},
        {"+.5", 0.5},
        {"0.", 0.0},
        {".0", 0.0},
        {"00.00", 0.0},
        // Exponents.
        {"1e5", 1e5},
        {"1E5", 1e5},
        {"1E-5", 1e-5},
        {"1e+5", 1e5},
        {"9e-1", 0.9},
        {"90e-2", 0.9},
        {".9e0", 0.9},
        {"9.e-1", 0.9},
        {"1e0005", 1e5},
        {"1e-0", 1.0},
        {"0e99999999999", 0.0},
        {"-0e5", -0.0},
        // Correct rounding, overflow to infinity, underflow to zero (no error in float()).
        {"0.1", 0.1},
        {"0.8999999999999999999", 0.9}, // rounds to the double 0.9, so float(x) < 0.90 is false
        {"0.89999999999999991", 0.89999999999999991},
        {"0.9000000000000000222", 0.9},
        {"1.7976931348623157e308", 1.7976931348623157e308},
        {"1.797693134862315807e308", 1.7976931348623157e308}, // just below the midpoint to 2^1024
        {"1.7976931348623159e308", kInf},
        {"1e308", 1e308},
        {"1e309", kInf},
        {"1e999", kInf},
        {"-1e999", -kInf},
        {"1e99999999999999999999", kInf},
        {"0.000000000000000000000000000000000000001e330", 1e291},
        {"1e-999", 0.0},
        {"-1e-999", -0.0},
        {"1e-99999999999999999999", 0.0},
        {"4.9406564584124654e-324", 4.9406564584124654e-324}, // the smallest subnormal
        {"2.4703282292062328e-324", 4.9406564584124654e-324}, // above half of it: rounds up
        {"2.4703282292062327e-324", 0.0},                     // below half of it: rounds to 0
        {"2.2250738585072011e-308", 2.2250738585072011e-308},
        {"1e-310", 1e-310},
        {"123456789012345678901234567890", 123456789012345678901234567890.0},
        // Surrounding white space: ASCII (space, \t \n \v \f \r) and Unicode (str.isspace()
        // code points from U+0085 up), but not U+001C..U+001F, and none inside.
        {" 0.98224 ", 0.98224},
        {"\t\n\v\f\r 0.5 \r\f\v\n\t", 0.5},
        {"\xc2\x85"
         "0.5",
         0.5}, // U+0085 NEXT LINE
        {"\xc2\xa0"
         "0.5\xc2\xa0",
         0.5}, // U+00A0 NO-BREAK SPACE
        {"\xe1\x9a\x80"
         "0.5",
         0.5}, // U+1680 OGHAM SPACE MARK
        {"\xe2\x80\x80"
         "0.5\xe2\x80\x8a",
         0.5}, // U+2000, U+200A
        {"\xe2\x80\xa8"
         "0.5\xe2\x80\xa9",
         0.5}, // U+2028, U+2029
        {"\xe2\x80\xaf"
         "0.5\xe2\x81\x9f",
         0.5}, // U+202F, U+205F
        {"\xe3\x80\x80"
         "0.5\xe3\x80\x80",
         0.5}, // U+3000 IDEOGRAPHIC SPACE
        {"\x1c"
         "0.5",
         std::nullopt}, // str.strip() would remove it, float() not
        {"0.5\x1f", std::nullopt},
        {"\xe1\xa0\x8e"
         "0.5",
         std::nullopt}, // U+180E: not white space since 6.3
        {"\xe2\x80\x8b"
         "0.5",
         std::nullopt}, // U+200B ZERO WIDTH SPACE: not space
        {"\xef\xbb\xbf"
         "0.5",
         std::nullopt}, // U+FEFF BOM: not space
        {"0 .5", std::nullopt},
        {"- 1", std::nullopt},
        {"1\xc2\xa0"
         "0",
         std::nullopt},
        {"", std::nullopt},
        {" ", std::nullopt},
        {"\xc2\xa0", std::nullopt},
        // Underscores: one, between two digits, anywhere digits are.
        {"1_000.5", 1000.5},
        {"1_0", 10.0},
        {"1_2_3", 123.0},
        {"0.1_5", 0.15},
        {"1e1_0", 1e10},
        {"1_0e-0_1", 1.0},
        {" 1_0 ", 10.0},
        {"1__0", std::nullopt},
        {"_1", std::nullopt},
        {"1_", std::nullopt},
        {"1_.5", std::nullopt},
        {"1._5", std::nullopt},
        {"1e_5", std::nullopt},
        {"1_e5", std::nullopt},
        {"-_1", std::nullopt},
        {"_", std::nullopt},
        {"in_f", std::nullopt},
        {"1_ ", std::nullopt},
        {" _1", std::nullopt},
        // Special names, any case, with a sign.
        {"inf", kInf},
        {"INF", kInf},
        {"-inf", -kInf},
        {"+Inf", kInf},
        {"infinity", kInf},
        {"InFiNiTy", kInf},
        {"-Infinity", -kInf},
        {" inf\n", kInf},
        {"nan", kNaN},
        {"NaN", kNaN},
        {"NAN", kNaN},
        {"+nan", kNaN},
        {"-nan", -kNaN},
        {"infinit", std::nullopt},
        {"infinityy", std::nullopt},
        {"infin", std::nullopt},
        {"in", std::nullopt},
        {"nana", std::nullopt},
        {"nan(1)", std::nullopt},
        {"snan", std::nullopt},
        {"i n f", std::nullopt},
        {"--inf", std::nullopt},
        // Not numbers.
        {".", std::nullopt},
        {"+", std::nullopt},
        {"-", std::nullopt},
        {"e5", std::nullopt},
        {".e5", std::nullopt},
        {"1e", std::nullopt},
        {"1e+", std::nullopt},
        {"1e-", std::nullopt},
        {"1e5.0", std::nullopt},
        {"1.2.3", std::nullopt},
        {"++1", std::nullopt},
        {"+-1", std::nullopt},
        {"1-", std::nullopt},
        {"0x10", std::nullopt},
        {"0x1p3", std::nullopt},
        {"1,5", std::nullopt},
        {"1d5", std::nullopt},
        {"98%", std::nullopt},
        {"0.9f", std::nullopt},
        {"true", std::nullopt},
        {"null", std::nullopt},
        {"1\x7f", std::nullopt},
        // Unicode decimal digits (general category Nd) read as their ASCII digits.
        {"\xd9\xa0.\xd9\xa9\xd9\xa8", 0.98},             // ARABIC-INDIC ٠.٩٨
        {"\xdb\xb1_\xdb\xb0", 10.0},                     // EXTENDED ARABIC-INDIC ۱_۰
        {"\xe0\xa5\xa6.\xe0\xa5\xaf", 0.9},              // DEVANAGARI ०.९
        {"\xef\xbc\x90.\xef\xbc\x99\xef\xbc\x95", 0.95}, // FULLWIDTH ０.９５
        {"1e\xef\xbc\x92", 100.0},                       // 1e２
        {"\xf0\x9d\x9f\x8e.5", 0.5},                     // U+1D7CE MATHEMATICAL BOLD DIGIT ZERO
        {"\xe2\x91\xa0", std::nullopt},                  // ① CIRCLED DIGIT ONE: No, not Nd
        {"\xc2\xb9", std::nullopt},                      // ¹ SUPERSCRIPT ONE: No, not Nd
        {"\xe4\xb8\x80", std::nullopt},                  // 一 CJK ONE: Lo, not Nd
        {"\xe2\x85\xa0", std::nullopt},                  // Ⅰ ROMAN NUMERAL ONE: Nl
        {"\xef\xbc\x8e"
         "5",
         std::nullopt}, // FULLWIDTH FULL STOP is not '.'
        {"\xef\xbc\x8d"
         "1",
         std::nullopt}, // FULLWIDTH HYPHEN-MINUS is not '-'
        {"\xe2\x88\x92"
         "1",
         std::nullopt},                   // U+2212 MINUS SIGN is not '-'
        {"\xef\xbd\x89nf", std::nullopt}, // FULLWIDTH i: not Nd, not space
        // Ill-formed UTF-8 (never in PostgreSQL text; Python str cannot hold it).
        {"\xff", std::nullopt},
        {"1\xc2", std::nullopt},
        {"\xc0\xb1", std::nullopt}, // overlong '1'
    };
    return table;
}

// The shortest text that reads back as `value`.
std::string shortest(double value) {
    char buffer[64];
    const auto result = std::to_chars(buffer, buffer + sizeof buffer, value);
    return std::string(buffer, result.ptr);
}

// Every ASCII digit replaced by the same digit of the Nd block starting at `zero` (a code point).
std::string with_digits_from(const std::string &text, char32_t zero) {
    std::string out;
    for (const char c : text) {
        if (c < '0' || c > '9') {
            out.push_back(c);
            continue;
        }
        const char32_t cp = zero + static_cast<char32_t>(c - '0');
        if (cp < 0x800) {
            out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        } else if (cp < 0x10000) {
            out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
            out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        } else {
            out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
            out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
            out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
            out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        }
    }
    return out;
}

bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

} // namespace

TEST(PythonFloat, PythonTable) {
    PythonFloatParser parser;
    for (const Case &c : python_table()) {
        EXPECT_TRUE(same_double(c.text, parser.parse(c.text), c.python));
        // The one-off function and a reused parser agree.
        EXPECT_TRUE(same_double(c.text, python_float(c.text), c.python));
    }
}

TEST(PythonFloat, ComparisonWithTheMinimumAsOpenverseDoes) {
    // float(x) < 0.90: NaN is not below (kept), inf is not (kept), -inf is (dropped).
    const double minimum = *python_float("0.90");
    EXPECT_EQ(minimum, 0.9);
    EXPECT_FALSE(*python_float("nan") < minimum);
    EXPECT_FALSE(*python_float("-nan") < minimum);
    EXPECT_FALSE(*python_float("1e999") < minimum);
    EXPECT_TRUE(*python_float("-1e999") < minimum);
    EXPECT_FALSE(*python_float("0.8999999999999999999") < minimum);
    EXPECT_TRUE(*python_float("0.89999999999999991") < minimum);
    EXPECT_FALSE(*python_float(" 0.98224") < minimum);
}

// Property: for random doubles, the shortest and the 17-digit representations, decorated in the
// ways float() allows (signs, case, white space, underscores between digits, zeros, other Nd
// digits), read back as exactly that double; decorations float() rejects are rejected.
TEST(PythonFloatProperty, RoundTripAndDecorations) {
    std::mt19937_64 random(20240613);
    PythonFloatParser parser;
    const char *spaces[] = {" ",  "\t",       "\n",           "\v",           "\f",
                            "\r", "\xc2\xa0", "\xe3\x80\x80", "\xe2\x80\x83", "\xc2\x85"};
    const char32_t zeros[] = {0x0660, 0x06F0, 0x0966, 0x09E6, 0x0E50, 0xFF10, 0x1D7CE, 0x104A0};
    for (int i = 0; i < 20000; ++i) {
        double value;
        switch (i % 4) {
        case 0: { // any finite bit pattern
            std::uint64_t bits = random();
            std::memcpy(&value, &bits, sizeof value);
            if (!std::isfinite(value)) {
                continue;
            }
            break;
        }
        case 1: // accuracies
            value = std::uniform_real_distribution<double>(0.0, 1.0)(random);
            break;
        case 2: // near the default minimum
            value = std::nextafter(0.9, (random() & 1) ? 1.0 : 0.0);
            for (std::uint64_t k = random() % 8; k > 0; --k) {
                value = std::nextafter(value, (random() & 1) ? 1.0 : 0.0);
            }
            break;
        default: // percentages, as some providers write them
            value = static_cast<double>(random() % 100001) / 1000.0;
            break;
        }
        char buffer[64];
        std::snprintf(buffer, sizeof buffer, (random() & 1) ? "%.17g" : "%.17E", value);
        for (const std::string &text : {shortest(value), std::string(buffer)}) {
            ASSERT_TRUE(same_double(text, parser.parse(text), value));

            // White space around it.
            const std::string spaced = std::string(spaces[random() % 10]) + text +
                                       spaces[random() % 10] + spaces[random() % 10];
            ASSERT_TRUE(same_double(spaced, parser.parse(spaced), value));

            // Single underscores between digits: the same value.
            std::string underscored;
            for (std::size_t k = 0; k < text.size(); ++k) {
                underscored.push_back(text[k]);
                if (k + 1 < text.size() && is_digit(text[k]) && is_digit(text[k + 1]) &&
                    random() % 3 == 0) {
                    underscored.push_back('_');
                }
            }
            ASSERT_TRUE(same_double(underscored, parser.parse(underscored), value));

            // An underscore next to anything but two digits: rejected.
            const std::size_t at = random() % (text.size() + 1);
            const bool between_digits =
                at > 0 && at < text.size() && is_digit(text[at - 1]) && is_digit(text[at]);
            std::string bad = text;
            bad.insert(at, between_digits ? "__" : "_");
            ASSERT_TRUE(same_double(bad, parser.parse(bad), std::nullopt));

            // Leading zeros, explicit sign, other Nd digits.
            const std::string zeroed = text[0] == '-' ? "-00" + text.substr(1) : "+00" + text;
            ASSERT_TRUE(same_double(zeroed, parser.parse(zeroed), value));
            const std::string foreign = with_digits_from(text, zeros[random() % 8]);
            ASSERT_TRUE(same_double(foreign, parser.parse(foreign), value));

            // A control character U+001C..U+001F around it: rejected.
            const std::string controlled =
                std::string(1, static_cast<char>(0x1C + random() % 4)) + text;
            ASSERT_TRUE(same_double(controlled, parser.parse(controlled), std::nullopt));
        }
    }
}

// Property: random decimal strings of up to 40 digits with exponents across the whole double
// range agree with the C library's correctly rounded strtod (glibc), an independent oracle.
TEST(PythonFloatProperty, AgreesWithStrtod) {
    std::mt19937_64 random(7);
    PythonFloatParser parser;
    for (int i = 0; i < 50000; ++i) {
        std::string text;
        if (random() & 1) {
            text.push_back((random() & 1) ? '-' : '+');
        }
        const std::size_t integer_digits = random() % 21;
        const std::size_t fraction_digits = random() % 21;
        for (std::size_t k = 0; k < integer_digits; ++k) {
            text.push_back(static_cast<char>('0' + random() % 10));
        }
        if (fraction_digits > 0 || integer_digits == 0 || random() % 4 == 0) {
            text.push_back('.');
        }
        for (std::size_t k = 0; k < fraction_digits; ++k) {
            text.push_back(static_cast<char>('0' + random() % 10));
        }
        if (integer_digits == 0 && fraction_digits == 0) {
            text.push_back('5');
        }
        if (random() % 3 != 0) {
            text += (random() & 1) ? "e" : "E";
            text += std::to_string(static_cast<int>(random() % 700) - 350);
        }
        const double expected = std::strtod(text.c_str(), nullptr); // the C locale
        ASSERT_TRUE(same_double(text, parser.parse(text), expected));
    }
}

// A reused parser keeps its buffer: a long input followed by short ones reads each correctly.
TEST(PythonFloat, ReusedParserHandlesLongThenShortInputs) {
    PythonFloatParser parser;
    const std::string long_text = "0." + std::string(5000, '9') + "e1";
    EXPECT_TRUE(same_double(long_text, parser.parse(long_text), 10.0));
    EXPECT_TRUE(same_double("0.5", parser.parse("0.5"), 0.5));
    EXPECT_TRUE(same_double("x", parser.parse("x"), std::nullopt));
    EXPECT_TRUE(same_double("1_0", parser.parse("1_0"), 10.0));
}
