"""The relational pipeline on a small hand-made legacy world: each transform rule
has a case, and the destination, the ledgers and the accounting are asserted
row by row. Runs the steps without Airflow (the e2e tests run the DAGs)."""

from __future__ import annotations

import psycopg
import pytest

from include.migration import pipeline

# The relational entities (media has its own tests: it needs Storage).
RELATIONAL = ("users", "agents", "conversations", "messages")

pytestmark = pytest.mark.integration

U = {n: f"00000000-0000-4000-8000-{n:012d}" for n in range(1, 30)}
A = {n: f"00000000-0000-4000-9000-{n:012d}" for n in range(1, 30)}
C = {n: f"00000000-0000-4000-a000-{n:012d}" for n in range(1, 30)}
MISSING = "00000000-0000-4000-b000-000000000999"
HASH = "$2b$04$abcdefghijklmnopqrstuu5V1b7VxXw5lSx3Zr1o6nH9b7tL2s6yW"


def seed_rules_world(legacy_dsn: str) -> None:
    with psycopg.connect(legacy_dsn, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO users (id, email, display_name, avatar_url, password_hash, created_at, updated_at, deleted_at)
            VALUES
              (%(u1)s, '  Alice@Example.COM ', '  Alice  ', 'https://a/1.png', %(h)s, '2024-01-01 10:00', '2024-02-01', NULL),
              (%(u2)s, 'alice@example.com', 'Old Alice', NULL, %(h)s, '2023-01-01', '2023-06-01', NULL),
              (%(u3)s, 'not-an-email', 'Bad', NULL, NULL, '2024-01-01', NULL, NULL),
              (%(u4)s, 'gone@example.com', 'Gone', NULL, %(h)s, '2024-01-01', NULL, '2024-05-01'),
              (%(u5)s, 'blank@example.com', '   ', NULL, NULL, '2024-03-01 12:00', '2024-01-01', NULL),
              (%(u6)s, 'null.name@example.com', NULL, NULL, %(h)s, '2024-03-01', NULL, NULL)
            """,
            {**{f"u{k}": v for k, v in U.items()}, "h": HASH},
        )
        conn.execute(
            """
            INSERT INTO agents (id, owner_id, name, description, system_prompt, model, temperature, tools, is_public,
                                created_at, updated_at)
            VALUES
              (%(a1)s, %(u1)s, 'Helper', NULL, 'Be kind', 'gpt', 0.7, '["search"]', true, '2024-01-01', NULL),
              (%(a2)s, NULL, 'Built-in', NULL, 'Sys', 'gpt', NULL, NULL, true, '2024-01-01', '2024-01-02'),
              (%(a3)s, %(missing)s, 'Orphan', NULL, 'x', 'gpt', 1, '[]', false, '2024-01-01', NULL),
              (%(a4)s, %(u1)s, 'Broken tools', NULL, 'x', 'gpt', 1, '[not json', false, '2024-01-01', NULL),
              (%(a5)s, %(u2)s, 'Loser agent', NULL, 'x', 'gpt', 1, '[]', false, '2024-01-01', NULL),
              (%(a6)s, %(u4)s, 'Deleted owner', NULL, 'x', 'gpt', 1, '[]', false, '2024-01-01', NULL)
            """,
            {**{f"a{k}": v for k, v in A.items()}, **{f"u{k}": v for k, v in U.items()}, "missing": MISSING},
        )
        conn.execute(
            """
            INSERT INTO conversations (id, user_id, agent_id, title, created_at, updated_at, deleted_at) VALUES
              (%(c1)s, %(u1)s, %(a1)s, 'Hello', '2024-01-02', NULL, NULL),
              (%(c2)s, %(missing)s, NULL, 'Orphan', '2024-01-02', NULL, NULL),
              (%(c3)s, %(u4)s, NULL, 'Of deleted user', '2024-01-02', NULL, NULL),
              (%(c4)s, %(u1)s, %(missing)s, '   ', '2024-01-02', NULL, NULL),
              (%(c5)s, %(u2)s, %(a4)s, NULL, '2024-01-02', NULL, NULL),
              (%(c6)s, %(u1)s, NULL, 'Deleted', '2024-01-02', NULL, '2024-02-02'),
              (%(c7)s, %(u3)s, NULL, 'Of bad email', '2024-01-02', NULL, NULL)
            """,
            {**{f"c{k}": v for k, v in C.items()}, **{f"u{k}": v for k, v in U.items()},
             **{f"a{k}": v for k, v in A.items()}, "missing": MISSING},
        )
        conn.execute(
            """
            INSERT INTO messages (id, conversation_id, role, content, token_count, model, metadata, created_at) VALUES
              (1, %(c1)s, 'user', 'Hi 👋 héllo', 3, NULL, '{"k": 1}', '2024-01-02 00:00:01'),
              (2, %(c1)s, 'bot', 'Hello!', 2, 'gpt', NULL, '2024-01-02 00:00:02'),
              (3, %(c1)s, 'moderator', 'x', NULL, NULL, NULL, '2024-01-02 00:00:03'),
              (4, %(c1)s, 'assistant', 'y', NULL, NULL, '{broken', '2024-01-02 00:00:04'),
              (5, %(missing)s, 'user', 'lost', NULL, NULL, NULL, '2024-01-02'),
              (6, %(c6)s, 'user', 'in deleted conversation', NULL, NULL, NULL, '2024-01-02'),
              (7, %(c2)s, 'user', 'in orphan conversation', NULL, NULL, NULL, '2024-01-02'),
              (8, %(c5)s, 'tool', 'in loser conversation', NULL, NULL, '[1,2]', '2024-01-02')
            """,
            {**{f"c{k}": v for k, v in C.items()}, "missing": MISSING},
        )


def run_all(conns, label: str, mode: str = "full", **kwargs) -> dict:
    return {name: pipeline.run_entity(conns, name, f"{label}", mode=mode, validate_with_gx=False,
                                      quarantine_threshold_pct=100, **kwargs) for name in RELATIONAL}


def fetch(dsn: str, query: str, *args) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, args).fetchall()


def test_every_rule_lands_as_documented(world):
    seed_rules_world(world.legacy)
    run_all(world, "first")
    users = {r[0]: r[1:] for r in fetch(world.dest, "SELECT id::text, email, name, updated_at::text FROM public.users")}
    # Merge: u1 (updated later) survives u2; email trimmed and lower-cased; name trimmed.
    assert users[U[1]][:2] == ("alice@example.com", "Alice")
    assert U[2] not in users and U[3] not in users and U[4] not in users
    # Blank name -> local part; updated_at earlier than created_at -> created_at.
    assert users[U[5]] == ("blank@example.com", "blank", "2024-03-01 12:00:00+00")
    assert users[U[6]][:2] == ("null.name@example.com", "null.name")
    assert fetch(world.dest, "SELECT loser_id::text, survivor_id::text FROM migration.user_id_map") == [(U[2], U[1])]
    quarantine = dict(fetch(world.dest, "SELECT source_key, reason FROM migration.quarantine"))
    assert quarantine == {
        U[3]: "invalid_email",
        A[3]: "owner_missing", A[4]: "tools_malformed",
        C[2]: "user_missing", C[7]: "user_quarantined",
        "3": "unknown_role", "5": "conversation_missing", "7": "conversation_quarantined",
    }
    exclusions = dict(fetch(world.dest, "SELECT source_key, rule FROM migration.exclusions"))
    assert exclusions == {
        U[2]: "merged_duplicate", U[4]: "soft_deleted", A[6]: "owner_excluded",
        C[3]: "user_excluded", C[6]: "soft_deleted", "6": "conversation_excluded",
    }
    agents = dict(fetch(world.dest, "SELECT id::text, owner_id::text FROM public.agents"))
    # Built-in agent keeps a null owner; the loser's agent moves to the survivor.
    assert agents == {A[1]: U[1], A[2]: None, A[5]: U[1]}
    assert fetch(world.dest, "SELECT tools::text FROM public.agents WHERE id = %s", A[2]) == [("[]",)]
    convs = {r[0]: r[1:] for r in fetch(world.dest, "SELECT id::text, user_id::text, agent_id::text, title "
                                                    "FROM public.conversations")}
    assert convs[C[1]] == (U[1], A[1], "Hello")
    assert convs[C[4]] == (U[1], None, "Untitled conversation")  # dangling agent -> null, blank title
    assert convs[C[5]] == (U[1], None, "Untitled conversation")  # loser re-pointed; quarantined agent -> null
    assert set(convs) == {C[1], C[4], C[5]}
    msgs = {r[0]: r[1:] for r in fetch(world.dest, "SELECT id, role, metadata::text, content FROM public.messages")}
    assert msgs == {
        1: ("user", '{"k": 1}', "Hi 👋 héllo"),
        2: ("assistant", "{}", "Hello!"),
        4: ("assistant", '{"legacy_raw": "{broken"}', "y"),
        8: ("tool", '{"legacy_raw": "[1,2]"}', "in loser conversation"),
    }


def test_accounting_balances_and_is_stored(world):
    seed_rules_world(world.legacy)
    results = run_all(world, "acc")
    rows = fetch(world.dest, "SELECT entity, disposition, sum(rows)::int FROM migration.run_accounting "
                             "GROUP BY 1, 2 ORDER BY 1, 2")
    assert rows == [
        ("agents", "excluded", 1), ("agents", "loaded", 3), ("agents", "quarantined", 2),
        ("conversations", "excluded", 2), ("conversations", "loaded", 3), ("conversations", "quarantined", 2),
        ("messages", "excluded", 1), ("messages", "loaded", 4), ("messages", "quarantined", 3),
        ("users", "excluded", 2), ("users", "loaded", 3), ("users", "quarantined", 1),
    ]
    assert results["messages"]["inserted"] == 4
    acc = fetch(world.dest, "SELECT counts->'accounting'->>'balanced' FROM migration.runs")
    assert {r[0] for r in acc} == {"true"}


def test_second_run_changes_nothing(world):
    seed_rules_world(world.legacy)
    run_all(world, "one")
    before = fetch(world.dest, "SELECT count(*) FROM migration.before_images")
    second = run_all(world, "two")
    for name, res in second.items():
        assert (res["inserted"], res["updated"], res["deleted"]) == (0, 0, 0), name
    assert fetch(world.dest, "SELECT count(*) FROM migration.before_images") == before


def test_auth_accounts_carry_the_hash_unchanged(world):
    seed_rules_world(world.legacy)
    run_all(world, "auth")
    rows = fetch(world.dest, "SELECT id::text, encrypted_password, confirmation_token, recovery_token, "
                             "email_change_token_new, email_change, aud, role, instance_id::text, "
                             "email_confirmed_at IS NOT NULL FROM auth.users ORDER BY id")
    by_id = {r[0]: r[1:] for r in rows}
    assert set(by_id) == {U[1], U[5], U[6]}
    assert by_id[U[1]] == (HASH, "", "", "", "", "authenticated", "authenticated",
                           "00000000-0000-0000-0000-000000000000", True)
    assert by_id[U[5]][0] == ""  # OAuth-only: an account without a password
    identities = fetch(world.dest, "SELECT user_id::text, provider, identity_data->>'email' FROM auth.identities "
                                   "ORDER BY user_id")
    assert identities == [(U[1], "email", "alice@example.com"), (U[6], "email", "null.name@example.com")]


def test_dry_run_reports_and_writes_nothing(world):
    seed_rules_world(world.legacy)
    res = pipeline.run_entity(world, "users", "dry", mode="full", dry_run=True)
    assert res["dry_run"]
    assert fetch(world.dest, "SELECT count(*) FROM public.users") == [(0,)]
    assert fetch(world.dest, "SELECT count(*) FROM migration.quarantine") == [(0,)]
    plan = fetch(world.dest, "SELECT report->'dry_run_plan' FROM migration.runs WHERE run_id = 'users:dry'")[0][0]
    assert plan["insert"] == 3 and plan["update"] == 0


def test_reconciliation_names_exactly_the_corrupted_keys(world):
    from include.migration.entities import get
    from include.migration.reconcile import reconcile

    seed_rules_world(world.legacy)
    run_all(world, "rec")
    with psycopg.connect(world.dest, autocommit=True) as conn:
        conn.execute("UPDATE public.messages SET content = 'tampered' WHERE id = 2")
        conn.execute("UPDATE public.messages SET id = 9999 WHERE id = 4")  # one key changed
    rec = reconcile(world.legacy, world.dest, get("messages"))
    assert not rec.clean
    assert rec.different == ["2"]
    assert rec.missing == ["4"]
    assert rec.extra == ["9999"]


def test_a_reconciliation_summed_in_several_legacy_streams_finds_what_one_stream_finds(world, monkeypatch):
    from include.migration import reconcile as rec_mod
    from include.migration.entities import get

    seed_rules_world(world.legacy)
    run_all(world, "rec")
    with psycopg.connect(world.dest, autocommit=True) as conn:
        conn.execute("UPDATE public.messages SET content = 'tampered' WHERE id = 2")
        conn.execute("UPDATE public.messages SET id = 9999 WHERE id = 4")
    one = rec_mod.reconcile(world.legacy, world.dest, get("messages"))
    with psycopg.connect(world.legacy, autocommit=True) as conn:
        conn.execute("ANALYZE messages")  # the streams' key ranges come from the statistics
    monkeypatch.setattr(rec_mod, "LEGACY_STREAM_ROWS", 0)
    monkeypatch.setattr(rec_mod, "LEGACY_STREAMS", 3)
    with psycopg.connect(world.legacy) as conn:
        parts = rec_mod.legacy_key_ranges(conn, get("messages"))
    assert len(parts) == 3 and parts[0][0] is None and parts[-1][1] is None
    several = rec_mod.reconcile(world.legacy, world.dest, get("messages"))
    assert (several.different, several.missing, several.extra) == (["2"], ["4"], ["9999"])
    assert (several.source_rows, several.target_rows, several.differing_buckets) == \
        (one.source_rows, one.target_rows, one.differing_buckets)
    with psycopg.connect(world.dest, autocommit=True) as conn:
        conn.execute("UPDATE public.messages SET content = 'Hello!' WHERE id = 2")
        conn.execute("UPDATE public.messages SET id = 4 WHERE id = 9999")
    assert rec_mod.reconcile(world.legacy, world.dest, get("messages")).clean


def test_incremental_follows_updates_inserts_and_deletes(world):
    seed_rules_world(world.legacy)
    run_all(world, "base")
    with psycopg.connect(world.legacy, autocommit=True) as conn:
        conn.execute("UPDATE users SET display_name = 'Alicia', updated_at = now() AT TIME ZONE 'UTC' WHERE id = %s",
                     (U[1],))
        conn.execute("UPDATE conversations SET deleted_at = now() AT TIME ZONE 'UTC' WHERE id = %s", (C[4],))
        conn.execute("INSERT INTO messages (id, conversation_id, role, content, created_at) "
                     "VALUES (20, %s, 'user', 'new', now() AT TIME ZONE 'UTC')", (C[1],))
        conn.execute("DELETE FROM agents WHERE id = %s", (A[5],))
    run_all(world, "inc", mode="incremental")
    assert fetch(world.dest, "SELECT name FROM public.users WHERE id = %s", U[1]) == [("Alicia",)]
    assert fetch(world.dest, "SELECT count(*) FROM public.conversations WHERE id = %s", C[4]) == [(0,)]
    assert fetch(world.dest, "SELECT content FROM public.messages WHERE id = 20") == [("new",)]
    # A hard delete is seen by the incremental run too (deletes.py), with its before-image.
    assert fetch(world.dest, "SELECT count(*) FROM public.agents WHERE id = %s", A[5]) == [(0,)]
    assert fetch(world.dest, "SELECT row_image->>'id' FROM migration.before_images WHERE run_id = 'agents:inc' "
                             "AND entity = 'public.agents' AND op = 'delete'") == [(A[5],)]
    # Nothing is left for a full run to delete.
    out = pipeline.run_entity(world, "agents", "full-after", mode="full", validate_with_gx=False,
                              quarantine_threshold_pct=100)
    assert out["deleted"] == 0


def test_rollback_of_the_second_run_restores_the_first_state(world):
    from include.migration.entities import get
    from include.migration.reconcile import fingerprint
    from include.migration.rollback import rollback

    seed_rules_world(world.legacy)
    run_all(world, "r1")
    with psycopg.connect(world.dest) as conn:
        after_first = {n: fingerprint(conn, get(n)) for n in RELATIONAL}
        auth_first = conn.execute("SELECT count(*), md5(string_agg(u::text, ',' ORDER BY id)) FROM auth.users u").fetchone()
    with psycopg.connect(world.legacy, autocommit=True) as conn:
        conn.execute("UPDATE users SET display_name = 'Changed', updated_at = now() AT TIME ZONE 'UTC' WHERE id = %s", (U[6],))
        conn.execute("UPDATE users SET deleted_at = now() AT TIME ZONE 'UTC' WHERE id = %s", (U[1],))  # cascades
        conn.execute("INSERT INTO users (id, email, created_at) VALUES (%s, 'new@example.com', now() AT TIME ZONE 'UTC')", (U[20],))
        conn.execute("DELETE FROM messages WHERE id = 2")
    run_all(world, "r2")
    assert fetch(world.dest, "SELECT count(*) FROM public.users WHERE id = %s", U[1]) == [(0,)]
    # U1's history went with it; U2, no longer merged into U1, survives with its own conversation.
    assert fetch(world.dest, "SELECT id FROM public.messages") == [(8,)]
    assert fetch(world.dest, "SELECT user_id::text FROM public.conversations") == [(U[2],)]
    result = rollback(world.dest, "users:r2", since=True)
    assert result.proven, result.verdicts
    with psycopg.connect(world.dest) as conn:
        assert {n: fingerprint(conn, get(n)) for n in RELATIONAL} == after_first
        assert conn.execute("SELECT count(*), md5(string_agg(u::text, ',' ORDER BY id)) FROM auth.users u").fetchone() == auth_first
    statuses = fetch(world.dest, "SELECT DISTINCT status FROM migration.runs WHERE run_id LIKE %s", "%:r2")
    assert statuses == [("rolled_back",)]


def test_bulk_insert_still_refuses_an_orphan(world):
    """The empty-range fast path checks foreign keys set-based: an orphan rolls the chunk back."""
    from psycopg import sql

    seed_rules_world(world.legacy)
    for name in ("users", "agents", "conversations"):
        pipeline.run_entity(world, name, "orph", mode="full", validate_with_gx=False, quarantine_threshold_pct=100)
    out = pipeline.extract(world, "messages", "orph", mode="full", dry_run=False, load_method="staged")
    pipeline.transform(world, "messages", out["run_id"])
    with psycopg.connect(world.dest, autocommit=True) as conn:
        stage = conn.execute("SELECT stage_table FROM migration.runs WHERE run_id = %s", (out["run_id"],)).fetchone()[0]
        # As if the parent vanished after the destination-side check.
        conn.execute(sql.SQL("UPDATE {} SET conversation_id = %s WHERE id = 1").format(
            sql.Identifier("migration_stage", stage)), (MISSING,))
    with pytest.raises(RuntimeError, match="reference a missing conversations row"):
        pipeline.load(world, "messages", out["run_id"], quarantine_threshold_pct=100)
    assert fetch(world.dest, "SELECT count(*) FROM public.messages") == [(0,)]


def test_load_fails_when_the_destination_is_not_locked_down(world):
    seed_rules_world(world.legacy)
    with psycopg.connect(world.dest, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.users DISABLE ROW LEVEL SECURITY")
    with pytest.raises(pipeline.LockdownBroken, match="public.users"):
        pipeline.run_entity(world, "users", "open", mode="full", validate_with_gx=False, quarantine_threshold_pct=100)


def test_demo_report_shows_every_run_adding_up(world):
    from local_runtime.report import demo_report

    seed_rules_world(world.legacy)
    run_all(world, "rep")
    with psycopg.connect(world.dest, autocommit=True) as conn:
        conn.execute("INSERT INTO migration.media_uploads (run_id, object_path, outcome, bytes) "
                     "VALUES ('media:rep', 'u/m/a.png', 'uploaded', 2500000)")
    text = demo_report(world.dest)
    assert text.count(": adds up") == 4 and "DOES NOT ADD UP" not in text
    assert "8 in scope = 4 + 1 + 3: adds up" in text  # messages
    assert "auth accounts: 3 (2 with a password, 1 without" in text
    assert "media uploads: uploaded 1 files (2.5 MB)" in text
