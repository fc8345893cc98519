-- One row per schema check; the load gate reads the newest.
-- Parameters: dag_run_id, verdict, blocked (jsonb), report (jsonb).
INSERT INTO migration.schema_checks (dag_run_id, verdict, blocked, report)
VALUES (%(dag_run_id)s, %(verdict)s, %(blocked)s, %(report)s)
RETURNING check_id, checked_at;
