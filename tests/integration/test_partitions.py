"""Partitioned runs: the source split into key ranges, each extracted into its own
stage (a child of the run's stage), side by side. A partitioned run must leave
exactly what one stream leaves, refuse to load while a partition is missing, and
start the next incremental run at its oldest partition's snapshot."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest

from include.migration import db, pipeline
from include.migration.entities import get
from include.migration.extract import key_ranges
from tests import faults
from tests.integration.test_direct_load import BULK, fetch, run_all
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


def test_a_partitioned_run_leaves_what_one_stream_leaves(twin):
    one, split = twin
    run_all(one, "full", load_method="staged")
    run_all(split, "full", partitions=3)
    diffs = faults.compare_tables(one.dest, split.dest, RELATIONAL)
    assert [d for d in diffs if not d.equal] == []
    assert sum(d.rows for d in diffs if d.table == "public.messages") == BULK + 4
    accounting = "SELECT entity, disposition, reason, rows FROM migration.run_accounting ORDER BY 1, 2, 3"
    assert fetch(split.dest, accounting) == fetch(one.dest, accounting)
    runs = {entity: (method, parts, stage_rows, source_rows, done) for entity, method, parts, stage_rows, source_rows,
            done in fetch(split.dest, "SELECT entity, report->>'load_method', jsonb_array_length(report->'partitions'), "
                                      "stage_rows, source_rows, counts->'partitions' FROM migration.runs")}
    for entity in RELATIONAL:
        method, parts, stage_rows, source_rows, done = runs[entity]
        assert (method, parts, len(done)) == ("staged", 3, 3), entity
        assert stage_rows == source_rows == sum(p["rows"] for p in done.values()), entity
        assert all(p["rows"] > 0 for p in done.values()), entity
    # Into the empty tables the stage went in whole (one COPY, indexes rebuilt after); users
    # (Auth accounts) merged chunk by chunk.
    bulk = dict(fetch(split.dest, "SELECT entity, (counts->'bulk'->>'inserted')::int FROM migration.runs "
                                  "WHERE dag_run_id = 'full'"))
    loaded = dict(fetch(split.dest, "SELECT entity, (counts->'accounting'->>'loaded')::int FROM migration.runs "
                                    "WHERE dag_run_id = 'full'"))
    assert bulk == {"users": None, **{e: loaded[e] for e in ("agents", "conversations", "messages")}}
    assert loaded["messages"] == BULK + 4
    for name in RELATIONAL:
        assert pipeline.reconcile(split, name, f"{name}:full")["verdict"] == "clean"
    # Every stage is gone once the run has finished, the partitions' with it.
    assert fetch(split.dest, "SELECT count(*) FROM pg_tables WHERE schemaname = 'migration_stage'") == [(0,)]
    # A partitioned rerun over the loaded destination writes nothing.
    again = run_all(split, "again", partitions=2)
    assert {name: again[name]["inserted"] + again[name]["updated"] + again[name]["deleted"]
            for name in RELATIONAL} == {name: 0 for name in RELATIONAL}
    assert fetch(split.dest, "SELECT count(*) FROM migration.runs WHERE dag_run_id = 'again' "
                             "AND (report->>'bulk_into_empty')::boolean") == [(0,)]


def test_a_bulk_loaded_stage_puts_every_index_back_and_rolls_back(twin):
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
    for name in ("users", "agents", "conversations"):
        pipeline.run_entity(conns, name, "full", mode="full", validate_with_gx=False, quarantine_threshold_pct=100)
    parts = pipeline.plan(conns, "messages", "split", mode="full", dry_run=False, partitions=2)
    assert [p["partition"] for p in parts] == [0, 1]
    pipeline.extract_partition(conns, "messages", parts[0])
    with pytest.raises(RuntimeError, match=r"partitions 2 of 2 have not extracted"):
        pipeline.transform(conns, "messages", parts[0]["run_id"])
    assert fetch(conns.dest, "SELECT count(*) FROM public.messages") == [(0,)]
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


def test_a_parent_gone_before_the_bulk_copy_rolls_it_back(twin):
    """The transform checked the stage against the destination; a parent deleted after that
    is found by the bulk load's own check, and nothing is written."""
    conns, _ = twin
    for name in ("users", "agents", "conversations"):
        pipeline.run_entity(conns, name, "full", mode="full", validate_with_gx=False, quarantine_threshold_pct=100)
    parts = pipeline.plan(conns, "messages", "split", mode="full", dry_run=False, partitions=2)
    run_id = parts[0]["run_id"]
    for part in parts:
        pipeline.extract_partition(conns, "messages", part)
    pipeline.transform(conns, "messages", run_id)
    with psycopg.connect(conns.dest, autocommit=True) as conn:
        conn.execute("DELETE FROM public.conversations WHERE id = %s", (C[1],))
    with pytest.raises(RuntimeError, match=r"reference a missing conversations row"):
        pipeline.load(conns, "messages", run_id, quarantine_threshold_pct=100)
    assert fetch(conns.dest, "SELECT count(*) FROM public.messages") == [(0,)]
    assert fetch(conns.dest, "SELECT load_progress FROM migration.runs WHERE run_id = %s", run_id) == [(None,)]
