// POPULARITY_CHECK: a failed check throws core::Error(internal) in the assert build (CMake option
// POPULARITY_ASSERTS, run by test/run-all), and costs nothing, not even evaluating its condition,
// in the extension's build.
#include "check.hpp"
#include "error.hpp"

#include <gtest/gtest.h>

using namespace popularity;

#ifdef POPULARITY_ASSERTS
TEST(Check, FailedCheckThrowsInTheAssertBuild) {
    try {
        POPULARITY_CHECK(1 + 1 == 3);
        FAIL() << "the check did not fire";
    } catch (const core::Error &e) {
        EXPECT_EQ(e.code(), core::ErrorCode::internal);
        EXPECT_NE(std::string(e.what()).find("1 + 1 == 3"), std::string::npos) << e.what();
    }
    int evaluated = 0;
    POPULARITY_CHECK(++evaluated == 1);
    EXPECT_EQ(evaluated, 1);
}
#else
TEST(Check, CompiledOutWithoutAsserts) {
    int evaluated = 0;
    POPULARITY_CHECK(++evaluated == 3);
    EXPECT_EQ(evaluated, 0);
}
#endif
