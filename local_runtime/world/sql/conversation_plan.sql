-- The plan of every conversation, and of the phantom ones whose messages
-- survive although the conversation never existed (orphan messages).
-- Row n of the layout: [0, regular_end) regular (user drawn from active and
-- soft-deleted users), [regular_end, soft_end) soft-deleted,
-- [soft_end, orphan_end) user never existed, [orphan_end, n_conversations)
-- dangling agent_id, [n_conversations, n_conversations + n_phantoms) phantom.
-- Messages get ids 1..M in conversation start order (msg_offset), so the
-- world's message ids do not depend on insert order.
CREATE TEMP TABLE conversation_plan AS
SELECT p.*,
       (sum(p.k) OVER (ORDER BY p.created_at, p.n ROWS UNBOUNDED PRECEDING) - p.k)::bigint AS msg_offset,
       p.created_at + p.k * p.gap AS last_message_at
FROM (
    SELECT b.*,
           (CASE WHEN b.kind = 'orphan_user' THEN CASE WHEN b.n = %(soft_end)s THEN 2 ELSE 0 END
                 WHEN b.kind = 'phantom' THEN 1 + mod(r.e, 2)
                 ELSE mod(r.e, %(k_mod)s) END)::integer AS k,
           pg_temp.uid(%(seed)s, 'conversations', b.n) AS id,
           CASE WHEN b.kind = 'orphan_user' THEN pg_temp.uid(%(seed)s, 'users', %(never_existed)s + b.n)
                ELSE pg_temp.uid(%(seed)s, 'users', b.user_n) END AS user_id,
           CASE WHEN b.kind = 'dangling_agent' THEN pg_temp.uid(%(seed)s, 'agents', %(never_existed)s + b.n)
                WHEN mod(r.c, 10) < 7 THEN pg_temp.uid(%(seed)s, 'agents', mod(r.c >> 4, %(agents_in_use)s))
           END AS agent_id,
           CASE WHEN mod(r.d, 10) = 0 THEN NULL
                ELSE (%(titles)s::text[])[1 + mod(r.d >> 4, cardinality(%(titles)s::text[]))]
                     || CASE WHEN mod(r.d >> 12, 7) = 0 THEN ' (2)' ELSE '' END END AS title,
           mod(r.e >> 8, 10) = 0 AS opens_with_system,
           (20 + mod(r.e >> 16, 600)) * interval '1 second' AS gap
    FROM (
        SELECT g.n,
               CASE WHEN g.n < %(regular_end)s THEN 'regular'
                    WHEN g.n < %(soft_end)s THEN 'soft_deleted'
                    WHEN g.n < %(orphan_end)s THEN 'orphan_user'
                    WHEN g.n < %(n_conversations)s THEN 'dangling_agent'
                    ELSE 'phantom' END AS kind,
               CASE WHEN g.n < %(regular_end)s THEN mod(pg_temp.h(%(seed)s, 20, g.n), %(owners)s)
                    ELSE mod(pg_temp.h(%(seed)s, 20, g.n), %(active)s) END AS user_n,
               pg_temp.h(%(seed)s, 21, g.n) AS created_r
        FROM generate_series(0, %(n_conversations)s + %(n_phantoms)s - 1) AS g(n)
    ) AS b0
    CROSS JOIN LATERAL (
        SELECT b0.*,
               CASE WHEN b0.kind IN ('orphan_user', 'phantom')
                    THEN pg_temp.ts_between(b0.created_r, %(epoch)s, %(horizon)s - interval '15 days')
                    ELSE pg_temp.ts_between(b0.created_r, pg_temp.user_created(%(seed)s, b0.user_n, %(epoch)s, %(horizon)s),
                                            %(horizon)s - interval '15 days') END AS created_at
        OFFSET 0  -- keep each step a subquery: inlined, created_at would be evaluated once per use
    ) AS b
    CROSS JOIN LATERAL (
        SELECT pg_temp.h(%(seed)s, 22, b.n) AS c, pg_temp.h(%(seed)s, 23, b.n) AS d,
               pg_temp.h(%(seed)s, 24, b.n) AS e
        OFFSET 0
    ) AS r
    OFFSET 0
) AS p
ORDER BY p.created_at, p.n
