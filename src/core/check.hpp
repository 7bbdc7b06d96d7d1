// Internal consistency checks of the core: conditions that hold unless the code itself is wrong
// (an index inside its array, a rank inside [1, n], a table's invariants). PostgreSQL's Assert is
// compiled out of Debian's server packages, so the core has its own: with POPULARITY_ASSERTS
// defined (the CMake option of the same name; test/run-all runs the unit tests in such a build too)
// a failed check throws Error(internal) naming the condition and its place, so a unit test fails on
// it; without it (the extension's build) a check costs nothing.
#pragma once
#include "no_postgres.hpp"

namespace popularity::core {

[[noreturn]] void check_failed(const char *condition, const char *file, int line);

} // namespace popularity::core

#ifdef POPULARITY_ASSERTS
#define POPULARITY_CHECK(condition)                                                                \
    ((condition) ? static_cast<void>(0)                                                            \
                 : ::popularity::core::check_failed(#condition, __FILE__, __LINE__))
#else
#define POPULARITY_CHECK(condition) static_cast<void>(sizeof(static_cast<bool>(condition)))
#endif
