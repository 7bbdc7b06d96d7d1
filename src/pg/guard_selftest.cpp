// Functions that exercise the error guard from SQL (popularity._guard_selftest), so the regression
// suite proves that every kind of failure in C++ becomes a clean SQL error, that a PostgreSQL error
// raised under C++ frames unwinds them (destructors run), and that the backend keeps working.
#include "../core/error.hpp"

#include "guard.hpp"

#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

using namespace popularity;

namespace {

int live_tracked_objects = 0;

// An object with a non-trivial destructor: if a longjmp ever skipped it, the counter stays up.
struct Tracked {
    Tracked() { ++live_tracked_objects; }
    ~Tracked() { --live_tracked_objects; }
    Tracked(const Tracked &) = delete;
    Tracked &operator=(const Tracked &) = delete;
};

} // namespace

// popularity._guard_selftest(kind text) -> integer: the number of tracked objects alive afterwards.
POPULARITY_FUNCTION(popularity_guard_selftest) {
    text *kind_text = PG_GETARG_TEXT_PP(0);
    const std::string kind(VARDATA_ANY(kind_text), VARSIZE_ANY_EXHDR(kind_text));
    {
        Tracked tracked;
        std::vector<std::string> owned(16, std::string(64, 'x')); // heap memory to release
        if (kind == "core_error") {
            throw core::Error(core::ErrorCode::invalid_parameter, "core error raised on purpose",
                              "The self-test threw popularity::core::Error.",
                              "Nothing to do: this is a test.");
        } else if (kind == "std_exception") {
            throw std::runtime_error("std::runtime_error raised on purpose");
        } else if (kind == "bad_alloc") {
            throw std::bad_alloc();
        } else if (kind == "unknown") {
            throw 42;
        } else if (kind == "pg_error") {
            // A PostgreSQL ERROR (division by zero) raised while C++ objects are alive.
            pg::pg_call(
                [] { return DirectFunctionCall2(int4div, Int32GetDatum(1), Int32GetDatum(0)); });
        } else if (kind != "none") {
            throw pg::SqlError(ERRCODE_INVALID_PARAMETER_VALUE,
                               "unknown self-test kind \"" + kind + "\"", {},
                               "Use one of none, core_error, std_exception, bad_alloc, unknown, "
                               "pg_error.");
        }
    }
    PG_RETURN_INT32(live_tracked_objects);
}

// popularity._guard_live_objects() -> integer: tracked objects alive now (0 unless a leak).
POPULARITY_FUNCTION(popularity_guard_live_objects) {
    PG_RETURN_INT32(live_tracked_objects);
}
