-- Erasure (docs/security.md): a deleted or updated row stays in the table
-- as a dead tuple, and its username in the primary-key index, until vacuum
-- removes them. PostgreSQL's defaults wait for 50 dead rows plus 20 % of the
-- table, so a single DELETE could stay readable in the table for ever on a
-- quiet service. With these, autovacuum takes the table at its next round
-- (autovacuum_naptime, 1 minute by default) once any row is dead, and always
-- cleans the index too (by default a vacuum that finds few dead rows skips
-- the index and leaves their keys there). Vacuuming a table that only has a
-- few dead rows reads just the pages the visibility map marks as changed,
-- plus one pass over the index. Taking only SHARE UPDATE EXCLUSIVE, this
-- runs beside an older release's reads and writes during a rolling deploy.
ALTER TABLE users SET (
    autovacuum_vacuum_threshold = 0,
    autovacuum_vacuum_scale_factor = 0,
    vacuum_index_cleanup = on
);
