-- Bulk users: row n of the layout [0, active) active, [active, valid_end)
-- soft-deleted, [valid_end, n_users) invalid emails (they own nothing).
-- Defects that need a plan (duplicates, blank names, known passwords, ...)
-- are applied afterwards by the generator.
INSERT INTO users (id, email, display_name, avatar_url, password_hash, created_at, updated_at, deleted_at)
SELECT pg_temp.uid(%(seed)s, 'users', g.n),
       CASE WHEN g.n < %(valid_end)s THEN e.email
            ELSE pg_temp.break_email(e.email, g.n - %(valid_end)s) END,
       nm.first_d || ' ' || nm.last_d
           || CASE WHEN mod(r.b, 40) = 0
                   THEN ' ' || (%(emoji)s::text[])[1 + mod(r.b >> 8, cardinality(%(emoji)s::text[]))]
                   ELSE '' END,
       CASE WHEN mod(r.b >> 16, 3) = 0 THEN NULL
            ELSE 'https://cdn.legacy-chat.example/avatars/' || to_hex(r.b) || '.jpg' END,
       -- About 1 in 20 OAuth-only; the rest reuse a precomputed bcrypt pool under the
       -- three prefixes the app has written over the years.
       CASE WHEN mod(r.c, 100) < 5 THEN NULL
            WHEN mod(r.c, 100) < 7 THEN '$2y$' || substr(ph.hash, 5)
            WHEN mod(r.c, 100) < 50 THEN '$2a$' || substr(ph.hash, 5)
            ELSE ph.hash END,
       t.created_at,
       CASE WHEN g.n >= %(active)s AND g.n < %(valid_end)s THEN t.deleted_at
            ELSE pg_temp.ts_between(r.d, t.created_at, %(horizon)s) END,
       CASE WHEN g.n >= %(active)s AND g.n < %(valid_end)s THEN t.deleted_at END
FROM generate_series(0, %(n_users)s - 1) AS g(n)
CROSS JOIN LATERAL (
    SELECT pg_temp.h(%(seed)s, 2, g.n) AS a, pg_temp.h(%(seed)s, 3, g.n) AS b,
           pg_temp.h(%(seed)s, 4, g.n) AS c, pg_temp.h(%(seed)s, 5, g.n) AS d
    OFFSET 0  -- keep each step a subquery: inlined, its expressions would be evaluated once per use
) AS r
CROSS JOIN LATERAL (
    SELECT pg_temp.user_created(%(seed)s, g.n, %(epoch)s, %(horizon)s) AS created_at,
           pg_temp.ts_between(r.d, pg_temp.user_created(%(seed)s, g.n, %(epoch)s, %(horizon)s) + interval '1 day',
                              %(horizon)s) AS deleted_at
    OFFSET 0
) AS t
CROSS JOIN LATERAL (
    SELECT (%(first_display)s::text[])[1 + mod(r.a, cardinality(%(first_display)s::text[]))] AS first_d,
           (%(first_ascii)s::text[])[1 + mod(r.a, cardinality(%(first_ascii)s::text[]))] AS first_a,
           (%(last_display)s::text[])[1 + mod(r.a >> 12, cardinality(%(last_display)s::text[]))] AS last_d,
           (%(last_ascii)s::text[])[1 + mod(r.a >> 12, cardinality(%(last_ascii)s::text[]))] AS last_a,
           (%(domains)s::text[])[1 + mod(r.a >> 24, cardinality(%(domains)s::text[]))] AS domain
    OFFSET 0
) AS nm
CROSS JOIN LATERAL (
    -- Three local-part styles; the row number keeps every address unique.
    SELECT CASE mod(r.a >> 32, 3)
               WHEN 0 THEN nm.first_a || '.' || nm.last_a || g.n
               WHEN 1 THEN nm.first_a || g.n
               ELSE nm.first_a || '_' || nm.last_a || g.n
           END || '@' || nm.domain AS email
    OFFSET 0
) AS e
CROSS JOIN LATERAL (
    SELECT (%(hash_pool)s::text[])[1 + mod(r.c >> 8, cardinality(%(hash_pool)s::text[]))] AS hash
) AS ph
