"""Runs whose process died: how a live run shows it is alive, and how a dead one is marked.

While a step of a run works (extract, transform, load, validate, reconcile), it
holds a *shared* advisory lock on the run ('migration.run', run id) in a session
of its own (``heartbeat``); the lock ends with the session, so with the process:
a SIGKILL, an OOM kill, a lost worker. Between steps no session holds it, so a
run is taken for dead only when, besides, its last sign of life
(``heartbeat_at``, set when a step starts and ends) is older than
``MIGRATION_ABANDONED_AFTER_SECONDS`` (default 900: longer than a task's retry
delay and a scheduler's queue) and no session holds the entity's write lock in
its name.

The next run of the entity looks for such runs when it starts (``pipeline.plan``)
and marks each ``abandoned``, with when (``abandoned_at``) and by whom
(``abandoned_by``: its own run id, or "cleanup" from the command line), and drops
its stage: the dead run's committed chunks stay (with their before-images, so a
rollback can still undo them) and the watermark it never advanced makes the next
run take its rows again, merged as identical where they already landed. A step
of an abandoned run refuses to go on (``pipeline._run``); its plan, cleared by an
operator, starts it again from a new stage.

    python -m include.migration.abandoned --dsn postgresql://.../supabase   # mark every dead run now
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psycopg

from include.migration import db

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent / "sql" / "runs"
GRACE_ENV = "MIGRATION_ABANDONED_AFTER_SECONDS"
DEFAULT_GRACE_SECONDS = 900.0
# The statuses of a run that has not ended: 'loaded' is a run between its load and its verdict.
UNFINISHED = ("running", "loaded")
LOCK_SPACE = "migration.run"


def grace_seconds() -> float:
    return float(os.environ.get(GRACE_ENV) or DEFAULT_GRACE_SECONDS)


@cache
def _sql(name: str) -> str:
    return (SQL_DIR / name).read_text()


def holder() -> str:
    return f"{socket.gethostname()} pid {os.getpid()}"


@contextmanager
def heartbeat(dsn: str, run_id: str, step: str) -> Iterator[None]:
    """Hold the run's liveness lock while ``step`` works (see the module docstring)."""
    conn = db.connect(dsn, autocommit=True, application=f"migration-alive-{step}")
    try:
        # Waits only while a run that found this one dead is marking it (it holds the lock
        # exclusively for that moment); the step then finds the run abandoned and refuses.
        conn.execute("SELECT pg_advisory_lock_shared(hashtext(%s), hashtext(%s))", (LOCK_SPACE, run_id))
        conn.execute("UPDATE migration.runs SET heartbeat_at = now() WHERE run_id = %s", (run_id,))
        yield
    finally:
        try:
            conn.execute("UPDATE migration.runs SET heartbeat_at = now() WHERE run_id = %s", (run_id,))
        except psycopg.Error:
            pass  # the session is gone (the destination restarted): the step's own error says why
        conn.close()


@dataclass
class Abandoned:
    run_id: str
    status: str  # what it was left as
    last_seen: str
    stage_table: str | None


def mark_abandoned(dest_dsn: str, entity: str | None, found_by: str) -> list[Abandoned]:
    """Mark every dead unfinished run of ``entity`` (None: of every entity) ``abandoned`` and
    drop its stage; ``found_by`` (a run id, or "cleanup") is recorded. Returns what it marked."""
    from include.migration.extract import drop_stage

    marked: list[Abandoned] = []
    with db.connection(dest_dsn, application="migration-abandoned") as conn:
        candidates = conn.execute(_sql("dead_runs.sql"), {
            "entity": entity, "found_by": found_by, "unfinished": list(UNFINISHED), "space": LOCK_SPACE,
            "grace": grace_seconds()}).fetchall()
        conn.commit()
        for run_id, status, last_seen, stage_table in candidates:
            # Exclusive for this transaction: a step starting now waits, then finds the run marked.
            got = conn.execute("SELECT pg_try_advisory_xact_lock(hashtext(%s), hashtext(%s))",
                               (LOCK_SPACE, run_id)).fetchone()[0]
            done = got and conn.execute(
                "UPDATE migration.runs SET status = 'abandoned', abandoned_at = now(), abandoned_by = %s "
                "WHERE run_id = %s AND status = ANY(%s) RETURNING run_id",
                (found_by, run_id, list(UNFINISHED))).fetchone()
            if not done:
                conn.rollback()  # it came back to life (or another run marked it) meanwhile
                continue
            if stage_table:
                drop_stage(conn, stage_table)
            conn.commit()
            marked.append(Abandoned(run_id, status, f"{last_seen:%Y-%m-%d %H:%M:%S}Z", stage_table))
            log.warning("run %s was left '%s' by a process that died (no session holds it, no write lock, last "
                        "sign of life %s): marked abandoned by %s%s. Its committed rows stay, with their "
                        "before-images; the next run takes its rows again from the watermark it never advanced.",
                        run_id, status, marked[-1].last_seen, found_by,
                        f"; its stage {stage_table} dropped" if stage_table else "")
    return marked


def describe(run_id: str, abandoned_at: object, abandoned_by: str | None) -> str:
    return (f"run {run_id} was found abandoned (its process died) at {abandoned_at} by {abandoned_by}; its stage "
            "is dropped. Nothing was written. Clear the whole DAG run (from plan) to start it again, or let the "
            "next run take its rows.")


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.migration.abandoned",
                                     description="Mark runs whose process died 'abandoned' (a cleanup step).")
    parser.add_argument("--dsn", required=True, help="the destination database")
    parser.add_argument("--entity", help="only this entity's runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    marked = mark_abandoned(args.dsn, args.entity, f"cleanup ({holder()})")
    print(f"{len(marked)} runs marked abandoned" + "".join(f"\n  {m.run_id} (was {m.status})" for m in marked))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
