"""Direct load: a full run into an empty destination table, in one stream.

When the destination table is empty (a backfill's first run) there is
nothing to merge, compare or image row by row, and writing every row twice
(stage, then table) is most of a staged load's cost. So the transform runs in
the legacy database as usual, but its rows go by binary ``COPY`` straight
into the destination table, in one transaction, the way ``pg_restore`` and
``pgcopydb`` load a table: the table's indexes, its primary key and the
foreign keys that point at it are dropped first and built again at the end (a
sorted index build costs a fraction of maintaining a B-tree row by row), and
the foreign keys the table holds are checked once, set-based, with their
per-row triggers off (``session_replication_role = replica``) and the parent
tables locked against writers (``SHARE``) for the whole transaction.

Rows that need more than their destination columns travel on a side channel.
Each row of the legacy query carries a first field, its *side*: ``L`` and the
row's change timestamp for a plain loaded row, or ``S`` and a JSON document
with the control columns for every other row (excluded, quarantined, or
loaded with a repair). PostgreSQL sends one CopyData message per row, so the
relay sees row boundaries without parsing rows: it strips the side field of
``L`` rows (the destination receives exactly its columns) and spools ``S``
rows to a temporary file, which then goes into the run's stage. From there on
the run is a staged run: the same destination checks, ledgers, accounting and
watermark.

All or nothing: the stream, the destination checks, the index builds and the
ledgers commit together with the run's progress mark. A crash anywhere before
that commit leaves the table empty, and the rerun streams again.

A partitioned backfill into the empty table streams the same way, one stream
per key range, side by side: the plan drops the indexes once and records
their definitions with the run, each partition streams its range in a
transaction of its own (``stream_partition``), and the load checks, rebuilds
and accounts once (``load_partitioned``). See the section near the end.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from include.migration import db, images, runs
from include.migration import load as load_mod
from include.migration.abandoned import LOCK_SPACE as LIVENESS_LOCK_SPACE
from include.migration.accounting import AccountingMismatch
from include.migration.entities import ENTITIES, Entity
from include.migration.extract import (
    Scope,
    attach_partition,
    create_stage,
    index_stage,
    legacy_encoding,
    scope_condition,
    stage_name,
    transform_query,
)
from include.migration.load import stage_ident, target_ident

log = logging.getLogger(__name__)

# load_progress of a run whose direct load has committed.
DONE = "direct"
SIGNATURE, TRAILER = db.BINARY_SIGNATURE, db.BINARY_TRAILER
HEADER = SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"  # no flags, no header extension
FLUSH_BYTES = 1 << 20
PG_EPOCH = datetime(2000, 1, 1)
NO_TIMESTAMP = -(1 << 63)  # timestamp '-infinity' on the wire
LOCK_TIMEOUT_ENV = "MIGRATION_DIRECT_LOCK_TIMEOUT"


class FramingError(RuntimeError):
    """The COPY stream did not arrive as one row per message (it always does on PostgreSQL 9.4+)."""


# ---------------------------------------------------------------------------
# When


def eligibility(dest: psycopg.Connection, entity: Entity) -> str | None:
    """None when a full run of ``entity`` may load directly; otherwise why not (one line)."""
    if not entity.plain:
        return "its rows need more than one COPY (Auth accounts, files)"
    target = f"{entity.schema_name}.{entity.target_table}"
    row = dest.execute(
        "SELECT c.relkind, pg_has_role(c.relowner, 'USAGE'), c.relreplident FROM pg_class c "
        "WHERE c.oid = to_regclass(%s)", (target,)).fetchone()
    if row is None:
        return f"{target} does not exist"
    problem = _table_problem(dest, target, *row)
    if problem:
        return problem
    types = dict(dest.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = to_regclass(%s) "
        "AND attnum > 0 AND NOT attisdropped", (target,)).fetchall())
    canonical = dest.execute("SELECT array_agg(format_type(t::regtype, NULL) ORDER BY n) "
                             "FROM unnest(%s::text[]) WITH ORDINALITY AS u (t, n)",
                             ([typ for _, typ in entity.columns],)).fetchone()[0]
    for (name, typ), wanted in zip(entity.columns, canonical, strict=True):
        if types.get(name) != wanted:
            return f"{target}.{name} is {types.get(name) or 'missing'}, the mapping writes {typ}"
    if dest.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(target_ident(entity))).fetchone()[0]:
        return f"{target} already holds rows"
    try:
        with dest.transaction():
            dest.execute("SET LOCAL session_replication_role = replica")
    except psycopg.errors.InsufficientPrivilege:
        return "the migration role may not set session_replication_role"
    return None


def _table_problem(dest: psycopg.Connection, target: str, relkind: str, owner: bool, replident: str) -> str | None:
    """What about the table itself (kind, ownership) forbids a direct load, or None."""
    if relkind != "r":
        return f"{target} is not a plain table"
    if not owner:
        return f"the migration role does not own {target} (it must drop and rebuild its indexes)"
    if replident == "i":
        return f"{target} uses an index as its replica identity"
    referrers = dest.execute(
        "SELECT conrelid::regclass::text FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid "
        "WHERE c.contype = 'f' AND c.confrelid = to_regclass(%s) AND NOT pg_has_role(r.relowner, 'USAGE')",
        (target,)).fetchall()
    if referrers:
        return f"the migration role does not own {referrers[0][0]}, whose foreign key points at {target}"
    return None


# ---------------------------------------------------------------------------
# The legacy query


def side_query(entity: Entity, encoding: str | None = None, scope: Scope | None = None) -> sql.Composed:
    """The transform, every row led by the control columns and its side field
    (see the module's docstring and ``relay``). ``encoding``: see ``extract.transform_query``;
    ``scope``: every row (a full run), or a partition's key range."""
    plain = sql.SQL("t._disposition = 'loaded' AND cardinality(t._repairs) = 0")
    return sql.SQL(
        "SELECT {control}, CASE WHEN {plain} "
        "THEN timestamp_send(coalesce(t._change_ts::timestamp, '-infinity')) || int2send({fields}::int2) "
        "ELSE '\\x53'::bytea END, {cols} FROM ({transform}) t"
    ).format(
        control=sql.SQL(", ").join(sql.SQL("CASE WHEN {} THEN NULL ELSE t.{}::{} END").format(
            plain, sql.Identifier(c), sql.SQL(typ)) for c, typ in control_columns(entity)),
        plain=plain, fields=sql.Literal(len(entity.columns)),
        cols=sql.SQL(", ").join(sql.SQL("t.{}::{}").format(sql.Identifier(n), sql.SQL(typ))
                                for n, typ in entity.columns),
        transform=transform_query(entity, scope or Scope(kind="all"), encoding=encoding),
    )


def control_columns(entity: Entity) -> list[tuple[str, str]]:
    return [(c, t) for c, t in entity.stage_columns if c not in entity.column_names]


# ---------------------------------------------------------------------------
# The relay


@dataclass
class Relayed:
    loaded: int = 0
    side: int = 0
    bytes: int = 0
    max_change_us: int = NO_TIMESTAMP

    @property
    def max_change_ts(self) -> datetime | None:
        if self.max_change_us == NO_TIMESTAMP:
            return None
        return PG_EPOCH + timedelta(microseconds=self.max_change_us)


def relay(rows: Any, into: Any, spool: Any, fields: int, control: int) -> Relayed:
    """Copy the side query's binary rows: ``L`` rows into ``into`` without their
    control and side fields, ``S`` rows whole into ``spool``. ``fields``: the
    destination's column count; ``control``: the control columns' count.

    An ``L`` row is [field count][control: NULL each, 4 bytes][side: length 10,
    change timestamp (8 bytes), ``fields`` (2 bytes)][the destination's fields].
    The side's last 2 bytes are the field count the destination expects, so the
    row minus its first ``skip`` bytes is exactly the destination's row. An
    ``S`` row's first control column (the disposition) is never NULL. The loop
    runs once per row; keep it lean.
    """
    rows = iter(rows)
    first = _after_header(next(rows, b""))
    out = bytearray(HEADER)
    spool.write(HEADER)
    count = (fields + control + 1).to_bytes(2, "big")
    l_head = count + b"\xff\xff\xff\xff" * control + (10).to_bytes(4, "big")
    ts_at = len(l_head)
    skip = ts_at + 8
    top_us = NO_TIMESTAMP  # the largest change timestamp seen (microseconds since 2000)
    from_bytes = int.from_bytes
    loaded = side = total = 0
    ended = False
    for block in itertools.chain([first] if first else [], rows):
        if block[:ts_at] == l_head:
            value = from_bytes(block[ts_at:skip], "big", signed=True)
            if value > top_us:
                top_us = value
            out += block[skip:]
            loaded += 1
            if len(out) >= FLUSH_BYTES:
                total += len(out)
                into.write(out)
                out = bytearray()
        elif block[:2] == count:
            spool.write(block)
            side += 1
        elif block == TRAILER:
            ended = True
            break
        else:
            raise FramingError(f"a legacy COPY message that is not one row of {fields + control + 1} fields")
    if not ended:
        raise FramingError("the legacy COPY stream ended without its trailer")
    for _ in rows:
        raise FramingError("data after the end of the legacy COPY stream")
    out += TRAILER
    total += len(out)
    into.write(out)
    spool.write(TRAILER)
    return Relayed(loaded=loaded, side=side, bytes=total, max_change_us=top_us)


def _after_header(message: Any) -> bytes:
    """The first message without the binary COPY header (PostgreSQL sends the first row with it)."""
    message = bytes(message)
    if message[:11] != SIGNATURE:
        raise FramingError("the legacy COPY stream does not start with the binary COPY signature")
    extension = int.from_bytes(message[15:19], "big")
    return message[19 + extension:]


# ---------------------------------------------------------------------------
# Indexes and constraints: dropped before the stream, built after it


@dataclass
class Detached:
    """What was dropped, and the statements that put it back: the table's own indexes
    and constraints (``rebuilds``), then the foreign keys that point at it (``referrers``)."""

    drops: list[sql.Composable]
    rebuilds: list[sql.Composable]
    referrers: list[sql.Composable]
    names: list[str]

    def record(self, conn: psycopg.Connection) -> dict[str, Any]:
        """The statements as text, for a run's report: whoever finds them there can put them back."""
        return {"rebuilds": [s.as_string(conn) for s in self.rebuilds],
                "referrers": [s.as_string(conn) for s in self.referrers], "names": self.names}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Detached:
        return cls([], [sql.SQL(s) for s in record["rebuilds"]], [sql.SQL(s) for s in record["referrers"]],
                   list(record["names"]))


def detach(dest: psycopg.Connection, entity: Entity) -> Detached:
    target = f"{entity.schema_name}.{entity.target_table}"
    ident = target_ident(entity)
    drops: list[sql.Composable] = []
    rebuilds_fk: list[sql.Composable] = []
    rebuilds: list[sql.Composable] = []
    names: list[str] = []
    # Foreign keys that point at the table (they depend on its primary key).
    for conname, schema, table, definition in dest.execute(
            "SELECT c.conname, n.nspname, r.relname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
            "JOIN pg_class r ON r.oid = c.conrelid JOIN pg_namespace n ON n.oid = r.relnamespace "
            "WHERE c.contype = 'f' AND c.confrelid = to_regclass(%s) ORDER BY c.conname", (target,)).fetchall():
        table_ident = sql.Identifier(schema, table)
        drops.append(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(table_ident, sql.Identifier(conname)))
        rebuilds_fk.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
            table_ident, sql.Identifier(conname), sql.SQL(definition)))
        names.append(f"{schema}.{table}.{conname}")
    # Constraints backed by an index (primary key, unique, exclusion).
    for conname, definition in dest.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = to_regclass(%s) "
            "AND contype IN ('p', 'u', 'x') ORDER BY contype, conname", (target,)).fetchall():
        drops.append(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(ident, sql.Identifier(conname)))
        rebuilds.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
            ident, sql.Identifier(conname), sql.SQL(definition)))
        names.append(conname)
    # Plain indexes.
    for index, definition in dest.execute(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "WHERE i.indrelid = to_regclass(%s) AND NOT EXISTS "
            "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid) "
            "ORDER BY 1", (target,)).fetchall():
        name = index.split(".")[-1].strip('"')
        drops.append(sql.SQL("DROP INDEX {}").format(sql.Identifier(entity.schema_name, name)))
        rebuilds.append(sql.SQL(definition))
        names.append(name)
    return Detached(drops, rebuilds, rebuilds_fk, names)


