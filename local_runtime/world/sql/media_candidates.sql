-- What the media assets hang off, drawn deterministically: messages (with
-- their conversation and its user), conversations alone, and users alone.
-- `active` says the owner and the conversation are live, so a planted media
-- defect there is really quarantined rather than excluded with its parent.
(
    SELECT 'message' AS attach, c.user_id AS owner_id, m.conversation_id, m.id AS message_id,
           m.created_at + interval '2 seconds' AS created_at,
           u.deleted_at IS NULL AND c.deleted_at IS NULL AS active
    FROM messages AS m
    JOIN conversations AS c ON c.id = m.conversation_id
    JOIN users AS u ON u.id = c.user_id
    WHERE mod(pg_temp.h(%(seed)s, 60, m.id), %(message_sample)s) = 0
      AND m.role IN ('user', 'assistant', 'bot')
      AND NOT m.id = ANY(%(skip_messages)s)
      AND NOT u.id = ANY(%(skip_users)s)
    ORDER BY pg_temp.h(%(seed)s, 61, m.id)
    LIMIT %(n_message)s
)
UNION ALL
(
    SELECT 'conversation', c.user_id, c.id, NULL::bigint,
           c.created_at + mod(pg_temp.hu(%(seed)s, 62, c.id), 3600) * interval '1 second',
           u.deleted_at IS NULL AND c.deleted_at IS NULL
    FROM conversations AS c
    JOIN users AS u ON u.id = c.user_id
    WHERE NOT u.id = ANY(%(skip_users)s)
    ORDER BY pg_temp.hu(%(seed)s, 63, c.id)
    LIMIT %(n_conversation)s
)
UNION ALL
(
    SELECT 'owner', u.id, NULL::uuid, NULL::bigint,
           pg_temp.ts_between(pg_temp.hu(%(seed)s, 64, u.id), u.created_at, %(horizon)s),
           u.deleted_at IS NULL
    FROM users AS u
    WHERE NOT u.id = ANY(%(skip_users)s)
    ORDER BY pg_temp.hu(%(seed)s, 65, u.id)
    LIMIT %(n_owner)s
)
