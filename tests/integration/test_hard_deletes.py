"""Hard deletes in every incremental run (include/migration/deletes.py).

An incremental run compares the source's keys with the keys the destination
knows (table and ledgers) by key range, bisecting the ranges that differ, and
deletes with before-images the rows whose source row is gone. Checked: the
comparison finds exactly the keys gone, bigint and uuid, at a cost that
follows the differing ranges (keys listed, ranges compared), not the table;
on the generated legacy world, after the app's changes (updates, inserts,
soft and hard deletes) one incremental run per entity leaves every
destination row equal to what the source implies and no row whose source is
gone; a rollback of those runs puts the deleted rows back.
"""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from include.migration import deletes, pipeline, rollback
from include.migration.entities import get
from include.migration.reconcile import reconcile, report_dir

pytestmark = pytest.mark.integration


def _fill(conns: pipeline.Conns, entity_name: str, keys: list) -> None:
    """The same keys in the legacy table and the destination table (columns beyond the key
    are whatever the tables default to or a constant: only keys are compared here)."""
    with psycopg.connect(conns.legacy, autocommit=True) as legacy, psycopg.connect(conns.dest) as dest:
        # The destination's foreign keys are not what this test is about.
        dest.execute("SET session_replication_role = replica")
        if entity_name == "messages":
            with legacy.cursor().copy("COPY messages (id, conversation_id, role, content, created_at) FROM STDIN") as cp:
                for k in keys:
                    cp.write_row((k, uuid.UUID(int=1), "user", "x", "2024-01-01"))
            with dest.cursor().copy("COPY public.messages (id, conversation_id, role, content, created_at) "
                                    "FROM STDIN") as cp:
                for k in keys:
                    cp.write_row((k, uuid.UUID(int=1), "user", "x", "2024-01-01"))
        else:
            for conn, table in ((legacy, "agents"), (dest, "public.agents")):
                with conn.cursor().copy(f"COPY {table} (id, name, system_prompt, model, is_public, created_at, "
                                        "updated_at) FROM STDIN") as cp:
                    for k in keys:
                        cp.write_row((k, "a", "p", "m", False, "2024-01-01", "2024-01-01"))
        dest.commit()


