-- Media types: which table holds each media type's rows. Registration routines (catalog issue)
-- fill it; every feature that walks a media table (refresh, tag filter, counts) starts here.
CREATE TABLE popularity.media_types (
    media_type text PRIMARY KEY
        CONSTRAINT media_type_not_empty CHECK (media_type <> ''),
    media_table regclass NOT NULL UNIQUE,
    filter_tags_at_ingestion boolean NOT NULL DEFAULT false,
    registered_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE popularity.media_types IS
    'Registered media types and their tables (one row per media type)';
COMMENT ON COLUMN popularity.media_types.filter_tags_at_ingestion IS
    'When true, the ingestion trigger also applies the tag rules to inserted and updated rows';
SELECT pg_catalog.pg_extension_config_dump('popularity.media_types', '');
GRANT SELECT ON popularity.media_types TO PUBLIC;
