-- Agents created since the last snapshot, owned by live users.
INSERT INTO agents (id, owner_id, name, description, system_prompt, model, temperature, tools,
                    is_public, created_at, updated_at)
SELECT pg_temp.uid(%(seed)s, %(kind)s, g.n),
       (%(owners)s::uuid[])[1 + mod(r.a, cardinality(%(owners)s::uuid[]))],
       (%(prefixes)s::text[])[1 + mod(r.a >> 8, cardinality(%(prefixes)s::text[]))] || ' ' || ro.role,
       'Helps with ' || lower(ro.role) || ' questions.',
       'You are a ' || lower(ro.role) || '. '
           || (%(styles)s::text[])[1 + mod(r.b, cardinality(%(styles)s::text[]))],
       (%(models)s::text[])[1 + mod(r.b >> 8, cardinality(%(models)s::text[]))],
       mod(r.b >> 16, 21) / 10.0,
       (%(tool_sets)s::text[])[1 + mod(r.b >> 24, cardinality(%(tool_sets)s::text[]))],
       mod(r.b >> 32, 5) = 0,
       %(at)s, %(at)s
FROM generate_series(1, %(n)s) AS g(n)
CROSS JOIN LATERAL (SELECT pg_temp.h(%(seed)s, 87, g.n) AS a, pg_temp.h(%(seed)s, 88, g.n) AS b) AS r
CROSS JOIN LATERAL (
    SELECT (%(roles)s::text[])[1 + mod(r.a >> 16, cardinality(%(roles)s::text[]))] AS role
) AS ro
ORDER BY g.n
RETURNING id
