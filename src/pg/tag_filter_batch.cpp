// popularity._filter_tags_range: the C++ batch of the 0.1.0 filter_tags procedure. Since 0.2.0
// filter_tags is a job of the background workers' batch engine (src/worker/engine.hpp), and the
// 0.2.0 SQL no longer declares this function; the symbol stays so that a 0.1.0 install (whose
// script declares it) still loads against this library. Called from a 0.1.0 install, it says to
// update the extension.
#include "guard.hpp"

using namespace popularity;

POPULARITY_FUNCTION(popularity_filter_tags_range) {
    throw pg::SqlError(ERRCODE_FEATURE_NOT_SUPPORTED,
                       "the 0.1.0 filter_tags batch is not provided by this library version",
                       "filter_tags now runs in the background workers' batch engine.",
                       "Run ALTER EXTENSION popularity UPDATE, then CALL filter_tags again.");
}
