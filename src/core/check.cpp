#include "check.hpp"

#include "error.hpp"

#include <string>

namespace popularity::core {

void check_failed(const char *condition, const char *file, int line) {
    throw Error(ErrorCode::internal, std::string("internal check failed: ") + condition + " (" +
                                         file + ":" + std::to_string(line) + ")");
}

} // namespace popularity::core
