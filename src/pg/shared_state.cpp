#include "shared_state.hpp"

#include "guard.hpp"
#include "../worker/refresh.hpp"

extern "C" {
#include "access/xact.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
}

namespace popularity::pg {

namespace {

constexpr int kSchedulerSlots = 64;

struct SchedulerSlot {
    Oid database; // InvalidOid when free
    int procno;   // PGPROC number of the scheduler
};

struct SharedState {
    LWLock *lock; // protects scheduler_slots
    SchedulerSlot scheduler_slots[kSchedulerSlots];
};

int my_slot = -1; // the slot this process holds, if it is a scheduler

SharedState *shared_state = nullptr;
shmem_request_hook_type previous_shmem_request_hook = nullptr;
shmem_startup_hook_type previous_shmem_startup_hook = nullptr;

bool pending_wake = false;
bool xact_callback_registered = false;

void request_shared_memory() {
    if (previous_shmem_request_hook != nullptr) {
        previous_shmem_request_hook();
    }
    RequestAddinShmemSpace(MAXALIGN(sizeof(SharedState)));
    RequestNamedLWLockTranche("popularity", 1);
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
        shared_state->lock = &(GetNamedLWLockTranche("popularity"))->lock;
        for (auto &slot : shared_state->scheduler_slots) {
            slot = SchedulerSlot{InvalidOid, -1};
        }
    }
    LWLockRelease(AddinShmemInitLock);
}

// Runs at the end of every top-level transaction of a backend that asked to wake its scheduler.
void on_transaction_end(XactEvent event, void *) {
    if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT) {
        if (pending_wake) {
            pending_wake = false;
            wake_or_start_scheduler(MyDatabaseId);
        }
    } else if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT) {
        pending_wake = false;
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
        throw SqlError(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                       "popularity is not in shared_preload_libraries",
                       strprintf("%s needs the background workers and shared memory that only "
                                 "a preloaded library has.",
                                 feature),
                       "Add 'popularity' to shared_preload_libraries in postgresql.conf and "
                       "restart the server.");
    }
}

namespace {
void register_callback_once() {
    if (!xact_callback_registered) {
        RegisterXactCallback(on_transaction_end, nullptr);
        xact_callback_registered = true;
    }
}
} // namespace

namespace {
void release_slot_at_exit(int, Datum) {
    release_scheduler_slot();
}
} // namespace

bool claim_scheduler_slot(Oid database) {
    if (shared_state == nullptr) {
        return false;
    }
    bool claimed = false;
    LWLockAcquire(shared_state->lock, LW_EXCLUSIVE);
    int free_slot = -1;
    bool taken = false;
    for (int i = 0; i < kSchedulerSlots; ++i) {
        const SchedulerSlot &slot = shared_state->scheduler_slots[i];
        if (slot.database == database && slot.procno != MyProc->pgprocno) {
            taken = true;
        } else if (slot.database == database || (slot.database == InvalidOid && free_slot < 0)) {
            free_slot = i;
        }
    }
    if (!taken && free_slot >= 0) {
        shared_state->scheduler_slots[free_slot] = SchedulerSlot{database, MyProc->pgprocno};
        if (my_slot < 0) {
            before_shmem_exit(release_slot_at_exit, 0);
        }
        my_slot = free_slot;
        claimed = true;
    }
    LWLockRelease(shared_state->lock);
    return claimed;
}

void release_scheduler_slot() {
    if (shared_state == nullptr || my_slot < 0) {
        return;
    }
    LWLockAcquire(shared_state->lock, LW_EXCLUSIVE);
    SchedulerSlot &slot = shared_state->scheduler_slots[my_slot];
    if (slot.procno == MyProc->pgprocno) {
        slot = SchedulerSlot{InvalidOid, -1};
    }
    LWLockRelease(shared_state->lock);
}

void wake_or_start_scheduler(Oid database) {
    if (shared_state == nullptr) {
        return;
    }
    int procno = -1;
    LWLockAcquire(shared_state->lock, LW_SHARED);
    for (const SchedulerSlot &slot : shared_state->scheduler_slots) {
        if (slot.database == database) {
            procno = slot.procno;
        }
    }
    LWLockRelease(shared_state->lock);
    if (procno >= 0 && static_cast<uint32>(procno) < ProcGlobal->allProcCount) {
        SetLatch(&ProcGlobal->allProcs[procno].procLatch);
    } else {
        worker::start_scheduler(database, nullptr);
    }
}

void wake_scheduler_at_commit() {
    register_callback_once();
    pending_wake = true;
}

} // namespace popularity::pg
