"""Runs whose process died (include/migration/abandoned.py).

A run's load is killed (SIGKILL) after two committed chunks. While it stood
alive at that point, nothing took it for dead; once dead, the next run of the
entity marks it ``abandoned`` (when, by whom), drops its stage, and finishes
the entity: compared with an uninterrupted run of the same source on a twin
destination, 0 rows lost, 0 duplicated, 0 extra, 0 different. A step of the
abandoned run then refuses to go on, and the report never shows it running.
"""

from __future__ import annotations

import psycopg
import pytest

from include.migration import abandoned, pipeline
from tests import faults
from tests.integration.test_direct_load import run_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARENTS = ("users", "agents", "conversations")


def _fetch(dsn: str, query: str, *args) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, args).fetchall()


def _alive(dsn: str, run_id: str) -> bool:
    return _fetch(dsn, "SELECT migration.advisory_lock_held('migration.run', %s)", run_id)[0][0]


def test_a_run_killed_mid_load_is_marked_abandoned_by_the_next_run_which_loses_and_duplicates_nothing(
        twin, tmp_path, monkeypatch):
    world, reference = twin
    run_all(reference, "uninterrupted")
    for name in PARENTS:
        pipeline.run_entity(world, name, "parents", mode="full", validate_with_gx=False, quarantine_threshold_pct=100)
    night = "messages:night"
    pipeline.extract(world, "messages", "night", mode="full", dry_run=False, load_method="staged")
    pipeline.transform(world, "messages", night)
    stage = _fetch(world.dest, "SELECT stage_table FROM migration.runs WHERE run_id = %s", night)[0][0]
    child = faults.start_step("load", world, "messages", night, batch_size=500, quarantine_threshold_pct=100,
                              point="chunk_committed:2", signal_dir=tmp_path / "night")
    child.wait_paused()
    # No grace period: only the sessions tell a live run from a dead one here.
    monkeypatch.setenv(abandoned.GRACE_ENV, "0")
    assert _alive(world.dest, night)
    assert abandoned.mark_abandoned(world.dest, "messages", "probe") == []
    assert _fetch(world.dest, "SELECT status FROM migration.runs WHERE run_id = %s", night) == [("running",)]

    child.kill()
    assert child.finish().killed
    # The killed process's sessions end as the server notices the closed sockets.
    faults.wait_for(lambda: not _alive(world.dest, night), "the killed run's session to end")
    loaded = _fetch(world.dest, "SELECT count(*) FROM public.messages")[0][0]
    assert loaded > 0  # two chunks were committed before the kill

    nxt = pipeline.run_entity(world, "messages", "next", mode="incremental", quarantine_threshold_pct=100,
                              batch_size=500)
    status, at, by, has_stage = _fetch(
        world.dest, "SELECT status, abandoned_at IS NOT NULL, abandoned_by, to_regclass(%s) IS NOT NULL "
        "FROM migration.runs WHERE run_id = %s", f"migration_stage.{stage}", night)[0]
    assert (status, at, by, has_stage) == ("abandoned", True, "messages:next", False)
    assert _fetch(world.dest, "SELECT status FROM migration.runs WHERE run_id = %s", nxt["run_id"]) == \
        [("succeeded",)]
    # The next run finished the entity: every table equal to the uninterrupted run's.
    diffs = faults.compare_tables(reference.dest, world.dest, PARENTS + ("messages",))
    assert [(d.table, d.lost, d.duplicated, d.extra, d.different) for d in diffs] == \
        [(d.table, 0, 0, 0, 0) for d in diffs]
    # The dead run's chunks were merged as identical rows, not written twice.
    accounting = _fetch(world.dest, "SELECT (counts->'accounting'->>'inserted')::int FROM migration.runs "
                                    "WHERE run_id = %s", nxt["run_id"])[0][0]
    total = _fetch(world.dest, "SELECT count(*) FROM public.messages")[0][0]
    assert accounting == total - loaded

    # A retry of the dead run's load refuses, naming who found it and how to start again.
    with pytest.raises(RuntimeError, match="found abandoned .* by messages:next"):
        pipeline.load(world, "messages", night)
    from local_runtime.report import entity_table

    with psycopg.connect(world.dest) as conn:
        lines = entity_table(conn)
    night_line = next(line for line in lines if "abandoned, found" in line)
    assert "messages:next" in night_line
    assert not any(line.rstrip().endswith("running") for line in lines)


def test_a_run_left_unfinished_with_no_live_session_is_not_reported_running(world, monkeypatch):
    from local_runtime.report import entity_table

    pipeline.plan(world, "users", "crashed", mode="full", dry_run=False)  # then the worker died
    with psycopg.connect(world.dest) as conn:
        lines = entity_table(conn)
    assert "no live session since" in lines[1] and "(left running)" in lines[1]
    # The cleanup command marks it now, for every entity.
    monkeypatch.setenv(abandoned.GRACE_ENV, "0")
    assert abandoned._main(["--dsn", world.dest]) == 0
    by = _fetch(world.dest, "SELECT status, abandoned_by FROM migration.runs WHERE run_id = 'users:crashed'")[0]
    assert by[0] == "abandoned" and by[1].startswith("cleanup (")
