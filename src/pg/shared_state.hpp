// Shared memory of the extension (needs shared_preload_libraries = 'popularity'): the slots of the
// refresh schedulers. (Cached configuration needs none: see config_cache.hpp.)
#pragma once

#include "pg_includes.hpp"

#include <cstdint>

namespace popularity::pg {

// Installs the shared-memory hooks; called from _PG_init while preloading.
void install_shared_state_hooks();

// True when the library was preloaded and the shared state exists.
bool shared_state_available();

// Raises 55000 with a hint when the library was not preloaded.
void require_shared_state(const char *feature);

// Refresh schedulers: at most one per database, found through a slot in shared memory.
// Claims the slot of `database` for the calling process; false if another scheduler holds it.
bool claim_scheduler_slot(Oid database);
// Releases the calling process's slot (also done automatically when it exits).
void release_scheduler_slot();
// Wakes the scheduler of `database`, or starts one when none runs. Never raises.
void wake_or_start_scheduler(Oid database);
// wake_or_start_scheduler(MyDatabaseId) when the current top-level transaction commits.
void wake_scheduler_at_commit();

} // namespace popularity::pg
