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

    Held on its own connection for as long as the writing task runs. A second
    run waits up to ``wait_seconds`` and then fails with the holder's name.
    """

    def __init__(self, dsn: str, entity: str, run_id: str, *, wait_seconds: float = 60.0):
        self.dsn, self.entity, self.run_id, self.wait_seconds = dsn, entity, run_id, wait_seconds
        self.conn: psycopg.Connection | None = None

    def __enter__(self) -> EntityLock:
        self.conn = db.connect(self.dsn, autocommit=True, application=f"migration-lock-{self.entity}")
        deadline = time.monotonic() + self.wait_seconds
        announced = False
        while True:
            got = self.conn.execute(
                "SELECT pg_try_advisory_lock(hashtext('migration.entity'), hashtext(%s))", (self.entity,)
            ).fetchone()[0]
            if got:
                break
            holder = self.holder()
            if time.monotonic() >= deadline:
                self.conn.close()
                raise LockBusy(
                    f"{self.entity}: another run is writing this entity ({holder}); waited "
                    f"{self.wait_seconds:.0f} s. Let it finish, or stop it, then rerun."
                )
            if not announced:
                log.info("%s: waiting for the write lock held by %s", self.entity, holder)
                announced = True
            time.sleep(1.0)
        self.conn.execute(
            "INSERT INTO migration.locks (entity, run_id, holder) VALUES (%s, %s, %s) "
            "ON CONFLICT (entity) DO UPDATE SET run_id = EXCLUDED.run_id, holder = EXCLUDED.holder, "
            "acquired_at = now()",
            (self.entity, self.run_id, f"{socket.gethostname()} pid {os.getpid()}"),
        )
        return self

    def holder(self) -> str:
        assert self.conn is not None
        row = self.conn.execute(
            "SELECT run_id, holder, acquired_at FROM migration.locks WHERE entity = %s", (self.entity,)
        ).fetchone()
        if row is None:
            return "a session that has not registered yet"
        return f"run {row[0]} on {row[1]} since {row[2]:%Y-%m-%d %H:%M:%S}Z"

    def __exit__(self, *exc: object) -> None:
        if self.conn is None:
            return
        try:
            self.conn.execute("DELETE FROM migration.locks WHERE entity = %s AND run_id = %s",
                              (self.entity, self.run_id))
            self.conn.execute(
                "SELECT pg_advisory_unlock(hashtext('migration.entity'), hashtext(%s))", (self.entity,)
            )
        finally:
            self.conn.close()
            self.conn = None


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
