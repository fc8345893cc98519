-- Messages from the conversation plan: k per conversation, ids
-- msg_offset + 1 .. msg_offset + k, a turn every `gap`. Roles alternate
-- user / assistant; conversations from before June 2023 still call the
-- assistant 'bot' (the old alias). Content is prose cut from an ASCII corpus,
-- with a non-ASCII or emoji snippet appended to about 1 message in 40.
INSERT INTO messages (id, conversation_id, role, content, token_count, model, metadata, created_at)
SELECT x.id, p.id, ro.role, co.content,
       CASE WHEN mod(r.b, 10) = 0 THEN NULL ELSE 1 + length(co.content) / 4 END,
       CASE WHEN ro.role IN ('assistant', 'bot')
            THEN (%(models)s::text[])[1 + mod(r.b >> 8, cardinality(%(models)s::text[]))] END,
       CASE ro.role
           WHEN 'user' THEN CASE WHEN mod(r.b >> 16, 2) = 0 THEN NULL
                                 ELSE '{"client": "'
                                      || (%(clients)s::text[])[1 + mod(r.b >> 20, cardinality(%(clients)s::text[]))]
                                      || '"}' END
           WHEN 'system' THEN NULL
           WHEN 'tool' THEN '{"tool_call_id": "call_' || to_hex(r.c) || '"}'
           ELSE '{"finish_reason": "stop", "latency_ms": ' || (50 + mod(r.b >> 24, 4000)) || '}'
       END,
       p.created_at + x.i * p.gap
FROM conversation_plan AS p
CROSS JOIN LATERAL generate_series(1, p.k) AS gs(i)
CROSS JOIN LATERAL (SELECT p.msg_offset + gs.i AS id, gs.i AS i) AS x
-- OFFSET 0 keeps each step a subquery, so the planner does not inline role
-- and content into every expression that uses them (evaluating them again).
CROSS JOIN LATERAL (
    SELECT pg_temp.h(%(seed)s, 30, x.id) AS a, pg_temp.h(%(seed)s, 31, x.id) AS b,
           pg_temp.h(%(seed)s, 32, x.id) AS c
    OFFSET 0
) AS r
CROSS JOIN LATERAL (
    SELECT CASE WHEN x.i = 1 AND p.opens_with_system THEN 'system'
                WHEN mod(x.i, 2) = 1 THEN 'user'
                WHEN mod(r.a, 20) = 0 THEN 'tool'
                WHEN p.created_at < %(epoch)s + interval '151 days' THEN 'bot'
                ELSE 'assistant' END AS role
    OFFSET 0
) AS ro
CROSS JOIN LATERAL (
    SELECT CASE ro.role
               WHEN 'system' THEN (%(system_prompts)s::text[])[1 + mod(r.a >> 8, cardinality(%(system_prompts)s::text[]))]
               WHEN 'tool' THEN '{"tool": "web_search", "status": "ok", "results": ' || mod(r.a >> 8, 10) || '}'
               WHEN 'user' THEN pg_temp.prose(%(corpus)s, r.c, 30 + mod(r.a >> 8, 300)::integer)
               ELSE pg_temp.prose(%(corpus)s, r.c, 80 + mod(r.a >> 8, 720)::integer)
           END
           || CASE WHEN mod(r.a >> 20, 40) = 0
                   THEN ' ' || (%(snippets)s::text[])[1 + mod(r.a >> 28, cardinality(%(snippets)s::text[]))]
                   ELSE '' END AS content
    OFFSET 0
) AS co
