-- The legacy source's newest change per entity (naive UTC, like the watermarks),
-- read from the same change timestamps the incremental runs follow.
SELECT 'users' AS entity, max(greatest(created_at, updated_at, deleted_at)) AS newest FROM {users}
UNION ALL
SELECT 'agents', max(greatest(created_at, updated_at)) FROM {agents}
UNION ALL
SELECT 'conversations', max(greatest(created_at, updated_at, deleted_at)) FROM {conversations}
UNION ALL
SELECT 'messages', max(created_at) FROM {messages}
UNION ALL
SELECT 'media', max(created_at) FROM {media_assets};
