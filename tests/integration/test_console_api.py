"""The console's JSON API and page, served by the real api-server app (plugins loaded from plugins/,
the Simple auth manager's login) over a real destination with seeded ``migration.*`` rows."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.e2e import conftest as e2e

pytestmark = [pytest.mark.integration]

# The api-server needs its metadata DB migrated: the e2e tier's session fixture.
airflow_db = e2e.airflow_db

HASH = "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"
TOKEN = "recovery-7c1e55d0a1"
USER = "33333333-3333-4333-8333-333333333333"
BIG = 100_000


@pytest.fixture(scope="module")
def airflow_auth(tmp_path_factory):
    """The Simple auth manager with one admin whose password this fixture writes."""
    home = tmp_path_factory.mktemp("console-auth")
    passwords = home / "passwords.json"
    password = uuid.uuid4().hex
    passwords.write_text(json.dumps({"admin": password}))
    env = {
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex * 2,
    }
    return env, password


@pytest.fixture
def client(airflow_auth, airflow_db, monkeypatch, world, tmp_path):
    from fastapi.testclient import TestClient

    env, password = airflow_auth
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AIRFLOW_CONN_SUPABASE_DB", world.dest)
    monkeypatch.setenv("AIRFLOW_CONN_LEGACY_DB", world.legacy)
    monkeypatch.setenv("MIGRATION_STATE_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("MIGRATION_BENCH_DIR", str(tmp_path / "bench"))
    from airflow.api_fastapi.app import create_app

    app = create_app(apps="core")
    with TestClient(app) as c:
        token = c.post("/auth/token", json={"username": "admin", "password": password})
        assert token.status_code == 201, token.text
        c.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        yield c


def seed(dest: str, state_dir: Path) -> None:
    """A users full run with its accounting, a quarantined user (password hash and a token in its row),
    100,000 quarantined messages, a reconciliation, a watermark, a schema check with an override, and
    a cutover verdict."""
    with psycopg.connect(dest, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO migration.runs (run_id, entity, mode, dag_run_id, status, started_at, finished_at, "
            "stage_rows, counts, report) VALUES ('users:manual__1', 'users', 'full', 'manual__1', 'succeeded', "
            "now() - interval '10 minutes', now() - interval '9 minutes', 1000, %s, %s)",
            (Jsonb({"accounting": {"in_scope": 1000, "loaded": 990, "excluded": 7, "quarantined": 3}}),
             Jsonb({"repaired": {"name_from_email": 4, "updated_at_from_created_at": 2}})))
        conn.execute(
            "INSERT INTO migration.run_accounting VALUES ('users:manual__1', 'users', 'loaded', 'ok', 990), "
            "('users:manual__1', 'users', 'excluded', 'soft_deleted', 7), "
            "('users:manual__1', 'users', 'quarantined', 'invalid_email', 3)")
        conn.execute(
            "INSERT INTO migration.quarantine (entity, source_key, reason, source_row, run_id) VALUES "
            "('users', %s, 'invalid_email', %s, 'users:manual__1')",
            (USER, Jsonb({"id": USER, "email": "not an email", "password_hash": HASH,
                          "recovery_token": TOKEN, "display_name": "Ann"})))
        conn.execute(
            "INSERT INTO migration.quarantine (entity, source_key, reason, source_row, run_id) "
            "SELECT 'messages', lpad(g::text, 12, '0'), 'conversation_missing', jsonb_build_object('id', g), "
            "'messages:manual__1' FROM generate_series(1, %s) g", (BIG,))
        conn.execute(
            "INSERT INTO migration.reconciliations (run_id, entity, verdict, source_rows, target_rows, buckets, "
            "missing, different) VALUES ('users:manual__1', 'users', 'differences', 990, 989, 1, %s, %s)",
            (Jsonb([USER]), Jsonb(["44444444-4444-4444-8444-444444444444"])))
        conn.execute("INSERT INTO migration.watermarks (entity, change_ts, run_id) VALUES "
                     "('users', '2024-03-01 00:00:00', 'users:manual__1')")
        conn.execute(
            "INSERT INTO migration.schema_checks (verdict, blocked, report) VALUES ('breaking', %s, %s)",
            (Jsonb({"agents": ["legacy.agents.tools.type_changed"]}),
             Jsonb({"counts": {"breaking": 1, "compatible": 1, "informational": 0}, "differences": [
                 {"id": "legacy.agents.tools.type_changed", "severity": "breaking", "entities": ["agents"],
                  "detail": "tools is now jsonb"},
                 {"id": "legacy.users.nickname.new_column", "severity": "compatible", "entities": ["users"],
                  "detail": "a new column nobody reads"}]})))
        conn.execute(
            "INSERT INTO migration.schema_overrides (entity, difference_id, accepted_by, reason, run_id) VALUES "
            "('agents', 'legacy.agents.tools.type_changed', 'oncall@example.com', 'the cast is safe', "
            "'agents:manual__2')")
    cutover = state_dir / "cutover"
    cutover.mkdir(parents=True)
    (cutover / "latest.json").write_text(json.dumps({"verdict": "NO-GO", "checked_at": "2026-01-01T00:00:00+00:00",
        "criteria": [{"name": "user quarantine", "ok": False, "evidence": "0.3% > 0.1% threshold"}]}))


def test_refuses_without_login(client):
    bare = client.__class__(client.app)
    for path in ("/migration/api/overview", "/migration/api/quarantine/users/invalid_email",
                 "/migration/api/entities"):
        r = bare.get(path)
        assert r.status_code in (401, 403), (path, r.status_code)
        assert "entities" not in r.text and HASH not in r.text
    page = bare.get("/migration/")
    assert page.status_code in (401, 403)
    assert "sign in" in page.text
    forged = bare.get("/migration/api/overview", headers={"Authorization": "Bearer not.a.jwt"})
    assert forged.status_code in (401, 403)


def test_empty_destination_is_a_helpful_answer(client):
    r = client.get("/migration/api/overview")
    assert r.status_code == 200
    body = r.json()
    assert body["state"] == "empty"
    assert "Nothing has been migrated yet" in body["message"]
    assert [e["entity"] for e in body["entities"]] == ["users", "agents", "conversations", "messages", "media"]
    page = client.get("/migration/")
    assert page.status_code == 200
    assert "Nothing has been migrated yet" in page.text and "Traceback" not in page.text


def test_overview_reports_each_entity(client, world, tmp_path):
    seed(world.dest, tmp_path / "reports")
    with psycopg.connect(world.legacy, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, email, display_name, created_at, updated_at) VALUES "
                     "(gen_random_uuid(), 'a@example.com', 'A', '2024-03-01', '2024-03-02 06:00')")
    body = client.get("/migration/api/overview").json()
    assert body["state"] == "migrating"
    users = body["entities"][0]
    assert users["last_run"]["mode"] == "full" and users["last_run"]["status"] == "succeeded"
    assert users["last_run"]["url"].endswith("/dags/migrate_users/runs/manual__1")
    assert 55 < users["last_run"]["seconds"] < 65
    assert users["rows"] == {"in_scope": 1000, "loaded": 990, "excluded": 7, "quarantined": 3, "repaired": 6}
    assert users["reconciliation"]["verdict"] == "differences"
    assert users["reconciliation"]["differing_keys"] == 2
    assert users["watermark"]["lag_seconds"] == 30 * 3600  # the legacy's newest change is 30 h later
    assert users["gate"]["open"] is True
    agents = body["entities"][1]
    assert agents["last_run"] is None
    assert agents["gate"]["open"] is False and "legacy.agents.tools.type_changed" in agents["gate"]["why"]
    assert body["quarantine"]["total"] == BIG + 1
    assert {(c["entity"], c["reason"], c["rows"]) for c in body["quarantine"]["counts"]} == {
        ("users", "invalid_email", 1), ("messages", "conversation_missing", BIG)}
    assert body["quarantine"]["trend"]["users"][0]["by_reason"] == {"invalid_email": 3}
    assert body["schema"]["check"]["verdict"] == "breaking"
    assert [d["id"] for d in body["schema"]["check"]["breaking"]] == ["legacy.agents.tools.type_changed"]
    assert body["schema"]["overrides"][0]["accepted_by"] == "oncall@example.com"
    assert body["cutover"]["verdict"] == "NO-GO"
    assert body["throughput"]["runs"]["users"][0]["rows_per_second"] == pytest.approx(1000 / 60, rel=0.01)
    # The overview never carries a quarantined row, only counts.
    assert HASH not in json.dumps(body) and len(json.dumps(body)) < 50_000


def test_quarantine_rows_are_masked(client, world, tmp_path):
    seed(world.dest, tmp_path / "reports")
    r = client.get("/migration/api/quarantine/users/invalid_email")
    assert r.status_code == 200
    rows = r.json()["rows"]
    assert len(rows) == 1
    row = rows[0]["source_row"]
    assert row["email"] == "not an email" and row["display_name"] == "Ann"
    assert row["password_hash"] == "***" and row["recovery_token"] == "***"
    assert HASH not in r.text and TOKEN not in r.text
    page = client.get("/migration/", params={"entity": "users", "reason": "invalid_email"})
    assert page.status_code == 200
    assert "not an email" in page.text and HASH not in page.text and TOKEN not in page.text


def test_a_large_ledger_pages_on_the_server(client, world, tmp_path):
    seed(world.dest, tmp_path / "reports")
    first = client.get("/migration/api/quarantine/messages/conversation_missing", params={"page_size": 100}).json()
    assert first["total"] == BIG and len(first["rows"]) == 100
    assert first["rows"][0]["source_key"] == "000000000001" and first["next_after"] == "000000000100"
    second = client.get("/migration/api/quarantine/messages/conversation_missing",
                        params={"page_size": 100, "after": first["next_after"]}).json()
    assert second["rows"][0]["source_key"] == "000000000101"
    huge = client.get("/migration/api/quarantine/messages/conversation_missing", params={"page_size": 10**6})
    assert huge.status_code == 422  # a page is at most MAX_PAGE_SIZE rows, whatever is asked
    last = client.get("/migration/api/quarantine/messages/conversation_missing",
                      params={"page_size": 200, "after": f"{BIG - 150:012d}"}).json()
    assert len(last["rows"]) == 150 and last["next_after"] is None
    page = client.get("/migration/", params={"entity": "messages", "reason": "conversation_missing"})
    assert page.text.count("<tr class='sample'>") == 50 and "next page" in page.text
    assert len(page.content) < 200_000
    assert client.get("/migration/api/quarantine/nothing/x").status_code == 404


def test_an_unreachable_destination_is_a_message(client, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SUPABASE_DB", "postgresql://postgres:Pw-s3cret-99@127.0.0.1:1/supabase")
    r = client.get("/migration/api/overview")
    assert r.status_code == 503
    assert r.json()["error"] == "destination_unavailable"
    assert "127.0.0.1:1/supabase" in r.json()["message"] and "Pw-s3cret-99" not in r.text
    page = client.get("/migration/")
    assert page.status_code == 503
    assert "cannot be read right now" in page.text and "Traceback" not in page.text
    assert "Pw-s3cret-99" not in page.text


def test_the_page_shows_every_section(client, world, tmp_path):
    seed(world.dest, tmp_path / "reports")
    page = client.get("/migration/").text
    for marker in ("id='entities'", "id='quarantine'", "id='schema-breaking'", "id='schema-overrides'",
                   "id='cutover'", "id='throughput'", "NO-GO", "oncall@example.com", "data-entity='media'"):
        assert marker in page, marker
