#!/usr/bin/env bash
# Interrupted runs resume in a database added to popularity.database with a reload, no restart: on
# a server of its own whose list names only 'postgres', a run of database 'catalog' is interrupted by
# an immediate shutdown; after the restart it stays interrupted (nothing looks at 'catalog'); once
# ALTER SYSTEM adds 'catalog' and the configuration is reloaded, the launcher resumes it and it
# finishes with every row right.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=../lib/cluster.sh
source test/lib/cluster.sh

fail() { echo "FAILED: $*" >&2; exit 1; }
cluster_start "shared_preload_libraries = 'popularity'" "popularity.database = 'postgres'" "popularity.batch_blocks = 2"
trap cluster_destroy EXIT
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d catalog -c "$1"; }
wait_for() { # sql seconds
    for _ in $(seq 1 $(($2 * 10))); do
        [ "$(q "$1" 2>/dev/null || true)" = t ] && return 0
        sleep 0.1
    done
    return 1
}

psql -X -q -c "CREATE DATABASE catalog"
psql -X -q -v ON_ERROR_STOP=1 -d catalog >/dev/null <<'SQL'
CREATE EXTENSION popularity;
CREATE TABLE image (
    identifier uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider text NOT NULL, meta_data jsonb, updated_on timestamptz NOT NULL DEFAULT now());
INSERT INTO image (provider, meta_data)
SELECT 'flickr', jsonb_build_object('views', g % 7919, 'pad', repeat('x', 300)) FROM generate_series(1, 150000) AS g;
SELECT popularity.register_media_type('image', 'image', false);
SELECT popularity.set_metric('image', 'flickr', 'views', 0.85);
SQL
q "CALL refresh_popularity('image', wait => false)" 2>/dev/null
run=$(q "SELECT max(run_id) FROM popularity.refresh_runs")
wait_for "SELECT coalesce(sum(rows_updated), 0) > 0 FROM popularity.refresh_status WHERE run_id = $run" 60 ||
    fail "the run did not start"
cluster_stop immediate
cluster_restart_start
sleep 3
state=$(q "SELECT state FROM popularity.refresh_runs WHERE run_id = $run")
done_before=$(q "SELECT sum(next_block - first_block) FROM popularity.refresh_tasks WHERE run_id = $run")
sleep 2
[ "$state" = running ] && [ "$(q "SELECT sum(next_block - first_block) FROM popularity.refresh_tasks WHERE run_id = $run")" = "$done_before" ] ||
    fail "the run of a database not in popularity.database moved after the restart ($state)"
psql -X -q -c "ALTER SYSTEM SET popularity.database = 'postgres, catalog'" -c "SELECT pg_reload_conf()" >/dev/null
wait_for "SELECT state = 'succeeded' FROM popularity.refresh_runs WHERE run_id = $run" 120 ||
    fail "the run did not resume after the reload: $(q "SELECT state FROM popularity.refresh_runs WHERE run_id = $run")"
wrong=$(q "SELECT count(*) FROM image AS t JOIN popularity.metrics AS m ON m.media_type = 'image' AND m.provider = t.provider
           WHERE t.standardized_popularity IS DISTINCT FROM standardized_popularity(popularity_metric_value(t.meta_data, m.metric), m.constant)")
[ "$wrong" = 0 ] || fail "$wrong rows wrong after the resumed run"
echo "ok: run $run of database 'catalog' waited through a restart and resumed after popularity.database was reloaded"
