#include "unicode_case.hpp"

#include "check.hpp"
#include "error.hpp"

#include <unicode/uchar.h>
#include <unicode/ustring.h>
#include <unicode/utypes.h>

#include <cstdint>
#include <limits>
#include <new>

namespace popularity::core {

namespace {

constexpr UChar32 kReplacement = 0xFFFD;

[[noreturn]] void icu_failure(const char *what, UErrorCode status) {
    if (status == U_MEMORY_ALLOCATION_ERROR) {
        throw std::bad_alloc();
    }
    throw Error(ErrorCode::internal,
                std::string("ICU ") + what + " failed: " + u_errorName(status));
}

int32_t checked_length(std::size_t size) {
    if (size > static_cast<std::size_t>(std::numeric_limits<int32_t>::max() / 4)) {
        throw Error(ErrorCode::invalid_parameter, "text too long to lower-case",
                    "Text of " + std::to_string(size) + " bytes was given.");
    }
    return static_cast<int32_t>(size);
}

} // namespace

std::string_view Lowercaser::lower(std::string_view utf8) {
    bool has_upper = false;
    for (const char c : utf8) {
        const auto byte = static_cast<unsigned char>(c);
        if (byte >= 0x80) {
            return lower_unicode(utf8);
        }
        has_upper = has_upper || (byte >= 'A' && byte <= 'Z');
    }
    if (!has_upper) {
        return utf8;
    }
    out_.resize(utf8.size());
    for (std::size_t i = 0; i < utf8.size(); ++i) {
        const char c = utf8[i];
        out_[i] = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    }
    return out_;
}

std::string_view Lowercaser::lower_unicode(std::string_view utf8) {
    const int32_t length = checked_length(utf8.size());
    // UTF-8 -> UTF-16: at most one UTF-16 unit per UTF-8 byte.
    utf16_.resize(static_cast<std::size_t>(length) + 1);
    int32_t utf16_length = 0;
    UErrorCode status = U_ZERO_ERROR;
    u_strFromUTF8WithSub(reinterpret_cast<UChar *>(utf16_.data()),
                         static_cast<int32_t>(utf16_.size()), &utf16_length, utf8.data(), length,
                         kReplacement, nullptr, &status);
    if (U_FAILURE(status)) {
        icu_failure("UTF-8 decoding", status);
    }
    POPULARITY_CHECK(utf16_length >= 0 && static_cast<std::size_t>(utf16_length) < utf16_.size());
    // Lower-casing may lengthen the text (İ -> i + U+0307); retry once with the exact size.
    lowered_.resize(static_cast<std::size_t>(utf16_length) + 8);
    for (int attempt = 0;; ++attempt) {
        status = U_ZERO_ERROR;
        const int32_t needed = u_strToLower(
            reinterpret_cast<UChar *>(lowered_.data()), static_cast<int32_t>(lowered_.size()),
            reinterpret_cast<const UChar *>(utf16_.data()), utf16_length, "", &status);
        if (status == U_BUFFER_OVERFLOW_ERROR && attempt == 0) {
            lowered_.resize(static_cast<std::size_t>(needed) + 1);
            continue;
        }
        if (U_FAILURE(status)) {
            icu_failure("lower-casing", status);
        }
        POPULARITY_CHECK(needed >= 0 && static_cast<std::size_t>(needed) <= lowered_.size());
        lowered_.resize(static_cast<std::size_t>(needed));
        break;
    }
    // UTF-16 -> UTF-8: at most three bytes per UTF-16 unit.
    out_.resize(lowered_.size() * 3 + 1);
    int32_t out_length = 0;
    status = U_ZERO_ERROR;
    u_strToUTF8WithSub(out_.data(), static_cast<int32_t>(out_.size()), &out_length,
                       reinterpret_cast<const UChar *>(lowered_.data()),
                       static_cast<int32_t>(lowered_.size()), kReplacement, nullptr, &status);
    if (U_FAILURE(status)) {
        icu_failure("UTF-8 encoding", status);
    }
    POPULARITY_CHECK(out_length >= 0 && static_cast<std::size_t>(out_length) < out_.size());
    out_.resize(static_cast<std::size_t>(out_length));
    return out_;
}

std::string to_lower(std::string_view utf8) {
    Lowercaser lowercaser;
    return std::string(lowercaser.lower(utf8));
}

} // namespace popularity::core
