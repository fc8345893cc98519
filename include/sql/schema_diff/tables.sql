-- The relations of the given schemas, with their row level security state.
--
-- Read from pg_catalog, not information_schema: information_schema shows only
-- what the current role holds a privilege on and has no RLS state, and the
-- check must see every table whatever the grants.
-- Parameter: schemas (text[]).
SELECT n.nspname            AS schema_name,
       c.relname            AS table_name,
       c.relkind::text      AS kind,
       c.relrowsecurity     AS rls_enabled,
       c.relforcerowsecurity AS rls_forced
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(%(schemas)s)
  AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  -- Partitions are reported through their parent.
  AND NOT c.relispartition
ORDER BY 1, 2;
