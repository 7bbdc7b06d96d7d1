// The ingestion trigger's process-wide switch.
#pragma once

namespace popularity::pg {

// Set by refresh workers, which write the correct score themselves: the trigger then leaves
// the rows they update alone instead of computing the same score a second time.
extern bool scoring_trigger_bypassed;

} // namespace popularity::pg
