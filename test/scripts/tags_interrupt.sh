#!/usr/bin/env bash
# Interruption test of CALL filter_tags: cancel a run in the middle, run it again, and check that it
# resumed where the last committed batch left off and reached the same final state (tags and counts)
# as an uninterrupted run over an identical copy of the table.
# Needs PGHOST/PGPORT/PGUSER of a running server with the extension installed (test/run-all).
set -euo pipefail

DB=popularity_tags_interrupt
psql_db() { psql -X -v ON_ERROR_STOP=1 -qAt -d "$DB" "$@"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
trap 'psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true' EXIT

psql_db <<'SQL'
CREATE EXTENSION popularity;
CREATE TABLE image (identifier uuid PRIMARY KEY, provider varchar(80), tags jsonb,
                    updated_on timestamptz NOT NULL DEFAULT now());
SELECT setseed(0.5);
INSERT INTO image (identifier, provider, tags)
SELECT md5(i::text)::uuid, (ARRAY['flickr', 'wikimedia'])[1 + i % 2],
       jsonb_build_array(jsonb_build_object('name', 'tag ' || i),
                         CASE WHEN i % 3 = 0 THEN jsonb_build_object('name', 'CC0')
                              ELSE jsonb_build_object('name', 'kept ' || i) END,
                         jsonb_build_object('name', 'machine ' || i, 'provider', 'clarifai',
                                            'accuracy', round(random()::numeric, 2)),
                         CASE WHEN i % 7 = 0 THEN '"malformed"'::jsonb
                              ELSE jsonb_build_object('name', 'Uploaded:By=Instagram') END)
FROM generate_series(1, 6000) AS i;
CREATE TABLE image_copy (LIKE image INCLUDING ALL);
INSERT INTO image_copy SELECT * FROM image;
INSERT INTO popularity.media_types (media_type, media_table)
VALUES ('image', 'image'), ('image_copy', 'image_copy');
-- Slow every rewrite down a little, so that the run is long enough to be cancelled mid-way.
CREATE FUNCTION slow_down() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN PERFORM pg_sleep(0.001); RETURN NEW; END $$;
CREATE TRIGGER slow_down BEFORE UPDATE ON image FOR EACH ROW EXECUTE FUNCTION slow_down();
CREATE TABLE expected AS
SELECT identifier, popularity.filtered_tags(tags, provider, 'image') AS tags FROM image;
SQL

blocks=$(psql_db -c "SELECT pg_relation_size('image') / current_setting('block_size')::int")
echo "image: 6000 rows in $blocks blocks"

# The uninterrupted reference run, on the copy.
psql_db -c "SET client_min_messages = warning" -c "CALL filter_tags('image_copy', batch_blocks => 2)"

# The run to interrupt: in the background, cancelled once a few batches have committed.
psql -X -q -d "$DB" -c "SET application_name = 'tags_interrupt'" \
    -c "CALL filter_tags('image', batch_blocks => 2)" >/tmp/tags_interrupt.$$.log 2>&1 &
bg=$!
for _ in $(seq 1 600); do
    batches=$(psql_db -c "SELECT coalesce(max(batches), 0) FROM popularity.tag_filter_runs
                          WHERE media_type = 'image' AND NOT dry_run")
    [ "$batches" -ge 5 ] && break
    sleep 0.05
done
cancelled=$(psql_db -c "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity
                        WHERE application_name = 'tags_interrupt' AND datname = current_database()")
wait "$bg" && fail "the run was not interrupted (it finished before the cancel)"
cat /tmp/tags_interrupt.$$.log
rm -f /tmp/tags_interrupt.$$.log
[ "$cancelled" -eq 1 ] || fail "no backend cancelled"

state=$(psql_db -c "SELECT state || ' ' || (next_block > 0) || ' ' || (next_block < total_blocks)
                    FROM popularity.tag_filter_runs WHERE media_type = 'image' AND NOT dry_run")
echo "after cancel: $state"
[ "$state" = "running true true" ] || fail "expected an unfinished run part-way, got: $state"
# What the committed batches did is exactly what their progress says: rows in finished blocks are
# clean, rows in later blocks untouched.
bad=$(psql_db -c "SELECT count(*) FROM image i JOIN expected e USING (identifier),
                         popularity.tag_filter_runs r
                  WHERE r.media_type = 'image' AND NOT r.dry_run
                    AND (i.ctid::text::point)[0] < r.next_block AND i.tags IS DISTINCT FROM e.tags")
[ "$bad" -eq 0 ] || fail "$bad rows in finished blocks are not filtered"

# Run again: it resumes and finishes.
out=$(psql -X -q -d "$DB" -c "CALL filter_tags('image', batch_blocks => 2)" 2>&1)
echo "$out"
grep -q 'resuming tag filter run' <<<"$out" || fail "the second call did not resume the run"

differing=$(psql_db -c "SELECT count(*) FROM image i JOIN expected e USING (identifier)
                        WHERE i.tags IS DISTINCT FROM e.tags")
[ "$differing" -eq 0 ] || fail "$differing rows differ from the expected filtered tags"
differing=$(psql_db -c "SELECT count(*) FROM image i JOIN image_copy c USING (identifier)
                        WHERE i.tags IS DISTINCT FROM c.tags")
[ "$differing" -eq 0 ] || fail "$differing rows differ from the uninterrupted run"
counts="SELECT state, rows_changed, rows_malformed, dropped_malformed, dropped_low_accuracy,
               dropped_filtered_provider, dropped_exact_denylist, dropped_substring_denylist,
               dropped_machine_label FROM popularity.tag_filter_runs WHERE NOT dry_run AND media_type ="
interrupted=$(psql_db -c "$counts 'image'")
reference=$(psql_db -c "$counts 'image_copy'")
echo "interrupted+resumed: $interrupted"
echo "uninterrupted:       $reference"
[ "$interrupted" = "$reference" ] || fail "counts differ"
changed=$(psql_db -c "SELECT rows_changed FROM popularity.tag_filter_runs WHERE media_type = 'image'")
[ "$changed" -eq 6000 ] || fail "expected 6000 rows changed, got $changed"
echo "ok"
