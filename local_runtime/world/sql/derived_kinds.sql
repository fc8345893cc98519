-- Report lists that follow from the generated data rather than from a plan:
-- each section, named by "-- kind:", returns the keys of one kind.
-- Parameter: %(losers)s, the duplicate losers.

-- kind: users.oauth_only
SELECT id::text FROM users WHERE password_hash IS NULL;

-- kind: users.hash_2y
SELECT id::text FROM users WHERE left(password_hash, 4) = '$2y$';

-- kind: users.non_ascii_name
SELECT id::text FROM users WHERE display_name ~ '[^\x01-\x7f]';

-- kind: agents.non_ascii_name
SELECT id::text FROM agents WHERE name ~ '[^\x01-\x7f]';

-- kind: agents.owner_duplicate_loser
SELECT id::text FROM agents WHERE owner_id = ANY(%(losers)s);

-- kind: conversations.non_ascii_title
SELECT id::text FROM conversations WHERE title ~ '[^\x01-\x7f]';

-- kind: conversations.user_soft_deleted
SELECT c.id::text FROM conversations AS c JOIN users AS u ON u.id = c.user_id
WHERE u.deleted_at IS NOT NULL AND c.deleted_at IS NULL;

-- kind: conversations.user_duplicate_loser
SELECT id::text FROM conversations WHERE user_id = ANY(%(losers)s);

-- kind: messages.bot_role
SELECT id::text FROM messages WHERE role = 'bot';

-- kind: messages.non_ascii_content
SELECT id::text FROM messages WHERE octet_length(content) <> length(content);

-- kind: messages.conversation_soft_deleted
SELECT m.id::text FROM messages AS m JOIN conversations AS c ON c.id = m.conversation_id
WHERE c.deleted_at IS NOT NULL;

-- kind: messages.user_soft_deleted
SELECT m.id::text FROM messages AS m JOIN conversations AS c ON c.id = m.conversation_id
JOIN users AS u ON u.id = c.user_id
WHERE u.deleted_at IS NOT NULL AND c.deleted_at IS NULL;

-- kind: media.owner_soft_deleted
SELECT m.id::text FROM media_assets AS m JOIN users AS u ON u.id = m.owner_id
WHERE u.deleted_at IS NOT NULL;

-- kind: media.conversation_soft_deleted
SELECT m.id::text FROM media_assets AS m JOIN conversations AS c ON c.id = m.conversation_id
WHERE c.deleted_at IS NOT NULL;

-- kind: media.owner_duplicate_loser
SELECT id::text FROM media_assets WHERE owner_id = ANY(%(losers)s);

-- kind: users.duplicate_loser_with_children
SELECT u.id::text FROM users AS u
WHERE u.id = ANY(%(losers)s)
  AND EXISTS (SELECT 1 FROM agents AS a WHERE a.owner_id = u.id)
  AND EXISTS (SELECT 1 FROM conversations AS c WHERE c.user_id = u.id AND c.deleted_at IS NULL)
  AND EXISTS (SELECT 1 FROM media_assets AS m WHERE m.owner_id = u.id);
