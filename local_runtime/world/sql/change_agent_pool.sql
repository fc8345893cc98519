-- Loadable agents (built-in, or owned by a live user; tools parse) in a
-- seeded order, with how many conversations point at each: hard deletes
-- take the least referenced, to leave few dangling agent_ids behind.
WITH refs AS (
    SELECT agent_id, count(*) AS n FROM conversations WHERE agent_id IS NOT NULL GROUP BY agent_id
)
SELECT a.id, a.owner_id IS NULL AS builtin, coalesce(r.n, 0) AS refs
FROM agents AS a
LEFT JOIN users AS u ON u.id = a.owner_id
LEFT JOIN refs AS r ON r.agent_id = a.id
WHERE (a.owner_id IS NULL
       OR (u.deleted_at IS NULL
           AND lower(btrim(u.email)) ~ '^[^@[:space:]]+@[^@[:space:].]+(\.[^@[:space:].]+)+$'))
  AND (a.tools IS NULL OR pg_temp.is_json(a.tools))
ORDER BY md5(a.id::text || %(salt)s)
