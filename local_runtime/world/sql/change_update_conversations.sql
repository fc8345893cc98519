-- The app retitles conversations: a new title, never equal to the old one.
-- One statement per entity, as for users and agents: the UPDATE ... FROM unnest shape is
-- shared, the column, the vocabulary and the suffix are its own.
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
