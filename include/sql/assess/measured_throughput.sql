-- Rows per second of each entity's last five finished full runs (not dry runs): the
-- backfill estimate's measurement.
SELECT entity, sum(rows) / nullif(sum(seconds), 0) AS rows_per_second
FROM (
    SELECT x.entity,
           coalesce((x.counts -> 'accounting' ->> 'in_scope')::bigint, x.stage_rows) AS rows,
           extract(epoch FROM x.finished_at - x.started_at)::float8 AS seconds,
           row_number() OVER (PARTITION BY x.entity ORDER BY x.started_at DESC) AS n
    FROM migration.runs x
    WHERE x.mode = 'full' AND NOT x.dry_run AND x.finished_at IS NOT NULL AND x.status = 'succeeded'
) t
WHERE n <= 5 AND rows IS NOT NULL
GROUP BY entity
ORDER BY entity;
