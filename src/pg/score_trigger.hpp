// The ingestion trigger's process-wide switch.
#pragma once

namespace popularity::pg {

// What the ingestion trigger skips for the rows this process writes: set by the batch engine's
// workers, whose UPDATE already holds what the trigger would compute.
enum class TriggerBypass {
    none,  // ingestion, and a filter worker while a refresh of its media type is active
    score, // a refresh worker: it writes the score itself (tags are still filtered while a tag
           // filter run is active)
    all,   // a filter worker while no refresh of its media type is active: its rows' tags are
           // filtered already, and their scores are unchanged and not being refreshed
};
extern TriggerBypass trigger_bypass;

} // namespace popularity::pg
