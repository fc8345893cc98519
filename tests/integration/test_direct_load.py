"""The direct load (include/migration/direct.py): a full run into an empty table,
streamed straight into it. It must leave exactly what the staged load leaves,
put the table's indexes and constraints back as they were, and be all or
nothing when it fails or is killed."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from include.migration import direct, pipeline, rollback
from include.migration.entities import get
from tests import faults
from tests.integration.test_relational_pipeline import RELATIONAL, C, seed_rules_world

pytestmark = pytest.mark.integration

BULK = 4000  # plain messages added to the rules world: several MiB, so the relay flushes many times


def seed(legacy: str) -> None:
    seed_rules_world(legacy)
    with psycopg.connect(legacy, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO messages (id, conversation_id, role, content, token_count, model, metadata, created_at) "
            "SELECT 100 + n, %s, CASE WHEN n %% 500 = 0 THEN 'bot' ELSE 'user' END, repeat('lorem ipsum ', 100) || n, "
            "n, 'gpt', CASE WHEN n %% 700 = 0 THEN '{bad' ELSE '{\"n\": ' || n || '}' END, "
            "timestamp '2024-03-01' + n * interval '1 second' FROM generate_series(1, %s) n", (C[1], BULK))


def run_all(conns: pipeline.Conns, label: str, **kwargs) -> dict:
    return {name: pipeline.run_entity(conns, name, label, mode="full", validate_with_gx=False,
                                      quarantine_threshold_pct=100, **kwargs) for name in RELATIONAL}


def fetch(dsn: str, query: str, *args) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, args).fetchall()


def catalog(dsn: str) -> list[tuple]:
    """Every constraint and index on the relational tables, or pointing at them."""
    tables = [f"public.{t}" for t in ("agents", "conversations", "messages", "media")]
    return fetch(dsn, """
        SELECT 'c', conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated FROM pg_constraint
        WHERE conrelid = ANY(%s::regclass[]) OR confrelid = ANY(%s::regclass[])
        UNION ALL
        SELECT 'i', indrelid::regclass::text, indexrelid::regclass::text, pg_get_indexdef(indexrelid), indisvalid
        FROM pg_index WHERE indrelid = ANY(%s::regclass[])
        ORDER BY 1, 2, 3""", tables, tables, tables)


def methods(dsn: str, label: str = "full") -> dict[str, str]:
    return dict(fetch(dsn, "SELECT entity, report->>'load_method' FROM migration.runs WHERE dag_run_id = %s", label))


def test_direct_load_leaves_what_the_staged_load_leaves(twin):
    directly, staged = twin
    run_all(directly, "full")
    run_all(staged, "full", load_method="staged")
    assert methods(directly.dest) == {"users": "staged", "agents": "direct", "conversations": "direct",
                                      "messages": "direct"}
    assert set(methods(staged.dest).values()) == {"staged"}
    diffs = faults.compare_tables(staged.dest, directly.dest, RELATIONAL)
    assert [d for d in diffs if not d.equal] == []
    assert sum(d.rows for d in diffs if d.table == "public.messages") == BULK + 4  # 1, 2, 4 and 8 of the rules world
    accounting = "SELECT entity, disposition, reason, rows FROM migration.run_accounting ORDER BY 1, 2, 3"
    assert fetch(directly.dest, accounting) == fetch(staged.dest, accounting)
    figures = fetch(directly.dest, "SELECT counts->'direct' FROM migration.runs WHERE entity = 'messages'")[0][0]
    # A repaired row ('bot', bad JSON) goes by the stage, like every row that is not plainly loaded.
    repaired = len([n for n in range(1, BULK + 1) if n % 500 == 0 or n % 700 == 0])
    assert figures["streamed_loaded"] == BULK - repaired + 1  # and message 1
    assert figures["repaired_loaded"] == repaired + 3  # and messages 2 (bot), 4 (bad JSON), 8 (an array)
    for conns in (directly, staged):
        for name in RELATIONAL:
            assert pipeline.reconcile(conns, name, f"{name}:full")["verdict"] == "clean"
    # The rerun finds the table full, stages, and writes nothing.
    again = run_all(directly, "again")
    assert set(methods(directly.dest, "again").values()) == {"staged"}
    assert {name: again[name]["inserted"] + again[name]["updated"] for name in RELATIONAL} == \
        {name: 0 for name in RELATIONAL}


def test_direct_load_puts_every_index_and_constraint_back(twin):
    directly, _ = twin
    before = catalog(directly.dest)
    assert any(name == "messages_pkey" for _, _, name, _, _ in before)
    run_all(directly, "full")
    assert catalog(directly.dest) == before
    rebuilt = fetch(directly.dest, "SELECT counts->'direct'->'rebuilt' FROM migration.runs WHERE entity = 'messages'")
    assert set(rebuilt[0][0]) == {"public.media.media_message_id_fkey", "messages_pkey",
                                  "messages_conversation_id_idx"}


def test_streamed_rows_whose_parent_left_the_destination_are_quarantined(twin):
    directly, _ = twin
    for name in ("users", "agents", "conversations"):
        pipeline.run_entity(directly, name, "full", mode="full", validate_with_gx=False, quarantine_threshold_pct=100)
    with psycopg.connect(directly.dest, autocommit=True) as conn:
        conn.execute("DELETE FROM public.conversations WHERE id = %s", (C[1],))  # every bulk message's parent
    out = pipeline.run_entity(directly, "messages", "full", mode="full", validate_with_gx=False,
                              quarantine_threshold_pct=100)
    assert out["inserted"] == 1
    reasons = dict(fetch(directly.dest, "SELECT reason, count(*) FROM migration.quarantine WHERE entity = 'messages' "
                                        "GROUP BY 1"))
    assert reasons["conversations_not_in_destination"] == BULK + 3  # and message 8 (its conversation is c5)
    assert fetch(directly.dest, "SELECT id FROM public.messages") == [(8,)]
    accounting = dict(fetch(directly.dest, "SELECT reason, rows FROM migration.run_accounting "
                                           "WHERE entity = 'messages' AND disposition = 'quarantined'"))
    assert accounting["conversations_not_in_destination"] == BULK + 3


def test_a_failed_direct_load_leaves_the_table_empty_and_whole(twin):
    directly, _ = twin
    for name in ("users", "agents", "conversations"):
        pipeline.run_entity(directly, name, "full", mode="full", validate_with_gx=False, quarantine_threshold_pct=100)
    with psycopg.connect(directly.dest, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.messages ADD CONSTRAINT not_2000 CHECK (id <> 2100)")
    before = catalog(directly.dest)
    out = pipeline.extract(directly, "messages", "full", mode="full", dry_run=False)
    with pytest.raises(psycopg.errors.CheckViolation, match="not_2000"):
        pipeline.load(directly, "messages", out["run_id"], quarantine_threshold_pct=100)
    assert fetch(directly.dest, "SELECT count(*) FROM public.messages") == [(0,)]
    assert catalog(directly.dest) == before
    assert fetch(directly.dest, "SELECT count(*) FROM migration.quarantine WHERE entity = 'messages'") == [(0,)]
    with psycopg.connect(directly.dest, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.messages DROP CONSTRAINT not_2000")
    pipeline.load(directly, "messages", out["run_id"], quarantine_threshold_pct=100)
    assert pipeline.reconcile(directly, "messages", out["run_id"])["verdict"] == "clean"


def test_rollback_of_a_direct_load_empties_the_table(twin):
    directly, _ = twin
    run_all(directly, "full")
    result = rollback.rollback(directly.dest, "messages:full")
    assert result.verdicts["messages"] == "matches"
    assert fetch(directly.dest, "SELECT count(*) FROM public.messages") == [(0,)]


def test_a_rollback_does_not_compare_a_checksum_taken_with_another_digest(twin):
    from psycopg.types.json import Jsonb

    from include.migration.reconcile import DIGEST, fingerprint

    directly, _ = twin
    run_all(directly, "full")
    with psycopg.connect(directly.dest) as conn:
        now = fingerprint(conn, get("messages"))
        recorded = fetch(directly.dest, "SELECT counts->'fingerprint' FROM migration.runs WHERE run_id = 'messages:full'")
        assert recorded == [(now,)] and now["digest"] == DIGEST and now["rows"] > 0
        later = conn.execute("SELECT now() + interval '1 hour'").fetchone()[0]
        # As an earlier version recorded it: the same rows, a checksum of the rows' text.
        old = {"rows": now["rows"], "checksum": 12345}
        set_fingerprint = "UPDATE migration.runs SET counts = jsonb_set(counts, '{fingerprint}', %s) WHERE run_id = %s"
        conn.execute(set_fingerprint, (Jsonb(old), "messages:full"))
        assert rollback._verify(conn, "messages", later) == (
            f"unverified: {now['rows']} rows as expected, but the earlier run's checksum was taken with another "
            "digest (md5 of the row text)")
        conn.execute(set_fingerprint, (Jsonb({**old, "rows": now["rows"] + 1}), "messages:full"))
        assert rollback._verify(conn, "messages", later) == f"expected {now['rows'] + 1} rows, found {now['rows']}"
        conn.execute(set_fingerprint, (Jsonb({**now, "checksum": now["checksum"] + 1}), "messages:full"))
        assert rollback._verify(conn, "messages", later).startswith("expected ")
        conn.rollback()
        assert rollback._verify(conn, "messages", later) == "matches"


def test_dry_runs_and_full_tables_stage(twin, caplog):
    directly, _ = twin
    pipeline.run_entity(directly, "users", "dry", mode="full", dry_run=True)
    assert methods(directly.dest, "dry")["users"] == "staged"
    run_all(directly, "full")
    with psycopg.connect(directly.dest) as conn:
        assert direct.eligibility(conn, get("messages")) == "public.messages already holds rows"
        assert direct.eligibility(conn, get("users")) == "its rows need more than one COPY (Auth accounts, files)"


@pytest.mark.parametrize("point,committed", [("direct_streamed", False), ("direct_committed", True)])
def test_a_killed_direct_load_resumes(twin, tmp_path: Path, point: str, committed: bool):
    directly, staged = twin
    run_all(staged, "full", load_method="staged")
    for name in ("users", "agents", "conversations"):
        pipeline.run_entity(directly, name, "full", mode="full", validate_with_gx=False, quarantine_threshold_pct=100)
    out = pipeline.extract(directly, "messages", "full", mode="full", dry_run=False)
    child = faults.start_step("load", directly, "messages", out["run_id"], point=point,
                              signal_dir=tmp_path / "signal", quarantine_threshold_pct=100)
    child.wait_paused()
    child.kill()
    assert child.finish().killed
    rows = fetch(directly.dest, "SELECT count(*) FROM public.messages")[0][0]
    assert (rows > 0) == committed
    pipeline.load(directly, "messages", out["run_id"], quarantine_threshold_pct=100)
    assert pipeline.reconcile(directly, "messages", out["run_id"])["verdict"] == "clean"
    assert [d for d in faults.compare_tables(staged.dest, directly.dest, ("messages",)) if not d.equal] == []
