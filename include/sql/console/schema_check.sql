-- The latest schema check, whole.
SELECT check_id, checked_at, dag_run_id, verdict, blocked, report,
       extract(epoch FROM now() - checked_at) / 3600.0 AS age_hours
FROM migration.schema_checks
ORDER BY checked_at DESC, check_id DESC
LIMIT 1;
