-- Foreign partitions under a registered media table (issue 14, item 1): refused at registration
-- and when attached or created later, so that ingestion of the other partitions never breaks
-- ("cannot collect transition tuples from child foreign tables").
\set VERBOSITY default
\set SHOW_CONTEXT never
-- (No primary key: PostgreSQL refuses a foreign partition under a table with a unique index.)
CREATE TABLE pf_image (identifier uuid NOT NULL DEFAULT gen_random_uuid(), provider text,
                       meta_data jsonb, tags jsonb, updated_on timestamptz DEFAULT now(),
                       created_on date NOT NULL) PARTITION BY RANGE (created_on);
CREATE TABLE pf_2024 PARTITION OF pf_image FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE FOREIGN DATA WRAPPER pf_fdw;
CREATE SERVER pf_server FOREIGN DATA WRAPPER pf_fdw;
CREATE FOREIGN TABLE pf_remote PARTITION OF pf_image
    FOR VALUES FROM ('2020-01-01') TO ('2021-01-01') SERVER pf_server;

-- A tree with a foreign partition is refused.
SET client_min_messages = error;
SELECT popularity.register_media_type('pf', 'pf_image', default_metrics => false);
RESET client_min_messages;
SELECT count(*) AS registered FROM popularity.media_types WHERE media_type = 'pf';
ALTER TABLE pf_image DETACH PARTITION pf_remote;
SET client_min_messages = error;
SELECT popularity.register_media_type('pf', 'pf_image', default_metrics => false);
RESET client_min_messages;
SELECT popularity.set_metric('pf', 'flickr', 'views', percentile => 0.5);
INSERT INTO pf_image (provider, meta_data, created_on) VALUES ('flickr', '{"views": 5}', '2024-03-01');
SELECT provider, new_constant FROM popularity.refresh_constants('pf');
-- (The detached table gets the column registration added to the tree, so that only its kind is
-- in the way.)
ALTER FOREIGN TABLE pf_remote ADD COLUMN standardized_popularity double precision;

-- Putting a foreign table under it later is refused, whichever way.
ALTER TABLE pf_image ATTACH PARTITION pf_remote FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
CREATE FOREIGN TABLE pf_remote2 PARTITION OF pf_image
    FOR VALUES FROM ('2019-01-01') TO ('2020-01-01') SERVER pf_server;
-- ... also inside a sub-partitioned table attached under it.
CREATE TABLE pf_2023 (LIKE pf_image) PARTITION BY RANGE (created_on);
CREATE FOREIGN TABLE pf_remote3 PARTITION OF pf_2023
    FOR VALUES FROM ('2023-01-01') TO ('2023-07-01') SERVER pf_server;
ALTER TABLE pf_image ATTACH PARTITION pf_2023 FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
SELECT count(*) AS foreign_partitions
FROM pg_partition_tree('pf_image') AS p JOIN pg_class AS c ON c.oid = p.relid WHERE c.relkind = 'f';

-- Ingestion of the tree goes on, plain partitions are attached and created as usual, and a foreign
-- table elsewhere is nobody's business.
CREATE TABLE pf_2025 PARTITION OF pf_image FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO pf_image (provider, meta_data, created_on)
VALUES ('flickr', '{"views": 7}', '2024-05-01'), ('flickr', '{"views": 9}', '2025-02-01');
SELECT tableoid::regclass AS partition, standardized_popularity IS NOT NULL AS scored
FROM pf_image ORDER BY created_on;
SELECT provider, rows FROM popularity.provider_stats WHERE media_type = 'pf';
CREATE FOREIGN TABLE pf_other (a integer) SERVER pf_server;
-- Unregistered, the table takes a foreign partition again.
SELECT popularity.unregister_media_type('pf');
ALTER TABLE pf_image ATTACH PARTITION pf_remote FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');

SELECT count(*) AS foreign_partitions_now
FROM pg_partition_tree('pf_image') AS p JOIN pg_class AS c ON c.oid = p.relid WHERE c.relkind = 'f';
DROP TABLE pf_image, pf_2023 CASCADE;
DROP SERVER pf_server CASCADE;
DROP FOREIGN DATA WRAPPER pf_fdw;
