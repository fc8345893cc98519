"""A full run over a populated destination stages only the key ranges that differ
(include/migration/changes.py), and ends exactly where a full run staging every row ends.

One generated legacy world, backfilled into two destinations. Nothing changed: the
comparing rerun stages and writes nothing, yet accounts every source row. Then the
application changes the source (updates, inserts, soft and hard deletes, merged
accounts), one message in ten is edited, and an account becomes invalid (its agents,
conversations and messages are quarantined through their fates, though they did not
change): a full rerun compares first in one destination, stages every row in the
other (``detect_changes=False``), and both must hold the same rows, the same ledgers,
the same accounting and the same reconciliation verdict.
"""

from __future__ import annotations

import psycopg
import pytest

from include.migration import pipeline
from include.migration.bootstrap import bootstrap

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RELATIONAL = ("users", "agents", "conversations", "messages")
COMPARED = ("agents", "conversations", "messages")  # users stage every row (Auth accounts)


def _rerun(conns: pipeline.Conns, label: str, *, detect_changes: bool = True) -> None:
    for name in RELATIONAL:
        pipeline.run_entity(conns, name, label, mode="full", validate_with_gx=False, quarantine_threshold_pct=100,
                            detect_changes=detect_changes)


def _run(dest: str, run_id: str) -> dict:
    with psycopg.connect(dest) as conn:
        stage_rows, source_rows, report, counts, status = conn.execute(
            "SELECT stage_rows, source_rows, report, counts, status FROM migration.runs WHERE run_id = %s",
            (run_id,)).fetchone()
    return {"stage_rows": stage_rows, "source_rows": source_rows, "changes": report.get("changes"),
            "accounting": counts["accounting"], "load": counts.get("load") or {}, "status": status}


def _state(dest: str, label: str) -> dict:
    """What a user of the destination would compare: every row of every table, the ledgers,
    the run's accounting per reason and its reconciliation."""
    out: dict = {}
    with psycopg.connect(dest) as conn:
        for name in RELATIONAL:
            out[name] = conn.execute(f"SELECT to_jsonb(t)::text FROM public.{name} t ORDER BY id").fetchall()
        out["quarantine"] = conn.execute(
            "SELECT entity, source_key, reason, source_row::text, run_id FROM migration.quarantine "
            "ORDER BY entity, source_key").fetchall()
        out["exclusions"] = conn.execute(
            "SELECT entity, source_key, rule, detail, run_id FROM migration.exclusions "
            "ORDER BY entity, source_key").fetchall()
        out["accounting"] = conn.execute(
            "SELECT entity, disposition, reason, rows FROM migration.run_accounting WHERE run_id LIKE %s "
            "ORDER BY 1, 2, 3", (f"%:{label}",)).fetchall()
        out["reconciliations"] = conn.execute(
            "SELECT entity, verdict, source_rows, target_rows, missing, extra, different "
            "FROM migration.reconciliations WHERE run_id LIKE %s ORDER BY 1", (f"%:{label}",)).fetchall()
    return out


def _source_rows(legacy: str, name: str) -> int:
    with psycopg.connect(legacy) as conn:
        return conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0]


@pytest.fixture
def two_destinations(world, fresh_db, tmp_path):
    from local_runtime.world import seed

    seed(world.legacy, scale="small", media_root=tmp_path / "media")
    with psycopg.connect(world.legacy, autocommit=True) as conn:
        conn.execute("DELETE FROM messages WHERE id % 3 <> 0")  # a third of the messages keeps it quick
    other = pipeline.Conns(world.legacy, fresh_db("dest_whole"))
    bootstrap(other.dest)
    for conns in (world, other):
        _rerun(conns, "backfill")
    return world, other


