"""Two runs of one entity at once: a nightly incremental and a manual full.

The write lock lives in the destination (an advisory lock plus the
``migration.locks`` row naming its holder), so it holds across processes and
machines: the holder here is always a child process (``tests/faults.py``)
stopped in the middle of its load, after two committed chunks. The second run
fails fast with ``LockBusy`` naming the holder, or waits and then proceeds;
it never writes while the holder can. A stage extracted before another run's
already-loaded stage is refused: loading it would put older rows over newer.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from include.migration import db, pipeline, runs, stage_health
from include.migration.entities import get
from include.migration.reconcile import fingerprint
from tests import faults

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENTITY = "messages"
BATCH = 300  # ~3,000 messages: ten chunks
U = "10000000-0000-4000-8000-{:012d}"
C = "30000000-0000-4000-8000-{:012d}"


def _fmt(pattern: str) -> str:
    """'...-{:012d}' as a SQL format() pattern over a zero-padded number."""
    return pattern.replace("{:012d}", "%s")


def add_messages(conn: psycopg.Connection, first: int, last: int) -> None:
    conn.execute("INSERT INTO messages (id, conversation_id, role, content, created_at) "
                 "SELECT n, format(%s, lpad((n %% 40 + 1)::text, 12, '0'))::uuid, "
                 "CASE WHEN n %% 2 = 0 THEN 'user' ELSE 'assistant' END, 'message ' || n, "
                 "timestamp '2024-01-03' + n * interval '1 second' FROM generate_series(%s::int, %s::int) n",
                 (_fmt(C), first, last))


@pytest.fixture
def night(world):
    """A legacy world with its parents migrated; messages not yet."""
    with psycopg.connect(world.legacy, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, email, display_name, created_at) "
                     "SELECT format(%s, lpad(n::text, 12, '0'))::uuid, 'user' || n || '@example.com', 'User ' || n, "
                     "timestamp '2024-01-01' + n * interval '1 minute' FROM generate_series(1, 20) n", (_fmt(U),))
        conn.execute("INSERT INTO conversations (id, user_id, title, created_at) "
                     "SELECT format(%s, lpad(n::text, 12, '0'))::uuid, "
                     "format(%s, lpad((n %% 20 + 1)::text, 12, '0'))::uuid, 'c' || n, timestamp '2024-01-02' "
                     "FROM generate_series(1, 40) n", (_fmt(C), _fmt(U)))
        add_messages(conn, 1, 3000)
    for entity in ("users", "agents", "conversations"):
        pipeline.run_entity(world, entity, "base", mode="full", validate_with_gx=False, quarantine_threshold_pct=100)
    return world


def stage(conns: pipeline.Conns, dag_run_id: str, mode: str, entity: str = ENTITY) -> str:
    # Staged: these tests hold the lock between chunk commits.
    out = pipeline.extract(conns, entity, dag_run_id, mode=mode, dry_run=False, load_method="staged")
    pipeline.transform(conns, entity, out["run_id"])
    return out["run_id"]


def hold_lock(conns: pipeline.Conns, run_id: str, tmp_path: Path) -> faults.Child:
    """The nightly run's load in a child process, stopped after two committed chunks."""
    child = faults.start_step("load", conns, ENTITY, run_id, point="chunk_committed:2", signal_dir=tmp_path / "hold",
                              batch_size=BATCH, quarantine_threshold_pct=100)
    child.wait_paused()
    return child


def record(dsn: str, run_id: str) -> runs.Run:
    with db.connection(dsn) as conn:
        run = runs.get(conn, run_id)
    assert run is not None
    return run


def table_fingerprint(dsn: str) -> dict[str, int]:
    with db.connection(dsn) as conn:
        return fingerprint(conn, get(ENTITY))


def load(conns: pipeline.Conns, run_id: str, **kwargs) -> dict:
    return pipeline.load(conns, ENTITY, run_id, batch_size=BATCH, quarantine_threshold_pct=100, **kwargs)


HOLDER = r"run {run} on {host} pid {pid} since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\dZ"


def test_the_second_run_fails_fast_naming_the_holder(night, tmp_path: Path):
    nightly, manual = stage(night, "nightly", "incremental"), stage(night, "manual", "full")
    holder = hold_lock(night, nightly, tmp_path)
    expected = HOLDER.format(run=re.escape(nightly), host=re.escape(socket.gethostname()), pid=holder.pid)
    before = table_fingerprint(night.dest)

    with pytest.raises(runs.LockBusy, match=expected):
        load(night, manual, lock_wait_seconds=0)
    # Another process (another machine, as far as the lock knows): the same answer.
    other = faults.run_step("load", night, ENTITY, manual, signal_dir=tmp_path / "other", batch_size=BATCH,
                            quarantine_threshold_pct=100, lock_wait_seconds=0)
    assert other.returncode == 1 and "LockBusy" in other.stderr, other.stderr[-2000:]
    assert re.search(expected, other.stderr), other.stderr[-2000:]
    # The refused run wrote nothing, and neither did anyone else while the holder stood still.
    assert record(night.dest, manual).load_progress is None
    assert "watermark_before" not in record(night.dest, manual).report
    assert table_fingerprint(night.dest) == before

    holder.go()
    assert holder.finish().returncode == 0
    assert load(night, manual, lock_wait_seconds=0)["inserted"] == 0  # the nightly run loaded the same rows
    assert table_fingerprint(night.dest)["rows"] == 3000


