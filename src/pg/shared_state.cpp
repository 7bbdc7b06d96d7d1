#include "shared_state.hpp"

#include "guard.hpp"

extern "C" {
#include "access/xact.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
}

namespace popularity::pg {

namespace {

struct SharedState {
    pg_atomic_uint64 config_versions[static_cast<int>(ConfigKind::count)];
};

SharedState *shared_state = nullptr;
shmem_request_hook_type previous_shmem_request_hook = nullptr;
shmem_startup_hook_type previous_shmem_startup_hook = nullptr;

bool pending_bumps[static_cast<int>(ConfigKind::count)] = {};
bool xact_callback_registered = false;

void request_shared_memory() {
    if (previous_shmem_request_hook != nullptr) {
        previous_shmem_request_hook();
    }
    RequestAddinShmemSpace(MAXALIGN(sizeof(SharedState)));
}

void startup_shared_memory() {
    if (previous_shmem_startup_hook != nullptr) {
        previous_shmem_startup_hook();
    }
    LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
    bool found = false;
    shared_state = static_cast<SharedState *>(
        ShmemInitStruct("popularity shared state", sizeof(SharedState), &found));
    if (!found) {
        for (auto &version : shared_state->config_versions) {
            pg_atomic_init_u64(&version, 1);
        }
    }
    LWLockRelease(AddinShmemInitLock);
}

// Runs at the end of every top-level transaction of a backend that changed configuration.
void on_transaction_end(XactEvent event, void *) {
    if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT) {
        for (int i = 0; i < static_cast<int>(ConfigKind::count); ++i) {
            if (pending_bumps[i] && shared_state != nullptr) {
                pg_atomic_fetch_add_u64(&shared_state->config_versions[i], 1);
            }
            pending_bumps[i] = false;
        }
    } else if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT) {
        for (bool &pending : pending_bumps) {
            pending = false;
        }
    }
}

} // namespace

void install_shared_state_hooks() {
    previous_shmem_request_hook = shmem_request_hook;
    shmem_request_hook = request_shared_memory;
    previous_shmem_startup_hook = shmem_startup_hook;
    shmem_startup_hook = startup_shared_memory;
}

bool shared_state_available() {
    return shared_state != nullptr;
}

void require_shared_state(const char *feature) {
    if (shared_state == nullptr) {
        throw SqlError(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            strprintf("%s needs the popularity library in shared_preload_libraries", feature), {},
            "Add 'popularity' to shared_preload_libraries in postgresql.conf and "
            "restart the server.");
    }
}

std::uint64_t config_version(ConfigKind kind) {
    if (shared_state == nullptr) {
        return 0;
    }
    return pg_atomic_read_u64(&shared_state->config_versions[static_cast<int>(kind)]);
}

void bump_config_version_at_commit(ConfigKind kind) {
    if (!xact_callback_registered) {
        RegisterXactCallback(on_transaction_end, nullptr);
        xact_callback_registered = true;
    }
    pending_bumps[static_cast<int>(kind)] = true;
}

} // namespace popularity::pg
