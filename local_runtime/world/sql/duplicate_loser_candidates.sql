-- Active users who own an agent, a live conversation and a media asset, in a
-- seeded order. One becomes the loser of the first duplicate pair, so the
-- merge has to re-point all three kinds of children.
SELECT u.id
FROM users AS u
WHERE u.deleted_at IS NULL
  AND EXISTS (SELECT 1 FROM agents AS a WHERE a.owner_id = u.id)
  AND EXISTS (SELECT 1 FROM conversations AS c WHERE c.user_id = u.id AND c.deleted_at IS NULL)
  AND EXISTS (SELECT 1 FROM media_assets AS m WHERE m.owner_id = u.id)
ORDER BY pg_temp.hu(%(seed)s, 70, u.id)
LIMIT 200
