// The SQL a worker runs, prepared once per worker (engine.hpp, prepare_statements). Workers pin
// search_path to pg_catalog, pg_temp before any statement (refresh.hpp), so unqualified functions,
// operators and types here are pg_catalog's; the extension's objects are named with its schema.
#include "engine.hpp"

extern "C" {
#include "catalog/pg_type.h"
}

namespace popularity::worker {
namespace {

// The run's state, the current constants of its providers (a refresh; a filter run has none) and
// whether the run's writers have ended.
constexpr const char *kContextSql = "SELECT r.state = 'running',"
                                    "       coalesce(array_agg(m.provider ORDER BY m.provider) "
                                    "FILTER (WHERE m.constant IS NOT NULL), '{}'),"
                                    "       coalesce(array_agg(m.metric ORDER BY m.provider) "
                                    "FILTER (WHERE m.constant IS NOT NULL), '{}'),"
                                    "       coalesce(array_agg(m.constant ORDER BY m.provider) "
                                    "FILTER (WHERE m.constant IS NOT NULL), '{}'),"
                                    "       popularity._writers_ended(r.writers),"
                                    // Whether the other job runs on the same media type
                                    // (a filter run: not a dry run, which writes nothing).
                                    "       EXISTS (SELECT FROM popularity.refresh_runs AS o"
                                    "               WHERE o.media_type = r.media_type"
                                    "                 AND o.run_id <> r.run_id"
                                    "                 AND o.state IN ('queued', 'running')"
                                    "                 AND coalesce(to_jsonb(o) ->> 'job', 'refresh')"
                                    "                     <> coalesce(to_jsonb(r) ->> 'job', 'refresh')"
                                    "                 AND NOT coalesce((to_jsonb(o) ->> 'dry_run')::boolean,"
                                    " false))"
                                    " FROM popularity.refresh_runs AS r"
                                    " LEFT JOIN popularity.metrics AS m ON m.media_type = "
                                    "r.media_type AND m.provider = ANY (r.providers)"
                                    " WHERE r.run_id = $1 GROUP BY r.run_id";

// The progress marker of a main-pass batch: $2 the next block, $3 batches, $4 a writer of the run
// was still in progress (rewalk), $5 the batch's duration when it wrote rows.
constexpr const char *kProgressSql =
    "UPDATE popularity.refresh_tasks SET next_block = $2, batches = batches + $3, attempts = 0,"
    " rewalk = rewalk OR $4, longest_batch_ms = greatest(longest_batch_ms, $5),"
    " state = CASE WHEN $2 >= end_block THEN 'revisiting' ELSE 'running' END"
    " WHERE task_id = $1";

// A batch's counters per group (provider).
constexpr const char *kCountsSql =
    "INSERT INTO popularity.refresh_progress AS g (task_id, provider, rows_scanned, rows_updated,"
    " rows_skipped_locked)"
    " SELECT $1, u.provider, u.scanned, u.updated, u.skipped"
    " FROM unnest($2::text[], $3::int8[], $4::int8[], $5::int8[])"
    "   AS u(provider, scanned, updated, skipped)"
    " ON CONFLICT (task_id, provider) DO UPDATE SET"
    " rows_scanned = g.rows_scanned + excluded.rows_scanned,"
    " rows_updated = g.rows_updated + excluded.rows_updated,"
    " rows_skipped_locked = g.rows_skipped_locked + excluded.rows_skipped_locked";

// A batch's job counters, by name.
constexpr const char *kCountersSql =
    "INSERT INTO popularity.refresh_counters AS g (task_id, counter, value)"
    " SELECT $1, u.counter, u.value FROM unnest($2::text[], $3::int8[]) AS u(counter, value)"
    " ON CONFLICT (task_id, counter) DO UPDATE SET value = g.value + excluded.value";

// Rows a batch could not lock.
constexpr const char *kSkipSql = "INSERT INTO popularity.refresh_skipped (task_id, row_key)"
                                 " SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING";

} // namespace

void prepare_statements(Task &task) {
    // Each plan once: a start-up that failed part-way and is retried prepares only the rest.
    if (task.update_plan == nullptr) {
        Oid update_types[4];
        int update_nargs = 0;
        const char *update = task.job->update_sql(task, update_types, &update_nargs);
        task.update_plan = prepare_kept(update, update_nargs, update_types);
    }
    if (task.counts_plan == nullptr) {
        Oid counts_types[5] = {INT8OID, TEXTARRAYOID, INT8ARRAYOID, INT8ARRAYOID, INT8ARRAYOID};
        task.counts_plan = prepare_kept(kCountsSql, 5, counts_types);
    }
    // Only a filter run has counters of its own (and a 0.1.0 schema, which can only have refresh
    // runs, has no refresh_counters table).
    if (task.kind == JobKind::filter_tags && task.counters_plan == nullptr) {
        Oid counters_types[3] = {INT8OID, TEXTARRAYOID, INT8ARRAYOID};
        task.counters_plan = prepare_kept(kCountersSql, 3, counters_types);
    }
    if (task.skip_plan == nullptr) {
        Oid skip_types[2] = {INT8OID, TEXTARRAYOID};
        task.skip_plan = prepare_kept(kSkipSql, 2, skip_types);
    }
    if (task.keys_plan == nullptr) {
        // The current versions of skipped rows, by key (their text form, as recorded: key.cpp),
        // each key column compared with its type's own equality operator.
        Oid keys_types[1] = {TEXTARRAYOID};
        task.keys_plan = prepare_kept(
            psprintf("SELECT t.ctid FROM %s AS t, unnest($1::text[]) AS k(key) WHERE %s",
                     task.leaf_table, task.key_match_sql),
            1, keys_types);
    }
    if (task.context_plan == nullptr) {
        Oid context_types[1] = {INT8OID};
        task.context_plan = prepare_kept(kContextSql, 1, context_types);
    }
    if (task.progress_plan == nullptr) {
        Oid progress_types[5] = {INT8OID, INT8OID, INT4OID, BOOLOID, FLOAT8OID};
        task.progress_plan = prepare_kept(kProgressSql, 5, progress_types);
    }
}

} // namespace popularity::worker
