-- Live, loadable users in a seeded order: the ones the app may change.
-- Duplicate accounts and the login-test accounts are left alone, so the
-- planted merges and the known passwords keep their meaning.
WITH duplicated AS (
    SELECT lower(btrim(email)) AS email_norm FROM users GROUP BY 1 HAVING count(*) > 1
)
SELECT u.id
FROM users AS u
WHERE u.deleted_at IS NULL
  AND lower(btrim(u.email)) ~ '^[^@[:space:]]+@[^@[:space:].]+(\.[^@[:space:].]+)+$'
  AND split_part(u.email, '@', 2) <> 'login-test.example.com'
  AND lower(btrim(u.email)) NOT IN (SELECT email_norm FROM duplicated)
ORDER BY md5(u.id::text || %(salt)s)
LIMIT %(limit)s
