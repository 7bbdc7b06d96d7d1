// Formatting numbers for messages, without PostgreSQL.
#pragma once
#include "no_postgres.hpp"

#include <string>

namespace popularity::core {

// The shortest text that reads back as the same double (like float8out): 1.5, 0.85, 1e+300, NaN.
std::string format_double(double value);

} // namespace popularity::core
