-- Quarantined rows per reason in each entity's last %(runs)s runs that reached their accounting.
SELECT r.entity, r.run_id, r.mode, r.started_at, a.reason, a.rows
FROM (
    SELECT x.*, row_number() OVER (PARTITION BY x.entity ORDER BY x.started_at DESC) AS n
    FROM migration.runs x
    WHERE EXISTS (SELECT 1 FROM migration.run_accounting y WHERE y.run_id = x.run_id)
) r
JOIN migration.run_accounting a ON a.run_id = r.run_id AND a.disposition = 'quarantined'
WHERE r.n <= %(runs)s
ORDER BY r.entity, r.started_at, a.reason;
