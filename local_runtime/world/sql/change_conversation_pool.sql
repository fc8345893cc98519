-- Live conversations of live, non-duplicate users in a seeded order.
-- `clean`: none of its messages is a planted defect (deleting it would
-- change the planted world); `has_media`: a media asset points at it.
WITH duplicated AS (
    SELECT lower(btrim(email)) AS email_norm FROM users GROUP BY 1 HAVING count(*) > 1
),
picked AS (
    SELECT c.id
    FROM conversations AS c
    JOIN users AS u ON u.id = c.user_id
    WHERE c.deleted_at IS NULL AND u.deleted_at IS NULL
      AND lower(btrim(u.email)) ~ '^[^@[:space:]]+@[^@[:space:].]+(\.[^@[:space:].]+)+$'
      AND split_part(u.email, '@', 2) <> 'login-test.example.com'
      AND lower(btrim(u.email)) NOT IN (SELECT email_norm FROM duplicated)
    ORDER BY md5(c.id::text || %(salt)s)
    LIMIT %(limit)s
)
SELECT p.id,
       NOT EXISTS (
           SELECT 1 FROM messages AS m
           WHERE m.conversation_id = p.id
             AND (m.role NOT IN ('user', 'assistant', 'system', 'tool', 'bot')
                  OR (m.metadata IS NOT NULL AND NOT pg_temp.is_json(m.metadata))
                  OR length(m.content) > 100000)
       ) AS clean,
       p.id IN (SELECT conversation_id FROM media_assets WHERE conversation_id IS NOT NULL) AS has_media
FROM picked AS p
