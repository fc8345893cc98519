-- The keys of an entity's source rows that the destination knows without holding them:
-- quarantined or excluded (the ledgers). With the destination table's keys, every key
-- of the source should be here once; the hard-delete comparison (deletes.py) reads both.
SELECT source_key::{key_type} AS k FROM migration.quarantine WHERE entity = %(entity)s
UNION ALL
SELECT source_key::{key_type} AS k FROM migration.exclusions WHERE entity = %(entity)s
