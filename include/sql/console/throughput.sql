-- Rows per second of each entity's last %(runs)s finished runs (not dry runs): rows in
-- scope over the run's wall time, and over its load alone when recorded.
SELECT entity, run_id, mode, started_at, finished_at, rows, seconds,
       CASE WHEN seconds > 0 THEN rows / seconds END AS rows_per_second,
       load_seconds
FROM (
    SELECT x.entity, x.run_id, x.mode, x.started_at, x.finished_at,
           coalesce((x.counts -> 'accounting' ->> 'in_scope')::bigint, x.stage_rows) AS rows,
           extract(epoch FROM x.finished_at - x.started_at)::float8 AS seconds,
           (x.counts -> 'load' ->> 'load_seconds')::float8 AS load_seconds,
           row_number() OVER (PARTITION BY x.entity ORDER BY x.started_at DESC) AS n
    FROM migration.runs x
    WHERE x.finished_at IS NOT NULL AND NOT x.dry_run AND x.status IN ('succeeded', 'loaded')
) t
WHERE n <= %(runs)s
ORDER BY entity, started_at;
