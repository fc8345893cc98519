"""The destination bootstrap against a real PostgreSQL server.

What a user of the destination would check: the Supabase shape (auth tables
as Supabase Auth has them, auth functions reading the JWT claims), the
application's tables locked down with row level security that really filters
rows per signed-in user, a bootstrap that can run again without changing
anything, and a security report that names every hole punched into it.
"""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import errors, sql

from include.migration.bootstrap import (
    DESTINATION_SQL,
    SecurityFinding,
    bootstrap,
    destination_files,
    security_report,
)
from tests.conftest import run_python

pytestmark = pytest.mark.integration

PUBLIC_TABLES = ("agents", "conversations", "media", "messages", "users")
SUPABASE_ROLES = (
    "anon", "authenticated", "service_role", "authenticator", "supabase_auth_admin", "supabase_storage_admin",
)
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

# auth.users as a live Supabase project has it (pg_dump, PostgreSQL 15/17):
# name, type, default. Order matters: it is the table's column order.
AUTH_USERS_COLUMNS = [
    ("instance_id", "uuid", None),
    ("id", "uuid", None),
    ("aud", "character varying(255)", None),
    ("role", "character varying(255)", None),
    ("email", "character varying(255)", None),
    ("encrypted_password", "character varying(255)", None),
    ("email_confirmed_at", "timestamp with time zone", None),
    ("invited_at", "timestamp with time zone", None),
    ("confirmation_token", "character varying(255)", None),
    ("confirmation_sent_at", "timestamp with time zone", None),
    ("recovery_token", "character varying(255)", None),
    ("recovery_sent_at", "timestamp with time zone", None),
    ("email_change_token_new", "character varying(255)", None),
    ("email_change", "character varying(255)", None),
    ("email_change_sent_at", "timestamp with time zone", None),
    ("last_sign_in_at", "timestamp with time zone", None),
    ("raw_app_meta_data", "jsonb", None),
    ("raw_user_meta_data", "jsonb", None),
    ("is_super_admin", "boolean", None),
    ("created_at", "timestamp with time zone", None),
    ("updated_at", "timestamp with time zone", None),
    ("phone", "text", "NULL::character varying"),
    ("phone_confirmed_at", "timestamp with time zone", None),
    ("phone_change", "text", "''::character varying"),
    ("phone_change_token", "character varying(255)", "''::character varying"),
    ("phone_change_sent_at", "timestamp with time zone", None),
    ("confirmed_at", "timestamp with time zone", None),
    ("email_change_token_current", "character varying(255)", "''::character varying"),
    ("email_change_confirm_status", "smallint", "0"),
    ("banned_until", "timestamp with time zone", None),
    ("reauthentication_token", "character varying(255)", "''::character varying"),
    ("reauthentication_sent_at", "timestamp with time zone", None),
    ("is_sso_user", "boolean", "false"),
    ("deleted_at", "timestamp with time zone", None),
    ("is_anonymous", "boolean", "false"),
]


@pytest.fixture
def destination(fresh_db: Callable[[str], str]) -> str:
    """A freshly bootstrapped destination database."""
    uri = fresh_db("dest")
    bootstrap(uri)
    return uri


def _columns(conn: psycopg.Connection, schema: str, table: str) -> list[tuple]:
    """(name, type, default, generation expression, not null) in column order."""
    return conn.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod),
               CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END,
               CASE WHEN a.attgenerated <> '' THEN pg_get_expr(d.adbin, d.adrelid) END,
               a.attnotnull
        FROM pg_attribute a
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        (f"{schema}.{table}",),
    ).fetchall()


def _insert_auth_user(conn: psycopg.Connection, user_id: uuid.UUID, email: str, **extra: object) -> None:
    """An email user written the way SUPABASE_FACTS.md says bulk migrations do."""
    row: dict[str, object] = {
        "instance_id": uuid.UUID(int=0),
        "id": user_id,
        "aud": "authenticated",
        "role": "authenticated",
        "email": email,
        "encrypted_password": "$2b$10$" + "x" * 53,
        "email_confirmed_at": NOW,
        "raw_app_meta_data": json.dumps({"provider": "email", "providers": ["email"]}),
        "raw_user_meta_data": json.dumps({}),
        "created_at": NOW,
        "updated_at": NOW,
        "confirmation_token": "",
        "recovery_token": "",
        "email_change_token_new": "",
        "email_change": "",
    }
    row.update(extra)
    conn.execute(
        sql.SQL("INSERT INTO auth.users ({}) VALUES ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, row)),
            sql.SQL(", ").join(sql.Placeholder() * len(row)),
        ),
        list(row.values()),
    )


def _insert_app_user(conn: psycopg.Connection, user_id: uuid.UUID, email: str) -> None:
    _insert_auth_user(conn, user_id, email)
    conn.execute(
        "INSERT INTO public.users (id, email, name, created_at, updated_at) VALUES (%s, %s, %s, %s, %s)",
        (user_id, email, email.split("@")[0], NOW, NOW),
    )


