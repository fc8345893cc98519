-- Live conversations (regular, user active) that have messages, in a seeded
-- order. Planted message defects go here, so they are quarantined by the
-- pipeline rather than excluded along with a soft-deleted parent.
SELECT msg_offset, k
FROM conversation_plan
WHERE kind = 'regular' AND user_n < %(active)s AND k > 0
ORDER BY pg_temp.h(%(seed)s, 40, n)
LIMIT %(limit)s
