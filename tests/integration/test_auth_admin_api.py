"""Users' Auth accounts through the admin API (MIGRATION_AUTH_PATH=admin_api), against the GoTrue stand-in.

The stand-in writes into the ``world`` destination, so the rows Auth reads
are checked in PostgreSQL, next to what the SQL path writes for the same
legacy users into a second destination. The refusals go through the real
``supabase`` client, as the pipeline's calls do.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import bcrypt
import httpx
import psycopg
import pytest
from supabase import Client, ClientOptions, create_client
from supabase_auth.errors import AuthApiError

from include.migration import pipeline
from include.migration.bootstrap import bootstrap
from include.supabase.auth_admin import (
    AccountRow,
    RetryPolicy,
    sync_accounts_via_admin_api,
    unsupported_hash_reason,
)
from local_runtime.standins.auth import AuthStandIn, make_jwt

pytestmark = pytest.mark.integration

SECRET = "auth-standin-test-secret-at-least-32-chars"
FAST = RetryPolicy(attempts=4, base_delay=0.02, max_delay=0.1)

# Columns of auth.users that Auth reads to sign a user in or to build its JWT.
AUTH_COLUMNS = (
    "instance_id", "aud", "role", "email", "confirmation_token", "recovery_token", "email_change_token_new",
    "email_change", "email_change_token_current", "phone_change", "phone_change_token",
    "reauthentication_token", "phone", "banned_until", "deleted_at", "is_sso_user", "is_anonymous",
)


def _argon2id(seed: int) -> str:
    salt = base64.b64encode(bytes([seed]) * 16).decode().rstrip("=")
    digest = base64.b64encode(bytes([seed + 1]) * 32).decode().rstrip("=")
    return f"$argon2id$v=19$m=65536,t=3,p=4${salt}${digest}"


class Legacy:
    """Hand-made legacy users with known passwords."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.passwords: dict[str, str] = {}
        self.oauth_only: list[str] = []
        self.argon2: list[str] = []
        self.base = datetime(2024, 3, 1, 12, 0, 0)

    def add(self, email: str, *, password: str | None = None, prefix: str = "2b", name: str | None = "x",
            avatar: str | None = None, hash_: str | None = None, updated: int = 0,
            deleted: bool = False) -> str:
        user_id = str(uuid.uuid4())
        if password is not None:
            # $2y$ (PHP's) is $2b$ under another name; bcrypt only makes $2a$/$2b$.
            salt = bcrypt.gensalt(4, prefix=b"2a" if prefix == "2a" else b"2b")
            made = bcrypt.hashpw(password.encode(), salt)
            hash_ = made.decode().replace("$2b$", f"${prefix}$", 1)
            self.passwords[user_id] = password
        elif hash_ is None:
            self.oauth_only.append(user_id)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO users (id, email, display_name, avatar_url, password_hash, created_at, "
                "updated_at, deleted_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (user_id, email, name, avatar, hash_, self.base, self.base + timedelta(minutes=updated),
                 self.base if deleted else None))
        return user_id

    def seed(self, n: int = 24) -> None:
        for i in range(n):
            prefix = ("2a", "2b", "2y")[i % 3]
            avatar = f"https://cdn.example.com/a/{i}.png" if i % 2 else None
            name = None if i % 7 == 0 else f"Person {i}"
            self.add(f"Person.{i:02d}@Example.com ", password=f"pw-{i:02d}-{uuid.uuid4().hex[:8]}",
                     prefix=prefix, name=name, avatar=avatar)
        for i in range(3):
            self.add(f"oauth.{i}@example.com", name=f"OAuth {i}")
        self.argon2.append(self.add("argon@example.com", hash_=_argon2id(7)))

    def soft_delete(self, user_id: str) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("UPDATE users SET deleted_at = updated_at, "
                         "updated_at = updated_at + interval '1 day' WHERE id = %s", (user_id,))


@pytest.fixture
def standin(world) -> Iterator[AuthStandIn]:
    # GoTrue hashes the random password of a user without one at bcrypt cost
    # 10; 4 keeps the tests quick and changes nothing else.
    server = AuthStandIn(world.dest, SECRET, hash_cost=4).start()
    yield server
    server.stop()


