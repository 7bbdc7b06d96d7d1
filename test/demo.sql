-- The demo's SQL: a sample Openverse-like catalog, then the main jobs on it: constants, the
-- refresh in background workers, scoring at ingestion, and the tag filter.
\pset footer off
\set ON_ERROR_STOP on

\echo '### a sample catalog of' :rows 'images (test/bench/gen_catalog.sql: skewed counts, 7 providers, tags with denylisted names)'
\set tags dirty
\ir bench/gen_catalog.sql
\pset footer off
DROP TABLE metrics; -- the generator's own list for benchmarks; the extension keeps its own
SET client_min_messages = notice;
CREATE EXTENSION popularity;
SELECT provider, count(*) AS rows FROM image GROUP BY 1 ORDER BY 2 DESC;

\echo '### registering the table: adds the ingestion trigger and the Openverse default metrics'
SELECT popularity.register_media_type('image', 'image') \g /dev/null
\echo '(the table already had rows: its per-provider counts start with one reconciliation scan)'
CALL popularity.reconcile_stats('image') \g /dev/null
SELECT provider, metric, percentile FROM popularity.metrics WHERE media_type = 'image' ORDER BY provider;

\echo '### CALL refresh_popularity(''image''): exact constants, then background workers rescore in committed batches'
\timing on
CALL refresh_popularity('image');
\timing off
SELECT provider, metric, val AS percentile_value, constant FROM popularity.metrics
WHERE media_type = 'image' ORDER BY provider;
SELECT run_id, provider, state, blocks_done, blocks_total, rows_scanned, rows_updated, rows_skipped_locked,
       batches, rows_per_second
FROM popularity.refresh_status ORDER BY run_id, provider;

\echo '### a second refresh: no constant changed, so nothing is rewritten'
CALL refresh_popularity('image');

\echo '### ingestion scores rows as they are stored: one upsert batch of 20000 flickr rows, new and conflicting ones'
INSERT INTO image AS old (provider, foreign_identifier, url, meta_data, tags, updated_on)
SELECT 'flickr', 'demo-' || (g % 15000), 'https://example.org/demo/' || g,
       jsonb_build_object('views', floor(exp(random() * 12))::bigint), '[]', now()
FROM generate_series(1, 15000) AS g
ON CONFLICT DO NOTHING;
INSERT INTO image AS old (provider, foreign_identifier, url, meta_data, tags, updated_on)
SELECT 'flickr', 'demo-' || g, 'https://example.org/demo-b/' || g,
       jsonb_build_object('title', 'image ' || g), '[]', now()
FROM generate_series(5000, 24999) AS g
ON CONFLICT (provider, md5(foreign_identifier))
DO UPDATE SET meta_data = jsonb_strip_nulls(old.meta_data || excluded.meta_data), updated_on = now();
SELECT count(*) AS upserted, count(standardized_popularity) AS scored,
       count(*) FILTER (WHERE meta_data ? 'views' AND standardized_popularity IS NULL) AS with_views_unscored
FROM image WHERE foreign_identifier LIKE 'demo-%';
\echo '(rows merged on conflict keep their views and are scored from the merged meta_data)'

\echo '### CALL filter_tags(''image'', dry_run => true): what the tag rules would drop, per reason'
CALL filter_tags('image', dry_run => true);
SELECT rows_scanned, rows_changed, rows_malformed, dropped_low_accuracy, dropped_filtered_provider,
       dropped_exact_denylist, dropped_substring_denylist, dropped_machine_label, dropped_malformed
FROM popularity.tag_filter_runs ORDER BY run_id DESC LIMIT 1;
\echo '### CALL filter_tags(''image''): the same, applied in place in committed batches'
\timing on
CALL filter_tags('image');
\timing off
SELECT rows_scanned, rows_changed, batches, dropped_low_accuracy + dropped_filtered_provider + dropped_exact_denylist
       + dropped_substring_denylist + dropped_machine_label + dropped_malformed AS tags_dropped
FROM popularity.tag_filter_runs ORDER BY run_id DESC LIMIT 1;

\echo '### per-provider counts, kept by O(1) statement triggers (no table scan to read them)'
SELECT provider, rows, rows_with_metric, rows_scored, rows_invalid_metric, reconcile_pending
FROM popularity.provider_stats WHERE media_type = 'image' ORDER BY provider;
SELECT provider, count(*) AS rows_by_scan, count(standardized_popularity) AS scored_by_scan FROM image
GROUP BY provider ORDER BY provider;

\echo '### freshness: stale fraction of each provider from a 10000-row sample, exact 99% Clopper-Pearson bounds'
UPDATE popularity.metrics SET constant = constant * 1.5 WHERE media_type = 'image' AND provider = 'nappy';
SELECT provider, method, rows_examined, rows_stale, round(stale_fraction::numeric, 4) AS stale,
       round(stale_lower::numeric, 4) AS lower_99, round(stale_upper::numeric, 4) AS upper_99
FROM popularity.freshness('image', seed => 0.5) ORDER BY provider;
\echo '(nappy''s constant was just changed by hand: its rows are stale until the next refresh)'

\echo '### scores per provider'
SELECT provider, count(standardized_popularity) AS scored, count(*) - count(standardized_popularity) AS unscored,
       round(avg(standardized_popularity)::numeric, 3) AS mean,
       round((percentile_disc(0.5) WITHIN GROUP (ORDER BY standardized_popularity))::numeric, 3) AS median,
       round((percentile_disc(0.85) WITHIN GROUP (ORDER BY standardized_popularity))::numeric, 3) AS p85
FROM image GROUP BY provider ORDER BY provider;
\echo '(unscored: rows without the metric; smithsonian and met have no metric configured)'
