-- The destination's Supabase shape: the roles, the auth schema and the
-- application's public tables, locked down with row level security.
--
-- On a plain PostgreSQL server (local runs, CI) this file makes the database
-- look like a Supabase project's database to the pipeline. It needs a
-- superuser there: creating a BYPASSRLS role and handing tables to other
-- owners are superuser rights.
--
-- Two kinds of object live here and are treated differently:
--   * What a Supabase project already provides (roles, the auth, storage and
--     extensions schemas, auth.users, auth.identities, the auth functions) is
--     created only when missing, together with its grants, and never altered
--     afterwards. On a hosted project those objects belong to
--     supabase_admin / supabase_auth_admin and the postgres role may not even
--     have CREATE on schema auth, so touching them would fail.
--   * What the application owns (the public tables, their row level
--     security, policies and grants) is created if missing and its security
--     settings are re-applied on every run.
--
-- Every statement is idempotent: the bootstrap runs this on every pipeline
-- run and a second run leaves the catalog unchanged.
--
-- Sources: supabase/postgres migrations/db/init-scripts (roles, schema
-- grants), supabase/auth migrations up to 2024 (auth.users, auth.identities,
-- auth functions), pg_dump output of live projects on PostgreSQL 15 and 17
-- (column order, defaults, index definitions), and the Supabase guide
-- "Row Level Security".


-- ---------------------------------------------------------------------------
-- 1. Roles (cluster-wide: every database on the server shares them)
-- ---------------------------------------------------------------------------
-- Supabase creates the API roles NOINHERIT and later switched them to INHERIT
-- (supabase/postgres 20230529180330_alter_api_roles_for_inherit); this is the
-- current state. All roles are NOLOGIN here because no password is set: on a
-- trust-authenticated local server a LOGIN role without a password would be
-- an open door. On a real project authenticator logs in with a password.
-- supabase_admin is not emulated, so it is not granted to authenticator.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT *
        FROM (VALUES
            ('anon',                   'NOLOGIN INHERIT',           '3s'),
            ('authenticated',          'NOLOGIN INHERIT',           '8s'),
            ('service_role',           'NOLOGIN INHERIT BYPASSRLS', NULL),
            ('authenticator',          'NOLOGIN NOINHERIT',         NULL),
            ('supabase_auth_admin',    'NOLOGIN NOINHERIT',         NULL),
            ('supabase_storage_admin', 'NOLOGIN NOINHERIT',         NULL)
        ) AS v (name, options, statement_timeout)
    LOOP
        CONTINUE WHEN to_regrole(r.name) IS NOT NULL;
        BEGIN
            EXECUTE format('CREATE ROLE %I %s', r.name, r.options);
            IF r.statement_timeout IS NOT NULL THEN
                -- Supabase's short timeouts for the API roles.
                EXECUTE format('ALTER ROLE %I SET statement_timeout = %L', r.name, r.statement_timeout);
            END IF;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            -- A bootstrap of another database on the same server created it
            -- between our check and our CREATE; the role is there, move on.
            NULL;
        END;
    END LOOP;

    -- authenticator switches into one of the API roles per request.
    FOR r IN SELECT unnest(ARRAY['anon', 'authenticated', 'service_role']) AS name
    LOOP
        CONTINUE WHEN EXISTS (
            SELECT 1
            FROM pg_catalog.pg_auth_members m
            WHERE m.roleid = to_regrole(r.name)
              AND m.member = to_regrole('authenticator')
        );
        BEGIN
            EXECUTE format('GRANT %I TO authenticator', r.name);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END LOOP;
END
$$;


-- ---------------------------------------------------------------------------
-- 2. Schemas
-- ---------------------------------------------------------------------------
-- A new schema grants nothing to PUBLIC, which is what Supabase relies on:
-- only the API roles get USAGE. Supabase installs uuid-ossp and pgcrypto into
-- extensions; nothing here needs them (gen_random_uuid() is in core since
-- PostgreSQL 13), so the schema stays empty. storage stays empty too: the
-- pipeline talks to Storage over HTTP, never through its tables.
DO $$
BEGIN
    IF to_regnamespace('auth') IS NULL THEN
        CREATE SCHEMA auth;
        GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
        GRANT ALL ON SCHEMA auth TO supabase_auth_admin;
    END IF;
    IF to_regnamespace('storage') IS NULL THEN
        CREATE SCHEMA storage;
        GRANT USAGE ON SCHEMA storage TO anon, authenticated, service_role;
        GRANT ALL ON SCHEMA storage TO supabase_storage_admin;
    END IF;
    IF to_regnamespace('extensions') IS NULL THEN
        CREATE SCHEMA extensions;
        GRANT USAGE ON SCHEMA extensions TO anon, authenticated, service_role;
    END IF;
