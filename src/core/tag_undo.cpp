#include "tag_undo.hpp"

namespace popularity::core {

std::optional<std::vector<RestoreSlot>>
restore_plan(std::size_t kept_count, const std::vector<std::int64_t> &removed_positions) {
    const std::size_t total = kept_count + removed_positions.size();
    std::int64_t previous = -1;
    for (const std::int64_t position : removed_positions) {
        if (position <= previous || static_cast<std::uint64_t>(position) >= total) {
            return std::nullopt;
        }
        previous = position;
    }
    std::vector<RestoreSlot> plan;
    plan.reserve(total);
    std::size_t next_removed = 0;
    std::size_t next_kept = 0;
    for (std::size_t i = 0; i < total; ++i) {
        if (next_removed < removed_positions.size() &&
            static_cast<std::size_t>(removed_positions[next_removed]) == i) {
            plan.push_back({true, next_removed++});
        } else {
            plan.push_back({false, next_kept++});
        }
    }
    return plan;
}

} // namespace popularity::core
