-- Runs that died: who is working on a run right now, and when a dead run was found.
-- A step of a run holds a shared advisory lock on the run ('migration.run', run id) in
-- a session of its own for as long as it works (abandoned.py); the lock goes with the
-- session when the process dies. heartbeat_at: when a step last started or ended.
-- A run left 'running' with no such session is marked 'abandoned' by the next run of
-- its entity (or the cleanup command), with when and by whom.
-- Idempotent: applied on every bootstrap.
ALTER TABLE migration.runs ADD COLUMN IF NOT EXISTS heartbeat_at timestamptz;
ALTER TABLE migration.runs ADD COLUMN IF NOT EXISTS abandoned_at timestamptz;
ALTER TABLE migration.runs ADD COLUMN IF NOT EXISTS abandoned_by text;

-- Whether a session of this database holds the two-key advisory lock (hashtext(space),
-- hashtext(name)), as taken by pg_advisory_lock(int4, int4): read from pg_locks, so
-- asking takes no lock. int4 -> oid keeps the bits, as pg_locks shows them.
CREATE OR REPLACE FUNCTION migration.advisory_lock_held(space text, name text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_catalog.pg_locks l
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
          AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
          AND l.classid = hashtext(space)::oid AND l.objid = hashtext(name)::oid)
$$;
REVOKE ALL ON FUNCTION migration.advisory_lock_held(text, text) FROM PUBLIC;
