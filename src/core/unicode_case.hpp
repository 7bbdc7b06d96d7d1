// Full Unicode lower-casing of UTF-8 text, independent of any database locale or collation: ICU's
// root locale (the same mapping as PostgreSQL's lower() under the "und-x-icu" collation), with a
// table-driven fast path for pure-ASCII text that never calls ICU.
#pragma once
#include "no_postgres.hpp"

#include <string>
#include <string_view>
#include <vector>

namespace popularity::core {

// Lower-cases with reusable buffers: after warm-up, lowering allocates nothing. Not thread-safe;
// one instance per user.
class Lowercaser {
  public:
    // The full lower-case form of `utf8` (e.g. "İ" -> "i̇", "ΣΑΣ" -> "σας"; "ß" stays "ß"). Pure
    // ASCII text that is already lower case is returned as is (a view of the input); otherwise the
    // view points into this object and stays valid until the next call. Ill-formed UTF-8 sequences
    // are replaced by U+FFFD. Throws std::bad_alloc when out of memory.
    std::string_view lower(std::string_view utf8);

  private:
    std::string_view lower_unicode(std::string_view utf8);

    std::string out_;
    std::u16string utf16_;
    std::u16string lowered_;
};

// Convenience: the lower-case form as a new string.
std::string to_lower(std::string_view utf8);

} // namespace popularity::core
