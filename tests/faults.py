"""Fault injection for the pipeline's steps: a test harness, not product code.

A step (``pipeline.load``, ``validate``, ``reconcile``, ...) runs in a child
process (``python -m tests.faults SPEC``) that stops at a named point and
waits. The test then does the damage from outside, as the bad night would:
SIGKILL of the child, ``pg_terminate_backend`` of its connection, a restart
(clean or crash) of the destination server; then it lets the child go on and
collects how it ended. The points are found by wrapping pipeline functions
inside the child only, so the product code carries no test hooks.

Points (``name`` or ``name:N``, N counting the load's chunks from 1):

  ``ledgers_committed``   the load's first commit is done: non-loaded rows removed,
                          ledgers written, ``load_progress`` = '' (no chunk yet)
  ``chunk_written:N``     chunk N's rows are written, its progress mark is not (open transaction)
  ``progress_written:N``  chunk N's rows and its ``load_progress`` mark are written, not committed
  ``chunk_committed:N``   chunk N and its mark are committed; chunk N+1 has not started
  ``before_accounting``   every chunk committed; the accounting has not run
  ``watermark_written``   accounting committed; watermark advanced but not committed
  ``validating``          the validation step has started (expected rows counted); GX not yet run
  ``reconciled``          the verdict is stored; the run is not finished (stage not dropped)
  ``direct_streamed``     a direct load has streamed every row into the table; nothing is committed
  ``direct_committed``    a direct load has committed; the accounting has not run
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
WAIT_SECONDS = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# Parent side


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    def result(self) -> dict[str, Any]:
        """The step's return value (the child prints it as its last stdout line)."""
        return json.loads(self.stdout.strip().splitlines()[-1])


@dataclass
class Child:
    """One pipeline step running in its own process."""

    proc: subprocess.Popen
    signal_dir: Path
    point: str | None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_paused(self, timeout: float = WAIT_SECONDS) -> None:
        """Block until the child stands at its point; fail with its output if it ended first."""
        deadline = time.monotonic() + timeout
        while not (self.signal_dir / "paused").exists():
            if self.proc.poll() is not None:
                out = self.finish()
                raise AssertionError(f"the child ended (exit {out.returncode}) before reaching {self.point!r}:\n"
                                     f"{out.stderr[-4000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"the child did not reach {self.point!r} in {timeout:.0f} s")
            time.sleep(0.02)

    def go(self) -> None:
        (self.signal_dir / "go").write_text("go")

    def kill(self) -> None:
        """SIGKILL: no cleanup runs in the child, its sockets just close."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)

    def finish(self, timeout: float = WAIT_SECONDS) -> Outcome:
        self.proc.wait(timeout=timeout)
        return Outcome(self.proc.returncode, *(
            (self.signal_dir / name).read_text(errors="replace") for name in ("stdout", "stderr")))


def start_step(step: str, conns: Any, *args: Any, point: str | None = None, signal_dir: Path,
               **kwargs: Any) -> Child:
    """Run ``pipeline.<step>(conns, *args, **kwargs)`` in a child process, stopping at ``point``."""
    signal_dir.mkdir(parents=True, exist_ok=True)
    for name in ("paused", "go"):
        (signal_dir / name).unlink(missing_ok=True)
    spec = {"step": step, "conns": {"legacy": conns.legacy, "dest": conns.dest}, "args": list(args),
            "kwargs": kwargs, "point": point, "signal_dir": str(signal_dir)}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Output to files, not pipes: a child stopped at its point must never block on a full pipe.
    with open(signal_dir / "stdout", "w") as out, open(signal_dir / "stderr", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tests.faults", json.dumps(spec)], cwd=ROOT, env=env,
                                stdout=out, stderr=err)
    return Child(proc, signal_dir, point)


def run_step(step: str, conns: Any, *args: Any, signal_dir: Path, **kwargs: Any) -> Outcome:
    """Run a step in a child process to its end (no fault)."""
    return start_step(step, conns, *args, signal_dir=signal_dir, **kwargs).finish()


def terminate_backends(dsn: str, application_name: str) -> int:
    """``pg_terminate_backend`` every session of ``application_name``; returns how many."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s "
            "AND datname = current_database() AND pid <> pg_backend_pid()", (application_name,)).fetchall()
    return sum(1 for (ok,) in rows if ok)


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = WAIT_SECONDS) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(0.01)


# --------------------------------------------------------------------------
# Destination state: what an interrupted-then-resumed run must leave behind

# Per table: (key, md5 of the row) for every row. Columns the migration does
# not decide (auth.identities.id is a random default; the run ids in the
# ledgers) are left out; everything else is compared.
_STATE_QUERIES: dict[str, str] = {
    "public.users": "SELECT id::text, md5(t::text) FROM public.users t",
    "public.agents": "SELECT id::text, md5(t::text) FROM public.agents t",
    "public.conversations": "SELECT id::text, md5(t::text) FROM public.conversations t",
    "public.messages": "SELECT id::text, md5(t::text) FROM public.messages t",
    "auth.users": "SELECT id::text, md5(t::text) FROM auth.users t",
    "auth.identities": "SELECT provider || '/' || provider_id, md5(ROW(user_id, identity_data, last_sign_in_at, "
                       "created_at, updated_at)::text) FROM auth.identities",
    "migration.quarantine": "SELECT entity || '/' || source_key, md5(ROW(reason, source_row)::text) "
                            "FROM migration.quarantine WHERE entity = ANY(%(entities)s)",
    "migration.exclusions": "SELECT entity || '/' || source_key, md5(ROW(rule, detail)::text) "
                            "FROM migration.exclusions WHERE entity = ANY(%(entities)s)",
    "migration.user_id_map": "SELECT loser_id::text, md5(ROW(survivor_id, email)::text) FROM migration.user_id_map",
    "migration.watermarks": "SELECT entity, md5(ROW(change_ts, last_key)::text) FROM migration.watermarks "
                            "WHERE entity = ANY(%(entities)s)",
}