END
$$;


-- ---------------------------------------------------------------------------
-- 3. auth.users and auth.identities, as Supabase Auth's migrations leave them
-- ---------------------------------------------------------------------------
-- Column order, types, defaults, checks and indexes follow the live table
-- (pg_dump of PostgreSQL 15/17 projects), which is the sum of supabase/auth
-- migrations 00_init_auth_schema through 20240214120130_add_is_anonymous_column.
-- No column of either table is left out. Left out are Auth's other tables
-- (sessions, refresh_tokens, mfa_*, one_time_tokens, flow_state, sso_*,
-- saml_*, audit_log_entries, instances, schema_migrations, oauth_*): the
-- pipeline writes only users and identities, and Auth creates the rest.
--
-- Note the defaults: confirmation_token, recovery_token,
-- email_change_token_new and email_change have NO default and are nullable,
-- exactly as in Supabase. A direct SQL insert that omits them stores NULL and
-- sign-in then fails with "converting NULL to string is unsupported"
-- (supabase/auth issue 1940), so the loader must write '' into them. The
-- later token columns do default to ''.
DO $$
BEGIN
    IF to_regclass('auth.users') IS NULL THEN
        CREATE TABLE auth.users (
            instance_id                 uuid,
            id                          uuid NOT NULL,
            aud                         varchar(255),
            role                        varchar(255),
            email                       varchar(255),
            encrypted_password          varchar(255),
            email_confirmed_at          timestamptz,
            invited_at                  timestamptz,
            confirmation_token          varchar(255),
            confirmation_sent_at        timestamptz,
            recovery_token              varchar(255),
            recovery_sent_at            timestamptz,
            email_change_token_new      varchar(255),
            email_change                varchar(255),
            email_change_sent_at        timestamptz,
            last_sign_in_at             timestamptz,
            raw_app_meta_data           jsonb,
            raw_user_meta_data          jsonb,
            is_super_admin              boolean,
            created_at                  timestamptz,
            updated_at                  timestamptz,
            -- varchar(15) until 20230116124310 made them text; the old
            -- varchar-typed defaults stayed, as pg_dump of live projects shows.
            phone                       text DEFAULT NULL::character varying,
            phone_confirmed_at          timestamptz,
            phone_change                text DEFAULT ''::character varying,
            phone_change_token          varchar(255) DEFAULT '',
            phone_change_sent_at        timestamptz,
            confirmed_at                timestamptz
                GENERATED ALWAYS AS (LEAST(email_confirmed_at, phone_confirmed_at)) STORED,
            email_change_token_current  varchar(255) DEFAULT '',
            email_change_confirm_status smallint DEFAULT 0,
            banned_until                timestamptz,
            reauthentication_token      varchar(255) DEFAULT '',
            reauthentication_sent_at    timestamptz,
            is_sso_user                 boolean NOT NULL DEFAULT false,
            deleted_at                  timestamptz,
            is_anonymous                boolean NOT NULL DEFAULT false,
            CONSTRAINT users_pkey PRIMARY KEY (id),
            CONSTRAINT users_phone_key UNIQUE (phone),
            CONSTRAINT users_email_change_confirm_status_check
                CHECK (email_change_confirm_status >= 0 AND email_change_confirm_status <= 2)
        );
        -- Email is unique only among non-SSO users (20221215195500).
        CREATE UNIQUE INDEX users_email_partial_key ON auth.users (email) WHERE is_sso_user = false;
        CREATE INDEX users_instance_id_email_idx ON auth.users (instance_id, lower(email::text));
        CREATE INDEX users_instance_id_idx ON auth.users (instance_id);
        CREATE INDEX users_is_anonymous_idx ON auth.users (is_anonymous);
        -- Token indexes skip empty strings and numeric OTPs (20220429102000).
        CREATE UNIQUE INDEX confirmation_token_idx ON auth.users (confirmation_token)
            WHERE confirmation_token::text !~ '^[0-9 ]*$';
        CREATE UNIQUE INDEX recovery_token_idx ON auth.users (recovery_token)
            WHERE recovery_token::text !~ '^[0-9 ]*$';
        CREATE UNIQUE INDEX email_change_token_current_idx ON auth.users (email_change_token_current)
            WHERE email_change_token_current::text !~ '^[0-9 ]*$';
        CREATE UNIQUE INDEX email_change_token_new_idx ON auth.users (email_change_token_new)
            WHERE email_change_token_new::text !~ '^[0-9 ]*$';
        CREATE UNIQUE INDEX reauthentication_token_idx ON auth.users (reauthentication_token)
            WHERE reauthentication_token::text !~ '^[0-9 ]*$';
        COMMENT ON TABLE auth.users IS 'Auth: Stores user login data within a secure schema.';
        COMMENT ON COLUMN auth.users.is_sso_user IS
            'Auth: Set this column to true when the account comes from SSO. These accounts can have duplicate emails.';
        COMMENT ON INDEX auth.users_email_partial_key IS
            'Auth: A partial unique index that applies only when is_sso_user is false';
        ALTER TABLE auth.users OWNER TO supabase_auth_admin;
        -- Auth enables RLS on its tables without policies (20240612123726):
        -- only the owner and BYPASSRLS roles see the rows.
        ALTER TABLE auth.users ENABLE ROW LEVEL SECURITY;
    END IF;

    IF to_regclass('auth.identities') IS NULL THEN
        -- Since 20231117164230 the provider's own id lives in provider_id and
        -- id is a generated uuid; email is generated from identity_data
        -- (20221215195800), so inserts must not name it.
        CREATE TABLE auth.identities (
            provider_id     text NOT NULL,
            user_id         uuid NOT NULL,
            identity_data   jsonb NOT NULL,
            provider        text NOT NULL,
            last_sign_in_at timestamptz,
            created_at      timestamptz,
            updated_at      timestamptz,
            email           text GENERATED ALWAYS AS (lower(identity_data ->> 'email')) STORED,
            id              uuid NOT NULL DEFAULT gen_random_uuid(),
            CONSTRAINT identities_pkey PRIMARY KEY (id),
            CONSTRAINT identities_provider_id_provider_unique UNIQUE (provider_id, provider),
            CONSTRAINT identities_user_id_fkey FOREIGN KEY (user_id)
                REFERENCES auth.users (id) ON DELETE CASCADE
        );
        CREATE INDEX identities_email_idx ON auth.identities (email text_pattern_ops);
        CREATE INDEX identities_user_id_idx ON auth.identities (user_id);
        COMMENT ON TABLE auth.identities IS 'Auth: Stores identities associated to a user.';
        COMMENT ON COLUMN auth.identities.email IS
            'Auth: Email is a generated column that references the optional email property in the identity_data';
        COMMENT ON INDEX auth.identities_email_idx IS 'Auth: Ensures indexed queries on the email column';
        ALTER TABLE auth.identities OWNER TO supabase_auth_admin;
        ALTER TABLE auth.identities ENABLE ROW LEVEL SECURITY;
    END IF;