def _insert_conversation(
    conn: psycopg.Connection, user_id: uuid.UUID, message_ids: list[int], agent_id: uuid.UUID | None = None
) -> uuid.UUID:
    conversation_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO public.conversations (id, user_id, agent_id, title, created_at, updated_at)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (conversation_id, user_id, agent_id, "a chat", NOW, NOW),
    )
    for message_id in message_ids:
        conn.execute(
            "INSERT INTO public.messages (id, conversation_id, role, content, created_at)"
            " VALUES (%s, %s, 'user', 'hello', %s)",
            (message_id, conversation_id, NOW),
        )
    return conversation_id


def _insert_agent(conn: psycopg.Connection, owner_id: uuid.UUID | None) -> uuid.UUID:
    agent_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO public.agents (id, owner_id, name, system_prompt, model, created_at, updated_at)"
        " VALUES (%s, %s, 'helper', 'be helpful', 'gpt', %s, %s)",
        (agent_id, owner_id, NOW, NOW),
    )
    return agent_id


def _insert_media(conn: psycopg.Connection, owner_id: uuid.UUID, conversation_id: uuid.UUID) -> uuid.UUID:
    media_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO public.media (id, owner_id, conversation_id, bucket, object_path, file_name,"
        " mime_type, size_bytes, sha256, created_at)"
        " VALUES (%s, %s, %s, 'media', %s, 'a.png', 'image/png', 3, %s, %s)",
        (media_id, owner_id, conversation_id, f"{owner_id}/{media_id}.png", "0" * 64, NOW),
    )
    return media_id


def _act_as(conn: psycopg.Connection, role: str, claims: dict | None = None) -> None:
    """Switch the current transaction to an API role, as PostgREST does per request."""
    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
    if claims is not None:
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))


# --------------------------------------------------------------------------
# Applying the files
# --------------------------------------------------------------------------


def test_bootstrap_applies_every_destination_file_in_name_order(fresh_db: Callable[[str], str]) -> None:
    applied = bootstrap(fresh_db("order"))

    assert applied == sorted(p.name for p in DESTINATION_SQL.glob("*.sql"))
    assert applied[0] == "010_supabase.sql"


def test_bootstrap_works_with_only_the_supabase_file(fresh_db: Callable[[str], str], tmp_path: Path) -> None:
    shutil.copy(DESTINATION_SQL / "010_supabase.sql", tmp_path)
    uri = fresh_db("only010")

    assert bootstrap(uri, tmp_path) == ["010_supabase.sql"]
    with psycopg.connect(uri) as conn:
        assert conn.execute("SELECT to_regnamespace('migration')").fetchone() == (None,)
        assert security_report(conn) == []


def test_a_later_file_runs_after_010_and_sees_its_objects(
    fresh_db: Callable[[str], str], tmp_path: Path
) -> None:
    shutil.copy(DESTINATION_SQL / "010_supabase.sql", tmp_path)
    # Depends on 010: fails unless applied after it.
    (tmp_path / "020_probe.sql").write_text(
        "CREATE SCHEMA IF NOT EXISTS migration;\n"
        "CREATE TABLE IF NOT EXISTS migration.probe (user_id uuid REFERENCES public.users (id));\n"
    )
    uri = fresh_db("later")

    assert bootstrap(uri, tmp_path) == ["010_supabase.sql", "020_probe.sql"]
    with psycopg.connect(uri) as conn:
        assert conn.execute("SELECT to_regclass('migration.probe') IS NOT NULL").fetchone() == (True,)


def test_a_failing_file_leaves_the_database_untouched(fresh_db: Callable[[str], str], tmp_path: Path) -> None:
    shutil.copy(DESTINATION_SQL / "010_supabase.sql", tmp_path)
    (tmp_path / "020_broken.sql").write_text("SELECT 1 / 0;\n")
    uri = fresh_db("broken")

    with pytest.raises(errors.DivisionByZero) as raised:
        bootstrap(uri, tmp_path)

    assert "while applying 020_broken.sql" in raised.value.__notes__
    with psycopg.connect(uri) as conn:
        # 010 ran in the same transaction, so its tables are gone too.
        assert conn.execute("SELECT to_regclass('public.users'), to_regnamespace('auth')").fetchone() == (
            None,
            None,
        )


def test_destination_files_are_sorted_by_name(tmp_path: Path) -> None:
    for name in ("020_b.sql", "010_a.sql", "100_c.sql", "notes.txt"):
        (tmp_path / name).write_text("SELECT 1;")

    assert [p.name for p in destination_files(tmp_path)] == ["010_a.sql", "020_b.sql", "100_c.sql"]


def test_command_line_bootstraps_and_reports(fresh_db: Callable[[str], str]) -> None:
    uri = fresh_db("cli")
    done = run_python("-m", "include.migration.bootstrap", "--dsn", uri, check=False)

    assert done.returncode == 0, done.stderr
    assert "applied 010_supabase.sql" in done.stdout
    assert "lock-down holds: no findings" in done.stdout


def test_command_line_report_only_exits_1_on_findings(destination: str) -> None:
    with psycopg.connect(destination) as conn:
        conn.execute("ALTER TABLE public.media DISABLE ROW LEVEL SECURITY")
    done = run_python("-m", "include.migration.bootstrap", "--dsn", destination, "--report-only", check=False)

    assert done.returncode == 1, done.stderr
    assert "applied" not in done.stdout
    assert "Table public.media has row level security disabled" in done.stdout


