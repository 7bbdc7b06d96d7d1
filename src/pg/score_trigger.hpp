// The ingestion trigger's process-wide switch.
#pragma once

#include "pg_includes.hpp"

namespace popularity::pg {

// What the ingestion trigger skips for the rows this process writes: set by the batch engine's
// workers, whose UPDATE already holds what the trigger would compute.
enum class TriggerBypass {
    none,  // ingestion, and a filter worker while a refresh of its media type is active
    score, // a refresh worker: it writes the score itself (tags are still filtered while a tag
           // filter run is active)
    all,   // a worker of one job while no run of the other job is active on its media type
};
extern TriggerBypass trigger_bypass;
// The media table trigger_bypass applies to (the worker's own table): rows the worker's UPDATE
// makes other triggers write to other tables are never bypassed.
extern Oid trigger_bypass_relid;

} // namespace popularity::pg