def _lock_timeout(dest: psycopg.Connection) -> str:
    timeout = os.environ.get(LOCK_TIMEOUT_ENV) or "60s"
    dest.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(timeout)))
    return timeout


def _lock(dest: psycopg.Connection, entity: Entity, timeout: str, *, mode: str = "ACCESS EXCLUSIVE",
          parents: bool = False) -> None:
    """Lock the table (``mode``) and, with ``parents``, its parents (``SHARE``): they stay put while
    this transaction runs, so nothing deletes a row the checks found, as the foreign-key
    triggers would ensure."""
    try:
        for ref in entity.parents if parents else ():
            dest.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(target_ident(ENTITIES[ref.parent])))
        dest.execute(sql.SQL("LOCK TABLE {} IN {} MODE").format(target_ident(entity), sql.SQL(mode)))
    except psycopg.errors.LockNotAvailable:
        raise RuntimeError(
            f"{entity.name}: the direct load waited {timeout} for its table locks ({entity.target_table}"
            f"{' and its parents' if parents else ''}) and gave up; another session is using them. Nothing was "
            "written; retry.") from None


def _refuse_rows(dest: psycopg.Connection, entity: Entity) -> None:
    if dest.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(target_ident(entity))).fetchone()[0]:
        raise RuntimeError(
            f"{entity.name}: {entity.schema_name}.{entity.target_table} was empty when this run was planned but "
            "now holds rows (another run loaded it). Nothing was written. Clear this DAG run from its plan "
            "task: it will stage and merge.")