# --------------------------------------------------------------------------
# The Supabase shape
# --------------------------------------------------------------------------


def test_roles_have_supabase_attributes_and_authenticator_can_switch_to_api_roles(destination: str) -> None:
    with psycopg.connect(destination) as conn:
        roles = dict(
            (r[0], r[1:])
            for r in conn.execute(
                "SELECT rolname, rolinherit, rolbypassrls, rolsuper FROM pg_roles WHERE rolname = ANY(%s)",
                (list(SUPABASE_ROLES),),
            )
        )
        members_of_authenticator = {
            r[0]
            for r in conn.execute(
                "SELECT roleid::regrole::text FROM pg_auth_members WHERE member = 'authenticator'::regrole"
            )
        }

    assert set(roles) == set(SUPABASE_ROLES)
    assert roles["service_role"] == (True, True, False)
    assert roles["anon"] == (True, False, False)
    assert roles["authenticated"] == (True, False, False)
    assert roles["authenticator"][0] is False  # NOINHERIT: it must SET ROLE explicitly
    assert members_of_authenticator == {"anon", "authenticated", "service_role"}


def test_authenticated_holds_exactly_the_four_dml_privileges(destination: str) -> None:
    with psycopg.connect(destination) as conn:
        held = conn.execute(
            """
            SELECT c.relname, array_agg(p ORDER BY p)
            FROM pg_class c
            CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES',
                                    'TRIGGER', 'MAINTAIN']) AS p
            WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
              AND has_table_privilege('authenticated', c.oid, p)
            GROUP BY c.relname
            """
        ).fetchall()

    assert dict(held) == {name: ["DELETE", "INSERT", "SELECT", "UPDATE"] for name in PUBLIC_TABLES}


def test_auth_users_has_supabase_columns_defaults_and_generated_columns(destination: str) -> None:
    with psycopg.connect(destination) as conn:
        columns = _columns(conn, "auth", "users")

    assert [(name, type_, default) for name, type_, default, _, _ in columns] == AUTH_USERS_COLUMNS
    generated = {name: expression for name, _, _, expression, _ in columns if expression}
    assert generated == {"confirmed_at": "LEAST(email_confirmed_at, phone_confirmed_at)"}
    not_null = {name for name, _, _, _, attnotnull in columns if attnotnull}
    assert not_null == {"id", "is_sso_user", "is_anonymous"}


def test_auth_users_token_columns_keep_supabases_null_trap(destination: str) -> None:
    """The four early token columns have no default: omitting them stores NULL.

    That is Supabase's own behaviour (and why Auth then fails with "converting
    NULL to string is unsupported"), so the loader has to write '' itself. The
    later token columns default to ''.
    """
    user_id = uuid.uuid4()
    with psycopg.connect(destination) as conn:
        conn.execute(
            "INSERT INTO auth.users (id, email, email_confirmed_at) VALUES (%s, 'a@example.com', %s)",
            (user_id, NOW),
        )
        row = conn.execute(
            "SELECT confirmation_token, recovery_token, email_change_token_new, email_change,"
            " email_change_token_current, phone_change, phone_change_token, reauthentication_token,"
            " confirmed_at, is_anonymous, is_sso_user, email_change_confirm_status"
            " FROM auth.users WHERE id = %s",
            (user_id,),
        ).fetchone()

    assert row == (None, None, None, None, "", "", "", "", NOW, False, False, 0)


def test_auth_users_email_is_unique_only_among_non_sso_users(destination: str) -> None:
    with psycopg.connect(destination) as conn:
        _insert_auth_user(conn, uuid.uuid4(), "same@example.com")
        _insert_auth_user(conn, uuid.uuid4(), "same@example.com", is_sso_user=True)
        with pytest.raises(errors.UniqueViolation, match="users_email_partial_key"):
            _insert_auth_user(conn, uuid.uuid4(), "same@example.com")


def test_auth_users_phone_is_unique(destination: str) -> None:
    with psycopg.connect(destination) as conn:
        _insert_auth_user(conn, uuid.uuid4(), "a@example.com", phone="15550001")
        with pytest.raises(errors.UniqueViolation, match="users_phone_key"):
            _insert_auth_user(conn, uuid.uuid4(), "b@example.com", phone="15550001")


