"""The migrate DAGs end to end on a seeded small world: exact outcomes for the
planted defects, the accounting invariant and a clean reconciliation."""

from __future__ import annotations

import psycopg
import pytest

from tests.e2e.conftest import run_dag

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHAIN = ["migrate_users", "migrate_agents", "migrate_conversations", "migrate_messages"]


def q(dsn: str, query: str, *args):
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, args).fetchall()


@pytest.fixture
def seeded(airflow_world, tmp_path):
    from local_runtime.world import seed

    report = seed(airflow_world.legacy, scale="small", media_root=tmp_path / "media")
    return airflow_world, report


def test_full_backfill_then_nothing_changes(seeded):
    world, report = seeded
    state, tasks = run_dag("schema_diff")
    assert state == "success", tasks
    for dag_id in CHAIN:
        state, tasks = run_dag(dag_id, mode="full")
        assert state == "success", (dag_id, tasks)
    planted = report.planted
    quarantine = dict(q(world.dest, "SELECT source_key, reason FROM migration.quarantine"))
    exclusions = dict(q(world.dest, "SELECT source_key, rule FROM migration.exclusions"))
    for key in planted["users.invalid_email"]:
        assert quarantine[key] == "invalid_email"
    for key in planted["users.duplicate_loser"]:
        assert exclusions[key] == "merged_duplicate"
    for key in planted["users.soft_deleted"]:
        assert exclusions[key] == "soft_deleted"
    for key in planted["agents.orphan_owner"]:
        assert quarantine[key] == "owner_missing"
    for key in planted["agents.malformed_tools"]:
        assert quarantine[key] == "tools_malformed"
    for key in planted["conversations.orphan_user"]:
        assert quarantine[key] == "user_missing"
    for key in planted["messages.orphan_conversation"]:
        assert quarantine[key] == "conversation_missing"
    for key in planted["messages.unknown_role"]:
        assert quarantine[key] == "unknown_role"
    loser_map = dict(q(world.dest, "SELECT loser_id::text, survivor_id::text FROM migration.user_id_map"))
    assert loser_map == {k: v for k, v in report.planted_map("users.duplicate_of").items()} \
        if hasattr(report, "planted_map") else set(loser_map) == set(planted["users.duplicate_loser"])
    dangling = planted["conversations.dangling_agent"]
    assert q(world.dest, "SELECT count(*) FROM public.conversations WHERE id = ANY(%s::uuid[]) AND agent_id IS NULL",
             dangling) == [(len(dangling),)]
    bots = planted["messages.bot_role"]
    assert q(world.dest, "SELECT DISTINCT role FROM public.messages WHERE id = ANY(%s::bigint[])", bots) == [("assistant",)]
    bad_meta = planted["messages.malformed_metadata"]
    assert q(world.dest, "SELECT count(*) FROM public.messages WHERE id = ANY(%s::bigint[]) AND metadata ? 'legacy_raw'",
             bad_meta) == [(len(bad_meta),)]
    long = planted["messages.long_content"]
    assert q(world.dest, "SELECT min(length(content)) FROM public.messages WHERE id = ANY(%s::bigint[])",
             long)[0][0] >= 1_000_000
    # Every run balanced, validated and reconciled clean.
    runs = q(world.dest, "SELECT entity, status, counts->'accounting'->>'balanced', report->'validation'->>'success' "
                         "FROM migration.runs ORDER BY started_at")
    assert runs == [(e, "succeeded", "true", "true") for e in ("users", "agents", "conversations", "messages")]
    assert {r[0] for r in q(world.dest, "SELECT verdict FROM migration.reconciliations")} == {"clean"}
    # Every source row is loaded, excluded or quarantined: the state-level invariant.
    for entity, table in (("users", "users"), ("agents", "agents"), ("conversations", "conversations"),
                          ("messages", "messages")):
        loaded = q(world.dest, f"SELECT count(*) FROM public.{table}")[0][0]
        ledgers = q(world.dest, "SELECT (SELECT count(*) FROM migration.quarantine WHERE entity = %s) + "
                                "(SELECT count(*) FROM migration.exclusions WHERE entity = %s)", entity, entity)[0][0]
        assert loaded + ledgers == report.counts[table], entity

    # A second full run of everything writes nothing and says so.
    for dag_id in CHAIN:
        state, _ = run_dag(dag_id, mode="full")
        assert state == "success"
    second = q(world.dest, "SELECT entity, (counts->'load'->>'inserted')::int + (counts->'load'->>'updated')::int "
                           "+ (counts->'load'->>'deleted')::int FROM migration.runs ORDER BY started_at OFFSET 4")
    assert second == [(e, 0) for e in ("users", "agents", "conversations", "messages")]

    # The app keeps running: updates, inserts, soft and hard deletes; the nightly incremental follows.
    from include.migration.entities import get
    from include.migration.reconcile import reconcile
    from local_runtime.world import apply_changes

    changes = apply_changes(world.legacy, seed=7, fraction=0.01).changes
    for dag_id in CHAIN:
        state, tasks = run_dag(dag_id, mode="incremental")
        assert state == "success", (dag_id, tasks)
    for entity in ("users", "agents", "conversations", "messages"):
        rec = reconcile(world.legacy, world.dest, get(entity))
        # The incremental runs applied the app's hard deletes too: nothing is left pending.
        assert (rec.missing, rec.extra, rec.different) == ([], [], []), entity
        gone = [str(k) for k in changes.get(f"{entity}.hard_deleted", [])]
        assert q(world.dest, f"SELECT count(*) FROM public.{entity} WHERE id::text = ANY(%s)", gone) == [(0,)], entity
    inserted = changes["messages.inserted"]
    assert inserted and q(world.dest, "SELECT count(*) FROM public.messages WHERE id = ANY(%s::bigint[])",
                          inserted)[0][0] > 0
    # A full run sees the hard deletes; split in two key ranges, extracted by two mapped tasks.
    for dag_id in CHAIN:
        state, tasks = run_dag(dag_id, mode="full", partitions=2)
        assert state == "success", (dag_id, tasks)
    split = q(world.dest, "SELECT entity, jsonb_array_length(report->'partitions'), "
                          "(SELECT count(*) FROM jsonb_object_keys(counts->'partitions')), counts->'accounting'->>'balanced' "
                          "FROM migration.runs WHERE jsonb_typeof(report->'partitions') = 'array'")
    assert sorted(split) == [(e, 2, 2, "true") for e in ("agents", "conversations", "messages", "users")]
    for entity in ("agents", "conversations", "messages"):
        gone = changes.get(f"{entity}.hard_deleted", [])
        table = entity
        key_type = "bigint" if entity == "messages" else "uuid"
        assert q(world.dest, f"SELECT count(*) FROM public.{table} WHERE id::text = ANY(%s)", gone) == [(0,)], \
            (entity, key_type)