END
$$;


-- ---------------------------------------------------------------------------
-- 4. auth.uid(), auth.role(), auth.email(), auth.jwt()
-- ---------------------------------------------------------------------------
-- Bodies as live projects have them (supabase/auth 20220531120530 and the
-- nullif() fix of 20211202183645): the legacy per-claim setting
-- request.jwt.claim.<name> wins, then PostgREST's request.jwt.claims JSON.
-- EXECUTE stays with PUBLIC (the PostgreSQL default, which Supabase keeps), so
-- policies for authenticated can call them. auth.email() is not asked for but
-- comes with the set on every project. The four blocks are alike on purpose:
-- each is Supabase's own definition, kept as it is (data, not copied logic).
DO $$
BEGIN
    IF to_regprocedure('auth.uid()') IS NULL THEN
        CREATE FUNCTION auth.uid() RETURNS uuid
            LANGUAGE sql STABLE
            AS $fn$
  select
  coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$fn$;
        COMMENT ON FUNCTION auth.uid() IS 'Deprecated. Use auth.jwt() -> ''sub'' instead.';
        ALTER FUNCTION auth.uid() OWNER TO supabase_auth_admin;
    END IF;

    IF to_regprocedure('auth.role()') IS NULL THEN
        CREATE FUNCTION auth.role() RETURNS text
            LANGUAGE sql STABLE
            AS $fn$
  select
  coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$fn$;
        COMMENT ON FUNCTION auth.role() IS 'Deprecated. Use auth.jwt() -> ''role'' instead.';
        ALTER FUNCTION auth.role() OWNER TO supabase_auth_admin;
    END IF;

    IF to_regprocedure('auth.email()') IS NULL THEN
        CREATE FUNCTION auth.email() RETURNS text
            LANGUAGE sql STABLE
            AS $fn$
  select
  coalesce(
    nullif(current_setting('request.jwt.claim.email', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')
  )::text
$fn$;
        COMMENT ON FUNCTION auth.email() IS 'Deprecated. Use auth.jwt() -> ''email'' instead.';
        ALTER FUNCTION auth.email() OWNER TO supabase_auth_admin;
    END IF;

    IF to_regprocedure('auth.jwt()') IS NULL THEN
        CREATE FUNCTION auth.jwt() RETURNS jsonb
            LANGUAGE sql STABLE
            AS $fn$
  select
    coalesce(
        nullif(current_setting('request.jwt.claim', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')
    )::jsonb
$fn$;
        ALTER FUNCTION auth.jwt() OWNER TO supabase_auth_admin;
    END IF;
END
$$;


-- ---------------------------------------------------------------------------
-- 5. The application's tables
-- ---------------------------------------------------------------------------
-- Deleting a user is how the pipeline mirrors a soft-deleted legacy user: it
-- deletes the auth.users row and everything private to that user follows.
--   auth.users -> users                 CASCADE  (the profile is the account)
--   users -> conversations              CASCADE  (a user's history is theirs)
--   conversations -> messages           CASCADE
--   users -> media                      CASCADE  (the files' rows; the Storage
--                                                 objects must be removed by
--                                                 the pipeline, no FK reaches them)
--   users -> agents                     SET NULL (an agent may be public and
--                                                 in use by other users; it
--                                                 becomes ownerless like the
--                                                 built-in agents, owner_id
--                                                 NULL, and the owner-only
--                                                 policy hides it from every
--                                                 signed-in user)
--   agents -> conversations             SET NULL (other users' history must
--                                                 survive an agent's removal)
--   conversations/messages -> media     SET NULL (as specified: the file stays
--                                                 with its owner)
-- Keys and timestamps have no defaults: every row comes from the legacy
-- database with its own id and times.

CREATE TABLE IF NOT EXISTS public.users (
    id          uuid        NOT NULL,
    email       text        NOT NULL,
    name        text        NOT NULL,
    avatar_url  text,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    CONSTRAINT users_pkey PRIMARY KEY (id),
    CONSTRAINT users_id_fkey FOREIGN KEY (id) REFERENCES auth.users (id) ON DELETE CASCADE,
    CONSTRAINT users_email_key UNIQUE (email),
    -- Stored lower-cased so the unique constraint is case-insensitive and
    -- matches auth.identities.email, which Auth lower-cases.
    CONSTRAINT users_email_lowercase CHECK (email = lower(email))
);

CREATE TABLE IF NOT EXISTS public.agents (
    id            uuid        NOT NULL,
    owner_id      uuid,
    name          text        NOT NULL,
    description   text,
    system_prompt text        NOT NULL,
    model         text        NOT NULL,
    temperature   real,
    tools         jsonb       NOT NULL DEFAULT '[]'::jsonb,
    is_public     boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    CONSTRAINT agents_pkey PRIMARY KEY (id),
    CONSTRAINT agents_owner_id_fkey FOREIGN KEY (owner_id)
        REFERENCES public.users (id) ON DELETE SET NULL
);

CREATE TABLE IF NOT EXISTS public.conversations (
    id          uuid        NOT NULL,
    user_id     uuid        NOT NULL,
    agent_id    uuid,
    title       text        NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    CONSTRAINT conversations_pkey PRIMARY KEY (id),
    CONSTRAINT conversations_user_id_fkey FOREIGN KEY (user_id)
        REFERENCES public.users (id) ON DELETE CASCADE,
    CONSTRAINT conversations_agent_id_fkey FOREIGN KEY (agent_id)
        REFERENCES public.agents (id) ON DELETE SET NULL
);

CREATE TABLE IF NOT EXISTS public.messages (
    id              bigint      NOT NULL,
    conversation_id uuid        NOT NULL,
    role            text        NOT NULL,
    content         text        NOT NULL,
    token_count     integer,
    model           text,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL,
    CONSTRAINT messages_pkey PRIMARY KEY (id),
    CONSTRAINT messages_conversation_id_fkey FOREIGN KEY (conversation_id)
        REFERENCES public.conversations (id) ON DELETE CASCADE,
    CONSTRAINT messages_role_check CHECK (role IN ('user', 'assistant', 'system', 'tool'))
);

-- After cutover the application inserts messages itself, without an id: the
-- id needs a generator. BY DEFAULT, not ALWAYS: the pipeline (and a rollback)
-- keeps writing the legacy ids explicitly. The identity starts at 1; the
-- cutover step moves it above the highest migrated id (cutover.py), and the
-- verdict checks it. Added only when the column has neither an identity nor a
-- default: a project whose messages.id already has a serial default keeps it
-- (pg_get_serial_sequence finds either kind).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                   WHERE a.attrelid = 'public.messages'::regclass AND a.attname = 'id'
                     AND (a.attidentity <> '' OR a.atthasdef)) THEN
        ALTER TABLE public.messages ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY;
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS public.media (
    id              uuid        NOT NULL,
    owner_id        uuid        NOT NULL,
    conversation_id uuid,
    message_id      bigint,
    bucket          text        NOT NULL,
    object_path     text        NOT NULL,
    file_name       text        NOT NULL,
    mime_type       text        NOT NULL,
    size_bytes      bigint      NOT NULL,
    sha256          text        NOT NULL,
    created_at      timestamptz NOT NULL,
    CONSTRAINT media_pkey PRIMARY KEY (id),
    CONSTRAINT media_object_path_key UNIQUE (object_path),
    CONSTRAINT media_owner_id_fkey FOREIGN KEY (owner_id)
        REFERENCES public.users (id) ON DELETE CASCADE,
    CONSTRAINT media_conversation_id_fkey FOREIGN KEY (conversation_id)
        REFERENCES public.conversations (id) ON DELETE SET NULL,
    CONSTRAINT media_message_id_fkey FOREIGN KEY (message_id)
        REFERENCES public.messages (id) ON DELETE SET NULL
);

-- PostgreSQL does not index the referencing side of a foreign key. Without
-- these, every cascaded delete and every policy check scans the child table.
-- media's two SET NULL keys are indexed too: deleting a user's messages would
-- otherwise scan media once per message.
CREATE INDEX IF NOT EXISTS agents_owner_id_idx ON public.agents (owner_id);
CREATE INDEX IF NOT EXISTS conversations_user_id_idx ON public.conversations (user_id);
CREATE INDEX IF NOT EXISTS conversations_agent_id_idx ON public.conversations (agent_id);
CREATE INDEX IF NOT EXISTS messages_conversation_id_idx ON public.messages (conversation_id);
CREATE INDEX IF NOT EXISTS media_owner_id_idx ON public.media (owner_id);
CREATE INDEX IF NOT EXISTS media_conversation_id_idx ON public.media (conversation_id)
    WHERE conversation_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS media_message_id_idx ON public.media (message_id)
    WHERE message_id IS NOT NULL;


-- ---------------------------------------------------------------------------
-- 6. Row level security and policies
-- ---------------------------------------------------------------------------
-- Every table in the exposed public schema has RLS (Supabase linter rule
-- 0013). Policies are owner-only (but for reading public agents) and for
-- authenticated only, so anon gets no policy at all. auth.uid() is wrapped in a scalar subquery as the Supabase
-- guide recommends: the planner evaluates it once per statement, not per row.
-- A policy is created only when missing; to change one, drop it first (or
-- in a later file), since CREATE POLICY has no OR REPLACE.
ALTER TABLE public.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.agents ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.conversations ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.media ENABLE ROW LEVEL SECURITY;

-- The policy blocks below are alike on purpose: one declaration per table (data, not copied logic).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy
                   WHERE polrelid = 'public.users'::regclass AND polname = 'users_owner_all') THEN
        CREATE POLICY users_owner_all ON public.users
            FOR ALL TO authenticated
            USING (id = (SELECT auth.uid()))
            WITH CHECK (id = (SELECT auth.uid()));
    END IF;

    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy
                   WHERE polrelid = 'public.agents'::regclass AND polname = 'agents_owner_all') THEN
        CREATE POLICY agents_owner_all ON public.agents
            FOR ALL TO authenticated
            USING (owner_id = (SELECT auth.uid()))
            WITH CHECK (owner_id = (SELECT auth.uid()));
    END IF;

    -- The one exception to owner-only, as the legacy application allowed: any
    -- signed-in user may read (only read) an agent its owner marked public.
    -- Writes stay with agents_owner_all. Policies are OR-ed, so this adds the
    -- public agents to what a user sees. The lock-down check knows this exact
    -- policy (include/sql/security/lockdown_findings.sql); any other policy
    -- that does not use auth.uid(), or one for anon, is a finding.
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy
                   WHERE polrelid = 'public.agents'::regclass AND polname = 'agents_public_read') THEN
        CREATE POLICY agents_public_read ON public.agents
            FOR SELECT TO authenticated
            USING (is_public);
    END IF;

    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy
                   WHERE polrelid = 'public.conversations'::regclass AND polname = 'conversations_owner_all') THEN
        CREATE POLICY conversations_owner_all ON public.conversations
            FOR ALL TO authenticated
            USING (user_id = (SELECT auth.uid()))
            WITH CHECK (user_id = (SELECT auth.uid()));
    END IF;

    -- A message belongs to whoever owns its conversation.
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy
                   WHERE polrelid = 'public.messages'::regclass AND polname = 'messages_owner_all') THEN
        CREATE POLICY messages_owner_all ON public.messages
            FOR ALL TO authenticated
            USING (EXISTS (
                SELECT 1 FROM public.conversations c
                WHERE c.id = messages.conversation_id
                  AND c.user_id = (SELECT auth.uid())
            ))
            WITH CHECK (EXISTS (
                SELECT 1 FROM public.conversations c
                WHERE c.id = messages.conversation_id
                  AND c.user_id = (SELECT auth.uid())
            ));
    END IF;

    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy
                   WHERE polrelid = 'public.media'::regclass AND polname = 'media_owner_all') THEN
        CREATE POLICY media_owner_all ON public.media
            FOR ALL TO authenticated
            USING (owner_id = (SELECT auth.uid()))
            WITH CHECK (owner_id = (SELECT auth.uid()));
    END IF;
