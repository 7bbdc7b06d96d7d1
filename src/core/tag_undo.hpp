// Undoing a tag filter run: putting the tags a run removed back at their original positions.
// A run keeps, per changed row, the removed elements with their positions in the original array;
// the kept elements are the rest of the original array, in order. This file knows nothing about
// jsonb: it only plans where every element of the restored array comes from.
#pragma once
#include "no_postgres.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

namespace popularity::core {

// One element of the restored array: the `index`-th removed element (removed == true) or the
// `index`-th element of the current (kept) array.
struct RestoreSlot {
    bool removed;
    std::size_t index;
};

// The restored array of `kept_count` kept elements and removed elements at `removed_positions`
// (positions in the original array). nullopt when the positions cannot describe an original
// array of kept_count + removed_positions.size() elements: negative, not strictly increasing, or
// beyond its end (the current array then has another length than the run wrote).
std::optional<std::vector<RestoreSlot>>
restore_plan(std::size_t kept_count, const std::vector<std::int64_t> &removed_positions);

} // namespace popularity::core
