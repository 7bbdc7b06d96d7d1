// Python's float(str), for tag accuracies that Openverse stores as JSON strings and reads with
// `float(tag["accuracy"])`. The grammar and its sources in CPython (3.6 and later):
//   1. PyFloat_FromString: _PyUnicode_TransformDecimalAndSpaceToASCII maps every code point >= 127
//      that is Unicode white space (str.isspace()) to ' ' and every Unicode decimal digit
//      (general category Nd) to its ASCII digit; any other code point >= 127 makes it fail.
//      Code points below 127 are left alone (so U+001C..U+001F, which str.strip() removes, are
//      NOT white space to float(): float("\x1c1") raises ValueError).
//   2. _Py_string_to_number_with_underscores: an underscore is allowed only between two ASCII
//      digits ("1_000.5", "1e1_0"); any other underscore is an error; underscores are removed.
//   3. float_from_string_inner: leading and trailing ASCII white space (space, \t \n \v \f \r)
//      is stripped; nothing left is an error.
//   4. _PyOS_ascii_strtod: [+-] then either digits [. [digits]] | . digits, optionally followed by
//      [eE] [+-] digits, correctly rounded to double (round-half-even; overflow gives +-inf and
//      underflow +-0.0, no error); or, case-insensitively, "inf", "infinity" or "nan". The whole
//      remaining text must be consumed. Hex floats are not accepted.
// Which code points are Nd comes from the ICU linked here (its Unicode version may differ from
// the Python's; only digits new in one of them would be treated differently).
#pragma once
#include "no_postgres.hpp"

#include <optional>
#include <string>
#include <string_view>

namespace popularity::core {

// Parses with a reusable buffer: after warm-up, parsing allocates nothing.
class PythonFloatParser {
  public:
    // The double Python's float(s) returns for the str s encoded as `utf8`, or nullopt where
    // float(s) raises ValueError (and for ill-formed UTF-8).
    std::optional<double> parse(std::string_view utf8);

  private:
    std::string ascii_; // the text after steps 1 and 2
};

// A one-off parse (allocates).
std::optional<double> python_float(std::string_view utf8);

} // namespace popularity::core