def test_a_full_rerun_stages_only_what_differs_and_ends_as_a_whole_stage_would(two_destinations):
    from local_runtime.world import apply_changes

    compared, whole = two_destinations
    before = _state(compared.dest, "backfill")

    # Nothing changed: nothing staged, nothing written, every source row accounted.
    _rerun(compared, "same")
    for name in COMPARED:
        run = _run(compared.dest, f"{name}:same")
        assert run["changes"]["differing_ranges"] == 0, (name, run["changes"])
        assert run["stage_rows"] == 0, name
        assert sum(run["load"].get(k, 0) for k in ("inserted", "updated", "deleted")) == 0, name
        accounting = run["accounting"]
        assert accounting["balanced"] and accounting["in_scope"] == _source_rows(compared.legacy, name), name
        assert accounting["in_scope"] == accounting["loaded"] + accounting["excluded"] + accounting["quarantined"]
    same = _state(compared.dest, "same")
    for part in (*RELATIONAL, "exclusions"):
        assert same[part] == before[part], part
    assert [q[:4] for q in same["quarantine"]] == [q[:4] for q in before["quarantine"]]
    assert same["accounting"] == before["accounting"]
    assert {r[1] for r in same["reconciliations"]} == {"clean"}

    # The application's changes, scattered edits and an account newly invalid (a parent quarantined).
    changes = apply_changes(compared.legacy, seed=7, fraction=0.01).changes
    assert changes.get("agents.hard_deleted") and changes.get("conversations.hard_deleted")
    with psycopg.connect(compared.legacy, autocommit=True) as conn:
        conn.execute("UPDATE messages SET content = content || ' (edited)' WHERE id % 10 = 0")
        owner = conn.execute(
            "UPDATE users SET email = 'no longer an address' WHERE id = (SELECT a.owner_id FROM agents a "
            "JOIN conversations c ON c.user_id = a.owner_id JOIN messages m ON m.conversation_id = c.id "
            "WHERE a.owner_id IS NOT NULL AND c.deleted_at IS NULL ORDER BY a.owner_id LIMIT 1) RETURNING id"
        ).fetchone()
        assert owner is not None
        conn.execute("ANALYZE")

    _rerun(whole, "after", detect_changes=False)
    _rerun(compared, "after")
    for name in COMPARED:
        run = _run(compared.dest, f"{name}:after")
        assert run["status"] == "succeeded", name
        diff = run["changes"]
        assert diff["differing_ranges"] > 0, name
        assert 0 < run["stage_rows"] < _source_rows(compared.legacy, name), (name, run["stage_rows"])
        assert run["accounting"]["in_scope"] == _source_rows(compared.legacy, name), name
        assert _run(whole.dest, f"{name}:after")["changes"] is None, name
    mine, theirs = _state(compared.dest, "after"), _state(whole.dest, "after")
    for part in mine:
        assert mine[part] == theirs[part], part
    assert {r[1] for r in mine["reconciliations"]} == {"clean"}
    with psycopg.connect(compared.dest) as conn:
        quarantined = conn.execute("SELECT entity, reason FROM migration.quarantine WHERE source_row->>'user_id' = %s "
                                   "OR source_row->>'owner_id' = %s", (str(owner[0]), str(owner[0]))).fetchall()
    assert ("agents", "owner_quarantined") in quarantined and ("conversations", "user_quarantined") in quarantined


def _agents_rerun_extracted(world, tmp_path, dag_run_id: str) -> str:
    """A seeded world with users and agents backfilled, then a full rerun of the agents extracted and
    transformed (its comparison done, nothing loaded yet); returns the rerun's run id."""
    from local_runtime.world import seed

    seed(world.legacy, scale="small", media_root=tmp_path / "media")
    for name in ("users", "agents"):
        pipeline.run_entity(world, name, "backfill", mode="full", validate_with_gx=False,
                            quarantine_threshold_pct=100)
    run_id = pipeline.extract(world, "agents", dag_run_id, mode="full", dry_run=False)["run_id"]
    pipeline.transform(world, "agents", run_id)
    return run_id


def test_a_destination_changed_behind_the_comparison_fails_the_accounting(world, tmp_path):
    """The rows of the ranges found equal are accounted from the destination; the accounting
    checks them against the source rows the comparison counted there, so a destination row
    lost between the comparison and the load does not pass unnoticed."""
    from include.migration.accounting import AccountingMismatch
    run_id = _agents_rerun_extracted(world, tmp_path, "behind")
    assert _run_changes(world.dest, run_id)["differing_ranges"] == 0
    with psycopg.connect(world.dest) as conn:
        conn.execute("DELETE FROM public.agents WHERE id = (SELECT min(id::text)::uuid FROM public.agents)")
    with pytest.raises(AccountingMismatch, match="found equal held 2000 source rows, but the destination holds 1999"):
        pipeline.load(world, "agents", run_id, quarantine_threshold_pct=100)


def _run_changes(dest: str, run_id: str) -> dict:
    with psycopg.connect(dest) as conn:
        return conn.execute("SELECT report->'changes' FROM migration.runs WHERE run_id = %s", (run_id,)).fetchone()[0]