@pytest.fixture
def admin_path(monkeypatch: pytest.MonkeyPatch, standin: AuthStandIn) -> AuthStandIn:
    monkeypatch.setenv("MIGRATION_AUTH_PATH", "admin_api")
    monkeypatch.setenv("AIRFLOW_CONN_SUPABASE_API", json.dumps(
        {"conn_type": "http", "host": standin.url, "password": standin.service_key}))
    return standin


def _client(standin: AuthStandIn, key: str | None = None, timeout: float | None = None) -> Client:
    options = ClientOptions(httpx_client=httpx.Client(timeout=timeout)) if timeout else None
    return create_client(standin.url, key or standin.service_key, options)


def _accounts(dsn: str) -> dict[str, dict]:
    cols = ", ".join(AUTH_COLUMNS)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f"SELECT id::text, {cols}, encrypted_password, email_confirmed_at IS NOT NULL, "
            "raw_app_meta_data, raw_user_meta_data FROM auth.users").fetchall()
        identities = conn.execute(
            "SELECT user_id::text, provider_id, identity_data, email FROM auth.identities "
            "WHERE provider = 'email'").fetchall()
    out = {}
    for r in rows:
        out[r[0]] = {**dict(zip(AUTH_COLUMNS, r[1:len(AUTH_COLUMNS) + 1], strict=True)),
                     "encrypted_password": r[-4], "confirmed": r[-3], "app": r[-2], "meta": r[-1]}
    for user_id, provider_id, data, email in identities:
        out[user_id]["identity"] = {"provider_id": provider_id, "sub": data.get("sub"),
                                    "email": data.get("email"), "generated_email": email,
                                    "email_verified": data.get("email_verified")}
    return out


def _run_users(conns: pipeline.Conns, dag_run_id: str, mode: str = "full") -> dict:
    return pipeline.run_entity(conns, "users", dag_run_id, mode=mode, validate_with_gx=False)


def test_accounts_match_the_sql_path_and_old_passwords_verify(world, fresh_db, admin_path, monkeypatch):
    legacy = Legacy(world.legacy)
    legacy.seed()
    sql_dest = fresh_db("dest_sql")
    bootstrap(sql_dest)
    monkeypatch.setenv("MIGRATION_AUTH_PATH", "sql")
    _run_users(pipeline.Conns(world.legacy, sql_dest), "sql-1")
    monkeypatch.setenv("MIGRATION_AUTH_PATH", "admin_api")
    _run_users(world, "admin-1")

    via_api, via_sql = _accounts(world.dest), _accounts(sql_dest)
    assert set(via_api) == set(via_sql) and len(via_api) == 28
    assert admin_path.count_requests("POST", r"^/admin/users$") == 28
    for user_id, want in via_sql.items():
        got = via_api[user_id]
        assert {c: got[c] for c in AUTH_COLUMNS} == {c: want[c] for c in AUTH_COLUMNS}, user_id
        assert got["confirmed"] and want["confirmed"]
        assert got["app"] == want["app"] == {"provider": "email", "providers": ["email"]}
        # GoTrue's Confirm() adds email_verified to the user's metadata; the rest is the profile.
        assert {k: v for k, v in got["meta"].items() if k != "email_verified"} == want["meta"]
        assert got["meta"]["email_verified"] is True
        if user_id in legacy.oauth_only:
            # No password at the source: GoTrue stores a random one nobody knows (and an email identity).
            assert want["encrypted_password"] == "" and "identity" not in want
            assert got["encrypted_password"].startswith("$2a$")
            continue
        assert got["encrypted_password"] == want["encrypted_password"]  # the legacy hash, unchanged
        assert {k: got["identity"][k] for k in ("provider_id", "sub", "email", "generated_email")} == \
               {k: want["identity"][k] for k in ("provider_id", "sub", "email", "generated_email")}
        assert got["identity"]["provider_id"] == user_id
        assert got["identity"]["email_verified"] is False  # what GoTrue writes on create

    for user_id, password in legacy.passwords.items():
        stored = via_api[user_id]["encrypted_password"].replace("$2y$", "$2b$", 1).encode()
        assert bcrypt.checkpw(password.encode(), stored)
        assert not bcrypt.checkpw(b"not-" + password.encode(), stored)
    assert via_api[legacy.argon2[0]]["encrypted_password"] == _argon2id(7)

    with psycopg.connect(world.dest) as conn:  # public.users references every account
        joined = conn.execute(
            "SELECT count(*) FROM public.users p JOIN auth.users a USING (id)").fetchone()[0]
        assert joined == 28


