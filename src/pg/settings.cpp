#include "settings.hpp"

#include "pg_includes.hpp"

namespace popularity::pg {

bool strict_metrics = false;
char *refresh_database = nullptr;
int max_workers = 2;
int batch_blocks = 64;
int batch_statement_timeout = 300000;
int batch_lock_timeout = 5000;
int batch_retries = 10;
double score_tolerance = 0.0;
bool refresh_touch_updated_on = true;
bool refresh_reclaim_space = true;
int launcher_naptime = 1000;
int progress_interval = 5000;
int percentile_compact_threshold = 16 * 1024 * 1024;
double constants_single_pass_rows = 50e6;
bool tag_filter_undo = true;
int tag_filter_undo_retention = 30 * 24 * 60;

void define_settings() {
    DefineCustomBoolVariable(
        "popularity.strict_metrics",
        "Raise an error for metric values that cannot be scored instead of scoring NULL.",
        "Negative, NaN, infinite and non-numeric metric values give a NULL score by default, so "
        "bad data never aborts an ingestion batch. When on, such a value raises SQLSTATE 22P02 "
        "naming the row's provider and metric.",
        &strict_metrics, false, PGC_USERSET, 0, nullptr, nullptr, nullptr);
    // PostgreSQL allows a PGC_POSTMASTER variable only while preloading (defining one later is
    // FATAL). Loaded on demand (CREATE EXTENSION, a trigger) there is no launcher to read it, so it
    // is defined at a level that may be defined then; a value left in postgresql.conf is kept.
    // Reloadable (SIGHUP): the launcher reads it again on every reload and every minute, so a
    // database added to the list has its interrupted runs resumed without a restart.
    DefineCustomStringVariable("popularity.database",
                               "Databases (comma-separated) whose interrupted refresh runs are "
                               "resumed at server start and on every reload.",
                               "A refresh runs in the database it was requested in; this list "
                               "only tells the launcher where to look after a crash or restart.",
                               &refresh_database, "postgres", PGC_SIGHUP, 0, nullptr, nullptr,
                               nullptr);
    DefineCustomIntVariable("popularity.max_workers",
                            "Refresh workers that may run at the same time (over all runs).",
                            "Each uses a max_worker_processes slot.", &max_workers, 2, 1, 64,
                            PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
    DefineCustomIntVariable("popularity.batch_blocks",
                            "Heap blocks a refresh batch covers; each batch is one transaction.",
                            "Row locks of a batch are held until it commits: smaller batches "
                            "keep ingestion waits short.",
                            &batch_blocks, 64, 1, 1 << 20, PGC_SIGHUP, 0, nullptr, nullptr,
                            nullptr);
    DefineCustomIntVariable("popularity.batch_statement_timeout",
                            "statement_timeout of each refresh batch (0 = none).", nullptr,
                            &batch_statement_timeout, 300000, 0, INT_MAX, PGC_SIGHUP, GUC_UNIT_MS,
                            nullptr, nullptr, nullptr);
    DefineCustomIntVariable("popularity.batch_lock_timeout",
                            "lock_timeout of each refresh batch (0 = none); rows held by other "
                            "transactions are skipped and revisited, never waited for.",
                            nullptr, &batch_lock_timeout, 5000, 0, INT_MAX, PGC_SIGHUP, GUC_UNIT_MS,
                            nullptr, nullptr, nullptr);
    DefineCustomIntVariable(
        "popularity.batch_retries",
        "How many times a refresh worker retries a batch that failed with a lock or statement "
        "timeout, a serialization failure or a deadlock before its task fails.",
        "The worker waits before each retry, twice as long each time (0.1 s, 0.2 s, ... up to "
        "30 s); a batch that commits resets the count. Other errors fail the task at once.",
        &batch_retries, 10, 0, 1000, PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
    DefineCustomRealVariable("popularity.score_tolerance",
                             "Relative difference below which the refresh and the ingestion "
                             "trigger leave a stored score unchanged (0 = only an equal score).",
                             "Search ranking keeps about 9 significant bits of the score, so "
                             "differences below 0.002 cannot change it.",
                             &score_tolerance, 0.0, 0.0, 1.0, PGC_SIGHUP, 0, nullptr, nullptr,
                             nullptr);
    DefineCustomBoolVariable(
        "popularity.refresh_reclaim_space",
        "Refresh workers prune the pages they rewrote and record their free space, so that new "
        "row versions reuse it instead of extending the table.",
        nullptr, &refresh_reclaim_space, true, PGC_SIGHUP, 0, nullptr, nullptr, nullptr);
    DefineCustomBoolVariable("popularity.refresh_touch_updated_on",
                             "Set updated_on = now() on the rows a refresh rescores.", nullptr,
                             &refresh_touch_updated_on, true, PGC_SIGHUP, 0, nullptr, nullptr,
                             nullptr);
    DefineCustomIntVariable(
        "popularity.percentile_compact_threshold",
        "Partial states of popularity_percentile above this many values are sent between "
        "parallel workers as sorted (value, count) runs.",
        "A serialized state cannot exceed 1 GB; counts with many ties compact to a small "
        "fraction. For testing the compact form with small inputs.",
        &percentile_compact_threshold, 16 * 1024 * 1024, 0, INT_MAX, PGC_USERSET,
        GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE, nullptr, nullptr, nullptr);
    DefineCustomRealVariable(
        "popularity.constants_single_pass_rows",
        "refresh_constants reads the table once for all providers up to this many rows.",
        "In one pass every provider's values are held in memory at once (8 bytes a value); above "
        "this estimated row count it reads the table once per provider instead.",
        &constants_single_pass_rows, 50e6, 0, 1e15, PGC_USERSET, 0, nullptr, nullptr, nullptr);
    DefineCustomIntVariable("popularity.progress_interval",
                            "How often a CALL that waits for a refresh reports its progress.",
                            "A NOTICE with the share of blocks done, rows per second and the "
                            "estimated time left (0 = never; client_min_messages hides them too).",
                            &progress_interval, 5000, 0, 3600000, PGC_USERSET, GUC_UNIT_MS, nullptr,
                            nullptr, nullptr);
    DefineCustomBoolVariable(
        "popularity.tag_filter_undo",
        "CALL filter_tags records what it removes from each row, so that "
        "popularity.undo_filter_tags can put it back.",
        "Off: a run writes only the media rows (faster, and nothing to store), and cannot be "
        "undone. Read when a run starts or resumes.",
        &tag_filter_undo, true, PGC_USERSET, 0, nullptr, nullptr, nullptr);
    DefineCustomIntVariable(
        "popularity.tag_filter_undo_retention",
        "How long the records of a tag filter run are kept (from the end of the run).",
        "popularity.purge_filter_undo() deletes older records (CALL filter_tags calls it for its "
        "media type as it starts); a run whose record is gone cannot be undone.",
        &tag_filter_undo_retention, 30 * 24 * 60, 0, INT_MAX, PGC_USERSET, GUC_UNIT_MIN, nullptr,
        nullptr, nullptr);
    DefineCustomIntVariable("popularity.naptime",
                            "How often the refresh launcher looks for work it was not woken for.",
                            nullptr, &launcher_naptime, 1000, 10, 3600000, PGC_SIGHUP, GUC_UNIT_MS,
                            nullptr, nullptr, nullptr);
}

} // namespace popularity::pg
