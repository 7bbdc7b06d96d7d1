#include "metric_jsonb.hpp"

#include "guard.hpp"
#include "numeric_view.hpp"

#include <cstdint>
#include <cstring>
#include <string_view>

namespace popularity::pg {

namespace {

constexpr std::uint64_t kExactLimit = std::uint64_t{1} << 53;
constexpr double kPowersOfTen[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                   1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                   1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

// How numeric_out is called: through pg_call in C++ frames (its error becomes PgError), directly
// in C-style frames (its error longjmps, and nothing in between may throw).
enum class Frame { cxx, c };

template <Frame frame> const char *numeric_text(Numeric num) {
    if constexpr (frame == Frame::cxx) {
        return pg_call([num] {
            return DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(num)));
        });
    } else {
        return DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(num)));
    }
}

template <Frame frame> core::MetricValue numeric_metric_via_text(Numeric num) {
    return core::parse_metric_text(std::string_view(numeric_text<frame>(num)));
}

// Converts a numeric to the double `numeric::text::float8` would give, bit for bit. Integers and
// decimals whose digits fit in 53 bits are converted exactly without text; other values go through
// numeric_out and a correctly rounded parse (same result as float8in).
template <Frame frame> core::MetricValue numeric_metric_as(Numeric num) {
    core::DecimalView view;
    if (!numeric_view(num, view)) {
        return numeric_metric_via_text<frame>(num); // NaN, infinities: classified from their text
    }
    if (view.ndigits == 0) {
        return core::classify_metric(0.0);
    }
    if (view.negative) {
        return core::MetricValue::invalid();
    }
    // value = mantissa * 10000^(weight - (ndigits - 1))
    std::uint64_t mantissa = 0;
    for (std::size_t i = 0; i < view.ndigits; ++i) {
        const std::int16_t digit = view.digit(i);
        // Checked before multiplying: 2^53 * 10000 would overflow 64 bits.
        if (digit < 0 || digit >= 10000 || mantissa > kExactLimit / 10000) {
            return numeric_metric_via_text<frame>(num);
        }
        mantissa = mantissa * 10000 + static_cast<std::uint64_t>(digit);
    }
    const long exponent = static_cast<long>(view.weight) - static_cast<long>(view.ndigits - 1);
    if (exponent >= 0) {
        for (long e = 0; e < exponent; ++e) {
            if (mantissa > kExactLimit / 10000) {
                return numeric_metric_via_text<frame>(num);
            }
            mantissa *= 10000;
        }
        if (mantissa > kExactLimit) {
            return numeric_metric_via_text<frame>(num);
        }
        return core::classify_metric(static_cast<double>(mantissa));
    }
    const long decimal_places = -4 * exponent;
    if (mantissa > kExactLimit || decimal_places > 22) {
        return numeric_metric_via_text<frame>(num);
    }
    // Both operands are exact doubles, so IEEE division gives the correctly rounded quotient:
    // the same double strtod gives for the decimal text.
    return core::classify_metric(static_cast<double>(mantissa) / kPowersOfTen[decimal_places]);
}

template <Frame frame>
core::MetricValue jsonb_metric_as(Jsonb *document, const char *key, std::size_t key_length) {
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
        return numeric_metric_as<frame>(value->val.numeric);
    case jbvString:
        return core::parse_metric_text(std::string_view(
            value->val.string.val, static_cast<std::size_t>(value->val.string.len)));
    default:
        return core::MetricValue::invalid(); // bool, array, object
    }
}

} // namespace

core::MetricValue jsonb_metric(Jsonb *document, const char *key, std::size_t key_length) {
    return jsonb_metric_as<Frame::cxx>(document, key, key_length);
}

core::MetricValue jsonb_metric_in_c_frame(Jsonb *document, const char *key,
                                          std::size_t key_length) noexcept {
    return jsonb_metric_as<Frame::c>(document, key, key_length);
}

} // namespace popularity::pg