def test_rerun_sends_no_writes_and_changes_go_through_update_and_delete(world, admin_path):
    legacy = Legacy(world.legacy)
    legacy.seed(12)
    _run_users(world, "admin-1")
    writes = admin_path.write_requests()
    gets = admin_path.count_requests("GET", r"^/admin/users/")

    _run_users(world, "admin-2")
    assert admin_path.write_requests() == writes  # the rerun only reads
    assert admin_path.count_requests("GET", r"^/admin/users/") - gets == 16

    loser, gone = sorted(legacy.passwords)[:2]
    with psycopg.connect(world.legacy) as conn:
        old_email = conn.execute("SELECT email FROM users WHERE id = %s", (loser,)).fetchone()[0]
    legacy.soft_delete(gone)
    # A newer account with the same email (other case, spaces): the loaded one becomes a merged loser.
    survivor = legacy.add("  " + old_email.strip().upper(), password="survivor-pw", updated=60 * 24 * 5)
    before = {m: admin_path.count_requests(m) for m in ("POST", "PUT", "DELETE")}
    _run_users(world, "admin-3")
    after = {m: admin_path.count_requests(m) - before[m] for m in before}
    assert after == {"POST": 1, "PUT": 1, "DELETE": 2}  # survivor; the loser's parked email; loser + excluded

    with psycopg.connect(world.dest) as conn:
        left = {r[0] for r in conn.execute("SELECT id::text FROM auth.users WHERE id = ANY(%s::uuid[])",
                                           ([loser, gone, survivor],))}
        assert left == {survivor}
        assert conn.execute("SELECT count(*) FROM public.users WHERE id = ANY(%s::uuid[])",
                            ([loser, gone],)).fetchone()[0] == 0
        email, stored = conn.execute("SELECT email, encrypted_password FROM auth.users WHERE id = %s",
                                     (survivor,)).fetchone()
        assert email == old_email.strip().lower()
        assert bcrypt.checkpw(b"survivor-pw", stored.encode())
        assert conn.execute("SELECT count(*) FROM migration.before_images WHERE entity = 'auth.users' "
                            "AND op = 'delete' AND row_image->>'id' = ANY(%s)",
                            ([loser, gone],)).fetchone()[0] == 2

    # A changed profile is one PUT.
    with psycopg.connect(world.legacy, autocommit=True) as conn:
        target = sorted(set(legacy.passwords) - {loser, gone})[0]
        conn.execute("UPDATE users SET display_name = 'New Name', "
                     "updated_at = updated_at + interval '9 days' WHERE id = %s", (target,))
    puts = admin_path.count_requests("PUT")
    _run_users(world, "admin-4", mode="incremental")
    assert admin_path.count_requests("PUT") - puts == 1
    with psycopg.connect(world.dest) as conn:
        assert conn.execute("SELECT raw_user_meta_data->>'name' FROM auth.users WHERE id = %s",
                            (target,)).fetchone()[0] == "New Name"


def _row(email: str, hash_: str | None = None, name: str | None = "N") -> AccountRow:
    if hash_ is None:
        hash_ = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    return AccountRow(str(uuid.uuid4()), email, hash_, name, None)


