-- Conversations started since the last snapshot, by live users, with one of
-- the loadable agents or none.
INSERT INTO conversations (id, user_id, agent_id, title, created_at, updated_at, deleted_at)
SELECT pg_temp.uid(%(seed)s, %(kind)s, g.n),
       (%(owners)s::uuid[])[1 + mod(r.a, cardinality(%(owners)s::uuid[]))],
       CASE WHEN mod(r.b, 10) < 7
            THEN (%(agents)s::uuid[])[1 + mod(r.b >> 8, cardinality(%(agents)s::uuid[]))] END,
       (%(titles)s::text[])[1 + mod(r.a >> 16, cardinality(%(titles)s::text[]))],
       %(at)s, %(at)s, NULL
FROM generate_series(1, %(n)s) AS g(n)
CROSS JOIN LATERAL (SELECT pg_temp.h(%(seed)s, 89, g.n) AS a, pg_temp.h(%(seed)s, 90, g.n) AS b) AS r
ORDER BY g.n
RETURNING id
