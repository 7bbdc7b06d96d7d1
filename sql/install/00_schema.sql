-- The extension's own schema.
-- State, configuration and internal routines live in a schema of their own. Public routines are
-- created in the extension's schema (public by default), so they can be called unqualified.
CREATE SCHEMA popularity;
COMMENT ON SCHEMA popularity IS
    'State, configuration and internal routines of the popularity extension';
-- Everyone may look up objects in the schema; each object carries its own privileges.
GRANT USAGE ON SCHEMA popularity TO PUBLIC;