def test_the_second_run_waits_for_the_lock_then_proceeds(night, tmp_path: Path, caplog):
    nightly = stage(night, "nightly", "incremental")
    with psycopg.connect(night.legacy, autocommit=True) as conn:
        add_messages(conn, 3001, 3100)  # the manual full run sees 100 more
    manual = stage(night, "manual", "full")
    holder = hold_lock(night, nightly, tmp_path)
    before = table_fingerprint(night.dest)
    caplog.set_level(logging.INFO, logger="include.migration.runs")
    outcome: dict = {}

    def second() -> None:
        try:
            outcome["result"] = load(night, manual, lock_wait_seconds=120)
        except Exception as exc:  # noqa: BLE001 (reported by the main thread)
            outcome["error"] = exc

    thread = threading.Thread(target=second)
    thread.start()
    waiting = faults.wait_for(lambda: [r.getMessage() for r in caplog.records
                                       if "waiting for the write lock held by" in r.getMessage()],
                              "the manual run to wait for the lock")
    assert re.search(HOLDER.format(run=re.escape(nightly), host=re.escape(socket.gethostname()), pid=holder.pid),
                     waiting[0]), waiting[0]
    assert record(night.dest, manual).load_progress is None
    assert table_fingerprint(night.dest) == before

    holder.go()
    assert holder.finish().returncode == 0
    thread.join(timeout=180)
    assert not thread.is_alive() and "error" not in outcome, outcome
    assert outcome["result"]["inserted"] == 100
    # The manual run began only after the nightly run had finished: it read the
    # watermark the nightly run left, and its writes come after every one of the nightly's.
    nightly_run, manual_run = record(night.dest, nightly), record(night.dest, manual)
    assert manual_run.report["watermark_before"]["last_key"] == "3000"
    with db.connection(night.dest) as conn:
        first_manual, last_nightly = conn.execute(
            "SELECT min(recorded_at) FILTER (WHERE run_id = %s), max(recorded_at) FILTER (WHERE run_id = %s) "
            "FROM migration.before_images", (manual, nightly)).fetchone()
        finished = conn.execute("SELECT finished_at FROM migration.runs WHERE run_id = %s", (nightly,)).fetchone()[0]
    assert nightly_run.status == "loaded" and last_nightly < finished <= first_manual
    assert table_fingerprint(night.dest)["rows"] == 3100


def test_a_killed_holder_releases_the_lock(night, tmp_path: Path):
    nightly, manual = stage(night, "nightly", "incremental"), stage(night, "manual", "full")
    holder = hold_lock(night, nightly, tmp_path)
    holder.kill()
    assert holder.finish().killed
    # Its migration.locks row still names it, but the lock went with its session.
    with db.connection(night.dest) as conn:
        assert conn.execute("SELECT run_id FROM migration.locks").fetchall() == [(nightly,)]
    assert load(night, manual, lock_wait_seconds=30)["inserted"] == 3000 - 2 * BATCH
    with db.connection(night.dest) as conn:
        assert conn.execute("SELECT count(*) FROM migration.locks").fetchone()[0] == 0
    assert table_fingerprint(night.dest)["rows"] == 3000


def _advisory_lock_holders(dsn: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            # The entity write locks only (a working run also holds its liveness lock, abandoned.py).
            "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database() "
            "AND l.classid = hashtext('migration.entity')::oid")]


def test_a_holder_that_lost_its_lock_stops_writing(night, tmp_path: Path):
    """The session holding the lock is cut (pg_terminate_backend, a network drop, an idle
    timeout). From then on another run may take the lock, so the holder must not write."""
    nightly, manual = stage(night, "nightly", "incremental"), stage(night, "manual", "full")
    holder = hold_lock(night, nightly, tmp_path)
    sessions = _advisory_lock_holders(night.dest)
    assert len(sessions) == 1
    with psycopg.connect(night.dest, autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (sessions[0],)).fetchone()[0]
    progress = record(night.dest, nightly).load_progress
    holder.go()
    out = holder.finish()
    assert out.returncode == 1, "the holder went on writing without its lock"
    assert record(night.dest, nightly).load_progress == progress
    assert load(night, manual, lock_wait_seconds=0)["inserted"] == 3000 - 2 * BATCH
    assert table_fingerprint(night.dest)["rows"] == 3000