def test_the_reconciliation_compares_every_row_when_the_destination_changed_outside_the_staged_ranges(world,
                                                                                                       tmp_path):
    """After a full run that staged only what differed, the reconciliation sums the destination
    outside the staged ranges in one checksum, vouched for by the run's comparison; a row
    changed there since makes it compare every row, and name the key."""
    run_id = _agents_rerun_extracted(world, tmp_path, "later")
    pipeline.load(world, "agents", run_id, quarantine_threshold_pct=100)
    with psycopg.connect(world.dest) as conn:
        key = conn.execute("UPDATE public.agents SET name = name || ' (changed)' "
                           "WHERE id = (SELECT min(id::text)::uuid FROM public.agents) RETURNING id::text").fetchone()[0]
    with pytest.raises(pipeline.ReconciliationFailed, match=key):
        pipeline.reconcile(world, "agents", run_id)
    with psycopg.connect(world.dest) as conn:
        different = conn.execute("SELECT different FROM migration.reconciliations WHERE run_id = %s",
                                 (run_id,)).fetchone()[0]
    assert different == [key]


def test_a_scattered_change_over_many_rows_stops_the_comparison_at_its_sample(two_destinations, monkeypatch):
    """One message in ten edited makes nearly every key range differ. Over more rows than
    ``GIVE_UP_ROWS`` (lowered here, and the sample made denser: a large table's case on the small
    world, whose messages span 30 top-level ranges), the comparison
    stops after its sample of the top-level ranges and the run stages every row: it ends where
    a run that stages every row ends. Under the bound, the same edit is compared key by key."""
    from include.migration import changes
    from include.migration.entities import get

    compared, whole = two_destinations
    messages = get("messages")
    with psycopg.connect(compared.legacy, autocommit=True) as conn:
        conn.execute("UPDATE messages SET content = content || ' (edited)' WHERE id % 10 = 0")
    under = changes.compare(compared.legacy, compared.dest, messages)
    assert under.gave_up == "" and under.differing_top_ranges == under.top_ranges > 0
    monkeypatch.setattr(changes, "GIVE_UP_ROWS", 1000)
    monkeypatch.setattr(changes, "SAMPLE_EVERY", 2)
    over = changes.compare(compared.legacy, compared.dest, messages)
    assert "a change this scattered" in over.gave_up and over.ranges == []

    for conns, detect in ((whole, False), (compared, True)):
        pipeline.run_entity(conns, "messages", "scattered", mode="full", validate_with_gx=False,
                            quarantine_threshold_pct=100, detect_changes=detect)
    run = _run(compared.dest, "messages:scattered")
    assert run["status"] == "succeeded" and run["changes"] is None
    assert run["stage_rows"] == _source_rows(compared.legacy, "messages")
    assert run["load"]["updated"] > 0
    mine, theirs = _state(compared.dest, "scattered"), _state(whole.dest, "scattered")
    for part in mine:
        assert mine[part] == theirs[part], part
    assert {r[1] for r in mine["reconciliations"]} == {"clean"}


def test_the_first_pass_summed_in_several_legacy_streams_finds_what_one_stream_finds(two_destinations,
                                                                                      monkeypatch):
    """Over a large table the legacy side's first pass runs as key ranges side by side, each on
    its own connection in one exported snapshot (reconcile.legacy_streams). Forced here on the small
    world: the comparison must come out the same as with one stream, to the checksum."""
    from include.migration import changes, reconcile
    from include.migration.entities import get

    compared, _ = two_destinations
    with psycopg.connect(compared.legacy, autocommit=True) as conn:
        conn.execute("UPDATE messages SET content = content || ' (edited)' WHERE id % 97 = 0")
        conn.execute("DELETE FROM messages WHERE id % 89 = 0")
        conn.execute("UPDATE conversations SET title = title || '!' WHERE id IN "
                     "(SELECT id FROM conversations ORDER BY id LIMIT 7)")
        conn.execute("ANALYZE")  # the streams' key ranges come from the statistics
    one = {name: changes.compare(compared.legacy, compared.dest, get(name)) for name in ("messages", "conversations")}
    merged = []
    real = reconcile.added_sums
    monkeypatch.setattr(reconcile, "added_sums", lambda parts: merged.append(len(parts)) or real(parts))
    monkeypatch.setattr(reconcile, "LEGACY_STREAM_ROWS", 0)
    monkeypatch.setattr(reconcile, "LEGACY_STREAMS", 3)
    for name in ("messages", "conversations"):
        merged.clear()
        several = changes.compare(compared.legacy, compared.dest, get(name))
        assert merged and set(merged) == {3}, name  # every first-pass sum came from three streams
        mine, theirs = several.as_dict(), one[name].as_dict()
        mine.pop("seconds"), theirs.pop("seconds")
        mine.pop("snapshot_at"), theirs.pop("snapshot_at")
        assert mine == theirs, name
        assert several.ranges == one[name].ranges and several.differing_source_rows > 0, name