def _drop(dest: psycopg.Connection, entity: Entity, timeout: str) -> Detached:
    """Drop the table's indexes and constraints and the foreign keys pointing at it; returns them."""
    detached = detach(dest, entity)
    try:
        for statement in detached.drops:  # a foreign key into the table also locks its own table
            dest.execute(statement)
    except psycopg.errors.LockNotAvailable:
        raise RuntimeError(
            f"{entity.name}: the direct load waited {timeout} for a table whose foreign key points at "
            f"{entity.target_table} ({', '.join(detached.names)}) and gave up; another session is using it. "
            "Nothing was written; retry.") from None
    return detached


def take_empty_table(dest: psycopg.Connection, entity: Entity) -> Detached:
    """In ``dest``'s transaction: lock the table (``ACCESS EXCLUSIVE``) and its parents
    (``SHARE``), make sure it is still empty, turn the per-row triggers off, drop its indexes
    and constraints (returned, to rebuild), and empty it again so a ``COPY`` may freeze its rows."""
    timeout = _lock_timeout(dest)
    _lock(dest, entity, timeout, parents=True)
    _refuse_rows(dest, entity)
    dest.execute("SET LOCAL session_replication_role = replica")
    dest.execute("SET LOCAL maintenance_work_mem = '256MB'")
    detached = _drop(dest, entity, timeout)
    # Emptied again in this transaction (it is empty: checked above, under the lock), so
    # the COPY may write its rows frozen: no later read has to set each row's hint bits
    # (at 3 M rows the first count(*) after the load took 8 s doing that). Like any
    # COPY FREEZE, the rows are visible at once to transactions that began before the
    # commit; nobody reads this table's empty state while the migration runs.
    dest.execute(sql.SQL("TRUNCATE {}").format(target_ident(entity)))
    return detached


