-- Messages posted since the last snapshot, appended after the highest id in
-- the order given (ids are explicit, so the result does not depend on the
-- sequence's cache).
INSERT INTO messages (id, conversation_id, role, content, token_count, model, metadata, created_at)
SELECT %(max_id)s + v.ord, v.conversation_id, v.role, co.content, 1 + length(co.content) / 4,
       CASE WHEN v.role = 'assistant'
            THEN (%(models)s::text[])[1 + mod(r.b, cardinality(%(models)s::text[]))] END,
       CASE WHEN v.role = 'assistant'
            THEN '{"finish_reason": "stop", "latency_ms": ' || (50 + mod(r.b >> 8, 4000)) || '}' END,
       %(at)s
FROM unnest(%(conversations)s::uuid[], %(roles)s::text[]) WITH ORDINALITY AS v(conversation_id, role, ord)
CROSS JOIN LATERAL (SELECT pg_temp.h(%(seed)s, 91, %(max_id)s + v.ord) AS a,
                           pg_temp.h(%(seed)s, 92, %(max_id)s + v.ord) AS b) AS r
CROSS JOIN LATERAL (
    SELECT CASE v.role WHEN 'user' THEN pg_temp.prose(%(corpus)s, r.a, 30 + mod(r.b >> 20, 300)::integer)
                       ELSE pg_temp.prose(%(corpus)s, r.a, 80 + mod(r.b >> 20, 720)::integer) END AS content
) AS co
ORDER BY v.ord
RETURNING id
