"""Partitioned runs: the source split into key ranges, extracted side by side. Into an
empty table each partition streams its range straight into it (its side rows into its
own stage, a child of the run's), in one transaction of its own; otherwise each stages
its range. A partitioned run must leave exactly what one stream leaves, be redone one
partition at a time, refuse to load while a partition is missing, never leave a table
without its indexes, and start the next incremental run at its oldest partition's
snapshot."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from include.migration import db, pipeline
from include.migration.accounting import AccountingMismatch
from include.migration.entities import get
from include.migration.extract import _histogram_bounds, key_ranges
from tests import faults
from tests.integration.test_direct_load import BULK, fetch, methods, run_all
from tests.integration.test_relational_pipeline import RELATIONAL, C

pytestmark = pytest.mark.integration


def test_key_ranges_split_the_keys_into_even_contiguous_ranges(twin):
    conns, _ = twin
    with db.connection(conns.legacy) as legacy:
        legacy.execute("ANALYZE messages")
        ranges = key_ranges(legacy, get("messages"), 4)
        keys = [k for (k,) in legacy.execute("SELECT id FROM messages ORDER BY id").fetchall()]
        assert key_ranges(legacy, get("messages"), 1) == [(None, None)]
        users = key_ranges(legacy, get("users"), 50)  # more partitions than users: one per key at most
        legacy.execute("DELETE FROM media_assets")
        empty = key_ranges(legacy, get("media"), 3)
        legacy.rollback()
    assert len(ranges) == 4 and ranges[0][0] is None and ranges[-1][1] is None
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # contiguous: no key falls between
    sizes = [sum(1 for k in keys if (lo is None or k > int(lo)) and (hi is None or k <= int(hi)))
             for lo, hi in ranges]
    assert sum(sizes) == len(keys)
    assert max(sizes) - min(sizes) <= len(keys) // 20, sizes
    assert len(users) == 6 and users[0] == (None, users[1][0]) and users[-1][1] is None
    assert empty == [(None, None)]


def test_key_ranges_come_from_fresh_statistics_and_are_counted_when_they_are_stale(twin):
    conns, _ = twin
    messages = get("messages")
    with db.connection(conns.legacy) as legacy:
        legacy.execute("ANALYZE messages")
        fresh = _histogram_bounds(legacy, messages, 4)
        keys = [k for (k,) in legacy.execute("SELECT id FROM messages ORDER BY id").fetchall()]
        # More than a tenth of the table changed since it was analyzed: its statistics are not used.
        legacy.execute("UPDATE messages SET content = content WHERE id % 5 <> 0")
        legacy.commit()
        legacy.execute("SELECT pg_stat_force_next_flush()")
        legacy.commit()
        stale = _histogram_bounds(legacy, messages, 4)
        counted = key_ranges(legacy, messages, 4)
        legacy.execute("ANALYZE messages")
        legacy.commit()
    assert fresh is not None and len(fresh) == 3 and fresh == sorted(fresh, key=int)
    assert all(keys[0] <= int(b) <= keys[-1] for b in fresh)
    assert stale is None
    step = -(-len(keys) // 4)
    assert [hi for _, hi in counted[:-1]] == [str(keys[step * i - 1]) for i in (1, 2, 3)]  # the exact quartiles


def test_a_partitioned_run_leaves_what_one_stream_leaves(twin):
    one, split = twin
    run_all(one, "full")
    run_all(split, "full", partitions=3)
    diffs = faults.compare_tables(one.dest, split.dest, RELATIONAL)
    assert [d for d in diffs if not d.equal] == []
    assert sum(d.rows for d in diffs if d.table == "public.messages") == BULK + 4
    accounting = "SELECT entity, disposition, reason, rows FROM migration.run_accounting ORDER BY 1, 2, 3"
    assert fetch(split.dest, accounting) == fetch(one.dest, accounting)
    runs = {entity: (method, parts, stage_rows, source_rows, done) for entity, method, parts, stage_rows, source_rows,
            done in fetch(split.dest, "SELECT entity, report->>'load_method', jsonb_array_length(report->'partitions'), "
                                      "stage_rows, source_rows, counts->'partitions' FROM migration.runs")}
    # Into the empty tables each partition streamed its range straight in; users (Auth
    # accounts) staged and merged.
    for entity in RELATIONAL:
        method, parts, stage_rows, source_rows, done = runs[entity]
        assert (method, parts, len(done)) == ("staged" if entity == "users" else "direct", 3, 3), entity
        assert stage_rows == source_rows == sum(p["rows"] for p in done.values()), entity
        assert all(p["rows"] > 0 for p in done.values()), entity
    streamed = dict(fetch(split.dest, "SELECT entity, counts->'direct' FROM migration.runs WHERE dag_run_id = 'full'"))
    assert streamed["users"] is None
    for entity in ("agents", "conversations", "messages"):
        done = runs[entity][4]
        figures = streamed[entity]
        # The per-partition proof: what each partition streamed is what the table took.
        assert figures["partitions_streamed"] == [done[str(i)]["streamed"] for i in range(3)], entity
        assert all(p["streamed"] + p["side"] == p["rows"] for p in done.values()), entity
        assert sum(figures["partitions_streamed"]) == figures["streamed_loaded"] + figures["moved_to_quarantine"]
    one_figures = fetch(one.dest, "SELECT counts->'direct' FROM migration.runs WHERE entity = 'messages'")[0][0]
    assert {k: streamed["messages"][k] for k in ("streamed_loaded", "streamed_side", "repaired_loaded")} == \
        {k: one_figures[k] for k in ("streamed_loaded", "streamed_side", "repaired_loaded")}
    verdicts = "SELECT entity, counts->'accounting'->'balanced', counts->'accounting'->'present_in_destination' " \
               "FROM migration.runs WHERE dag_run_id = 'full' ORDER BY 1"
    assert fetch(split.dest, verdicts) == fetch(one.dest, verdicts)
    loaded = dict(fetch(split.dest, "SELECT entity, (counts->'accounting'->>'loaded')::int FROM migration.runs "
                                    "WHERE dag_run_id = 'full'"))
    assert loaded["messages"] == BULK + 4
    for conns in (one, split):
        for name in RELATIONAL:
            assert pipeline.reconcile(conns, name, f"{name}:full")["verdict"] == "clean"
    verdict = "SELECT r.entity, r.verdict, r.source_rows, r.target_rows, u.counts->'fingerprint' FROM " \
              "migration.reconciliations r JOIN migration.runs u USING (run_id) ORDER BY 1"
    assert fetch(split.dest, verdict) == fetch(one.dest, verdict)
    # Every stage is gone once the run has finished, the partitions' with it.
    assert fetch(split.dest, "SELECT count(*) FROM pg_tables WHERE schemaname = 'migration_stage'") == [(0,)]
    # A partitioned rerun over the loaded destination writes nothing.
    again = run_all(split, "again", partitions=2)
    assert {name: again[name]["inserted"] + again[name]["updated"] + again[name]["deleted"]
            for name in RELATIONAL} == {name: 0 for name in RELATIONAL}
    assert fetch(split.dest, "SELECT count(*) FROM migration.runs WHERE dag_run_id = 'again' "
                             "AND (report->>'bulk_into_empty')::boolean") == [(0,)]


def test_a_partitioned_backfill_puts_every_index_back_and_rolls_back(twin):
    from include.migration import rollback
    from tests.integration.test_direct_load import catalog

    conns, _ = twin
    before = catalog(conns.dest)
    run_all(conns, "full", partitions=2)
    assert catalog(conns.dest) == before
    result = rollback.rollback(conns.dest, "messages:full")
    assert result.verdicts["messages"] == "matches"
    assert fetch(conns.dest, "SELECT count(*) FROM public.messages") == [(0,)]


def test_a_missing_partition_stops_the_run_before_anything_loads(twin):
    conns, _ = twin
    _parents_loaded(conns)
    parts = pipeline.plan(conns, "messages", "split", mode="full", dry_run=False, partitions=2)
    assert [p["partition"] for p in parts] == [0, 1]
    first = pipeline.extract_partition(conns, "messages", parts[0])
    with pytest.raises(RuntimeError, match=r"partitions 2 of 2 have not extracted"):
        pipeline.transform(conns, "messages", parts[0]["run_id"])
    with pytest.raises(RuntimeError, match=r"partitions 2 of 2 have not extracted"):
        pipeline.load(conns, "messages", parts[0]["run_id"], quarantine_threshold_pct=100)
    # The first partition's streamed rows are in the table (committed with its counts), not yet loaded.
    (streamed,), = fetch(conns.dest, "SELECT (counts->'partitions'->'0'->>'streamed')::int FROM migration.runs "
                                      "WHERE run_id = %s", parts[0]["run_id"])
    assert 0 < streamed <= first["stage_rows"]
    assert fetch(conns.dest, "SELECT count(*) FROM public.messages") == [(streamed,)]
    assert fetch(conns.dest, "SELECT load_progress FROM migration.runs WHERE run_id = %s",
                 parts[0]["run_id"]) == [(None,)]
    # The missing partition extracted (its task retried), the run goes on and balances.
    pipeline.extract_partition(conns, "messages", parts[1])
    pipeline.transform(conns, "messages", parts[0]["run_id"])
    loaded = pipeline.load(conns, "messages", parts[0]["run_id"], quarantine_threshold_pct=100)
    assert loaded["inserted"] == BULK + 4
    balanced = fetch(conns.dest, "SELECT counts->'accounting'->>'balanced', stage_rows FROM migration.runs "
                                 "WHERE run_id = %s", parts[0]["run_id"])
    assert balanced == [("true", BULK + 8)]


def test_the_next_run_starts_at_the_oldest_partition_snapshot(twin):
    """A message dated ahead of the snapshots (accepted up to a day ahead) would otherwise
    move the watermark past changes a partition read earlier could not see."""
    conns, _ = twin
    with psycopg.connect(conns.legacy, autocommit=True) as conn:
        conn.execute("INSERT INTO messages (id, conversation_id, role, content, created_at) "
                     "VALUES (90000, %s, 'user', 'from the near future', "
                     "(now() AT TIME ZONE 'UTC') + interval '6 hours')", (C[1],))
    for name in RELATIONAL:
        pipeline.run_entity(conns, name, "full", mode="full", validate_with_gx=False, quarantine_threshold_pct=100,
                            partitions=2)
    (extracted_at, snapshots), = fetch(conns.dest, "SELECT report->>'extracted_at', counts->'partitions' "
                                                   "FROM migration.runs WHERE entity = 'messages'")
    oldest = min(p["extracted_at"] for p in snapshots.values())
    assert extracted_at == oldest
    (change_ts,), = fetch(conns.dest, "SELECT change_ts FROM migration.watermarks WHERE entity = 'messages'")
    assert change_ts == datetime.fromisoformat(oldest).astimezone(UTC).replace(tzinfo=None)


def test_rows_gone_from_the_table_before_the_load_fail_its_proof(twin):
    """The partitions' rows are in the table before the load: a parent deleted in between
    takes its rows with it (ON DELETE CASCADE). The load's proof finds the table short of
    what the partitions streamed and loads nothing; the rollback empties the table and puts
    its indexes back; the rerun quarantines the orphans."""
    from include.migration import rollback
    from tests.integration.test_direct_load import catalog

    conns, _ = twin
    _parents_loaded(conns)
    before = catalog(conns.dest)
    parts = pipeline.plan(conns, "messages", "split", mode="full", dry_run=False, partitions=2)
    run_id = parts[0]["run_id"]
    for part in parts:
        pipeline.extract_partition(conns, "messages", part)
    pipeline.transform(conns, "messages", run_id)
    with psycopg.connect(conns.dest, autocommit=True) as conn:
        conn.execute("DELETE FROM public.conversations WHERE id = %s", (C[1],))  # every bulk message's parent
    with pytest.raises(AccountingMismatch, match=r"the partitions' proof fails: .* rows streamed by the 2 partitions"):
        pipeline.load(conns, "messages", run_id, quarantine_threshold_pct=100)
    assert fetch(conns.dest, "SELECT load_progress FROM migration.runs WHERE run_id = %s", run_id) == [(None,)]
    assert rollback.rollback(conns.dest, run_id).verdicts["messages"] == "matches"
    assert catalog(conns.dest) == before
    assert fetch(conns.dest, "SELECT count(*) FROM public.messages") == [(0,)]
    out = pipeline.run_entity(conns, "messages", "again", mode="full", validate_with_gx=False,
                              quarantine_threshold_pct=100, partitions=2)
    assert out["inserted"] == 1
    assert fetch(conns.dest, "SELECT id FROM public.messages") == [(8,)]
    reasons = dict(fetch(conns.dest, "SELECT reason, rows FROM migration.run_accounting WHERE run_id = %s "
                                     "AND disposition = 'quarantined'", "messages:again"))
    assert reasons["conversations_not_in_destination"] == BULK + 3
    assert catalog(conns.dest) == before


def _parents_loaded(conns: pipeline.Conns) -> None:
    for name in ("users", "agents", "conversations"):
        pipeline.run_entity(conns, name, "full", mode="full", validate_with_gx=False, quarantine_threshold_pct=100)


def test_a_partition_killed_mid_stream_is_redone_alone(twin, tmp_path: Path):
    """Killed after streaming its rows, before its commit: it leaves nothing, its retry
    streams its range again, a retry of a committed partition writes nothing, and the run
    ends exactly as one stream does."""
    split, one = twin
    run_all(one, "full")
    _parents_loaded(split)
    parts = pipeline.plan(split, "messages", "full", mode="full", dry_run=False, partitions=2)
    run_id = parts[0]["run_id"]
    pipeline.extract_partition(split, "messages", parts[0])
    (committed,), = fetch(split.dest, "SELECT count(*) FROM public.messages")
    child = faults.start_step("extract_partition", split, "messages", parts[1], point="direct_streamed",
                              signal_dir=tmp_path / "signal")
    child.wait_paused()
    child.kill()
    assert child.finish().killed
    faults.wait_for(lambda: not fetch(split.dest, "SELECT 1 FROM pg_stat_activity WHERE application_name = "
                                                   "'migration-partition'"), "the killed partition's session to end")
    assert fetch(split.dest, "SELECT count(*) FROM public.messages") == [(committed,)]
    assert list(fetch(split.dest, "SELECT counts->'partitions' FROM migration.runs WHERE run_id = %s",
                      run_id)[0][0]) == ["0"]
    # Airflow's retry of the killed partition, then a second retry of the first one.
    pipeline.extract_partition(split, "messages", parts[1])
    (after,), = fetch(split.dest, "SELECT count(*) FROM public.messages")
    again = pipeline.extract_partition(split, "messages", parts[0])
    assert fetch(split.dest, "SELECT count(*) FROM public.messages") == [(after,)]
    assert again["stage_rows"] == fetch(split.dest, "SELECT (counts->'partitions'->'0'->>'rows')::int FROM "
                                                    "migration.runs WHERE run_id = %s", run_id)[0][0]
    pipeline.transform(split, "messages", run_id)
    pipeline.load(split, "messages", run_id, quarantine_threshold_pct=100)
    assert pipeline.reconcile(split, "messages", run_id)["verdict"] == "clean"
    assert [d for d in faults.compare_tables(one.dest, split.dest, RELATIONAL) if not d.equal] == []
    accounting = "SELECT entity, disposition, reason, rows FROM migration.run_accounting ORDER BY 1, 2, 3"
    assert fetch(split.dest, accounting) == fetch(one.dest, accounting)


def _one_partition_streamed(split, one, dag_run_id: str) -> tuple[Any, list[dict]]:
    """``one`` fully migrated; in ``split`` the parents loaded, a 2-partition backfill of the messages
    planned and its first partition streamed. Returns the messages table's catalog before, and the parts."""
    from tests.integration.test_direct_load import catalog

    run_all(one, "full")
    _parents_loaded(split)
    before = catalog(split.dest)
    parts = pipeline.plan(split, "messages", dag_run_id, mode="full", dry_run=False, partitions=2)
    pipeline.extract_partition(split, "messages", parts[0])
    return before, parts