def rebuild(dest: psycopg.Connection, entity: Entity, detached: Detached, *, own: bool = True,
            referrers: bool = True) -> float:
    """Put back what was dropped (the table's own indexes and constraints, the foreign keys
    pointing at it, or both); returns the seconds it took."""
    started = time.perf_counter()
    statements = (detached.rebuilds if own else []) + (detached.referrers if referrers else [])
    for statement in statements:
        dest.execute(statement)
    seconds = time.perf_counter() - started
    log.info("%s: rebuilt %d indexes and constraints (%s) in %.2f s", entity.name, len(statements),
             ", ".join(detached.names), seconds)
    return seconds


# ---------------------------------------------------------------------------
# The stream


@dataclass
class Streamed:
    relayed: Relayed
    source_rows: int
    snapshot_at: datetime
    seconds: float  # the stream, from the legacy snapshot to its last row
    unspool_seconds: float


def stream(legacy_dsn: str, dest: psycopg.Connection, entity: Entity, stage_table: str, scope: Scope, *,
           freeze: bool) -> Streamed:
    """In ``dest``'s transaction: the legacy transform of ``scope`` relayed, its plain rows by
    binary ``COPY`` into the table (``freeze``: the table was emptied in this transaction), its
    side rows into ``stage_table``; with the source's row count of the scope, read in the
    stream's snapshot."""
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in entity.column_names)
    options = sql.SQL("FORMAT BINARY, FREEZE" if freeze else "FORMAT BINARY")
    started = time.perf_counter()
    with db.connection(legacy_dsn, application="migration-direct") as src, \
            tempfile.TemporaryFile(prefix="migration-side-") as spool:
        src.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        src.read_only = True
        snapshot_at = src.execute("SELECT now()").fetchone()[0]
        db.tune_legacy(src)
        with src.cursor() as rcur, dest.cursor() as wcur:
            with rcur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(
                    side_query(entity, legacy_encoding(src), scope))) as rows, \
                    wcur.copy(sql.SQL("COPY {} ({}) FROM STDIN ({})").format(
                        target_ident(entity), columns, options)) as into:
                relayed = relay(db.copy_rows(rows), into, spool, len(entity.columns), len(control_columns(entity)))
        source_rows = src.execute(sql.SQL("SELECT count(*) FROM {} {} WHERE {}").format(
            sql.Identifier("public", entity.source_table), sql.Identifier(entity.alias),
            scope_condition(entity, scope))).fetchone()[0]
        src.commit()
        seconds = time.perf_counter() - started
        spool.seek(0)
        mark = time.perf_counter()
        _unspool(dest, entity, stage_table, spool)
    return Streamed(relayed, source_rows, snapshot_at, seconds, time.perf_counter() - mark)


# ---------------------------------------------------------------------------
# The load


