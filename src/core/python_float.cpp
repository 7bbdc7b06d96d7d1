#include "python_float.hpp"

#include "text_scan.hpp"

#include <unicode/uchar.h>
#include <unicode/utf8.h>

#include <charconv>
#include <cmath>
#include <cstdint>
#include <limits>
#include <system_error>

namespace popularity::core {

namespace {

bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

// Py_ISSPACE, the ASCII white space float_from_string_inner strips, is core::is_ascii_space.

// Py_UNICODE_ISSPACE for code points >= 127 (general category Zs, or bidirectional class WS, B
// or S): unchanged since Unicode 6.3, which took U+180E out of Zs.
bool is_unicode_space(UChar32 c) {
    switch (c) {
    case 0x0085:
    case 0x00A0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
        return true;
    default:
        return c >= 0x2000 && c <= 0x200A;
    }
}

bool equals_ignoring_ascii_case(std::string_view text, std::string_view lower_word) {
    if (text.size() != lower_word.size()) {
        return false;
    }
    for (std::size_t i = 0; i < text.size(); ++i) {
        char c = text[i];
        if (c >= 'A' && c <= 'Z') {
            c = static_cast<char>(c - 'A' + 'a');
        }
        if (c != lower_word[i]) {
            return false;
        }
    }
    return true;
}

} // namespace

std::optional<double> PythonFloatParser::parse(std::string_view utf8) {
    // 1. Unicode white space to ' ', Unicode decimal digits to ASCII digits.
    if (utf8.size() > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max())) {
        return std::nullopt;
    }
    ascii_.clear();
    const auto length = static_cast<std::int32_t>(utf8.size());
    const auto *bytes = reinterpret_cast<const std::uint8_t *>(utf8.data());
    bool has_underscore = false;
    for (std::int32_t i = 0; i < length;) {
        if (bytes[i] < 0x80) {
            has_underscore = has_underscore || bytes[i] == '_';
            ascii_.push_back(static_cast<char>(bytes[i++]));
            continue;
        }
        UChar32 c = 0;
        U8_NEXT(bytes, i, length, c);
        if (c < 0) {
            return std::nullopt; // ill-formed UTF-8 (PostgreSQL text never is)
        }
        if (is_unicode_space(c)) {
            ascii_.push_back(' ');
        } else if (u_charType(c) == U_DECIMAL_DIGIT_NUMBER && u_charDigitValue(c) >= 0 &&
                   u_charDigitValue(c) <= 9) {
            ascii_.push_back(static_cast<char>('0' + u_charDigitValue(c)));
        } else {
            return std::nullopt; // U+007F and above, neither space nor digit
        }
    }

    // 2. Underscores only between digits, then removed.
    if (has_underscore) {
        char prev = '\0';
        std::size_t out = 0;
        for (const char c : ascii_) {
            if (c == '_') {
                if (!is_digit(prev)) {
                    return std::nullopt;
                }
            } else {
                if (prev == '_' && !is_digit(c)) {
                    return std::nullopt;
                }
                ascii_[out++] = c;
            }
            prev = c;
        }
        if (prev == '_') {
            return std::nullopt;
        }
        ascii_.resize(out);
    }

    // 3. Strip ASCII white space.
    std::string_view text = trim_ascii_space(ascii_);

    // 4. Sign, then a special name or a decimal number.
    const bool negative = take_sign(text);
    if (equals_ignoring_ascii_case(text, "inf") || equals_ignoring_ascii_case(text, "infinity")) {
        return negative ? -std::numeric_limits<double>::infinity()
                        : std::numeric_limits<double>::infinity();
    }
    if (equals_ignoring_ascii_case(text, "nan")) {
        return std::copysign(std::numeric_limits<double>::quiet_NaN(), negative ? -1.0 : 1.0);
    }
    std::size_t pos = 0;
    const std::size_t n = text.size();
    const std::size_t integer_begin = pos;
    while (pos < n && is_digit(text[pos])) {
        ++pos;
    }
    const std::size_t integer_end = pos;
    std::size_t fraction_begin = pos;
    std::size_t fraction_end = pos;
    if (pos < n && text[pos] == '.') {
        fraction_begin = ++pos;
        while (pos < n && is_digit(text[pos])) {
            ++pos;
        }
        fraction_end = pos;
    }
    if (integer_end == integer_begin && fraction_end == fraction_begin) {
        return std::nullopt; // no digit at all
    }
    // The exponent, saturated far beyond any double's range (as _Py_dg_strtod does).
    constexpr long long kExponentLimit = 1000000000;
    long long exponent = 0;
    if (pos < n && (text[pos] == 'e' || text[pos] == 'E')) {
        ++pos;
        bool exponent_negative = false;
        if (pos < n && (text[pos] == '+' || text[pos] == '-')) {
            exponent_negative = text[pos] == '-';
            ++pos;
        }
        const std::size_t exponent_begin = pos;
        while (pos < n && is_digit(text[pos])) {
            if (exponent < kExponentLimit) {
                exponent = exponent * 10 + (text[pos] - '0');
            }
            ++pos;
        }
        if (pos == exponent_begin) {
            return std::nullopt; // "1e", "1e+"
        }
        if (exponent_negative) {
            exponent = -exponent;
        }
    }
    if (pos != n) {
        return std::nullopt;
    }

    // Correctly rounded conversion (std::from_chars, locale-independent). It reports a result
    // that rounds to infinity or to zero as out of range without a value: Python gives +-inf or
    // +-0.0, told apart by the position of the first significant digit.
    double value = 0.0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + n, value);
    if (error == std::errc() && end == text.data() + n) {
        return negative ? -value : value;
    }
    if (error != std::errc::result_out_of_range) {
        return std::nullopt; // not reached: the grammar above is a subset of from_chars'
    }
    long long leading = 0; // decimal exponent of the first significant digit
    bool significant = false;
    for (std::size_t i = integer_begin; i < integer_end && !significant; ++i) {
        if (text[i] != '0') {
            leading = static_cast<long long>(integer_end - i) - 1;
            significant = true;
        }
    }
    for (std::size_t i = fraction_begin; i < fraction_end && !significant; ++i) {
        if (text[i] != '0') {
            leading = -static_cast<long long>(i - fraction_begin) - 1;
            significant = true;
        }
    }
    const double magnitude =
        significant && leading + exponent >= 0 ? std::numeric_limits<double>::infinity() : 0.0;
    return negative ? -magnitude : magnitude;
}

std::optional<double> python_float(std::string_view utf8) {
    PythonFloatParser parser;
    return parser.parse(utf8);
}

} // namespace popularity::core
