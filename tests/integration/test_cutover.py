"""The cutover verdict: GO on a clean world, NO-GO for each criterion, each naming its cause."""

from __future__ import annotations

import psycopg
import pytest

from include.migration import pipeline
from include.migration.cutover import evaluate

# The relational entities (media has its own tests: it needs Storage).
RELATIONAL = ("users", "agents", "conversations", "messages")

pytestmark = [pytest.mark.integration, pytest.mark.slow]

U1, U2 = "10000000-0000-4000-8000-000000000001", "10000000-0000-4000-8000-000000000002"
A1, C1 = "20000000-0000-4000-8000-000000000001", "30000000-0000-4000-8000-000000000001"


def seed_clean(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, email, display_name, created_at) VALUES "
                     "(%s, 'ann@example.com', 'Ann', '2024-01-01'), (%s, 'bo@example.com', 'Bo', '2024-01-01')",
                     (U1, U2))
        conn.execute("INSERT INTO agents (id, owner_id, name, system_prompt, model, tools, is_public, created_at) "
                     "VALUES (%s, %s, 'A', 'p', 'm', '[]', false, '2024-01-01')", (A1, U1))
        conn.execute("INSERT INTO conversations (id, user_id, agent_id, title, created_at) "
                     "VALUES (%s, %s, %s, 'T', '2024-01-02')", (C1, U1, A1))
        conn.execute("INSERT INTO messages (id, conversation_id, role, content, created_at) VALUES "
                     "(1, %s, 'user', 'hi', '2024-01-02'), (2, %s, 'assistant', 'hello', '2024-01-02')", (C1, C1))


def migrate(world, label: str) -> None:
    for name in RELATIONAL:
        pipeline.run_entity(world, name, label, mode="full", validate_with_gx=False, quarantine_threshold_pct=100)


@pytest.fixture
def clean(world, tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATION_STATE_DIR", str(tmp_path))
    seed_clean(world.legacy)
    migrate(world, "base")
    return world


def failing(verdict) -> dict[str, str]:
    return {c.name: c.evidence for c in verdict.criteria if not c.ok}


def failing_after(clean, dsn: str, *statements: str, run_id: str, entities=RELATIONAL) -> dict[str, str]:
    """Run ``statements`` on ``dsn`` (the legacy or the destination database), then a cutover
    check: its failing criteria."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)
    return failing(evaluate(clean.legacy, clean.dest, run_id, entities=list(entities)))


def test_clean_world_is_go(clean, tmp_path):
    verdict = evaluate(clean.legacy, clean.dest, "cutover-1", entities=list(RELATIONAL))
    assert verdict.go, verdict.lines()
    assert (tmp_path / "cutover" / "latest.json").read_text().count('"GO"') == 1


def _insert_as_the_app(dest: str, user: str, conversation: str) -> int:
    """A message written the way the application writes it after cutover: as the signed-in
    user, through row level security, without an id."""
    with psycopg.connect(dest) as conn:
        conn.execute("SET ROLE authenticated")
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)",
                     (f'{{"sub": "{user}", "role": "authenticated"}}',))
        new_id = conn.execute("INSERT INTO public.messages (conversation_id, role, content, created_at) "
                              "VALUES (%s, 'user', 'after cutover', now()) RETURNING id", (conversation,)).fetchone()[0]
        conn.commit()
    return new_id


def test_after_the_verdict_the_application_inserts_messages_above_the_migrated_ids(clean):
    """The direct load rebuilt public.messages (keys dropped and put back) and kept its identity;
    the cutover step moved it above the highest legacy id, including a quarantined message's."""
    with psycopg.connect(clean.legacy, autocommit=True) as conn:
        conn.execute("INSERT INTO messages (id, conversation_id, role, content, created_at) "
                     "VALUES (40, %s, 'robot', 'unknown role', '2024-01-02')", (C1,))
    migrate(clean, "again")
    with psycopg.connect(clean.dest) as conn:
        assert conn.execute("SELECT attidentity FROM pg_attribute WHERE attrelid = 'public.messages'::regclass "
                            "AND attname = 'id'").fetchone()[0] == "d"
        assert conn.execute("SELECT method FROM (SELECT report->>'load_method' AS method, started_at "
                            "FROM migration.runs WHERE entity = 'messages' ORDER BY started_at LIMIT 1) r"
                            ).fetchone()[0] == "direct"
    verdict = evaluate(clean.legacy, clean.dest, "cutover-7", entities=list(RELATIONAL))
    assert verdict.go, verdict.lines()
    line = next(x for x in verdict.lines() if "application inserts messages" in x)
    assert line.startswith("PASS") and "destination 2, legacy 40" in line, line
    assert _insert_as_the_app(clean.dest, U1, C1) == 41
    # A second cutover check does not move the identity back below what the application wrote.
    assert evaluate(clean.legacy, clean.dest, "cutover-8", entities=["messages"]).criteria[-1].ok
    assert _insert_as_the_app(clean.dest, U1, C1) == 42


def test_messages_without_an_id_generator_is_nogo(clean):
    bad = failing_after(clean, clean.dest, "ALTER TABLE public.messages ALTER COLUMN id DROP IDENTITY",
                        run_id="cutover-9")
    assert list(bad) == ["application inserts messages with new ids"]
    assert "public.messages.id has no identity or sequence" in bad["application inserts messages with new ids"]


def test_unaccounted_row_is_nogo(clean):
    bad = failing_after(clean, clean.dest, "DELETE FROM public.messages WHERE id = 2", run_id="cutover-2")
    assert "messages: 2 source rows but 1 loaded" in bad["100% of rows accounted for"]
    assert "1 missing" in bad["zero reconciliation differences"]


def test_quarantine_over_threshold_is_nogo(clean):
    with psycopg.connect(clean.legacy, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, email, created_at) VALUES "
                     "('10000000-0000-4000-8000-000000000003', 'broken', '2024-01-01')")
    migrate(clean, "again")
    bad = failing(evaluate(clean.legacy, clean.dest, "cutover-3", entities=list(RELATIONAL)))
    assert list(bad) == ["quarantine under 0.1% of users"]
    assert bad["quarantine under 0.1% of users"].startswith("1 of 3 users quarantined")


def test_reconciliation_difference_is_nogo(clean):
    bad = failing_after(clean, clean.dest, "UPDATE public.messages SET content = 'tampered' WHERE id = 1",
                        run_id="cutover-4")
    assert list(bad) == ["zero reconciliation differences"]
    assert "1 different" in bad["zero reconciliation differences"]


def test_breaking_schema_difference_is_nogo(clean):
    bad = failing_after(
        clean,
        clean.legacy,
        "ALTER TABLE messages ADD COLUMN extra text",  # compatible: ignored
        "ALTER TABLE agents DROP COLUMN description",  # breaking
        run_id="cutover-5",
        entities=["users", "conversations"],
    )
    assert list(bad) == ["zero breaking schema differences"]
    assert "legacy.agents.description:missing_column" in bad["zero breaking schema differences"]


def test_rls_off_is_nogo(clean):
    bad = failing_after(clean, clean.dest, "ALTER TABLE public.messages DISABLE ROW LEVEL SECURITY",
                        run_id="cutover-6")
    assert "public.messages" in bad["destination locked down (RLS on)"]
    assert "rls_disabled" in bad["zero breaking schema differences"]
