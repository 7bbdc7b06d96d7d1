// SQL-callable helpers of the refresh.
#include "../core/float_compare.hpp"

#include "../pg/guard.hpp"
#include "../pg/shared_state.hpp"

using namespace popularity;

// popularity._wake_scheduler(): wake (or start) this database's scheduler at commit.
POPULARITY_FUNCTION(popularity_wake_scheduler) {
    pg::require_shared_state("the popularity refresh");
    pg::wake_scheduler_at_commit();
    PG_RETURN_VOID();
}

// popularity._score_differs(old, new, tolerance): must a stored score be rewritten?
POPULARITY_FUNCTION(popularity_score_differs) {
    const bool old_null = PG_ARGISNULL(0);
    const bool new_null = PG_ARGISNULL(1);
    if (old_null || new_null) {
        PG_RETURN_BOOL(old_null != new_null);
    }
    const double tolerance = PG_ARGISNULL(2) ? 0.0 : PG_GETARG_FLOAT8(2);
    PG_RETURN_BOOL(
        !core::within_relative_tolerance(PG_GETARG_FLOAT8(0), PG_GETARG_FLOAT8(1), tolerance));
}