def test_an_older_stage_is_not_loaded_over_a_newer_one(night):
    """The nightly run staged its rows, then the manual run staged newer ones and loaded
    first (or: a failed run's load is retried after a later run succeeded)."""
    user = U.format(1)
    with psycopg.connect(night.legacy, autocommit=True) as conn:
        rename = "UPDATE users SET display_name = %s, updated_at = now() AT TIME ZONE 'UTC' WHERE id = %s"
        conn.execute(rename, ("Nightly name", user))
        nightly = stage(night, "nightly", "incremental", "users")
        conn.execute(rename, ("Manual name", user))
        manual = stage(night, "manual", "full", "users")
    pipeline.load(night, "users", manual, quarantine_threshold_pct=100, lock_wait_seconds=0)
    with psycopg.connect(night.legacy, autocommit=True) as conn:
        conn.execute(rename, ("Latest name", user))
    # The nightly load finds its stage older than the manual run's, stages its scope again
    # (now, under the write lock), and loads that: the newest name, not its own old one.
    pipeline.load(night, "users", nightly, quarantine_threshold_pct=100, lock_wait_seconds=0)
    with db.connection(night.dest) as conn:
        assert conn.execute("SELECT name FROM public.users WHERE id = %s", (user,)).fetchone()[0] == "Latest name"
    restaged = record(night.dest, nightly).report["restaged"]
    assert len(restaged) == 1 and re.search(rf"it staged the source as of .*run {re.escape(manual)} has already "
                                            r"loaded it .* older rows over newer", restaged[0]), restaged
    assert pipeline.reconcile(night, "users", nightly)["verdict"] == "clean"


def _stage_of(dsn: str, run_id: str) -> sql.Identifier:
    return sql.Identifier("migration_stage", record(dsn, run_id).stage_table)


def test_a_load_whose_stage_is_gone_stages_again_and_resumes_from_scratch(night, tmp_path: Path):
    """The stage dropped after two chunks were merged (a partition's stage lost, an operator's
    cleanup): the retried load stages the scope again and merges from its first chunk, with
    the changes made meanwhile, the watermark recorded before its first attempt kept."""
    nightly = stage(night, "nightly", "full")
    holder = hold_lock(night, nightly, tmp_path)
    holder.kill()
    assert holder.finish().killed
    watermark_before = record(night.dest, nightly).report["watermark_before"]
    with psycopg.connect(night.legacy, autocommit=True) as conn:
        conn.execute("UPDATE messages SET content = 'edited after the first stage' WHERE id = 1")
        add_messages(conn, 3001, 3010)
    with psycopg.connect(night.dest, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(_stage_of(night.dest, nightly)))
    result = load(night, nightly, lock_wait_seconds=0)
    assert (result["inserted"], result["updated"]) == (3010 - 2 * BATCH, 1)
    after = record(night.dest, nightly)
    assert after.report["watermark_before"] == watermark_before
    assert len(after.report["restaged"]) == 1 and "is gone" in after.report["restaged"][0]
    with db.connection(night.dest) as conn:
        assert conn.execute("SELECT content FROM public.messages WHERE id = 1").fetchone()[0] == \
            "edited after the first stage"
    assert pipeline.reconcile(night, ENTITY, nightly)["verdict"] == "clean"


def test_a_stage_changed_by_something_else_than_a_crash_is_refused(night):
    """A crash empties the stage whole. Rows missing from a stage that still holds others
    were removed by something else: the load refuses to stage again over that, writes nothing."""
    nightly = stage(night, "nightly", "full")
    with psycopg.connect(night.dest, autocommit=True) as conn:
        conn.execute(sql.SQL("DELETE FROM {} WHERE id <= 5").format(_stage_of(night.dest, nightly)))
    with pytest.raises(stage_health.StageDamaged, match=r"messages: the stage \w+ holds 2995 rows, the extract wrote "
                                                    r"3000\. A crash empties an unlogged stage whole"):
        load(night, nightly, lock_wait_seconds=0)
    assert record(night.dest, nightly).load_progress is None
    assert table_fingerprint(night.dest)["rows"] == 0


def test_a_rollback_refuses_while_a_load_holds_the_lock(night, tmp_path: Path):
    """A rollback takes the same write lock as a load: while the nightly load is between two
    chunks, a rollback of the entity changes nothing and names the holder; once the load is
    done, the same rollback goes through and undoes both runs."""
    from include.migration.rollback import RollbackRefused, rollback

    first = stage(night, "first", "full")
    load(night, first, lock_wait_seconds=0)
    with psycopg.connect(night.legacy, autocommit=True) as conn:
        add_messages(conn, 3001, 6000)
    nightly = stage(night, "nightly", "incremental")
    holder = hold_lock(night, nightly, tmp_path)
    expected = HOLDER.format(run=re.escape(nightly), host=re.escape(socket.gethostname()), pid=holder.pid)
    before = table_fingerprint(night.dest)

    with pytest.raises(RollbackRefused, match=rf"rollback of {re.escape(first)} refused, nothing was changed: "
                                              rf"messages: another run is writing this entity \({expected}\)"):
        rollback(night.dest, first, since=True, lock_wait_seconds=0)
    assert table_fingerprint(night.dest) == before
    assert record(night.dest, first).status == "loaded"

    holder.go()
    assert holder.finish().returncode == 0
    result = rollback(night.dest, first, since=True, lock_wait_seconds=0)
    assert sorted(result.run_ids) == sorted([first, nightly])
    assert table_fingerprint(night.dest)["rows"] == 0
    with db.connection(night.dest) as conn:
        assert conn.execute("SELECT count(*) FROM migration.locks").fetchone()[0] == 0