def test_auth_identities_email_is_generated_from_identity_data(destination: str) -> None:
    user_id = uuid.uuid4()
    with psycopg.connect(destination) as conn:
        columns = {c[0]: c for c in _columns(conn, "auth", "identities")}
        _insert_auth_user(conn, user_id, "mixed@example.com")
        conn.execute(
            "INSERT INTO auth.identities (provider_id, user_id, identity_data, provider,"
            " last_sign_in_at, created_at, updated_at) VALUES (%s, %s, %s, 'email', %s, %s, %s)",
            (
                str(user_id),
                user_id,
                json.dumps({"sub": str(user_id), "email": "Mixed@Example.com", "email_verified": True}),
                NOW,
                NOW,
                NOW,
            ),
        )
        email, identity_id = conn.execute(
            "SELECT email, id FROM auth.identities WHERE user_id = %s", (user_id,)
        ).fetchone()

        with pytest.raises(errors.GeneratedAlways):
            conn.execute(
                "INSERT INTO auth.identities (provider_id, user_id, identity_data, provider, email)"
                " VALUES ('x', %s, '{}', 'google', 'x@example.com')",
                (user_id,),
            )

    assert list(columns) == [
        "provider_id", "user_id", "identity_data", "provider", "last_sign_in_at", "created_at",
        "updated_at", "email", "id",
    ]
    assert columns["email"][3] == "lower((identity_data ->> 'email'::text))"
    assert columns["id"][2] == "gen_random_uuid()"
    assert email == "mixed@example.com"
    assert isinstance(identity_id, uuid.UUID)


def test_auth_identities_are_unique_per_provider_and_go_with_their_user(destination: str) -> None:
    user_id = uuid.uuid4()
    insert = (
        "INSERT INTO auth.identities (provider_id, user_id, identity_data, provider)"
        " VALUES (%s, %s, '{}', 'email')"
    )
    with psycopg.connect(destination) as conn:
        _insert_auth_user(conn, user_id, "a@example.com")
        conn.execute(insert, (str(user_id), user_id))
        with pytest.raises(errors.UniqueViolation), conn.transaction():
            conn.execute(insert, (str(user_id), user_id))
        conn.execute("DELETE FROM auth.users WHERE id = %s", (user_id,))

        assert conn.execute("SELECT count(*) FROM auth.identities").fetchone() == (0,)


def test_auth_functions_read_the_jwt_claims_like_supabase(destination: str) -> None:
    user_id = uuid.uuid4()
    claims = {"sub": str(user_id), "role": "authenticated", "email": "a@example.com", "aal": "aal1"}
    with psycopg.connect(destination) as conn:
        unset = conn.execute("SELECT auth.uid(), auth.role(), auth.email(), auth.jwt()").fetchone()
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        from_claims = conn.execute("SELECT auth.uid(), auth.role(), auth.email(), auth.jwt()").fetchone()
        # The legacy per-claim setting wins over the JSON, as in Supabase.
        other = uuid.uuid4()
        conn.execute("SELECT set_config('request.jwt.claim.sub', %s, true)", (str(other),))
        legacy = conn.execute("SELECT auth.uid()").fetchone()

    assert unset == (None, None, None, None)
    assert from_claims == (user_id, "authenticated", "a@example.com", claims)
    assert legacy == (other,)


def test_public_tables_all_have_row_level_security(destination: str) -> None:
    with psycopg.connect(destination) as conn:
        tables = dict(
            conn.execute(
                "SELECT c.relname, c.relrowsecurity FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')"
            ).fetchall()
        )

    assert tables == {name: True for name in PUBLIC_TABLES}


def test_public_users_belongs_to_auth_users(destination: str) -> None:
    with psycopg.connect(destination) as conn:
        fk = conn.execute(
            "SELECT confrelid::regclass::text, confdeltype FROM pg_constraint"
            " WHERE conrelid = 'public.users'::regclass AND contype = 'f'"
        ).fetchall()
        with pytest.raises(errors.ForeignKeyViolation), conn.transaction():
            conn.execute(
                "INSERT INTO public.users (id, email, name, created_at, updated_at)"
                " VALUES (%s, 'ghost@example.com', 'ghost', %s, %s)",
                (uuid.uuid4(), NOW, NOW),
            )
        user_id = uuid.uuid4()
        _insert_auth_user(conn, user_id, "Upper@example.com")
        with pytest.raises(errors.CheckViolation, match="users_email_lowercase"), conn.transaction():
            conn.execute(
                "INSERT INTO public.users (id, email, name, created_at, updated_at)"
                " VALUES (%s, 'Upper@example.com', 'upper', %s, %s)",
                (user_id, NOW, NOW),
            )

    assert fk == [("auth.users", "c")]


def test_message_role_is_one_of_four(destination: str) -> None:
    user_id = uuid.uuid4()
    with psycopg.connect(destination) as conn:
        _insert_app_user(conn, user_id, "a@example.com")
        conversation_id = _insert_conversation(conn, user_id, [])
        with pytest.raises(errors.CheckViolation, match="messages_role_check"):
            conn.execute(
                "INSERT INTO public.messages (id, conversation_id, role, content, created_at)"
                " VALUES (1, %s, 'robot', 'beep', %s)",
                (conversation_id, NOW),
            )


def test_foreign_key_columns_are_indexed(destination: str) -> None:
    with psycopg.connect(destination) as conn:
        unindexed = conn.execute(
            """
            SELECT c.conrelid::regclass::text, a.attname
            FROM pg_constraint c
            JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
            WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace
              AND NOT EXISTS (SELECT 1 FROM pg_index i
                              WHERE i.indrelid = c.conrelid AND i.indkey[0] = c.conkey[1])
            """
        ).fetchall()

    assert unindexed == []


