-- The app renames users: a new display name, never equal to the old one.
-- One statement per entity, as for agents and conversations: the UPDATE ... FROM unnest shape is
-- shared, the column, the vocabulary and the suffix are its own.
UPDATE users AS u
SET display_name = CASE WHEN n.name IS DISTINCT FROM u.display_name THEN n.name ELSE n.name || ' Jr.' END,
    updated_at = %(at)s
FROM (
    SELECT v.id,
           (%(first_display)s::text[])[1 + mod(pg_temp.hu(%(seed)s, 80, v.id), cardinality(%(first_display)s::text[]))]
           || ' '
           || (%(last_display)s::text[])[1 + mod(pg_temp.hu(%(seed)s, 81, v.id), cardinality(%(last_display)s::text[]))]
           AS name
    FROM unnest(%(ids)s::uuid[]) AS v(id)
) AS n
WHERE u.id = n.id
RETURNING u.id
