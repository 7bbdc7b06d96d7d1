// Exact decimal comparison in PostgreSQL numeric's digit layout (base 10000), so that a tag's
// accuracy is compared with the minimum confidence exactly, never through a rounded double.
#pragma once
#include "no_postgres.hpp"

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace popularity::core {

// A read-only view of a finite decimal: value = sign * sum(digit[i] * 10000^(weight - i)).
// Digits are base-10000 int16 values in native byte order, read with memcpy (the storage may be
// unaligned). Leading and trailing zero digits are allowed; no digits means zero.
struct DecimalView {
    bool negative = false;
    int weight = 0;
    const unsigned char *digits = nullptr; // ndigits * sizeof(std::int16_t) bytes
    std::size_t ndigits = 0;

    std::int16_t digit(std::size_t i) const;
};

// An owned decimal, parsed from text once (rules are loaded rarely, compared per tag).
class Decimal {
  public:
    // Parses [+-]digits[.digits] or [+-].digits (as numeric's text output), with optional
    // surrounding ASCII white space. Throws Error(invalid_text) otherwise.
    static Decimal parse(std::string_view text);

    DecimalView view() const;

  private:
    bool negative_ = false;
    int weight_ = 0;
    std::vector<std::int16_t> digits_;
};

// -1, 0 or 1 as a < b, a == b, a > b (exact; -0 == 0).
int compare_decimal(const DecimalView &a, const DecimalView &b);

} // namespace popularity::core