def test_deleting_a_user_removes_their_data_and_keeps_other_users_history(destination: str) -> None:
    leaving, staying = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(destination) as conn:
        _insert_app_user(conn, leaving, "leaving@example.com")
        _insert_app_user(conn, staying, "staying@example.com")
        shared_agent = _insert_agent(conn, leaving)
        own = _insert_conversation(conn, leaving, [1, 2], shared_agent)
        _insert_media(conn, leaving, own)
        others = _insert_conversation(conn, staying, [3], shared_agent)
        others_media = _insert_media(conn, staying, others)

        conn.execute("DELETE FROM auth.users WHERE id = %s", (leaving,))

        counts = conn.execute(
            "SELECT (SELECT count(*) FROM public.users), (SELECT count(*) FROM public.conversations),"
            " (SELECT count(*) FROM public.messages), (SELECT array_agg(id) FROM public.media)"
        ).fetchone()
        agent_owner = conn.execute(
            "SELECT owner_id FROM public.agents WHERE id = %s", (shared_agent,)
        ).fetchone()
        others_agent = conn.execute(
            "SELECT agent_id FROM public.conversations WHERE id = %s", (others,)
        ).fetchone()
        conn.execute("DELETE FROM public.agents WHERE id = %s", (shared_agent,))
        after_agent_delete = conn.execute(
            "SELECT agent_id FROM public.conversations WHERE id = %s", (others,)
        ).fetchone()

    assert counts == (1, 1, 1, [others_media])
    assert agent_owner == (None,)
    assert others_agent == (shared_agent,)
    assert after_agent_delete == (None,)


# --------------------------------------------------------------------------
# Idempotency
# --------------------------------------------------------------------------

