-- The app renames agents: a new name, never equal to the old one.
-- One statement per entity, as for users and conversations: the UPDATE ... FROM unnest shape is
-- shared, the column, the vocabulary and the suffix are its own.
UPDATE agents AS a
SET name = CASE WHEN n.name IS DISTINCT FROM a.name THEN n.name ELSE n.name || ' 2' END,
    updated_at = %(at)s
FROM (
    SELECT v.id,
           (%(prefixes)s::text[])[1 + mod(pg_temp.hu(%(seed)s, 82, v.id), cardinality(%(prefixes)s::text[]))]
           || ' '
           || (%(roles)s::text[])[1 + mod(pg_temp.hu(%(seed)s, 83, v.id), cardinality(%(roles)s::text[]))]
           AS name
    FROM unnest(%(ids)s::uuid[]) AS v(id)
) AS n
WHERE a.id = n.id
RETURNING a.id
