-- Unfinished runs that nobody works on (abandoned.py): no session holds the run's
-- liveness lock, none holds the entity's write lock in the run's name, and the run
-- showed no sign of life for the grace period (a live run between two tasks holds
-- no lock either). %(entity)s NULL: every entity.
SELECT r.run_id, r.status, coalesce(r.heartbeat_at, r.started_at) AS last_seen, r.stage_table
FROM migration.runs r
WHERE (r.entity = %(entity)s OR %(entity)s::text IS NULL)
  AND r.run_id <> %(found_by)s
  AND r.status = ANY(%(unfinished)s)
  AND coalesce(r.heartbeat_at, r.started_at) < now() - make_interval(secs => %(grace)s)
  AND NOT migration.advisory_lock_held(%(space)s, r.run_id)
  AND NOT EXISTS (
      SELECT 1 FROM migration.locks l
      WHERE l.entity = r.entity AND l.run_id = r.run_id
        AND migration.advisory_lock_held('migration.entity', r.entity))
ORDER BY r.started_at