_SNAPSHOT_QUERIES = {
    "columns": """
        SELECT table_schema, table_name, ordinal_position, column_name, data_type,
               character_maximum_length, is_nullable, column_default, is_generated, generation_expression
        FROM information_schema.columns
        WHERE table_schema IN ('auth', 'public', 'storage', 'extensions', 'migration')
        ORDER BY 1, 2, 3
    """,
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint
        WHERE connamespace::regnamespace::text IN ('auth', 'public', 'migration')
        ORDER BY 1, 2
    """,
    "indexes": """
        SELECT schemaname, tablename, indexname, indexdef
        FROM pg_indexes
        WHERE schemaname IN ('auth', 'public', 'migration')
        ORDER BY 1, 2, 3
    """,
    "policies": """
        SELECT schemaname, tablename, policyname, permissive, roles::text, cmd, qual, with_check
        FROM pg_policies
        ORDER BY 1, 2, 3
    """,
    "relations": """
        SELECT n.nspname, c.relname, c.relkind, c.relacl::text, c.relrowsecurity, c.relforcerowsecurity,
               pg_get_userbyid(c.relowner)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname IN ('auth', 'public', 'storage', 'extensions', 'migration', 'migration_stage')
        ORDER BY 1, 2
    """,
    "schemas": """
        SELECT nspname, nspacl::text, pg_get_userbyid(nspowner)
        FROM pg_namespace
        WHERE nspname !~ '^pg_' AND nspname <> 'information_schema'
        ORDER BY 1
    """,
    "functions": """
        SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), p.proacl::text,
               pg_get_userbyid(p.proowner)
        FROM pg_proc p
        WHERE p.pronamespace::regnamespace::text IN ('auth', 'public', 'migration')
        ORDER BY 1
    """,
    "comments": """
        SELECT d.classoid::regclass::text, d.objoid, d.objsubid, d.description
        FROM pg_description d
        JOIN pg_class c ON c.oid = d.objoid AND d.classoid = 'pg_class'::regclass
        WHERE c.relnamespace::regnamespace::text IN ('auth', 'public')
        ORDER BY 1, 2, 3
    """,
    "default_acls": "SELECT defaclrole, defaclnamespace, defaclobjtype, defaclacl::text FROM pg_default_acl"
    " ORDER BY 1, 2, 3",
    "roles": """
        SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolbypassrls,
               rolconfig::text
        FROM pg_roles WHERE rolname = ANY(%(roles)s)
        ORDER BY 1
    """,
    "memberships": """
        SELECT roleid::regrole::text, member::regrole::text, admin_option
        FROM pg_auth_members
        WHERE roleid::regrole::text = ANY(%(roles)s) OR member::regrole::text = ANY(%(roles)s)
        ORDER BY 1, 2
    """,
}


def _catalog_snapshot(uri: str) -> dict[str, list[tuple]]:
    with psycopg.connect(uri) as conn:
        return {
            name: conn.execute(query, {"roles": list(SUPABASE_ROLES)}).fetchall()
            for name, query in _SNAPSHOT_QUERIES.items()
        }


def test_a_second_bootstrap_changes_nothing(destination: str) -> None:
    before = _catalog_snapshot(destination)

    bootstrap(destination)

    after = _catalog_snapshot(destination)
    # The snapshot really covers what 010 creates (so an empty one cannot pass).
    assert len(before["policies"]) >= len(PUBLIC_TABLES)
    assert {r[1] for r in before["relations"] if r[0] == "auth"} >= {"users", "identities"}
    assert any(r[0] == "auth.uid()" for r in before["functions"])
    for name in _SNAPSHOT_QUERIES:
        assert after[name] == before[name], f"second bootstrap changed {name}"


def test_a_second_bootstrap_keeps_the_data(destination: str) -> None:
    user_id = uuid.uuid4()
    with psycopg.connect(destination) as conn:
        _insert_app_user(conn, user_id, "a@example.com")
        _insert_conversation(conn, user_id, [1, 2])

    bootstrap(destination)

    with psycopg.connect(destination) as conn:
        assert conn.execute("SELECT count(*) FROM public.messages").fetchone() == (2,)


def test_databases_on_the_same_server_bootstrap_one_after_another(fresh_db: Callable[[str], str]) -> None:
    first, second = fresh_db("first"), fresh_db("second")

    assert bootstrap(first) == bootstrap(second)
    for uri in (first, second):
        with psycopg.connect(uri) as conn:
            assert security_report(conn) == []


def test_databases_on_the_same_server_bootstrap_at_the_same_time(fresh_db: Callable[[str], str]) -> None:
    """Roles are cluster-wide: concurrent bootstraps of two databases share them."""
    uris = [fresh_db(f"concurrent{i}") for i in range(3)]
    results: dict[str, list[str] | BaseException] = {}
    start = threading.Barrier(len(uris))

    def run(uri: str) -> None:
        start.wait()
        try:
            results[uri] = bootstrap(uri)
        except BaseException as err:  # reported by the assertion below, not lost in the thread
            results[uri] = err

    threads = [threading.Thread(target=run, args=(uri,)) for uri in uris]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert {uri: result for uri, result in results.items() if not isinstance(result, list)} == {}


# --------------------------------------------------------------------------
# The security report
# --------------------------------------------------------------------------


def test_security_report_is_empty_after_bootstrap(destination: str) -> None:
    with psycopg.connect(destination) as conn:
        assert security_report(conn) == []


_HOLES = {
    "rls disabled": (
        "ALTER TABLE public.conversations DISABLE ROW LEVEL SECURITY",
        SecurityFinding(
            "public.conversations",
            "rls_disabled",
            "Table public.conversations has row level security disabled, so every role granted access "
            "to it can read and change all of its rows.",
        ),
    ),
    "anon can select": (
        "GRANT SELECT ON public.messages TO anon",
        SecurityFinding(
            "public.messages",
            "anon_privilege",
            "Role anon holds SELECT on table public.messages, but anonymous clients must have no access "
            "to the application's tables.",
        ),
    ),
    "anon can maintain": (
        # PostgreSQL 17+ only (the test server is 18); LOCK TABLE is enough to stall the app.
        "GRANT MAINTAIN ON public.agents TO anon",
        SecurityFinding(
            "public.agents",
            "anon_privilege",
            "Role anon holds MAINTAIN on table public.agents, but anonymous clients must have no access "
            "to the application's tables.",
        ),
    ),
    "public can select a column": (
        # Through PUBLIC and only one column: still reaches anon.
        "GRANT SELECT (email) ON public.users TO PUBLIC",
        SecurityFinding(
            "public.users",
            "anon_privilege",
            "Role anon holds SELECT on table public.users, but anonymous clients must have no access "
            "to the application's tables.",
        ),
    ),
    "policy dropped": (
        "DROP POLICY media_owner_all ON public.media",
        SecurityFinding(
            "public.media",
            "no_auth_uid_policy",
            "Table public.media has no row level security policy that uses auth.uid(), so it does not "
            "limit signed-in users to their own rows.",
        ),
    ),
    "policy without auth.uid()": (
        "DROP POLICY agents_owner_all ON public.agents;"
        " CREATE POLICY agents_everyone ON public.agents FOR SELECT TO authenticated USING (true)",
        SecurityFinding(
            "public.agents",
            "no_auth_uid_policy",
            "Table public.agents has no row level security policy that uses auth.uid(), so it does not "
            "limit signed-in users to their own rows.",
        ),
    ),
    "public-read policy that exposes every agent": (
        "DROP POLICY agents_public_read ON public.agents;"
        " CREATE POLICY agents_public_read ON public.agents FOR SELECT TO authenticated USING (is_public OR true)",
        SecurityFinding(
            "public.agents",
            "policy_not_owner_only",
            "Policy agents_public_read on table public.agents does not use auth.uid(), so it opens rows to "
            "users who do not own them (USING (is_public OR true)).",
        ),
    ),
    "public-read policy that lets users write": (
        "CREATE POLICY agents_public_write ON public.agents FOR UPDATE TO authenticated USING (is_public)",
        SecurityFinding(
            "public.agents",
            "policy_not_owner_only",
            "Policy agents_public_write on table public.agents does not use auth.uid(), so it opens rows to "
            "users who do not own them (USING is_public).",
        ),
    ),
    "public agents readable by anon": (
        "DROP POLICY agents_public_read ON public.agents;"
        " CREATE POLICY agents_public_read ON public.agents FOR SELECT TO authenticated, anon USING (is_public)",
        SecurityFinding(
            "public.agents",
            "anon_policy",
            "Policy agents_public_read on table public.agents applies to anon, but anonymous clients must "
            "have no access to the application's tables.",
        ),
    ),
    "owner policy for everyone": (
        "CREATE POLICY media_owner_read ON public.media FOR SELECT USING (owner_id = (SELECT auth.uid()))",
        SecurityFinding(
            "public.media",
            "anon_policy",
            "Policy media_owner_read on table public.media applies to anon (it is for PUBLIC), but anonymous "
            "clients must have no access to the application's tables.",
        ),
    ),
    "authenticated can truncate": (
        "GRANT TRUNCATE ON public.messages TO authenticated",
        SecurityFinding(
            "public.messages",
            "authenticated_truncate",
            "Role authenticated holds TRUNCATE on table public.messages, which empties the table without "
            "consulting row level security.",
        ),
    ),
    "anon can use the migration schema": (
        "CREATE SCHEMA IF NOT EXISTS migration; GRANT USAGE ON SCHEMA migration TO anon",
        SecurityFinding(
            "migration",
            "migration_schema_access",
            "Role anon has USAGE on schema migration, which must stay private to the pipeline.",
        ),
    ),
    "authenticated can read a migration table": (
        "CREATE SCHEMA IF NOT EXISTS migration;"
        " CREATE TABLE migration.probe_state (id int);"
        " GRANT SELECT ON migration.probe_state TO authenticated",
        SecurityFinding(
            "migration.probe_state",
            "migration_privilege",
            "Role authenticated holds SELECT on migration.probe_state, which must stay private to the "
            "pipeline.",
        ),
    ),
    "staging schema open to everyone": (
        "CREATE SCHEMA IF NOT EXISTS migration_stage; GRANT USAGE ON SCHEMA migration_stage TO PUBLIC",
        SecurityFinding(
            "migration_stage",
            "migration_schema_access",
            "Role anon has USAGE on schema migration_stage, which must stay private to the pipeline.",
        ),
    ),
}


@pytest.mark.parametrize("hole", list(_HOLES), ids=list(_HOLES))
def test_security_report_names_each_hole(destination: str, hole: str) -> None:
    statement, expected = _HOLES[hole]
    with psycopg.connect(destination) as conn:
        conn.execute(statement.encode())
        findings = security_report(conn)
        conn.rollback()

        assert expected in findings
        assert security_report(conn) == []


def test_security_report_works_on_a_psycopg2_connection(destination: str) -> None:
    import psycopg2

    conn = psycopg2.connect(destination)
    try:
        with conn.cursor() as cur:
            cur.execute("ALTER TABLE public.users DISABLE ROW LEVEL SECURITY")
        assert [f.problem for f in security_report(conn)] == ["rls_disabled"]
    finally:
        conn.rollback()
        conn.close()


# --------------------------------------------------------------------------
# Row level security at work
# --------------------------------------------------------------------------


@pytest.fixture
def two_users(destination: str) -> dict[str, object]:
    """Alice and Bob, each with an agent, a conversation, messages and a file."""
    alice, bob = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(destination) as conn:
        _insert_app_user(conn, alice, "alice@example.com")
        _insert_app_user(conn, bob, "bob@example.com")
        alice_conversation = _insert_conversation(conn, alice, [1, 2], _insert_agent(conn, alice))
        bob_conversation = _insert_conversation(conn, bob, [3], _insert_agent(conn, bob))
        _insert_media(conn, alice, alice_conversation)
        _insert_media(conn, bob, bob_conversation)
    return {
        "uri": destination,
        "alice": alice,
        "bob": bob,
        "alice_conversation": alice_conversation,
        "bob_conversation": bob_conversation,
    }


def _visible(conn: psycopg.Connection) -> dict[str, list]:
    return {
        "users": [r[0] for r in conn.execute("SELECT id FROM public.users")],
        "agents": [r[0] for r in conn.execute("SELECT owner_id FROM public.agents")],
        "conversations": [r[0] for r in conn.execute("SELECT id FROM public.conversations")],
        "messages": [r[0] for r in conn.execute("SELECT id FROM public.messages ORDER BY id")],
        "media": [r[0] for r in conn.execute("SELECT owner_id FROM public.media")],
    }


def test_a_signed_in_user_sees_only_their_own_rows(two_users: dict) -> None:
    with psycopg.connect(two_users["uri"]) as conn:
        _act_as(conn, "authenticated", {"sub": str(two_users["alice"]), "role": "authenticated"})
        alice_sees = _visible(conn)
        conn.rollback()
        _act_as(conn, "authenticated", {"sub": str(two_users["bob"]), "role": "authenticated"})
        bob_sees = _visible(conn)

    assert alice_sees == {
        "users": [two_users["alice"]],
        "agents": [two_users["alice"]],
        "conversations": [two_users["alice_conversation"]],
        "messages": [1, 2],
        "media": [two_users["alice"]],
    }
    assert bob_sees == {
        "users": [two_users["bob"]],
        "agents": [two_users["bob"]],
        "conversations": [two_users["bob_conversation"]],
        "messages": [3],
        "media": [two_users["bob"]],
    }


def test_a_signed_in_user_cannot_write_into_someone_elses_rows(two_users: dict) -> None:
    with psycopg.connect(two_users["uri"]) as conn:
        _act_as(conn, "authenticated", {"sub": str(two_users["alice"]), "role": "authenticated"})
        updated = conn.execute(
            "UPDATE public.conversations SET title = 'mine now' WHERE id = %s",
            (two_users["bob_conversation"],),
        ).rowcount
        deleted = conn.execute("DELETE FROM public.messages WHERE id = 3").rowcount
        with pytest.raises(errors.InsufficientPrivilege, match="row-level security"), conn.transaction():
            conn.execute(
                "INSERT INTO public.messages (id, conversation_id, role, content, created_at)"
                " VALUES (4, %s, 'user', 'injected', %s)",
                (two_users["bob_conversation"], NOW),
            )
        with pytest.raises(errors.InsufficientPrivilege, match="row-level security"), conn.transaction():
            conn.execute(
                "UPDATE public.conversations SET user_id = %s WHERE id = %s",
                (two_users["bob"], two_users["alice_conversation"]),
            )

    # Bob's rows are invisible to Alice, so her UPDATE and DELETE match nothing.
    assert (updated, deleted) == (0, 0)


def test_a_signed_in_user_reads_public_agents_but_writes_only_their_own(two_users: dict) -> None:
    """As the legacy application allowed: an agent its owner marked public is readable by
    every signed-in user (and only read: its owner alone changes or deletes it); a private
    agent stays its owner's; anon still reaches nothing."""
    alice, bob = two_users["alice"], two_users["bob"]
    with psycopg.connect(two_users["uri"]) as conn:
        public_agent = _insert_agent(conn, bob)
        conn.execute("UPDATE public.agents SET is_public = true WHERE id = %s", (public_agent,))
        ownerless = _insert_agent(conn, None)  # a built-in agent, public
        conn.execute("UPDATE public.agents SET is_public = true WHERE id = %s", (ownerless,))
        conn.commit()
        _act_as(conn, "authenticated", {"sub": str(alice), "role": "authenticated"})
        seen = sorted((str(owner), public) for owner, public in
                      conn.execute("SELECT owner_id, is_public FROM public.agents").fetchall())
        changed = conn.execute("UPDATE public.agents SET name = 'mine now' WHERE id = %s", (public_agent,)).rowcount
        removed = conn.execute("DELETE FROM public.agents WHERE id = %s", (public_agent,)).rowcount
        with pytest.raises(errors.InsufficientPrivilege, match="row-level security"), conn.transaction():
            conn.execute("INSERT INTO public.agents (id, owner_id, name, system_prompt, model, is_public, "
                         "created_at, updated_at) VALUES (%s, %s, 'fake', 'p', 'gpt', true, %s, %s)",
                         (uuid.uuid4(), bob, NOW, NOW))
        conn.rollback()
        _act_as(conn, "anon", {"role": "anon"})
        with pytest.raises(errors.InsufficientPrivilege, match="permission denied for table agents"):
            conn.execute("SELECT * FROM public.agents")
        conn.rollback()
        name = conn.execute("SELECT name FROM public.agents WHERE id = %s", (public_agent,)).fetchone()[0]

    # Her own private agent, Bob's public one and the public built-in; not Bob's private agent.
    assert seen == sorted([(str(alice), False), (str(bob), True), ("None", True)])
    assert (changed, removed, name) == (0, 0, "helper")


