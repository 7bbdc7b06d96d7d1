// Shared memory of the extension (needs shared_preload_libraries = 'popularity').
//
// Configuration versions: each per-backend cache (scoring constants, tag rules) remembers the
// version it was loaded at. A statement trigger on a configuration table asks for the version to be
// bumped when its transaction commits; the bump happens in the commit callback, after the commit is
// visible to new snapshots, so a backend that sees the new version and reloads with a fresh
// snapshot sees the change. Checking costs one atomic read.
#pragma once

#include "pg_includes.hpp"

#include <cstdint>

namespace popularity::pg {

enum class ConfigKind : int { constants = 0, tag_rules = 1, count = 2 };

// Installs the shared-memory hooks; called from _PG_init while preloading.
void install_shared_state_hooks();

// True when the library was preloaded and the shared state exists.
bool shared_state_available();

// Raises 55000 with a hint when the library was not preloaded.
void require_shared_state(const char *feature);

// The current version of a configuration kind (0 without shared state).
std::uint64_t config_version(ConfigKind kind);

// Bumps the version of `kind` when the current top-level transaction commits.
void bump_config_version_at_commit(ConfigKind kind);

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
