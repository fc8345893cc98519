"""Supabase Auth accounts for migrated users, so they sign in with their old passwords.

The bulk path writes ``auth.users`` and ``auth.identities`` with SQL, in the
same chunk transaction as ``public.users``, with every column Supabase Auth
reads set the way it needs it (see SUPABASE_FACTS.md): the bcrypt hash is
copied unchanged, the token columns are empty strings (a NULL there breaks
sign-in), and ``auth.identities.email`` is generated, so it is not written.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

INSTANCE_ID = "00000000-0000-0000-0000-000000000000"


def upsert_accounts(dest: psycopg.Connection, stage: sql.Identifier, where: sql.Composable) -> None:
    """Create or update the auth account of every loadable staged user matching ``where``."""
    dest.execute(sql.SQL(
        """
        INSERT INTO auth.users AS a (
            instance_id, id, aud, role, email, encrypted_password, email_confirmed_at,
            raw_app_meta_data, raw_user_meta_data, created_at, updated_at,
            confirmation_token, recovery_token, email_change_token_new, email_change,
            is_sso_user, is_anonymous)
        SELECT {instance}::uuid, s.id, 'authenticated', 'authenticated', s.email,
               coalesce(s.password_hash, ''), s.created_at,
               jsonb_build_object('provider', 'email', 'providers', jsonb_build_array('email')),
               jsonb_strip_nulls(jsonb_build_object('name', s.name, 'avatar_url', s.avatar_url)),
               s.created_at, s.updated_at, '', '', '', '', false, false
        FROM {stage} s
        WHERE s._disposition = 'loaded' AND {where}
          -- accounts already as they should be are not touched (a rerun writes nothing)
          AND NOT EXISTS (
              SELECT 1 FROM auth.users o WHERE o.id = s.id
                 AND (o.email, o.encrypted_password, o.raw_user_meta_data, o.updated_at)
                     IS NOT DISTINCT FROM (s.email, coalesce(s.password_hash, ''),
                          jsonb_strip_nulls(jsonb_build_object('name', s.name, 'avatar_url', s.avatar_url)),
                          s.updated_at))
        ON CONFLICT (id) DO UPDATE SET
            email = EXCLUDED.email,
            encrypted_password = EXCLUDED.encrypted_password,
            raw_user_meta_data = EXCLUDED.raw_user_meta_data,
            updated_at = EXCLUDED.updated_at
        WHERE (a.email, a.encrypted_password, a.raw_user_meta_data, a.updated_at)
              IS DISTINCT FROM (EXCLUDED.email, EXCLUDED.encrypted_password,
                                EXCLUDED.raw_user_meta_data, EXCLUDED.updated_at)
        """
    ).format(instance=sql.Literal(INSTANCE_ID), stage=stage, where=where))
    dest.execute(sql.SQL(
        """
        INSERT INTO auth.identities AS i (
            provider_id, user_id, identity_data, provider, last_sign_in_at, created_at, updated_at)
        SELECT s.id::text, s.id,
               jsonb_build_object('sub', s.id::text, 'email', s.email, 'email_verified', true),
               'email', s.created_at, s.created_at, s.updated_at
        FROM {stage} s
        WHERE s._disposition = 'loaded' AND s.password_hash IS NOT NULL AND {where}
        ON CONFLICT (provider_id, provider) DO UPDATE SET
            identity_data = EXCLUDED.identity_data, updated_at = EXCLUDED.updated_at
        WHERE (i.identity_data, i.updated_at) IS DISTINCT FROM (EXCLUDED.identity_data, EXCLUDED.updated_at)
        """
    ).format(stage=stage, where=where))
    # A user whose password was removed at the source (now OAuth-only) loses the email identity.
    dest.execute(sql.SQL(
        "DELETE FROM auth.identities i USING {stage} s WHERE i.user_id = s.id AND i.provider = 'email' "
        "AND s._disposition = 'loaded' AND s.password_hash IS NULL AND {where}"
    ).format(stage=stage, where=where))


def account_summary(dest: psycopg.Connection) -> dict[str, int]:
    """How many auth accounts exist, with and without a password."""
    row = dest.execute(
        "SELECT count(*), count(*) FILTER (WHERE encrypted_password <> ''), "
        "count(*) FILTER (WHERE encrypted_password = ''), "
        "(SELECT count(*) FROM auth.identities WHERE provider = 'email') FROM auth.users"
    ).fetchone()
    return {"accounts": row[0], "with_password": row[1], "without_password": row[2],
            "email_identities": row[3]}
