#include "../../src/core/tag_undo.hpp"

#include <gtest/gtest.h>

#include <string>

using popularity::core::restore_plan;
using popularity::core::RestoreSlot;

namespace {

// "k0" for the first kept element, "r1" for the second removed one, ...
std::string describe(const std::vector<RestoreSlot> &plan) {
    std::string out;
    for (const RestoreSlot &slot : plan) {
        out += (slot.removed ? "r" : "k") + std::to_string(slot.index) + " ";
    }
    return out;
}

} // namespace

TEST(RestorePlan, PutsRemovedElementsBackAtTheirPositions) {
    auto plan = restore_plan(3, {0, 2, 5});
    ASSERT_TRUE(plan);
    EXPECT_EQ(describe(*plan), "r0 k0 r1 k1 k2 r2 ");
}

TEST(RestorePlan, EverythingRemovedOrNothingRemoved) {
    auto all = restore_plan(0, {0, 1, 2});
    ASSERT_TRUE(all);
    EXPECT_EQ(describe(*all), "r0 r1 r2 ");
    auto none = restore_plan(2, {});
    ASSERT_TRUE(none);
    EXPECT_EQ(describe(*none), "k0 k1 ");
    auto empty = restore_plan(0, {});
    ASSERT_TRUE(empty);
    EXPECT_TRUE(empty->empty());
}

TEST(RestorePlan, RejectsPositionsThatDescribeNoOriginalArray) {
    EXPECT_FALSE(restore_plan(2, {-1}));
    EXPECT_FALSE(restore_plan(2, {1, 1})); // repeated
    EXPECT_FALSE(restore_plan(2, {2, 1})); // not increasing
    EXPECT_FALSE(restore_plan(2, {3}));    // beyond the end of a 3-element original
    EXPECT_FALSE(restore_plan(0, {0, 2})); // the kept array is shorter than the run wrote
    EXPECT_TRUE(restore_plan(2, {2}));     // the last element
}

TEST(RestorePlan, RoundTripsEverySubsequence) {
    // Every way of removing elements from an array of 6: the plan rebuilds the original order.
    const std::size_t n = 6;
    for (unsigned mask = 0; mask < (1U << n); ++mask) {
        std::vector<std::int64_t> removed;
        std::vector<std::size_t> kept;
        for (std::size_t i = 0; i < n; ++i) {
            if ((mask >> i) & 1U) {
                removed.push_back(static_cast<std::int64_t>(i));
            } else {
                kept.push_back(i);
            }
        }
        auto plan = restore_plan(kept.size(), removed);
        ASSERT_TRUE(plan);
        ASSERT_EQ(plan->size(), n);
        for (std::size_t i = 0; i < n; ++i) {
            const RestoreSlot &slot = (*plan)[i];
            const std::size_t original =
                slot.removed ? static_cast<std::size_t>(removed[slot.index]) : kept[slot.index];
            EXPECT_EQ(original, i) << "mask " << mask;
        }
    }
}