def load(conns: Any, dest: psycopg.Connection, entity: Entity, run: runs.Run) -> dict[str, Any]:
    """Stream, check, index, ledger; commit once. ``dest`` holds the entity's lock.
    Returns the direct load's figures (also stored in the run's counts)."""
    assert run.stage_table is not None
    started = time.perf_counter()
    detached = take_empty_table(dest, entity)
    streamed = stream(conns.legacy, dest, entity, run.stage_table, Scope(kind="all"), freeze=True)
    relayed = streamed.relayed
    log.info("%s: streamed %s rows from %s in %.2f s (%s rows/s, %.1f MB): %s straight into %s, %s to the "
             "stage (excluded, quarantined or repaired)", entity.name, f"{relayed.loaded + relayed.side:,}",
             db.describe(conns.legacy), streamed.seconds,
             f"{int((relayed.loaded + relayed.side) / streamed.seconds):,}" if streamed.seconds else "-",
             relayed.bytes / 1e6, f"{relayed.loaded:,}", f"{entity.schema_name}.{entity.target_table}",
             f"{relayed.side:,}")
    steps = {"stream": streamed.seconds, "unspool": streamed.unspool_seconds}
    moved, repaired, repairs = _destination_checks(dest, entity, run.stage_table, steps)
    steps["index builds"] = rebuild(dest, entity, detached)
    _ledgers(dest, entity, run, steps)
    images.record_insert_range(dest, run.run_id, entity.schema_name, entity.target_table, None, None)
    inserted = relayed.loaded - moved + repaired
    figures = {"streamed_loaded": relayed.loaded - moved, "streamed_side": relayed.side,
               "moved_to_quarantine": moved, "repaired_loaded": repaired, "bytes": relayed.bytes,
               "max_change_ts": relayed.max_change_ts.isoformat() if relayed.max_change_ts else None,
               "steps": {k: round(v, 3) for k, v in steps.items()}, "rebuilt": detached.names}
    seconds = time.perf_counter() - started
    runs.update(dest, run.run_id, load_progress=DONE, stage_rows=relayed.loaded + relayed.side,
                source_rows=streamed.source_rows,
                counts={"direct": figures, "extract_seconds": streamed.seconds,
                        "load": {"inserted": inserted, "updated": 0, "deleted": 0, "chunks": 1,
                                 "load_seconds": round(seconds, 3)}},
                report={"extracted_at": streamed.snapshot_at.isoformat(), "repaired": repairs})
    dest.commit()
    log.info("%s: direct load committed: %s rows inserted in %.2f s (%s)", entity.name, f"{inserted:,}", seconds,
             ", ".join(f"{k} {v:.2f} s" for k, v in steps.items()))
    return figures


def _destination_checks(dest: psycopg.Connection, entity: Entity, stage_table: str,
                        steps: dict[str, float]) -> tuple[int, int, dict[str, int]]:
    """The destination's own checks, first on the staged side rows, then set-based on the
    streamed ones (per-row triggers still off); the repaired rows loaded from the stage.
    Returns (streamed rows moved to quarantine, repaired rows loaded, repairs by kind)."""
    mark = time.perf_counter()
    load_mod.check_stage(dest, entity, stage_table, commit=False)
    moved = _quarantine_orphans(dest, entity, stage_table)
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in entity.column_names)
    repaired = dest.execute(sql.SQL(
        "INSERT INTO {target} ({cols}) SELECT {cols} FROM {stage} WHERE _disposition = 'loaded'").format(
        target=target_ident(entity), cols=columns, stage=stage_ident(stage_table))).rowcount
    dest.execute("SET LOCAL session_replication_role = origin")
    steps["destination checks"] = time.perf_counter() - mark
    repairs = load_mod.repair_counts(dest, stage_table)
    log.info("%s: destination checks: %d streamed rows quarantined (parent not in the destination); %d repaired "
             "rows loaded from the stage; repaired: %s", entity.name, moved, repaired,
             ", ".join(f"{k} {v}" for k, v in repairs.items()) or "none")
    return moved, repaired, repairs


def _ledgers(dest: psycopg.Connection, entity: Entity, run: runs.Run, steps: dict[str, float]) -> None:
    assert run.stage_table is not None
    mark = time.perf_counter()
    load_mod.record_ledgers(dest, entity, run.stage_table, run.run_id, large_stage=False)
    _clean_ledgers(dest, entity, run.stage_table)
    steps["ledgers"] = time.perf_counter() - mark


# ---------------------------------------------------------------------------
# A partitioned backfill: each partition streams its key range straight into the table
#
# The plan drops the table's indexes and constraints once, and keeps their definitions in
# the run's report (``report.detached``). Each partition, in one transaction, streams its
# range as the direct load does (plain rows into the table, side rows into its own stage)
# and records its counts; a partition that fails leaves nothing, and its retry finds its
# counts when it had committed. The load checks the streamed rows, puts the indexes back and
# goes on as a direct load does. A run that never gets to its load leaves the definitions
# behind: the next run's plan puts them back (``reattach_pending``), and so does a rollback
# (``undo_detached``), which also empties the table.