def test_authenticated_without_a_jwt_sees_nothing(two_users: dict) -> None:
    with psycopg.connect(two_users["uri"]) as conn:
        _act_as(conn, "authenticated")
        assert _visible(conn) == {name: [] for name in PUBLIC_TABLES}


def test_service_role_sees_everything(two_users: dict) -> None:
    with psycopg.connect(two_users["uri"]) as conn:
        _act_as(conn, "service_role")
        seen = _visible(conn)

    assert len(seen["users"]) == 2
    assert seen["messages"] == [1, 2, 3]


@pytest.mark.parametrize("table", PUBLIC_TABLES)
def test_anon_is_refused_outright(two_users: dict, table: str) -> None:
    # anon holds no privilege on the application's tables, and PostgreSQL checks
    # table privileges before it applies row level security: the query fails
    # with "permission denied" rather than returning zero rows.
    with psycopg.connect(two_users["uri"]) as conn:
        _act_as(conn, "anon", {"role": "anon"})
        with pytest.raises(errors.InsufficientPrivilege, match=f"permission denied for table {table}"):
            conn.execute(sql.SQL("SELECT * FROM public.{}").format(sql.Identifier(table)))


def test_api_roles_cannot_read_auth_tables(two_users: dict) -> None:
    # As on Supabase: the auth schema is usable (for auth.uid()), its tables are not.
    with psycopg.connect(two_users["uri"]) as conn:
        _act_as(conn, "authenticated", {"sub": str(two_users["alice"]), "role": "authenticated"})
        with pytest.raises(errors.InsufficientPrivilege, match="permission denied for table users"):
            conn.execute("SELECT email FROM auth.users")
