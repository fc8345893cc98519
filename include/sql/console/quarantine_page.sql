-- One page of an entity's quarantined rows for one reason, by key after %(after)s
-- (keyset paging: the browser never gets more than a page).
SELECT source_key, reason, source_row, run_id, first_seen_at, last_seen_at
FROM migration.quarantine
WHERE entity = %(entity)s AND reason = %(reason)s AND source_key > %(after)s
ORDER BY source_key
LIMIT %(limit)s;