def detach_for_partitions(dest: psycopg.Connection, entity: Entity, run_id: str) -> Detached:
    """At the plan, in ``dest``'s transaction (the caller commits): drop the empty table's
    indexes and constraints once, for every partition's stream, and record how to put them
    back in the run's report. The table was empty: its before-image is the whole key range,
    so a rollback of the run empties it."""
    timeout = _lock_timeout(dest)
    _lock(dest, entity, timeout)
    _refuse_rows(dest, entity)
    detached = _drop(dest, entity, timeout)
    dest.execute("UPDATE migration.runs SET report = (report - 'reattached') || jsonb_build_object('detached', "
                 "%s::jsonb) WHERE run_id = %s", (Jsonb(detached.record(dest)), run_id))
    if not dest.execute("SELECT EXISTS (SELECT 1 FROM migration.before_images WHERE run_id = %s AND "
                        "op = 'insert_range')", (run_id,)).fetchone()[0]:
        images.record_insert_range(dest, run_id, entity.schema_name, entity.target_table, None, None)
    log.info("%s: dropped %d indexes and constraints of %s.%s for the partitions' streams (%s); their "
             "definitions are kept with run %s until the load puts them back", entity.name, len(detached.names),
             entity.schema_name, entity.target_table, ", ".join(detached.names), run_id)
    return detached


def pending(run: runs.Run) -> dict[str, Any] | None:
    """What a run dropped and nobody has put back yet (its record), or None."""
    if "detached" in run.report and "reattached" not in run.report:
        return run.report["detached"]
    return None


def _mark_reattached(dest: psycopg.Connection, run_id: str, by: str) -> None:
    runs.update(dest, run_id, report={"reattached": {"by": by, "at": datetime.now(UTC).isoformat()}})


def reattach_pending(dest: psycopg.Connection, entity: Entity, current_run_id: str) -> list[str]:
    """Put back the indexes and constraints that a run of ``entity`` dropped for its partitions
    and never put back (it failed, died or was abandoned before its load); commits each.
    ``current_run_id``: the run planning now (its own earlier plan counts too). A run with a
    step working right now is left alone, and this refuses. Returns the runs it repaired."""
    found = dest.execute(
        "SELECT run_id, report->'detached', migration.advisory_lock_held(%s, run_id) FROM migration.runs "
        "WHERE entity = %s AND report ? 'detached' AND NOT report ? 'reattached' ORDER BY started_at",
        (LIVENESS_LOCK_SPACE, entity.name)).fetchall()
    dest.commit()
    repaired = []
    for run_id, record, alive in found:
        if alive and run_id != current_run_id:
            raise RuntimeError(
                f"{entity.name}: run {run_id} dropped the indexes of {entity.schema_name}.{entity.target_table} "
                "for its partitions and is working now; nothing was done. Let it finish (its load puts them "
                "back), or stop it, then rerun.")
        timeout = _lock_timeout(dest)
        _lock(dest, entity, timeout)
        rebuild(dest, entity, Detached.from_record(record))
        _mark_reattached(dest, run_id, f"the plan of {current_run_id}")
        dest.commit()
        repaired.append(run_id)
        log.warning("%s: run %s had dropped the indexes and constraints of %s.%s for its partitions and did not "
                    "get to its load: put back from its record (%s). The rows its partitions committed stay, "
                    "with their before-images; this run merges over them.", entity.name, run_id,
                    entity.schema_name, entity.target_table, ", ".join(record["names"]))
    return repaired


def undo_detached(dest: psycopg.Connection, run_ids: list[str], by: str) -> list[tuple[Entity, Detached, int]]:
    """For a rollback, in its transaction, before it restores the before-images: every run of
    ``run_ids`` that dropped a table's indexes and did not put them back left only its own rows
    in that table (it was empty): empty it and put back its own indexes and constraints. The
    foreign keys pointing at it go back after the before-images (``restore_referrers``), once
    the rows referring to it are gone too. Returns (entity, what it dropped, rows removed)."""
    out = []
    for run_id, entity_name, record in dest.execute(
            "SELECT run_id, entity, report->'detached' FROM migration.runs WHERE run_id = ANY(%s) "
            "AND report ? 'detached' AND NOT report ? 'reattached'", (run_ids,)).fetchall():
        entity = ENTITIES[entity_name]
        detached = Detached.from_record(record)
        timeout = _lock_timeout(dest)
        _lock(dest, entity, timeout)
        emptied = dest.execute(sql.SQL("DELETE FROM {}").format(target_ident(entity))).rowcount
        rebuild(dest, entity, detached, referrers=False)
        _mark_reattached(dest, run_id, by)
        log.warning("%s: run %s had dropped the indexes of %s.%s for its partitions and not put them back: "
                    "%d rows its partitions streamed removed, the indexes put back", entity.name, run_id,
                    entity.schema_name, entity.target_table, emptied)
        out.append((entity, detached, emptied))
    return out


def restore_referrers(dest: psycopg.Connection, undone: list[tuple[Entity, Detached, int]]) -> None:
    for entity, detached, _ in undone:
        rebuild(dest, entity, detached, own=False)


