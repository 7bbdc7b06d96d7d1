// Small pieces of number parsing shared by the readers of numbers stored as text (metric values,
// tag accuracies): ASCII white space and an optional sign around a literal.
#pragma once
#include "no_postgres.hpp"

#include <string_view>

namespace popularity::core {

inline bool is_ascii_space(char c) noexcept {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

// `text` without leading and trailing ASCII white space.
inline std::string_view trim_ascii_space(std::string_view text) noexcept {
    while (!text.empty() && is_ascii_space(text.front())) {
        text.remove_prefix(1);
    }
    while (!text.empty() && is_ascii_space(text.back())) {
        text.remove_suffix(1);
    }
    return text;
}

// Removes a leading '+' or '-' from `text`; true when it was '-'.
inline bool take_sign(std::string_view &text) noexcept {
    if (!text.empty() && (text.front() == '+' || text.front() == '-')) {
        const bool negative = text.front() == '-';
        text.remove_prefix(1);
        return negative;
    }
    return false;
}

} // namespace popularity::core
