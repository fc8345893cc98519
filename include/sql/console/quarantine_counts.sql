-- What is in quarantine now, per entity and reason.
SELECT entity, reason, count(*) AS rows, min(first_seen_at) AS first_seen, max(last_seen_at) AS last_seen
FROM migration.quarantine
GROUP BY entity, reason
ORDER BY entity, rows DESC, reason;