def test_the_standin_refuses_what_gotrue_refuses(standin, world):
    client = _client(standin)
    row = _row("taken@example.com")
    client.auth.admin.create_user({"id": row.id, "email": row.email, "password_hash": row.password_hash,
                                   "user_metadata": {}})

    def refused(attributes: dict, key: str | None = None) -> AuthApiError:
        with pytest.raises(AuthApiError) as info:
            _client(standin, key).auth.admin.create_user(attributes)  # type: ignore[arg-type]
        return info.value

    err = refused({"email": "Taken@Example.com", "password_hash": row.password_hash})
    assert (err.status, err.code, err.message) == (
        422, "email_exists", "A user with this email address has already been registered")
    err = refused({"email": "x@example.com"}, key=standin.anon_key)
    assert (err.status, err.code) == (403, "not_admin")
    foreign = make_jwt("another-secret-entirely-0123456789", "service_role")
    err = refused({"email": "x@example.com"}, key=foreign)
    assert err.status == 401 and err.message == "Invalid API key"
    err = refused({"email": "x@example.com"}, key=make_jwt(SECRET, "service_role", expires_in=-10))
    assert (err.status, err.code) == (401, None)  # the gateway checks the apikey first
    for body in ({"email": 123}, {"email": "x@example.com", "user_metadata": "not an object"},
                 {"email": "x@example.com", "email_confirm": "yes"}):
        err = refused(body)
        assert (err.status, err.code) == (400, "bad_json"), body
    err = refused({"email": "not an email", "password_hash": row.password_hash})
    assert (err.status, err.code, err.message) == (
        400, "validation_failed", "Unable to validate email address: invalid format")
    err = refused({"password_hash": row.password_hash})
    assert (err.status, err.code) == (400, "validation_failed")
    err = refused({"email": "x@example.com", "password": "secret-1", "password_hash": row.password_hash})
    assert (err.status, err.message) == (400, "Only a password or a password hash should be provided")
    err = refused({"id": "not-a-uuid", "email": "y@example.com", "password_hash": row.password_hash})
    assert (err.status, err.message) == (400, "ID must conform to the uuid v4 format")
    # An existing id with a new email passes every check and fails on the primary key.
    err = refused({"id": row.id, "email": "other@example.com", "password_hash": row.password_hash})
    assert (err.status, err.code, err.message) == (
        500, "unexpected_failure", "Database error creating new user")
    # GoTrue answers an unparseable password_hash with 500 (only ErrPasswordTooLong is a 400).
    for bad in ("pbkdf2_sha256$600000$salt$" + "x" * 44, "$1$saltsalt$" + "y" * 50, "$2b$03$" + "z" * 53,
                "$argon2d$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g", "plain-text-password"):
        err = refused({"email": "h@example.com", "password_hash": bad})
        assert (err.status, err.code, err.message) == (500, "unexpected_failure", "Error creating user"), bad
    with pytest.raises(AuthApiError) as info:
        client.auth.admin.update_user_by_id(str(uuid.uuid4()), {"email": "z@example.com"})
    err = info.value
    assert (err.status, err.code, err.message) == (404, "user_not_found", "User not found")
    with psycopg.connect(world.dest) as conn:
        assert conn.execute("SELECT count(*) FROM auth.users").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM auth.identities").fetchone()[0] == 1


def test_update_ignores_password_hash_as_gotrue_does(standin, world):
    client = _client(standin)
    row = _row("keep@example.com")
    client.auth.admin.create_user({"id": row.id, "email": row.email, "password_hash": row.password_hash,
                                   "user_metadata": {}})
    other = bcrypt.hashpw(b"other", bcrypt.gensalt(4)).decode()
    client.auth.admin.update_user_by_id(row.id, {"password_hash": other, "user_metadata": {"name": "K"}})
    with psycopg.connect(world.dest) as conn:
        stored, name = conn.execute("SELECT encrypted_password, raw_user_meta_data->>'name' FROM auth.users "
                                    "WHERE id = %s", (row.id,)).fetchone()
    assert (stored, name) == (row.password_hash, "K")
    # So the client reports a changed hash instead of pretending it applied it.
    changed = AccountRow(row.id, row.email, other, "K", None)
    result = sync_accounts_via_admin_api(client, [changed], known_accounts={row.id: row.password_hash},
                                         policy=FAST)
    assert [(o.outcome, o.reason) for o in result.outcomes] == [("failed", "password_hash_changed")]