@pytest.mark.parametrize("entity_name, n", [("messages", 200_000), ("agents", 30_000)])
def test_the_comparison_finds_exactly_the_gone_keys_at_a_cost_that_follows_the_differences(world, entity_name, n):
    entity = get(entity_name)
    keys = list(range(1, n + 1)) if entity_name == "messages" else \
        [uuid.UUID(int=(i * 0x9E3779B97F4A7C15F39CC0605CEDC834) % (1 << 128)) for i in range(1, n + 1)]
    _fill(world, entity_name, keys)
    clean = deletes.compare_keys(world.legacy, world.dest, entity)
    assert (clean.gone, clean.unaccounted, clean.differing_top_ranges, clean.keys_listed) == ([], [], 0, 0)

    # Gone from the source: scattered keys, two of them neighbours (one range), and one key the
    # destination knows only from a ledger (excluded there, gone from the source).
    gone = [keys[7], keys[8], keys[n // 3], keys[n // 2], keys[-1]]
    ledger_only = keys[n // 4]
    new_in_source = uuid.UUID(int=7) if entity_name == "agents" else n + 10
    with psycopg.connect(world.legacy, autocommit=True) as legacy, psycopg.connect(world.dest) as dest:
        legacy.execute(f"DELETE FROM {entity.source_table} WHERE id = ANY(%s)", (gone + [ledger_only],))
        dest.execute(f"DELETE FROM public.{entity.target_table} WHERE id = %s", (ledger_only,))
        dest.execute("INSERT INTO migration.exclusions (entity, source_key, rule, run_id) VALUES (%s, %s, 'x', 'r')",
                     (entity.name, str(ledger_only)))
        # The ledger also knows a row that is still in the source: not a delete.
        dest.execute(f"DELETE FROM public.{entity.target_table} WHERE id = %s", (keys[n // 5],))
        dest.execute("INSERT INTO migration.quarantine (entity, source_key, reason, run_id) VALUES (%s, %s, 'x', 'r')",
                     (entity.name, str(keys[n // 5])))
        if entity_name == "messages":
            legacy.execute("INSERT INTO messages (id, conversation_id, role, content, created_at) "
                           "VALUES (%s, %s, 'user', 'x', '2024-01-01')", (new_in_source, uuid.UUID(int=1)))
        else:
            legacy.execute("INSERT INTO agents (id, name, system_prompt, model, is_public, created_at, updated_at) "
                           "VALUES (%s, 'a', 'p', 'm', false, now(), now())", (new_in_source,))
        dest.commit()
    diff = deletes.compare_keys(world.legacy, world.dest, entity)
    assert sorted(diff.gone) == sorted(str(k) for k in gone + [ledger_only])
    assert diff.unaccounted == [str(new_in_source)]
    # The cost follows the differing ranges: at most 7 ranges differ at each level (6 changed
    # places, two of them in one range, plus the new key), each split into 16; the keys listed
    # are those of the few leaf ranges, not the table's.
    assert diff.differing_top_ranges <= 7
    assert diff.ranges_compared <= 7 * 16 * (diff.levels - 1)
    assert diff.keys_listed <= 7 * 2 * deletes.LEAF_ROWS * 16, diff.as_dict()
    assert diff.keys_listed < n / 20


RELATIONAL = ("users", "agents", "conversations", "messages")


def _keys(dsn: str, table: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {r[0] for r in conn.execute(f"SELECT id::text FROM {table}")}


@pytest.mark.slow
def test_incremental_runs_apply_the_worlds_hard_deletes_and_a_rollback_restores_them(world, tmp_path):
    from local_runtime.world import apply_changes, seed

    seed(world.legacy, scale="small", media_root=tmp_path / "media")
    with psycopg.connect(world.legacy, autocommit=True) as conn:
        conn.execute("DELETE FROM messages WHERE id % 3 <> 0")  # a third of the messages keeps it quick
    for name in RELATIONAL:
        pipeline.run_entity(world, name, "backfill", mode="full", validate_with_gx=False,
                            quarantine_threshold_pct=100)
    before = {name: _keys(world.dest, f"public.{name}") for name in RELATIONAL}

    changes = apply_changes(world.legacy, seed=7, fraction=0.01).changes
    gone = {name: {str(k) for k in changes.get(f"{name}.hard_deleted", [])} for name in RELATIONAL}
    # The app hard-deleted agents and conversations with their messages, all loaded before.
    assert gone["agents"] and gone["conversations"] and gone["messages"]
    for name in ("agents", "conversations", "messages"):
        assert gone[name] <= before[name], name

    # A dry run says what the incremental run will delete, and deletes nothing.
    pipeline.run_entity(world, "agents", "peek", mode="incremental", dry_run=True)
    with psycopg.connect(world.dest) as conn:
        plan = conn.execute("SELECT report->'dry_run_plan' FROM migration.runs WHERE run_id = 'agents:peek'").fetchone()
    assert plan[0]["delete_gone_from_source"] == len(gone["agents"])
    assert gone["agents"] <= _keys(world.dest, "public.agents")
    for name in RELATIONAL:
        pipeline.run_entity(world, name, "nightly", mode="incremental", quarantine_threshold_pct=100)
    with psycopg.connect(world.dest) as conn:
        runs = dict(conn.execute("SELECT entity, status FROM migration.runs WHERE dag_run_id = 'nightly'"))
        deleted = dict(conn.execute("SELECT entity, (counts->'hard_deletes'->>'deleted')::int FROM migration.runs "
                                    "WHERE dag_run_id = 'nightly'"))
        verdicts = dict(conn.execute("SELECT entity, verdict FROM migration.reconciliations "
                                     "WHERE run_id LIKE '%:nightly'"))
    assert runs == {name: "succeeded" for name in RELATIONAL}
    assert verdicts == {name: "clean" for name in RELATIONAL}
    # Agents and conversations were deleted by their own runs; the messages went with their
    # conversations (the foreign key cascades), so the messages run found none left to delete.
    assert deleted["agents"] == len(gone["agents"]) and deleted["conversations"] == len(gone["conversations"])
    assert deleted["messages"] == 0
    # The reconciliation's report says what the run deleted; nothing is left pending.
    report = json.loads((report_dir("agents:nightly") / "reconcile-agents.json").read_text())
    assert (report["verdict"], report["extra"], report["hard_deletes_applied_by_run"]) == \
        ("clean", [], len(gone["agents"]))
    # The oracle: every destination row equals what the source implies (the reconciliation
    # compares every row, both ways), no row whose source row is gone, and every source row
    # is in the table or in exactly one ledger.
    for name in RELATIONAL:
        entity = get(name)
        rec = reconcile(world.legacy, world.dest, entity)
        assert rec.clean, rec.verdict_line()
        held = _keys(world.dest, f"public.{name}")
        assert not held & gone[name], name
        source = _keys(world.legacy, entity.source_table)
        assert held <= source, name
        with psycopg.connect(world.dest) as conn:
            ledgers = [r[0] for r in conn.execute(
                "SELECT source_key FROM migration.quarantine WHERE entity = %s UNION ALL "
                "SELECT source_key FROM migration.exclusions WHERE entity = %s", (name, name))]
        assert len(ledgers) == len(set(ledgers)) and not held & set(ledgers), name
        assert held | set(ledgers) == source, name

    # Rolling back the nightly runs puts every deleted row back (with the messages their
    # conversations' deletes cascaded to), and proves the tables match the backfill's state.
    result = rollback.rollback(world.dest, "users:nightly", since=True)
    assert result.proven, result.verdicts
    for name in ("agents", "conversations", "messages"):
        assert gone[name] <= _keys(world.dest, f"public.{name}"), name
        assert _keys(world.dest, f"public.{name}") == before[name], name
