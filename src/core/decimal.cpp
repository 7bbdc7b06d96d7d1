#include "decimal.hpp"

#include "check.hpp"
#include "error.hpp"

#include <cstring>
#include <string>

namespace popularity::core {

std::int16_t DecimalView::digit(std::size_t i) const {
    POPULARITY_CHECK(i < ndigits);
    std::int16_t d;
    std::memcpy(&d, digits + i * sizeof d, sizeof d);
    return d;
}

namespace {

// The significant part of a view: leading and trailing zero digits removed.
struct Trimmed {
    std::size_t first = 0;
    std::size_t last = 0; // one past the last non-zero digit; first == last means zero
    int weight = 0;       // weight of digit `first`
};

Trimmed trim(const DecimalView &v) {
    Trimmed t;
    std::size_t first = 0;
    while (first < v.ndigits && v.digit(first) == 0) {
        ++first;
    }
    std::size_t last = v.ndigits;
    while (last > first && v.digit(last - 1) == 0) {
        --last;
    }
    t.first = first;
    t.last = last;
    t.weight = v.weight - static_cast<int>(first);
    return t;
}

// Compares magnitudes.
int compare_magnitude(const DecimalView &a, const Trimmed &ta, const DecimalView &b,
                      const Trimmed &tb) {
    if (ta.weight != tb.weight) {
        return ta.weight < tb.weight ? -1 : 1;
    }
    std::size_t i = ta.first;
    std::size_t j = tb.first;
    for (; i < ta.last && j < tb.last; ++i, ++j) {
        const int da = a.digit(i);
        const int db = b.digit(j);
        if (da != db) {
            return da < db ? -1 : 1;
        }
    }
    if (i < ta.last) {
        return 1; // a has more non-zero digits
    }
    if (j < tb.last) {
        return -1;
    }
    return 0;
}

bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

} // namespace

int compare_decimal(const DecimalView &a, const DecimalView &b) {
    const Trimmed ta = trim(a);
    const Trimmed tb = trim(b);
    const bool a_zero = ta.first == ta.last;
    const bool b_zero = tb.first == tb.last;
    const int sign_a = a_zero ? 0 : (a.negative ? -1 : 1);
    const int sign_b = b_zero ? 0 : (b.negative ? -1 : 1);
    if (sign_a != sign_b) {
        return sign_a < sign_b ? -1 : 1;
    }
    if (sign_a == 0) {
        return 0;
    }
    const int magnitude = compare_magnitude(a, ta, b, tb);
    return sign_a > 0 ? magnitude : -magnitude;
}

Decimal Decimal::parse(std::string_view text) {
    auto bad = [&text]() {
        return Error(ErrorCode::invalid_text, "invalid decimal \"" + std::string(text) + "\"",
                     "A decimal is written as digits with an optional sign and decimal point.");
    };
    std::size_t begin = 0;
    std::size_t end = text.size();
    while (begin < end && is_space(text[begin])) {
        ++begin;
    }
    while (end > begin && is_space(text[end - 1])) {
        --end;
    }
    Decimal out;
    std::size_t pos = begin;
    if (pos < end && (text[pos] == '+' || text[pos] == '-')) {
        out.negative_ = text[pos] == '-';
        ++pos;
    }
    std::string integer_digits;
    std::string fraction_digits;
    while (pos < end && text[pos] >= '0' && text[pos] <= '9') {
        integer_digits += text[pos++];
    }
    if (pos < end && text[pos] == '.') {
        ++pos;
        while (pos < end && text[pos] >= '0' && text[pos] <= '9') {
            fraction_digits += text[pos++];
        }
    }
    if (pos != end || (integer_digits.empty() && fraction_digits.empty())) {
        throw bad();
    }
    // Pad to whole base-10000 digits: the integer part on the left, the fraction on the right.
    integer_digits.insert(0, (4 - integer_digits.size() % 4) % 4, '0');
    fraction_digits.append((4 - fraction_digits.size() % 4) % 4, '0');
    const std::string all = integer_digits + fraction_digits;
    for (std::size_t i = 0; i < all.size(); i += 4) {
        out.digits_.push_back(static_cast<std::int16_t>(std::stoi(all.substr(i, 4))));
    }
    out.weight_ = static_cast<int>(integer_digits.size() / 4) - 1;
    return out;
}

DecimalView Decimal::view() const {
    DecimalView v;
    v.negative = negative_;
    v.weight = weight_;
    v.digits = reinterpret_cast<const unsigned char *>(digits_.data());
    v.ndigits = digits_.size();
    return v;
}

} // namespace popularity::core
