-- Tag filter: rules, the per-row functions, and the batch procedure filter_tags.
-- Semantics: docs/semantics.md, "Tag filter".

-- Rules ----------------------------------------------------------------------------------------------

-- One optional global row (media_type NULL) and optional rows per media type. A NULL column
-- inherits: media type row -> global row -> built-in default (popularity.tag_rule_defaults). The
-- table starts empty, so that pg_dump keeps exactly what the operator wrote.
CREATE TABLE popularity.tag_rules (
    media_type text UNIQUE NULLS NOT DISTINCT
        REFERENCES popularity.media_types (media_type) ON UPDATE CASCADE ON DELETE CASCADE,
    min_accuracy numeric
        CONSTRAINT min_accuracy_between_0_and_1 CHECK (min_accuracy >= 0 AND min_accuracy <= 1),
    filtered_providers text[]
        CONSTRAINT filtered_providers_no_null CHECK (array_position(filtered_providers, NULL) IS NULL),
    exact_denylist text[]
        CONSTRAINT exact_denylist_no_null CHECK (array_position(exact_denylist, NULL) IS NULL),
    substring_denylist text[]
        CONSTRAINT substring_denylist_no_null CHECK (array_position(substring_denylist, NULL) IS NULL),
    machine_labels text[]
        CONSTRAINT machine_labels_no_null CHECK (array_position(machine_labels, NULL) IS NULL)
);
COMMENT ON TABLE popularity.tag_rules IS
    'Tag filter rules: the row with media_type NULL overrides the built-in defaults for every media '
    'type, a media type''s row overrides it for that type; a NULL column inherits. Names are matched '
    'case-insensitively (full Unicode lower-casing), never trimmed';
COMMENT ON COLUMN popularity.tag_rules.media_type IS
    'A registered media type, or NULL for the global rules';
COMMENT ON COLUMN popularity.tag_rules.min_accuracy IS
    'Minimum confidence: a tag whose accuracy is strictly below it is dropped (a JSON number is '
    'compared exactly; a JSON string is read as Python''s float() reads it and compared with the '
    'nearest double, as Openverse does)';
COMMENT ON COLUMN popularity.tag_rules.filtered_providers IS
    'Tags whose provider is one of these are dropped';
COMMENT ON COLUMN popularity.tag_rules.exact_denylist IS
    'Tags whose lower-cased name equals one of these are dropped';
COMMENT ON COLUMN popularity.tag_rules.substring_denylist IS
    'Tags whose lower-cased name contains one of these are dropped';
COMMENT ON COLUMN popularity.tag_rules.machine_labels IS
    'Machine-generated labels to exclude (e.g. demographic labels): dropped when the tag''s name '
    'equals one of these and the tag has a provider that differs from the record''s provider';
SELECT pg_catalog.pg_extension_config_dump('popularity.tag_rules', '');
GRANT SELECT ON popularity.tag_rules TO PUBLIC;

-- The built-in rules have one definition, in the library (core::TagRuleConfig); the view shows them.
CREATE FUNCTION popularity.builtin_tag_rules(
    OUT min_accuracy numeric, OUT filtered_providers text[], OUT exact_denylist text[],
    OUT substring_denylist text[], OUT machine_labels text[])
RETURNS record
AS 'MODULE_PATHNAME', 'popularity_builtin_tag_rules'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION popularity.builtin_tag_rules() IS
    'The built-in tag rules of the library (the Openverse data refresh rules), as popularity.tag_rule_defaults shows them';

CREATE VIEW popularity.tag_rule_defaults AS
SELECT d.min_accuracy, d.filtered_providers, d.exact_denylist, d.substring_denylist, d.machine_labels
FROM popularity.builtin_tag_rules() AS d;
COMMENT ON VIEW popularity.tag_rule_defaults IS
    'Built-in tag rules (the Openverse data refresh rules, from the library); override them in popularity.tag_rules';
GRANT SELECT ON popularity.tag_rule_defaults TO PUBLIC;

CREATE VIEW popularity.effective_tag_rules AS
SELECT m.media_type,
       coalesce(t.min_accuracy, g.min_accuracy, d.min_accuracy) AS min_accuracy,
       coalesce(t.filtered_providers, g.filtered_providers, d.filtered_providers) AS filtered_providers,
       coalesce(t.exact_denylist, g.exact_denylist, d.exact_denylist) AS exact_denylist,
       coalesce(t.substring_denylist, g.substring_denylist, d.substring_denylist) AS substring_denylist,
       coalesce(t.machine_labels, g.machine_labels, d.machine_labels) AS machine_labels
FROM (SELECT NULL::text AS media_type
      UNION ALL
      SELECT mt.media_type FROM popularity.media_types mt) AS m
CROSS JOIN popularity.tag_rule_defaults AS d
LEFT JOIN popularity.tag_rules AS g ON g.media_type IS NULL
LEFT JOIN popularity.tag_rules AS t ON t.media_type = m.media_type;
COMMENT ON VIEW popularity.effective_tag_rules IS
    'The tag rules in force: one row for the global rules (media_type NULL) and one per registered '
    'media type';
GRANT SELECT ON popularity.effective_tag_rules TO PUBLIC;

-- The verdicts of the rules, by name, in the library's order (one definition: POPULARITY_TAG_VERDICTS).
CREATE FUNCTION popularity._tag_verdicts()
RETURNS SETOF text
AS 'MODULE_PATHNAME', 'popularity_tag_verdicts'
LANGUAGE C IMMUTABLE PARALLEL SAFE ROWS 7;
COMMENT ON FUNCTION popularity._tag_verdicts() IS
    'The tag verdicts'' names in the library''s order, kept first: element k >= 2 of _tag_drop_counts counts the k-th (internal)';

CREATE TRIGGER tag_rules_changed
AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON popularity.tag_rules
FOR EACH STATEMENT EXECUTE FUNCTION popularity._config_changed();
COMMENT ON TRIGGER tag_rules_changed ON popularity.tag_rules IS
    'Makes every backend reload its cached configuration (tag rules, constants) once the change is visible to it';

-- Per-row functions -------------------------------------------------------------------------------

CREATE FUNCTION popularity.filtered_tags(tags jsonb, record_provider text DEFAULT NULL,
                                         media_type text DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'popularity_filtered_tags'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION popularity.filtered_tags(jsonb, text, text) IS
    'The tags the rules keep (the original objects, in order), or the input itself when nothing is '
    'dropped or when tags is not an array; rules of media_type (raises 42704 if not registered), '
    'or the global rules when it is NULL. Never raises on data';

CREATE FUNCTION popularity._tag_drop_counts(tags jsonb, record_provider text, media_type text)
RETURNS integer[]
AS 'MODULE_PATHNAME', 'popularity_tag_drop_counts'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION popularity._tag_drop_counts(jsonb, text, text) IS
    'NULL when tags is an array that loses nothing; else {not_an_array (0/1), malformed, '
    'low_accuracy, filtered_provider, exact_denylist, substring_denylist, machine_label} (internal)';