ENTITY_TABLES: dict[str, tuple[str, ...]] = {
    "users": ("public.users", "auth.users", "auth.identities", "migration.user_id_map"),
    "agents": ("public.agents",),
    "conversations": ("public.conversations",),
    "messages": ("public.messages",),
}
LEDGERS = ("migration.quarantine", "migration.exclusions", "migration.watermarks")


def tables_of(entities: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(t for e in entities for t in ENTITY_TABLES[e]) + LEDGERS


def rows_by_key(dsn: str, table: str, entities: tuple[str, ...]) -> list[tuple[str, str]]:
    from include.migration import db

    with db.connection(dsn) as conn:
        return conn.execute(_STATE_QUERIES[table], {"entities": list(entities)}).fetchall()


@dataclass
class TableDiff:
    table: str
    reference_rows: int
    rows: int
    lost: int  # keys of the uninterrupted run missing here
    duplicated: int  # rows beyond one per key
    extra: int  # keys the uninterrupted run does not have
    different: int  # same key, other content

    @property
    def equal(self) -> bool:
        return not (self.lost or self.duplicated or self.extra or self.different)


def compare_tables(reference_dsn: str, dsn: str, entities: tuple[str, ...]) -> list[TableDiff]:
    """Every table the entities write, row by row, against the uninterrupted run's."""
    out = []
    for table in tables_of(entities):
        ref = rows_by_key(reference_dsn, table, entities)
        got = rows_by_key(dsn, table, entities)
        ref_map, got_map = dict(ref), dict(got)
        out.append(TableDiff(
            table=table, reference_rows=len(ref), rows=len(got),
            lost=len(ref_map.keys() - got_map.keys()),
            duplicated=len(got) - len(got_map),
            extra=len(got_map.keys() - ref_map.keys()),
            different=sum(1 for k in ref_map.keys() & got_map.keys() if ref_map[k] != got_map[k]),
        ))
    return out


def fingerprints(dsn: str, entities: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """``reconcile.fingerprint`` of each entity's destination table."""
    from include.migration import db
    from include.migration.entities import get
    from include.migration.reconcile import fingerprint

    with db.connection(dsn) as conn:
        return {e: fingerprint(conn, get(e)) for e in entities}


# --------------------------------------------------------------------------
# Child side


def _pause(signal_dir: Path, point: str) -> None:
    (signal_dir / "paused").write_text(json.dumps({"point": point, "pid": os.getpid()}))
    deadline = time.monotonic() + WAIT_SECONDS
    while not (signal_dir / "go").exists():
        if time.monotonic() > deadline:
            os._exit(99)
        time.sleep(0.02)


def _install(point: str, stop: Callable[[], None]) -> None:
    """Wrap the functions around ``point`` so the child calls ``stop()`` there."""
    from include.migration import direct, pipeline, reconcile, runs, validation

    name, _, arg = point.partition(":")
    n = int(arg) if arg else 0
    state = {"chunks": 0, "stop_after_commit": False}

    real_update = runs.update

    def update(conn, run_id, **values):
        progress = values.get("load_progress")
        is_chunk = progress not in (None, "")
        if is_chunk:
            state["chunks"] += 1
        here = is_chunk and state["chunks"] == n
        if name == "chunk_written" and here:
            stop()
        real_update(conn, run_id, **values)
        if name == "progress_written" and here:
            stop()
        if (name == "chunk_committed" and here) or (name == "ledgers_committed" and progress == ""):
            state["stop_after_commit"] = True

    runs.update = update

    real_commit = psycopg.Connection.commit

    def commit(self):
        real_commit(self)
        if state["stop_after_commit"]:
            state["stop_after_commit"] = False
            stop()

    psycopg.Connection.commit = commit

    def before(module: Any, attr: str) -> None:
        real = getattr(module, attr)

        def wrapped(*a, **kw):
            stop()
            return real(*a, **kw)

        setattr(module, attr, wrapped)

    def after(module: Any, attr: str) -> None:
        real = getattr(module, attr)

        def wrapped(*a, **kw):
            out = real(*a, **kw)
            stop()
            return out

        setattr(module, attr, wrapped)

    simple = {
        "before_accounting": (before, pipeline, "account"),
        "watermark_written": (after, pipeline, "advance_watermark"),
        "validating": (before, validation, "validate_table"),
        "reconciled": (after, reconcile, "persist"),
        "direct_streamed": (after, direct, "relay"),
        "direct_committed": (after, direct, "load"),
    }
    if name in simple:
        how, module, attr = simple[name]
        how(module, attr)
    elif name not in ("chunk_written", "progress_written", "chunk_committed", "ledgers_committed"):
        raise ValueError(f"unknown fault point {point!r}")


def _child(spec: dict[str, Any]) -> None:
    import logging

    from include.migration import pipeline

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if spec.get("point"):
        signal_dir = Path(spec["signal_dir"])
        _install(spec["point"], lambda: _pause(signal_dir, spec["point"]))
    conns = pipeline.Conns(**spec["conns"])
    result = getattr(pipeline, spec["step"])(conns, *spec["args"], **spec["kwargs"])
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
