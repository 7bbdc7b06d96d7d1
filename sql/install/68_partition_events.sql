-- The event trigger that follows partitions under registered media tables
-- (popularity._partitions_changed, 30_catalog.sql). Created after every routine it calls (the Citus
-- predicates of 65_citus.sql among them): it fires for every CREATE TABLE of this script too.
CREATE EVENT TRIGGER popularity_partitions_changed ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE')
    EXECUTE FUNCTION popularity._partitions_changed();
COMMENT ON EVENT TRIGGER popularity_partitions_changed IS
    'Keeps the counts triggers and the counts of a registered media table right as partitions come and go';
