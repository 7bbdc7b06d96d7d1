#include "numeric_view.hpp"

#include <cstdint>
#include <cstring>

namespace popularity::pg {

namespace {

// numeric's on-disk header (src/backend/utils/adt/numeric.c; fixed for pg_upgrade).
constexpr std::uint16_t kSignMask = 0xC000;
constexpr std::uint16_t kNegative = 0x4000;
constexpr std::uint16_t kShort = 0x8000;
constexpr std::uint16_t kSpecial = 0xC000;
constexpr std::uint16_t kShortSignMask = 0x2000;
constexpr std::uint16_t kShortWeightSignMask = 0x0040;
constexpr std::uint16_t kShortWeightMask = 0x003F;

} // namespace

bool numeric_view(Numeric num, core::DecimalView &out) {
    const auto *data = reinterpret_cast<const unsigned char *>(VARDATA_ANY(num));
    const std::size_t size = VARSIZE_ANY_EXHDR(num);
    if (size < sizeof(std::uint16_t)) {
        return false;
    }
    std::uint16_t header;
    std::memcpy(&header, data, sizeof header);
    const std::uint16_t flags = header & kSignMask;
    std::size_t offset;
    if (flags == kSpecial) {
        return false;
    }
    if (flags == kShort) {
        out.negative = (header & kShortSignMask) != 0;
        int weight = header & kShortWeightMask;
        if (header & kShortWeightSignMask) {
            weight |= ~static_cast<int>(kShortWeightMask);
        }
        out.weight = weight;
        offset = sizeof(std::uint16_t);
    } else {
        if (size < 2 * sizeof(std::uint16_t)) {
            return false;
        }
        out.negative = flags == kNegative;
        std::int16_t weight;
        std::memcpy(&weight, data + sizeof(std::uint16_t), sizeof weight);
        out.weight = weight;
        offset = 2 * sizeof(std::uint16_t);
    }
    out.digits = data + offset;
    out.ndigits = (size - offset) / sizeof(std::int16_t);
    return true;
}

} // namespace popularity::pg
