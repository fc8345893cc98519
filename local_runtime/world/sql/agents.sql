-- Bulk agents: row n of the layout [0, builtin_end) built-in (no owner),
-- [builtin_end, regular_end) owned by active users (the only agents
-- conversations use), [regular_end, orphan_end) owner never existed,
-- [orphan_end, malformed_end) malformed tools JSON, [malformed_end, n_agents)
-- owned by soft-deleted users.
INSERT INTO agents (id, owner_id, name, description, system_prompt, model, temperature, tools,
                    is_public, created_at, updated_at)
SELECT pg_temp.uid(%(seed)s, 'agents', g.n),
       CASE WHEN g.n >= %(builtin_end)s THEN pg_temp.uid(%(seed)s, 'users', o.owner_n) END,
       nm.name,
       CASE WHEN mod(r.b, 10) < 3 THEN NULL
            ELSE 'Helps with ' || lower(nm.role) || ' questions.' END,
       'You are a ' || lower(nm.role) || '. '
           || (%(styles)s::text[])[1 + mod(r.b >> 8, cardinality(%(styles)s::text[]))],
       (%(models)s::text[])[1 + mod(r.b >> 16, cardinality(%(models)s::text[]))],
       CASE WHEN mod(r.c, 10) = 0 THEN NULL ELSE mod(r.c >> 4, 21) / 10.0 END,
       CASE WHEN g.n >= %(orphan_end)s AND g.n < %(malformed_end)s
                THEN (%(bad_tools)s::text[])[1 + mod(r.c >> 12, cardinality(%(bad_tools)s::text[]))]
            WHEN mod(r.d, 10) < 3 THEN NULL
            WHEN mod(r.d, 10) = 3 THEN '[]'
            ELSE (%(tool_sets)s::text[])[1 + mod(r.d >> 8, cardinality(%(tool_sets)s::text[]))] END,
       g.n < %(builtin_end)s OR mod(r.d >> 16, 5) = 0,
       t.created_at,
       CASE WHEN mod(r.e, 5) = 0 THEN NULL
            ELSE pg_temp.ts_between(r.e >> 4, t.created_at, %(horizon)s) END
FROM generate_series(0, %(n_agents)s - 1) AS g(n)
CROSS JOIN LATERAL (
    SELECT pg_temp.h(%(seed)s, 10, g.n) AS a, pg_temp.h(%(seed)s, 11, g.n) AS b,
           pg_temp.h(%(seed)s, 12, g.n) AS c, pg_temp.h(%(seed)s, 13, g.n) AS d,
           pg_temp.h(%(seed)s, 14, g.n) AS e
    OFFSET 0  -- keep each step a subquery: inlined, its expressions would be evaluated once per use
) AS r
CROSS JOIN LATERAL (
    SELECT CASE WHEN g.n < %(builtin_end)s THEN NULL
                WHEN g.n >= %(regular_end)s AND g.n < %(orphan_end)s THEN %(never_existed)s + g.n
                WHEN g.n >= %(malformed_end)s THEN %(active)s + mod(r.a, %(soft)s)
                ELSE mod(r.a, %(active)s) END AS owner_n
) AS o
CROSS JOIN LATERAL (
    SELECT CASE WHEN g.n < %(builtin_end)s
                    THEN pg_temp.ts_between(r.e, %(epoch)s, %(epoch)s + interval '14 days')
                WHEN o.owner_n >= %(never_existed)s
                    THEN pg_temp.ts_between(r.e, %(epoch)s, %(horizon)s - interval '29 days')
                ELSE pg_temp.ts_between(r.e, pg_temp.user_created(%(seed)s, o.owner_n, %(epoch)s, %(horizon)s),
                                        %(horizon)s - interval '29 days') END AS created_at
    OFFSET 0
) AS t
CROSS JOIN LATERAL (
    SELECT (%(roles)s::text[])[1 + mod(r.b >> 24, cardinality(%(roles)s::text[]))] AS role,
           CASE WHEN g.n < %(builtin_end)s
                THEN (%(builtin_names)s::text[])[1 + mod(g.n, cardinality(%(builtin_names)s::text[]))]
                ELSE (%(prefixes)s::text[])[1 + mod(r.b >> 32, cardinality(%(prefixes)s::text[]))]
                     || ' ' || (%(roles)s::text[])[1 + mod(r.b >> 24, cardinality(%(roles)s::text[]))]
           END AS name
) AS nm