END
$$;


-- ---------------------------------------------------------------------------
-- 7. Grants
-- ---------------------------------------------------------------------------
-- As Supabase: the API roles may use schema public, and PUBLIC may not create
-- in it (the PostgreSQL 15+ default Supabase runs on; revoked explicitly for
-- older servers). Unlike Supabase's historical default privileges, which hand
-- anon ALL on every new table, anon gets nothing here: the application is
-- sign-in only, and the Supabase guide says to revoke those grants.
-- authenticated gets exactly the four DML rights its policies filter;
-- TRUNCATE would empty a table past RLS, so it is revoked. service_role
-- bypasses RLS and is what the pipeline's own API calls use.
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- Revoke exactly what must not be held rather than ALL-then-GRANT: revoking
-- and re-granting authenticated's rights would move its ACL entry on every
-- run, and a second run must leave the catalog as it was.
REVOKE ALL ON TABLE public.users, public.agents, public.conversations, public.messages, public.media
    FROM PUBLIC, anon;
REVOKE TRUNCATE, REFERENCES, TRIGGER
    ON TABLE public.users, public.agents, public.conversations, public.messages, public.media
    FROM authenticated;
-- PostgreSQL 17 added MAINTAIN (VACUUM, LOCK TABLE, ...), which Supabase's
-- default "GRANT ALL" includes on 17; older servers reject the keyword.
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 170000 THEN
        REVOKE MAINTAIN
            ON TABLE public.users, public.agents, public.conversations, public.messages, public.media
            FROM authenticated;
    END IF;
END
$$;
GRANT SELECT, INSERT, UPDATE, DELETE
    ON TABLE public.users, public.agents, public.conversations, public.messages, public.media
    TO authenticated, service_role;
