-- Turn planned groups of users into duplicate accounts: every member takes a
-- case/space variant of the base member's email, and updated_at ranks them
-- a day apart above the group's latest sign-up, rank 0 (the survivor) last,
-- so "most recently updated survives" has one clear winner.
WITH plan AS (
    SELECT * FROM unnest(%(member)s::uuid[], %(base)s::uuid[], %(code)s::integer[],
                         %(grp)s::integer[], %(rank)s::integer[])
           AS v(member, base, code, grp, rank)
),
latest AS (
    SELECT plan.grp, max(u.created_at) AS created_at
    FROM plan JOIN users AS u ON u.id = plan.member
    GROUP BY plan.grp
)
UPDATE users AS u
SET email = pg_temp.email_variant(b.email, plan.code),
    updated_at = latest.created_at + (4 - plan.rank) * interval '1 day'
                 + mod(pg_temp.hu(%(seed)s, 50, u.id), 3600) * interval '1 second'
FROM plan
JOIN latest USING (grp)
JOIN users AS b ON b.id = plan.base
WHERE u.id = plan.member