def stream_partition(conns: Any, entity: Entity, run: runs.Run, part: dict[str, Any]) -> dict[str, Any]:
    """One partition of a partitioned run into the empty table, in one transaction: its key
    range's plain rows into the table, its side rows into its own stage (a child of the run's),
    and its counts in the run's record. Returns its counts; when it had committed before (a
    retry), returns them as recorded and writes nothing."""
    partition = part["partition"]
    label = f"{entity.name} partition {partition + 1}/{part['of']}"
    scope = Scope(kind="all", key_range=tuple(part["key_range"]))
    stage = stage_name(run.run_id, partition)
    target = f"{entity.schema_name}.{entity.target_table}"
    started = time.perf_counter()
    with db.connection(conns.dest, application="migration-partition") as dest:
        # One attempt of a partition at a time, whatever Airflow does.
        dest.execute("SELECT pg_advisory_xact_lock(hashtext(%s), %s)", (run.run_id, partition))
        timeout = _lock_timeout(dest)
        # Partitions write side by side (ROW EXCLUSIVE); the load, or another run's plan
        # putting the indexes back, takes the table whole and waits for them.
        _lock(dest, entity, timeout, mode="ROW EXCLUSIVE")
        record, done = dest.execute(
            "SELECT CASE WHEN report ? 'reattached' THEN NULL ELSE report->'detached' END, "
            "counts->'partitions'->%s FROM migration.runs WHERE run_id = %s", (str(partition), run.run_id)).fetchone()
        if done is not None:
            dest.rollback()
            log.info("%s: committed before (%s rows streamed into %s, %s side rows); nothing to do", label,
                     f"{done['streamed']:,}", target, f"{done['side']:,}")
            return done
        if record is None:
            raise RuntimeError(
                f"{label}: the indexes this run dropped from {target} were put back (another run's plan or a "
                "rollback found it unfinished); nothing was written. Clear this DAG run from its plan task.")
        dest.execute("SET LOCAL session_replication_role = replica")
        create_stage(dest, entity, stage)
        streamed = stream(conns.legacy, dest, entity, stage, scope, freeze=False)
        relayed = streamed.relayed
        if streamed.source_rows != relayed.loaded + relayed.side:
            raise AccountingMismatch(
                f"{label}: the source has {streamed.source_rows} rows in this range but {relayed.loaded} were "
                f"streamed and {relayed.side} staged; nothing was written. Rerun; if it repeats, the transform "
                "SQL drops rows (a bug).")
        attach_partition(dest, stage_name(run.run_id), stage)
        seconds = time.perf_counter() - started
        figures = {"stage_table": stage, "rows": relayed.loaded + relayed.side, "streamed": relayed.loaded,
                   "side": relayed.side, "source_rows": streamed.source_rows, "seconds": round(seconds, 3),
                   "bytes": relayed.bytes, "extracted_at": streamed.snapshot_at.isoformat(),
                   "max_change_ts": relayed.max_change_ts.isoformat() if relayed.max_change_ts else None}
        runs.record_partition(dest, run.run_id, partition, figures)
        dest.commit()
    lo, hi = part["key_range"]
    log.info("%s: key range (%s, %s]: %s source rows, %s streamed into %s, %s side rows into stage %s, "
             "committed in %.2f s", label, "start" if lo is None else lo, "end" if hi is None else hi,
             f"{streamed.source_rows:,}", f"{relayed.loaded:,}", target, f"{relayed.side:,}", stage, seconds)
    return figures


def load_partitioned(dest: psycopg.Connection, entity: Entity, run: runs.Run) -> dict[str, Any]:
    """The load of a partitioned run into the empty table, whose partitions streamed their rows
    into it (``stream_partition``). One transaction, with the ledgers and the progress mark:
    the proof that the table holds every row the partitions streamed, the destination checks
    (on the side rows, set-based on the streamed ones), the indexes and constraints put back
    from the run's record. ``dest`` holds the entity's lock."""
    assert run.stage_table is not None
    record = pending(run)
    if record is None:
        raise RuntimeError(
            f"{entity.name}: the indexes run {run.run_id} dropped were put back before its load "
            f"({run.report.get('reattached', {}).get('by')}); nothing was written. Clear this DAG run from its "
            "plan task.")
    started = time.perf_counter()
    parts = [run.counts["partitions"][str(i)] for i in range(len(run.report["partitions"]))]
    timeout = _lock_timeout(dest)
    _lock(dest, entity, timeout, parents=True)
    dest.execute("SET LOCAL session_replication_role = replica")
    dest.execute("SET LOCAL maintenance_work_mem = '256MB'")
    streamed = sum(p["streamed"] for p in parts)
    present = dest.execute(sql.SQL("SELECT count(*) FROM {}").format(target_ident(entity))).fetchone()[0]
    target = f"{entity.schema_name}.{entity.target_table}"
    proof = " + ".join(f"{p['streamed']:,}" for p in parts) + (
        f" = {streamed:,} rows streamed by the {len(parts)} partitions, {present:,} rows in {target}")
    if present != streamed:
        raise AccountingMismatch(
            f"{entity.name}: the partitions' proof fails: {proof}; nothing was loaded. Another session changed the "
            f"table since the partitions streamed (a delete cascading from a parent, for one). Roll the run back "
            "(it empties the table and puts its indexes back) and run it again.")
    steps = {"proof": time.perf_counter() - started}
    moved, repaired, repairs = _destination_checks(dest, entity, run.stage_table, steps)
    detached = Detached.from_record(record)
    steps["index builds"] = rebuild(dest, entity, detached)
    _ledgers(dest, entity, run, steps)
    _mark_reattached(dest, run.run_id, "its load")
    changes = [p["max_change_ts"] for p in parts if p.get("max_change_ts")]
    inserted = streamed - moved + repaired
    figures = {"streamed_loaded": streamed - moved, "streamed_side": sum(p["side"] for p in parts),
               "moved_to_quarantine": moved, "repaired_loaded": repaired, "bytes": sum(p["bytes"] for p in parts),
               "max_change_ts": max(changes, key=datetime.fromisoformat) if changes else None,
               "steps": {k: round(v, 3) for k, v in steps.items()}, "rebuilt": detached.names,
               "partitions_streamed": [p["streamed"] for p in parts]}
    seconds = time.perf_counter() - started
    runs.update(dest, run.run_id, load_progress=DONE,
                counts={"direct": figures, "load": {"inserted": inserted, "updated": 0, "deleted": 0, "chunks": 1,
                                                    "load_seconds": round(seconds, 3)}},
                report={"repaired": repairs})
    dest.commit()
    log.info("%s: partitioned load committed in %.2f s: %d indexes and constraints rebuilt (%s) in %.2f s; proof: "
             "%s; then %d moved to quarantine, %d repaired rows loaded from the stage: %s rows inserted",
             entity.name, seconds, len(detached.names), ", ".join(detached.names), steps["index builds"], proof,
             moved, repaired, f"{inserted:,}")
    return figures


