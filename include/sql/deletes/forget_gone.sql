-- Ledger rows whose source row is gone (hard-deleted): nothing is left to load or to
-- exclude, so the ledgers forget them, as a full run's sweep does.
DELETE FROM migration.{ledger} q
WHERE q.entity = %(entity)s
  AND q.source_key::{key_type} = ANY(ARRAY(SELECT k FROM {gone}))
