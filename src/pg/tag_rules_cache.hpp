// The tag rules of each media type, loaded from popularity.effective_tag_rules and cached per
// backend with the rest of the configuration (config_cache.hpp: one cache, one invalidation).
#pragma once

#include "../core/tag_rules.hpp"

#include "pg_includes.hpp"

#include <optional>
#include <string_view>

namespace popularity::pg {

// The rules for a media type, or the global rules for nullopt. Throws SqlError (42704) for a media
// type that is not registered in popularity.media_types. The reference stays valid until the next
// call. (config::tag_rules.)
const core::TagRules &tag_rules_for(std::optional<std::string_view> media_type);

// Text in the database encoding, as UTF-8 (the core's encoding). A view of the input when the
// database is UTF-8 (or SQL_ASCII); otherwise a palloc'd conversion in the current memory context.
std::string_view server_text_as_utf8(const char *text, std::size_t length);

} // namespace popularity::pg
