// The exception type of the core. The PostgreSQL boundary (src/pg/guard.hpp) maps each code to a
// SQLSTATE, so the core can report precise errors without knowing PostgreSQL.
#pragma once
#include "no_postgres.hpp"

#include <stdexcept>
#include <string>

namespace popularity::core {

enum class ErrorCode {
    invalid_parameter,    // 22023 invalid_parameter_value
    numeric_out_of_range, // 22003 numeric_value_out_of_range
    invalid_text,         // 22P02 invalid_text_representation
    data_corrupted,       // XX001 data_corrupted
    internal,             // XX000 internal_error
};

class Error : public std::runtime_error {
  public:
    Error(ErrorCode code, const std::string &message, std::string detail = {},
          std::string hint = {})
        : std::runtime_error(message), code_(code), detail_(std::move(detail)),
          hint_(std::move(hint)) {}

    ErrorCode code() const noexcept { return code_; }
    const std::string &detail() const noexcept { return detail_; }
    const std::string &hint() const noexcept { return hint_; }

  private:
    ErrorCode code_;
    std::string detail_;
    std::string hint_;
};

} // namespace popularity::core
