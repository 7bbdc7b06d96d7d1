// Reading PostgreSQL numeric values in place, as a core::DecimalView of their base-10000 digits.
#pragma once

#include "../core/decimal.hpp"

#include "pg_includes.hpp"

extern "C" {
#include "utils/numeric.h"
}

namespace popularity::pg {

// A view of a numeric's sign, weight and digits, without copying or converting; false for NaN and
// the infinities (and for a header too short to be a numeric). numeric's on-disk format is fixed
// for pg_upgrade compatibility (src/backend/utils/adt/numeric.c).
bool numeric_view(Numeric num, core::DecimalView &out);

} // namespace popularity::pg
