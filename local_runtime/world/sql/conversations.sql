-- Conversations from the plan. updated_at follows the last message (NULL for
-- an empty one); a soft delete bumps it, as the app does.
INSERT INTO conversations (id, user_id, agent_id, title, created_at, updated_at, deleted_at)
SELECT p.id, p.user_id, p.agent_id, p.title, p.created_at,
       CASE WHEN p.kind = 'soft_deleted' THEN d.deleted_at
            WHEN p.k > 0 THEN p.last_message_at END,
       d.deleted_at
FROM conversation_plan AS p
CROSS JOIN LATERAL (
    SELECT CASE WHEN p.kind = 'soft_deleted'
                THEN pg_temp.ts_between(pg_temp.h(%(seed)s, 25, p.n), p.last_message_at + interval '1 hour',
                                        %(horizon)s) END AS deleted_at
    OFFSET 0  -- evaluated once, not once per use
) AS d
WHERE p.kind <> 'phantom'
ORDER BY p.n
