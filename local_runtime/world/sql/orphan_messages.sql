-- Message ids of the plan's phantom conversations (never existed) and of
-- conversations whose user never existed.
SELECT kind, msg_offset + gs.i AS id
FROM conversation_plan
CROSS JOIN LATERAL generate_series(1, k) AS gs(i)
WHERE kind IN ('phantom', 'orphan_user')
ORDER BY id
