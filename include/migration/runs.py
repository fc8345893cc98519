"""Run records, watermarks and the per-entity write lock, kept in the destination.

Everything a run needs to resume after a crash lives in ``migration.runs``
and ``migration.watermarks``; the write lock is a PostgreSQL advisory lock
in the destination, so two runs of one entity never write at the same time,
even from two machines, and a crashed holder releases it with its session.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from include.migration import db

log = logging.getLogger(__name__)

LOOKBACK_SECONDS = int(os.environ.get("MIGRATION_LOOKBACK_SECONDS", "300"))


@dataclass
class Run:
    run_id: str
    entity: str
    mode: str
    dry_run: bool
    status: str = "running"
    scope: dict[str, Any] = field(default_factory=dict)
    stage_table: str | None = None
    stage_rows: int | None = None
    source_rows: int | None = None
    load_progress: str | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)


def make_run_id(entity: str, dag_run_id: str) -> str:
    return f"{entity}:{dag_run_id}"


_RUN_COLUMNS = (
    "run_id, entity, mode, dry_run, status, scope, stage_table, stage_rows, "
    "source_rows, load_progress, counts, report"
)


def start(conn: psycopg.Connection, entity: str, dag_run_id: str, mode: str, dry_run: bool) -> Run:
    """Create the run record, or return the existing one (a task retry resumes it)."""
    run_id = make_run_id(entity, dag_run_id)
    conn.execute(
        "INSERT INTO migration.runs (run_id, entity, mode, dry_run, dag_run_id) VALUES (%s, %s, %s, %s, %s) "
        "ON CONFLICT (run_id) DO NOTHING",
        (run_id, entity, mode, dry_run, dag_run_id),
    )
    conn.commit()
    run = get(conn, run_id)
    assert run is not None
    return run


def get(conn: psycopg.Connection, run_id: str) -> Run | None:
    row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM migration.runs WHERE run_id = %s", (run_id,)).fetchone()
    if row is None:
        return None
    return Run(*row)


def update(conn: psycopg.Connection, run_id: str, **values: Any) -> None:
    """Set columns of a run; dict values are merged into jsonb columns."""
    sets = []
    params: list[Any] = []
    for name, value in values.items():
        if name in ("scope", "counts", "report"):
            sets.append(sql.SQL("{0} = {0} || %s").format(sql.Identifier(name)))
            params.append(Jsonb(value))
        else:
            sets.append(sql.SQL("{} = %s").format(sql.Identifier(name)))
            params.append(value)
    params.append(run_id)
    conn.execute(
        sql.SQL("UPDATE migration.runs SET {} WHERE run_id = %s").format(sql.SQL(", ").join(sets)), params
    )


def record_partition(conn: psycopg.Connection, run_id: str, partition: int, figures: dict[str, Any]) -> None:
    """Set ``counts.partitions.<partition>``. Partitions record side by side: the merge is one
    statement, re-evaluated on the row as another partition left it."""
    conn.execute(
        "UPDATE migration.runs SET counts = jsonb_set(counts, '{partitions}', "
        "coalesce(counts->'partitions', '{}') || jsonb_build_object(%s::text, %s::jsonb)) WHERE run_id = %s",
        (str(partition), Jsonb(figures), run_id))


@dataclass
class Watermark:
    change_ts: datetime | None
    last_key: str | None


def watermark(conn: psycopg.Connection, entity: str) -> Watermark | None:
    row = conn.execute(
        "SELECT change_ts, last_key FROM migration.watermarks WHERE entity = %s", (entity,)
    ).fetchone()
    return Watermark(*row) if row else None


def set_watermark(conn: psycopg.Connection, entity: str, wm: Watermark, run_id: str) -> None:
    conn.execute(
        """
        INSERT INTO migration.watermarks (entity, change_ts, last_key, run_id, updated_at)
        VALUES (%s, %s, %s, %s, now())
        ON CONFLICT (entity) DO UPDATE
           SET change_ts = greatest(migration.watermarks.change_ts, EXCLUDED.change_ts),
               last_key = EXCLUDED.last_key, run_id = EXCLUDED.run_id, updated_at = now()
        """,
        (entity, wm.change_ts, wm.last_key, run_id),
    )


class LockBusy(RuntimeError):
    pass


class EntityLock:
    """The destination-side write lock of one entity.

    A session-level advisory lock, best taken on the very connection that
    writes (``conn``): then the lock and the writes end together. When that
    session ends (the task killed, the connection cut, ``pg_terminate_backend``)
    the lock is released and the writer cannot write any more; on a separate
    connection, the lock could go while the writer went on, next to the run
    that took the lock over. Without ``conn`` it opens a connection of its own.
    A second run waits up to ``wait_seconds`` and then fails with the holder's
    name.
    """

    def __init__(self, dsn: str, entity: str, run_id: str, *, wait_seconds: float = 60.0,
                 conn: psycopg.Connection | None = None):
        self.dsn, self.entity, self.run_id, self.wait_seconds = dsn, entity, run_id, wait_seconds
        self.conn = conn
        self._own = conn is None

    def _one(self, query: str, params: tuple) -> Any:
        """Run one statement; never leave a transaction open on the writer's connection."""
        assert self.conn is not None
        row = self.conn.execute(query, params).fetchone()
        if not self.conn.autocommit:
            self.conn.commit()
        return row

    def __enter__(self) -> EntityLock:
        if self._own:
            self.conn = db.connect(self.dsn, autocommit=True, application=f"migration-lock-{self.entity}")
        deadline = time.monotonic() + self.wait_seconds
        announced = False
        while True:
            got = self._one("SELECT pg_try_advisory_lock(hashtext('migration.entity'), hashtext(%s))",
                            (self.entity,))[0]
            if got:
                break
            holder = self.holder()
            if time.monotonic() >= deadline:
                if self._own:
                    self.conn.close()
                raise LockBusy(
                    f"{self.entity}: another run is writing this entity ({holder}); waited "
                    f"{self.wait_seconds:.0f} s. Let it finish, or stop it, then rerun."
                )
            if not announced:
                log.info("%s: waiting for the write lock held by %s", self.entity, holder)
                announced = True
            time.sleep(1.0)
        self._one(
            "INSERT INTO migration.locks (entity, run_id, holder) VALUES (%s, %s, %s) "
            "ON CONFLICT (entity) DO UPDATE SET run_id = EXCLUDED.run_id, holder = EXCLUDED.holder, "
            "acquired_at = now() RETURNING entity",
            (self.entity, self.run_id, f"{socket.gethostname()} pid {os.getpid()}"),
        )
        return self

    def holder(self) -> str:
        row = self._one("SELECT run_id, holder, acquired_at FROM migration.locks WHERE entity = %s", (self.entity,))
        if row is None:
            return "a session that has not registered yet"
        return f"run {row[0]} on {row[1]} since {row[2]:%Y-%m-%d %H:%M:%S}Z"

    def __exit__(self, *exc: object) -> None:
        if self.conn is None:
            return
        try:
            if not self.conn.autocommit:
                self.conn.rollback()  # whatever a failed step left uncommitted
            self._one("DELETE FROM migration.locks WHERE entity = %s AND run_id = %s RETURNING entity",
                      (self.entity, self.run_id))
            self._one("SELECT pg_advisory_unlock(hashtext('migration.entity'), hashtext(%s))", (self.entity,))
        except psycopg.OperationalError:
            # The session is gone, and the lock went with it; the next holder replaces our
            # migration.locks row. Raising here would hide the error that ended the step.
            log.warning("%s: the write lock's session had already ended", self.entity)
        finally:
            if self._own:
                self.conn.close()
            self.conn = None


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