def test_a_run_that_died_before_its_load_leaves_the_next_run_its_indexes(twin):
    """The plan dropped the indexes and a partition streamed; the load never ran. The next
    run's plan puts the indexes back from the dead run's record, and merges over its rows."""
    from tests.integration.test_direct_load import catalog

    split, one = twin
    before, parts = _one_partition_streamed(split, one, "died")
    assert catalog(split.dest) != before  # the partitions stream into the table without its indexes
    (recorded,), = fetch(split.dest, "SELECT report->'detached'->'names' FROM migration.runs WHERE run_id = %s",
                         parts[0]["run_id"])
    assert set(recorded) == {"public.media.media_message_id_fkey", "messages_pkey", "messages_conversation_id_idx"}
    out = pipeline.run_entity(split, "messages", "full", mode="full", validate_with_gx=False,
                              quarantine_threshold_pct=100, partitions=2)
    assert catalog(split.dest) == before
    assert methods(split.dest)["messages"] == "staged"  # the table held the dead run's rows
    assert out["inserted"] > 0
    assert [d for d in faults.compare_tables(one.dest, split.dest, RELATIONAL) if not d.equal] == []
    assert fetch(split.dest, "SELECT report->'reattached'->>'by' FROM migration.runs WHERE run_id = %s",
                 parts[0]["run_id"]) == [("the plan of messages:full",)]
    # The dead run's partition cannot stream any more: its indexes are back.
    with pytest.raises(RuntimeError, match="were put back"):
        pipeline.extract_partition(split, "messages", parts[1])


