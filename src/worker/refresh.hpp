// Background workers of the popularity refresh:
//  * the launcher: one per server, started at server start, connected to no database; it starts a
//    scheduler for each database named in popularity.database, so that runs a crash or restart
//    interrupted are resumed, and checks again every minute;
//  * schedulers: at most one per database, started on demand (when a run is queued) or by the
//    launcher; they start refresh workers, finish runs, and exit when no run is active;
//  * refresh workers: one per task (a block range of a media table).
#pragma once

#include "../pg/pg_includes.hpp"

namespace popularity::worker {

// Advisory-lock key space of refresh tasks: a worker holds (kTaskLockSpace, task_id) while it
// runs a task, so a task is never run twice and the launcher can see which tasks have a worker.
constexpr int32 kTaskLockSpace = 0x706f7075; // "popu"

// What the launcher hands a refresh worker (BackgroundWorker.bgw_extra).
struct WorkerArgs {
    Oid database;
    Oid role;
    int64 task_id;
};

// What a scheduler is given: its database, by OID or (from the launcher) by name.
struct SchedulerArgs {
    Oid database;
    char database_name[NAMEDATALEN];
};

// Registers the launcher; called from _PG_init while preloading.
void register_launcher();

// search_path: schedulers and refresh workers run every SQL statement (SPI) with this search_path,
// set once right after they connect and before any statement. The role's or database's default
// path could otherwise resolve an unqualified function, operator, type or catalog name to an object
// an untrusted role created (the scheduler connects as a superuser). Rows the refresh rewrites fire
// the media table's own triggers under it too.
constexpr const char *kPinnedSearchPath = "pg_catalog, pg_temp";
inline void pin_search_path() {
    SetConfigOption("search_path", kPinnedSearchPath, PGC_SUSET, PGC_S_OVERRIDE);
    // Keys are written as text by one session and read by others (undo_filter_tags): whatever the
    // role's or database's settings, dates, intervals and floats are written in formats every
    // session reads back exactly.
    SetConfigOption("datestyle", "ISO, MDY", PGC_SUSET, PGC_S_OVERRIDE);
    SetConfigOption("intervalstyle", "postgres", PGC_SUSET, PGC_S_OVERRIDE);
    SetConfigOption("extra_float_digits", "1", PGC_SUSET, PGC_S_OVERRIDE);
}

// Starts a scheduler for a database (by OID, or by name when database_name is given). Never
// raises: false when no background worker slot is free.
bool start_scheduler(Oid database, const char *database_name);

} // namespace popularity::worker

extern "C" {
PGDLLEXPORT void popularity_launcher_main(Datum);
PGDLLEXPORT void popularity_scheduler_main(Datum);
PGDLLEXPORT void popularity_refresh_worker_main(Datum);
}
