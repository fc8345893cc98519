-- Sign-ups since the last snapshot: valid, unique emails (the tag keeps
-- them apart from every earlier round), a pool password or none (OAuth).
INSERT INTO users (id, email, display_name, avatar_url, password_hash, created_at, updated_at, deleted_at)
SELECT pg_temp.uid(%(seed)s, %(kind)s, g.n),
       (%(first_ascii)s::text[])[1 + mod(r.a, cardinality(%(first_ascii)s::text[]))] || '.'
           || (%(last_ascii)s::text[])[1 + mod(r.a >> 12, cardinality(%(last_ascii)s::text[]))] || '.'
           || %(tag)s || '.' || g.n || '@example.net',
       (%(first_display)s::text[])[1 + mod(r.a, cardinality(%(first_display)s::text[]))] || ' '
           || (%(last_display)s::text[])[1 + mod(r.a >> 12, cardinality(%(last_display)s::text[]))],
       NULL,
       CASE WHEN mod(r.b, 20) = 0 THEN NULL
            ELSE (%(hash_pool)s::text[])[1 + mod(r.b >> 8, cardinality(%(hash_pool)s::text[]))] END,
       %(at)s, %(at)s, NULL
FROM generate_series(1, %(n)s) AS g(n)
CROSS JOIN LATERAL (SELECT pg_temp.h(%(seed)s, 85, g.n) AS a, pg_temp.h(%(seed)s, 86, g.n) AS b) AS r
ORDER BY g.n
RETURNING id
