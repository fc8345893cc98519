-- The app retitles conversations: a new title, never equal to the old one.
UPDATE conversations AS c
SET title = CASE WHEN n.title IS DISTINCT FROM c.title THEN n.title ELSE n.title || ' (edited)' END,
    updated_at = %(at)s
FROM (
    SELECT v.id,
           (%(titles)s::text[])[1 + mod(pg_temp.hu(%(seed)s, 84, v.id), cardinality(%(titles)s::text[]))]
           AS title
    FROM unnest(%(ids)s::uuid[]) AS v(id)
) AS n
WHERE c.id = n.id
RETURNING c.id