def _unspool(dest: psycopg.Connection, entity: Entity, stage_table: str, spool: Any) -> None:
    """The side rows into the stage."""
    control = control_columns(entity)
    side = sql.Identifier("migration_side")
    dest.execute(sql.SQL("CREATE TEMPORARY TABLE {} ({}, _side bytea, {}) ON COMMIT DROP").format(
        side, *(sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in columns)
                for columns in (control, entity.columns))))
    # Created in this transaction: its rows can go in frozen.
    with dest.cursor() as cur, cur.copy(sql.SQL("COPY {} FROM STDIN (FORMAT BINARY, FREEZE)").format(side)) as into:
        while block := spool.read(FLUSH_BYTES):
            into.write(block)
    names = sql.SQL(", ").join(sql.Identifier(c) for c, _ in entity.stage_columns)
    dest.execute(sql.SQL("INSERT INTO {stage} ({names}) SELECT {names} FROM {side}").format(
        stage=stage_ident(stage_table), names=names, side=side))
    dest.execute(sql.SQL("DROP TABLE {}").format(side))
    index_stage(dest, entity, stage_table)


def _quarantine_orphans(dest: psycopg.Connection, entity: Entity, stage_table: str) -> int:
    """Streamed rows whose parent is not in the destination move to the stage, quarantined
    (the staged path's ``check_stage`` rule, applied to the table). Returns how many."""
    moved = 0
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in entity.column_names)
    for ref in entity.parents:
        parent = ENTITIES[ref.parent]
        moved += dest.execute(sql.SQL(
            "WITH gone AS (DELETE FROM {target} t WHERE t.{col} IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM {parent} p WHERE p.{pkey} = t.{col}) RETURNING t.*) "
            "INSERT INTO {stage} ({cols}, _disposition, _reason, _repairs, _source) "
            "SELECT {cols}, 'quarantined', {reason}, '{{}}', to_jsonb(gone) FROM gone").format(
            target=target_ident(entity), col=sql.Identifier(ref.column), parent=target_ident(parent),
            pkey=sql.Identifier(parent.key), stage=stage_ident(stage_table), cols=cols,
            reason=sql.Literal(f"{ref.parent}_not_in_destination"))).rowcount
    if moved:
        log.warning("%s: %d streamed rows reference a parent the destination does not hold; quarantined",
                    entity.name, moved)
    return moved


def _clean_ledgers(dest: psycopg.Connection, entity: Entity, stage_table: str) -> None:
    """Ledger rows of keys that now load (streamed, so not in the stage), or that left the source."""
    key, typ = sql.Identifier(entity.key), sql.SQL(entity.key_type)
    for ledger in ("quarantine", "exclusions"):
        dest.execute(sql.SQL(
            "DELETE FROM migration.{ledger} q WHERE q.entity = {entity} AND ("
            "EXISTS (SELECT 1 FROM {target} t WHERE t.{key} = q.source_key::{typ}) OR NOT EXISTS "
            "(SELECT 1 FROM {stage} s WHERE s.{key} = q.source_key::{typ}))").format(
            ledger=sql.Identifier(ledger), entity=sql.Literal(entity.name), target=target_ident(entity), key=key,
            typ=typ, stage=stage_ident(stage_table)))