def test_rollback_of_a_run_that_died_before_its_load_empties_the_table_and_puts_the_indexes_back(twin):
    from include.migration import rollback
    from tests.integration.test_direct_load import catalog

    conns, _ = twin
    _parents_loaded(conns)
    before = catalog(conns.dest)
    parts = pipeline.plan(conns, "messages", "died", mode="full", dry_run=False, partitions=2)
    pipeline.extract_partition(conns, "messages", parts[0])
    assert fetch(conns.dest, "SELECT count(*) > 0 FROM public.messages") == [(True,)]
    result = rollback.rollback(conns.dest, parts[0]["run_id"])
    assert result.verdicts["messages"] == "matches"
    assert fetch(conns.dest, "SELECT count(*) FROM public.messages") == [(0,)]
    assert catalog(conns.dest) == before
    # The next backfill streams into the empty table again, in partitions.
    run_all(conns, "again", partitions=2)
    assert methods(conns.dest, "again")["messages"] == "direct"
    assert catalog(conns.dest) == before
    assert pipeline.reconcile(conns, "messages", "messages:again")["verdict"] == "clean"


def test_a_run_cleared_from_its_plan_after_a_partition_put_its_indexes_back_first(twin):
    """The same run planned again (its DAG run cleared from plan) after one partition had
    streamed: its own record puts the indexes back, and it stages over the rows it left."""
    from tests.integration.test_direct_load import catalog

    split, one = twin
    before, parts = _one_partition_streamed(split, one, "full")
    again = pipeline.plan(split, "messages", "full", mode="full", dry_run=False, partitions=2)
    assert catalog(split.dest) == before
    assert {p["load_method"] for p in again} == {"staged"}
    for part in again:
        pipeline.extract_partition(split, "messages", part)
    pipeline.transform(split, "messages", again[0]["run_id"])
    pipeline.load(split, "messages", again[0]["run_id"], quarantine_threshold_pct=100)
    assert pipeline.reconcile(split, "messages", again[0]["run_id"])["verdict"] == "clean"
    assert [d for d in faults.compare_tables(one.dest, split.dest, RELATIONAL) if not d.equal] == []