def test_client_hash_check_agrees_with_the_server(standin):
    client = _client(standin)
    hashes = [
        bcrypt.hashpw(b"a", bcrypt.gensalt(4, prefix=b"2a")).decode(),
        bcrypt.hashpw(b"a", bcrypt.gensalt(5, prefix=b"2b")).decode().replace("$2b$", "$2y$"),
        _argon2id(3), _argon2id(3).replace("argon2id", "argon2i"),
        _argon2id(3).replace("argon2id", "argon2d"), _argon2id(3).replace("v=19", "v=16"),
        "$2b$03$" + "z" * 53, "$2b$32$" + "z" * 53, "$3a$10$" + "z" * 53, "$2b$10$short",
        "pbkdf2_sha256$600000$salt$" + "x" * 44, "",
    ]
    for i, hash_ in enumerate(hashes):
        try:
            client.auth.admin.create_user({"email": f"h{i}@example.com", "password_hash": hash_,
                                           "user_metadata": {}})
            accepted = True
        except AuthApiError as err:
            assert err.status == 500
            accepted = False
        # An empty hash means "no hash": GoTrue generates a password.
        assert accepted == (hash_ == "" or unsupported_hash_reason(hash_) is None), hash_


def test_sync_retries_5xx_and_timeouts_and_reports_each_row(standin, world):
    client = _client(standin, timeout=1.0)
    rows = [_row(f"r{i}@example.com") for i in range(6)]
    standin.inject_fault(r"^/admin/users$", status=503, times=2, method="POST")
    standin.inject_fault(r"^/admin/users$", status=429, times=1, method="POST")
    # Answered only after the client gave up: the write lands, the retry finds it.
    standin.inject_fault(r"^/admin/users$", status=None, delay=1.5, times=1, method="POST")
    result = sync_accounts_via_admin_api(client, rows, known_accounts={}, workers=3, policy=FAST)
    assert sorted(o.outcome for o in result.outcomes) == ["created"] * 6
    with psycopg.connect(world.dest) as conn:
        assert conn.execute("SELECT count(*) FROM auth.users WHERE id = ANY(%s::uuid[])",
                            ([r.id for r in rows],)).fetchone()[0] == 6

    bad = _row("bad@example.com", hash_="md5$" + "0" * 60)
    taken = AccountRow(str(uuid.uuid4()), "R0@example.com", rows[0].password_hash, "N", None)
    oauth = AccountRow(str(uuid.uuid4()), "oauth@example.com", None, None, None)
    posts = standin.count_requests("POST")
    result = sync_accounts_via_admin_api(client, [bad, taken, oauth, *rows], policy=FAST)
    outcomes = {o.user_id: (o.outcome, (o.reason or "").split(":")[0]) for o in result.outcomes}
    assert outcomes[bad.id] == ("failed", "unsupported_password_hash")
    assert outcomes[taken.id] == ("failed", "email_taken_by_another_account")
    assert outcomes[oauth.id] == ("created", "")
    assert all(outcomes[r.id] == ("unchanged", "") for r in rows)
    assert standin.count_requests("POST") - posts == 2  # taken (422) and oauth; the bad hash never left


def test_a_failed_chunk_leaves_accounts_that_the_rerun_finds_unchanged(world, admin_path):
    legacy = Legacy(world.legacy)
    legacy.seed(9)
    admin_path.inject_fault(r"^/admin/users$", method="POST", status=400, times=1,
                            body=json.dumps({"code": "validation_failed", "message": "Injected refusal"}))
    with pytest.raises(Exception, match="1 of 13 accounts failed through the Auth admin API"):
        _run_users(world, "admin-1")
    with psycopg.connect(world.dest) as conn:
        accounts, rows = conn.execute(
            "SELECT (SELECT count(*) FROM auth.users), (SELECT count(*) FROM public.users)").fetchone()
    assert (accounts, rows) == (12, 0)  # GoTrue committed its accounts; the chunk did not commit

    before = {m: admin_path.count_requests(m) for m in ("GET", "POST", "PUT")}
    pipeline.load(world, "users", "users:admin-1")  # the task retry resumes the same run
    after = {m: admin_path.count_requests(m) - before[m] for m in before}
    assert after == {"GET": 12, "POST": 1, "PUT": 0}
    with psycopg.connect(world.dest) as conn:
        joined = conn.execute(
            "SELECT count(*) FROM public.users p JOIN auth.users a USING (id)").fetchone()[0]
        assert joined == 13
