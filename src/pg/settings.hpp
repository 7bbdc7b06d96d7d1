// The extension's GUCs (all prefixed "popularity.").
#pragma once

namespace popularity::pg {

// popularity.strict_metrics: an unusable metric value raises 22P02 instead of scoring NULL.
extern bool strict_metrics;
// popularity.database: databases whose interrupted refresh runs are resumed at server start.
extern char *refresh_database;
// popularity.max_workers: refresh workers running at once, over all runs.
extern int max_workers;
// popularity.batch_blocks: heap blocks per refresh batch (one committed transaction each).
extern int batch_blocks;
// popularity.batch_statement_timeout / batch_lock_timeout (ms, 0 = none) for each batch.
extern int batch_statement_timeout;
extern int batch_lock_timeout;
// popularity.batch_retries: retries of a batch after a transient error before its task fails.
extern int batch_retries;
// popularity.score_tolerance: relative difference below which a stored score is left alone (by
// the refresh and the ingestion trigger alike: core::score_differs).
extern double score_tolerance;
// popularity.refresh_touch_updated_on: a rescored row also gets updated_on = now().
extern bool refresh_touch_updated_on;
// popularity.refresh_reclaim_space: refresh workers prune the ranges they rewrote (two batches
// later) and record the space in the free space map.
extern bool refresh_reclaim_space;
// popularity.naptime: the launcher's poll interval (ms); it is also woken when work is queued.
extern int launcher_naptime;
extern int progress_interval;

// popularity.percentile_compact_threshold (developer option): partial states of
// popularity_percentile with more values than this travel between parallel workers as sorted
// (value, count) runs instead of raw values.
extern int percentile_compact_threshold;

// popularity.constants_single_pass_rows: refresh_constants reads the table once for all
// providers up to this many rows (estimated), and once per provider above it.
extern double constants_single_pass_rows;

// popularity.tag_filter_undo: CALL filter_tags records what it removes (read by the procedure).
extern bool tag_filter_undo;
// popularity.tag_filter_undo_retention (minutes): how long popularity.purge_filter_undo() keeps
// the records of a finished run.
extern int tag_filter_undo_retention;

void define_settings();

} // namespace popularity::pg
