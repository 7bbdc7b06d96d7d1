#include "metric_jsonb.hpp"

#include "guard.hpp"

#include <cstdint>
#include <cstring>
#include <string_view>

namespace popularity::pg {

namespace {

// numeric's on-disk format is fixed for pg_upgrade compatibility (src/backend/utils/adt/numeric.c):
// a uint16 header; for the long format an int16 weight follows; then base-10000 int16 digits.
constexpr std::uint16_t kSignMask = 0xC000;
constexpr std::uint16_t kNegative = 0x4000;
constexpr std::uint16_t kShort = 0x8000;
constexpr std::uint16_t kSpecial = 0xC000;
constexpr std::uint16_t kShortSignMask = 0x2000;
constexpr std::uint16_t kShortWeightSignMask = 0x0040;
constexpr std::uint16_t kShortWeightMask = 0x003F;
constexpr std::uint64_t kExactLimit = std::uint64_t{1} << 53;
constexpr double kPowersOfTen[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                   1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                   1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

core::MetricValue numeric_metric_via_text(Numeric num) {
    const char *text = pg_call(
        [num] { return DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(num))); });
    return core::parse_metric_text(std::string_view(text));
}

} // namespace

core::MetricValue numeric_metric(Numeric num) {
    const auto *data = reinterpret_cast<const unsigned char *>(VARDATA_ANY(num));
    const std::size_t size = VARSIZE_ANY_EXHDR(num);
    if (size < sizeof(std::uint16_t)) {
        return numeric_metric_via_text(num);
    }
    std::uint16_t header;
    std::memcpy(&header, data, sizeof header);
    const std::uint16_t flags = header & kSignMask;
    if (flags == kSpecial) {
        return core::MetricValue::invalid(); // NaN, +Infinity, -Infinity
    }
    bool negative;
    int weight;
    std::size_t offset;
    if (flags == kShort) {
        negative = (header & kShortSignMask) != 0;
        weight = header & kShortWeightMask;
        if (header & kShortWeightSignMask) {
            weight |= ~static_cast<int>(kShortWeightMask); // sign-extend the 7-bit weight
        }
        offset = sizeof(std::uint16_t);
    } else {
        negative = flags == kNegative;
        std::int16_t long_weight;
        if (size < 2 * sizeof(std::uint16_t)) {
            return numeric_metric_via_text(num);
        }
        std::memcpy(&long_weight, data + sizeof(std::uint16_t), sizeof long_weight);
        weight = long_weight;
        offset = 2 * sizeof(std::uint16_t);
    }
    const std::size_t ndigits = (size - offset) / sizeof(std::int16_t);
    if (ndigits == 0) {
        return core::classify_metric(0.0);
    }
    if (negative) {
        return core::MetricValue::invalid();
    }
    // value = mantissa * 10000^(weight - (ndigits - 1))
    std::uint64_t mantissa = 0;
    for (std::size_t i = 0; i < ndigits; ++i) {
        std::int16_t digit;
        std::memcpy(&digit, data + offset + i * sizeof digit, sizeof digit);
        // Checked before multiplying: 2^53 * 10000 would overflow 64 bits.
        if (digit < 0 || digit >= 10000 || mantissa > kExactLimit / 10000) {
            return numeric_metric_via_text(num);
        }
        mantissa = mantissa * 10000 + static_cast<std::uint64_t>(digit);
    }
    const long exponent = static_cast<long>(weight) - static_cast<long>(ndigits - 1);
    if (exponent >= 0) {
        for (long e = 0; e < exponent; ++e) {
            if (mantissa > kExactLimit / 10000) {
                return numeric_metric_via_text(num);
            }
            mantissa *= 10000;
        }
        if (mantissa > kExactLimit) {
            return numeric_metric_via_text(num);
        }
        return core::classify_metric(static_cast<double>(mantissa));
    }
    const long decimal_places = -4 * exponent;
    if (mantissa > kExactLimit || decimal_places > 22) {
        return numeric_metric_via_text(num);
    }
    // Both operands are exact doubles, so IEEE division gives the correctly rounded quotient:
    // the same double strtod gives for the decimal text.
    return core::classify_metric(static_cast<double>(mantissa) / kPowersOfTen[decimal_places]);
}

core::MetricValue jsonb_metric(Jsonb *document, const char *key, std::size_t key_length) {
    if (!JB_ROOT_IS_OBJECT(document)) {
        return core::MetricValue::missing();
    }
    JsonbValue buffer;
    JsonbValue *value = getKeyJsonValueFromContainer(&document->root, key,
                                                     static_cast<uint32>(key_length), &buffer);
    if (value == nullptr) {
        return core::MetricValue::missing();
    }
    switch (value->type) {
    case jbvNull:
        return core::MetricValue::missing();
    case jbvNumeric:
        return numeric_metric(value->val.numeric);
    case jbvString:
        return core::parse_metric_text(std::string_view(
            value->val.string.val, static_cast<std::size_t>(value->val.string.len)));
    default:
        return core::MetricValue::invalid(); // bool, array, object
    }
}

} // namespace popularity::pg
