// The ingestion trigger's process-wide switch.
#pragma once

#include "../core/constants_table.hpp"

#include <string_view>

namespace popularity::pg {

// Set by refresh workers, which write the correct score themselves: the trigger then leaves
// the rows they update alone instead of computing the same score a second time.
extern bool scoring_trigger_bypassed;

// Reloads this backend's cache of popularity.metrics when the configuration changed since it was
// loaded (one atomic read otherwise). Call it once per statement before configured_metric().
void refresh_scoring_cache();

// The metric configured for (media type, provider) in the cache: nullptr when there is none. The
// pointer stays valid until the next refresh_scoring_cache().
const core::ProviderMetric *configured_metric(std::string_view media_type,
                                              std::string_view provider);

} // namespace popularity::pg
