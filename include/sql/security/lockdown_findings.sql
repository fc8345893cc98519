-- The destination's lock-down findings: one row per problem, none when the
-- database is as locked down as a Supabase project must be.
--
-- Columns: relation (what the finding is about, schema-qualified), problem
-- (a stable code), message (one plain sentence naming both).
--
-- Checks:
--   rls_disabled            a table in public without row level security
--   no_auth_uid_policy      a table in public with no policy that uses auth.uid()
--   policy_not_owner_only   a permissive policy on a table in public that does
--                           not use auth.uid(), so it opens rows beyond their
--                           owner's; the one known exception is the read of
--                           public agents (agents_public_read in
--                           010_supabase.sql: SELECT, for authenticated only,
--                           USING (is_public) and nothing else)
--   anon_policy             a policy on a table in public that applies to anon
--                           (named, or through PUBLIC)
--   anon_privilege          anon holds any privilege on a table in public
--   authenticated_truncate  authenticated can TRUNCATE a table in public,
--                           which empties it without consulting RLS
--   migration_schema_access anon/authenticated can use or create in a pipeline
--                           schema (migration, or any migration_* such as
--                           migration_stage, which holds raw legacy rows)
--   migration_privilege     anon/authenticated hold a privilege on a relation
--                           in a pipeline schema
--
-- Privileges are read with has_*_privilege(), so grants to PUBLIC and through
-- role membership count, and column-level grants count for the column-capable
-- privileges. Roles are joined by oid, so a missing role yields no rows
-- instead of an error. Only "r" and "p" relations are tables here; views in
-- public are not checked.
WITH public_tables AS (
    SELECT c.oid, format('public.%I', c.relname) AS relation, c.relrowsecurity
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'public'
      AND c.relkind IN ('r', 'p')
),
api_roles AS (
    SELECT oid, rolname
    FROM pg_catalog.pg_roles
    WHERE rolname IN ('anon', 'authenticated')
),
table_privileges (privilege, column_capable, ordinal) AS (
    VALUES ('SELECT', true, 1), ('INSERT', true, 2), ('UPDATE', true, 3),
           ('DELETE', false, 4), ('TRUNCATE', false, 5), ('REFERENCES', true, 6),
           ('TRIGGER', false, 7), ('MAINTAIN', false, 8)
),
-- MAINTAIN exists from PostgreSQL 17 on; asking an older server about it errors.
server AS (
    SELECT current_setting('server_version_num')::int >= 170000 AS knows_maintain
),
pipeline_schemas AS (
    SELECT oid, nspname
    FROM pg_catalog.pg_namespace
    WHERE nspname = 'migration' OR left(nspname, 10) = 'migration_'
),
migration_relations AS (
    SELECT c.oid, c.relkind, format('%I.%I', s.nspname, c.relname) AS relation
    FROM pg_catalog.pg_class c
    JOIN pipeline_schemas s ON s.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
),
-- The relations whose table privileges are checked: public's tables and the
-- pipeline schemas' relations but sequences (which have their own privileges).
checked_relations AS (
    SELECT oid, relation, 'public' AS schema_name FROM public_tables
    UNION ALL
    SELECT oid, relation, 'migration' FROM migration_relations WHERE relkind <> 'S'
),
-- Which privileges a role holds on a relation, by name, in a fixed order.
held AS (
    SELECT t.relation, r.rolname, tp.privilege, tp.ordinal, t.schema_name
    FROM checked_relations t
    CROSS JOIN api_roles r
    CROSS JOIN table_privileges tp
    CROSS JOIN server
    WHERE CASE WHEN tp.privilege = 'MAINTAIN' AND NOT server.knows_maintain THEN false
               WHEN tp.column_capable
               THEN pg_catalog.has_any_column_privilege(r.oid, t.oid, tp.privilege)
               ELSE pg_catalog.has_table_privilege(r.oid, t.oid, tp.privilege)
          END
    UNION ALL
    SELECT m.relation, r.rolname, sp.privilege, sp.ordinal, 'migration'
    FROM migration_relations m
    CROSS JOIN api_roles r
    CROSS JOIN (VALUES ('USAGE', 1), ('SELECT', 2), ('UPDATE', 3)) AS sp (privilege, ordinal)
    WHERE m.relkind = 'S'
      AND pg_catalog.has_sequence_privilege(r.oid, m.oid, sp.privilege)
),
policies AS (
    SELECT p.polname, t.relation, p.polcmd, p.polpermissive, p.polroles,
           coalesce(pg_catalog.pg_get_expr(p.polqual, p.polrelid), '') AS qual,
           coalesce(pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), '') AS withcheck
    FROM pg_catalog.pg_policy p
    JOIN public_tables t ON t.oid = p.polrelid
),
findings AS (
    SELECT t.relation,
           'rls_disabled' AS problem,
           format('Table %s has row level security disabled, so every role granted access to it '
                  'can read and change all of its rows.', t.relation) AS message
    FROM public_tables t
    WHERE NOT t.relrowsecurity

    UNION ALL
    SELECT t.relation,
           'no_auth_uid_policy',
           format('Table %s has no row level security policy that uses auth.uid(), so it does not '
                  'limit signed-in users to their own rows.', t.relation)
    FROM public_tables t
    WHERE NOT EXISTS (
        SELECT 1
        FROM pg_catalog.pg_policy p
        WHERE p.polrelid = t.oid
          AND (strpos(coalesce(pg_catalog.pg_get_expr(p.polqual, p.polrelid), ''), 'auth.uid()') > 0
               OR strpos(coalesce(pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), ''), 'auth.uid()') > 0)
    )

    UNION ALL
    SELECT p.relation,
           'policy_not_owner_only',
           format('Policy %I on table %s does not use auth.uid(), so it opens rows to users who do not '
                  'own them (USING %s).', p.polname, p.relation, coalesce(nullif(p.qual, ''), 'nothing'))
    FROM policies p
    WHERE p.polpermissive
      AND strpos(p.qual, 'auth.uid()') = 0
      AND strpos(p.withcheck, 'auth.uid()') = 0
      -- Signed-in users read public agents: read only, authenticated only, public rows only.
      AND NOT (p.relation = 'public.agents' AND p.polcmd = 'r'
               AND p.polroles = ARRAY[(SELECT oid FROM api_roles WHERE rolname = 'authenticated')]
               AND p.qual IN ('is_public', '(is_public = true)'))

    UNION ALL
    SELECT p.relation,
           'anon_policy',
           format('Policy %I on table %s applies to anon%s, but anonymous clients must have no access '
                  'to the application''s tables.', p.polname, p.relation,
                  CASE WHEN 0::oid = ANY(p.polroles) THEN ' (it is for PUBLIC)' ELSE '' END)
    FROM policies p
    WHERE 0::oid = ANY(p.polroles)
       OR (SELECT oid FROM api_roles WHERE rolname = 'anon') = ANY(p.polroles)

    UNION ALL
    SELECT h.relation,
           'anon_privilege',
           format('Role anon holds %s on table %s, but anonymous clients must have no access '
                  'to the application''s tables.',
                  string_agg(h.privilege, ', ' ORDER BY h.ordinal), h.relation)
    FROM held h
    WHERE h.schema_name = 'public' AND h.rolname = 'anon'
    GROUP BY h.relation

    UNION ALL
    SELECT h.relation,
           'authenticated_truncate',
           format('Role authenticated holds TRUNCATE on table %s, which empties the table '
                  'without consulting row level security.', h.relation)
    FROM held h
    WHERE h.schema_name = 'public' AND h.rolname = 'authenticated' AND h.privilege = 'TRUNCATE'

    UNION ALL
    SELECT format('%I', s.nspname),
           'migration_schema_access',
           format('Role %s has %s on schema %I, which must stay private to the pipeline.',
                  r.rolname,
                  concat_ws(' and ',
                            CASE WHEN pg_catalog.has_schema_privilege(r.oid, s.oid, 'USAGE') THEN 'USAGE' END,
                            CASE WHEN pg_catalog.has_schema_privilege(r.oid, s.oid, 'CREATE') THEN 'CREATE' END),
                  s.nspname)
    FROM pipeline_schemas s
    CROSS JOIN api_roles r
    WHERE pg_catalog.has_schema_privilege(r.oid, s.oid, 'USAGE')
       OR pg_catalog.has_schema_privilege(r.oid, s.oid, 'CREATE')

    UNION ALL
    SELECT h.relation,
           'migration_privilege',
           format('Role %s holds %s on %s, which must stay private to the pipeline.',
                  h.rolname, string_agg(h.privilege, ', ' ORDER BY h.ordinal), h.relation)
    FROM held h
    WHERE h.schema_name = 'migration'
    GROUP BY h.relation, h.rolname
)
SELECT relation, problem, message
FROM findings
ORDER BY relation, problem, message;
