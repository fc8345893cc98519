"""Migrated users can log in with their old passwords, and see only their own rows."""

from __future__ import annotations

import uuid

import bcrypt
import psycopg
import pytest

from include.migration import pipeline
from local_runtime.report import password_check
from tests.conftest import create_database, drop_database

# The relational entities (media has its own tests: it needs Storage).
RELATIONAL = ("users", "agents", "conversations", "messages")

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def migrated(pg_uri, tmp_path_factory):
    """The small world migrated once for the module: every test here only reads it."""
    from include.migration.bootstrap import bootstrap
    from local_runtime.world import seed

    names = [f"auth_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("legacy", "dest")]
    world = pipeline.Conns(*(create_database(pg_uri, name) for name in names))
    bootstrap(world.dest)
    report = seed(world.legacy, scale="small", media_root=tmp_path_factory.mktemp("auth") / "media")
    for name in RELATIONAL:
        pipeline.run_entity(world, name, "auth", mode="full", validate_with_gx=False)
    yield world, report
    for name in names:
        drop_database(pg_uri, name)


def test_known_passwords_verify_and_wrong_ones_fail(migrated):
    world, report = migrated
    assert len(report.known_passwords) >= 10
    with psycopg.connect(world.dest) as conn:
        for user_id, password in report.known_passwords.items():
            stored = conn.execute("SELECT encrypted_password FROM auth.users WHERE id = %s", (user_id,)).fetchone()[0]
            legacy = psycopg.connect(world.legacy).execute(
                "SELECT password_hash FROM users WHERE id = %s", (user_id,)).fetchone()[0]
            assert stored == legacy  # copied unchanged, whatever the prefix
            check = stored.replace("$2y$", "$2b$", 1).encode()
            assert bcrypt.checkpw(password.encode(), check)
            assert not bcrypt.checkpw(b"not-" + password.encode(), check)
        line = password_check(conn, report.known_passwords)
    assert line.startswith("password check (OK)")


def test_every_user_has_an_account_built_the_way_auth_needs_it(migrated):
    world, report = migrated
    with psycopg.connect(world.dest) as conn:
        bad = conn.execute(
            """SELECT count(*) FROM public.users p JOIN auth.users a USING (id)
               WHERE a.instance_id <> '00000000-0000-0000-0000-000000000000' OR a.aud <> 'authenticated'
                  OR a.role <> 'authenticated' OR a.email_confirmed_at IS NULL
                  OR a.confirmation_token IS NULL OR a.recovery_token IS NULL
                  OR a.email_change_token_new IS NULL OR a.email_change IS NULL
                  OR a.raw_app_meta_data->>'provider' <> 'email' OR a.email <> p.email""").fetchone()[0]
        assert bad == 0
        users, accounts = conn.execute(
            "SELECT (SELECT count(*) FROM public.users), (SELECT count(*) FROM auth.users)").fetchone()
        assert users == accounts
        # Email identities exactly for users with a password; OAuth-only users have none.
        assert conn.execute(
            "SELECT count(*) FROM auth.users a LEFT JOIN auth.identities i ON i.user_id = a.id AND i.provider = 'email' "
            "WHERE (a.encrypted_password <> '') <> (i.id IS NOT NULL)").fetchone()[0] == 0
        oauth = set(report.planted.get("users.oauth_only", []))
        if oauth:
            loaded_oauth = conn.execute("SELECT count(*) FROM auth.users WHERE id = ANY(%s::uuid[]) "
                                        "AND encrypted_password = ''", (list(oauth),)).fetchone()[0]
            assert loaded_oauth > 0


def test_rls_a_user_sees_only_their_own_rows_and_anon_nothing(migrated):
    world, _ = migrated
    with psycopg.connect(world.dest) as conn:
        user_id, own_convs, own_msgs = conn.execute(
            """SELECT c.user_id::text, count(DISTINCT c.id), count(m.id) FROM public.conversations c
               JOIN public.messages m ON m.conversation_id = c.id GROUP BY 1 ORDER BY 3 DESC LIMIT 1""").fetchone()
        conn.execute("SET ROLE authenticated")
        conn.execute("SELECT set_config('request.jwt.claims', %s, false)",
                     (f'{{"sub": "{user_id}", "role": "authenticated"}}',))
        seen = conn.execute("SELECT count(*), count(*) FILTER (WHERE user_id::text <> %s) FROM public.conversations",
                            (user_id,)).fetchone()
        assert seen == (own_convs, 0)
        assert conn.execute("SELECT count(*) FROM public.messages").fetchone()[0] == own_msgs
        assert conn.execute("SELECT count(*) FROM public.users").fetchone()[0] == 1
        conn.execute("RESET ROLE")
        conn.execute("SET ROLE anon")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM public.messages")
        conn.rollback()
        conn.execute("SET ROLE anon")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM migration.quarantine")
