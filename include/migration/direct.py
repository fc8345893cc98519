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

``load_stage`` is the same load for a run that has staged anyway (its extract
ran in partitions, side by side): the stage's loaded rows go into the empty
table in one ``COPY ... FREEZE`` between the same detach and rebuild.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from include.migration import db, images, runs
from include.migration import load as load_mod
from include.migration.entities import ENTITIES, Entity
from include.migration.extract import Scope, index_stage, legacy_encoding, transform_query
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


def side_query(entity: Entity, encoding: str | None = None) -> sql.Composed:
    """The transform, every row led by the control columns and its side field
    (see the module's docstring and ``relay``). ``encoding``: see ``extract.transform_query``."""
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
        transform=transform_query(entity, Scope(kind="all"), encoding=encoding),
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
    """What was dropped, and the statements that put it back (in order)."""

    drops: list[sql.Composable]
    rebuilds: list[sql.Composable]
    names: list[str]


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
    return Detached(drops, rebuilds + rebuilds_fk, names)


# ---------------------------------------------------------------------------
# The load


def take_empty_table(dest: psycopg.Connection, entity: Entity) -> Detached:
    """In ``dest``'s transaction: lock the table (``ACCESS EXCLUSIVE``) and its parents
    (``SHARE``), make sure it is still empty, turn the per-row triggers off, drop its indexes
    and constraints (returned, to rebuild), and empty it again so a ``COPY`` may freeze its rows."""
    target = target_ident(entity)
    timeout = os.environ.get(LOCK_TIMEOUT_ENV) or "60s"
    dest.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(timeout)))
    try:
        for ref in entity.parents:
            # The parents stay put while this transaction runs: nothing deletes a row
            # the checks below found, as the foreign-key triggers would ensure.
            dest.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(target_ident(ENTITIES[ref.parent])))
        dest.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(target))
    except psycopg.errors.LockNotAvailable:
        raise RuntimeError(
            f"{entity.name}: the direct load waited {timeout} for its table locks ({entity.target_table} and its "
            "parents) and gave up; another session is using them. Nothing was written; retry the load.") from None
    if dest.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(target)).fetchone()[0]:
        raise RuntimeError(
            f"{entity.name}: {entity.schema_name}.{entity.target_table} was empty when this run was planned but "
            "now holds rows (another run loaded it). Nothing was written. Clear this DAG run from its plan "
            "task: it will stage and merge.")
    dest.execute("SET LOCAL session_replication_role = replica")
    dest.execute("SET LOCAL maintenance_work_mem = '256MB'")
    detached = detach(dest, entity)
    try:
        for statement in detached.drops:  # a foreign key into the table also locks its own table
            dest.execute(statement)
    except psycopg.errors.LockNotAvailable:
        raise RuntimeError(
            f"{entity.name}: the direct load waited {timeout} for a table whose foreign key points at "
            f"{entity.target_table} ({', '.join(detached.names)}) and gave up; another session is using it. "
            "Nothing was written; retry the load.") from None
    # Emptied again in this transaction (it is empty: checked above, under the lock), so
    # the COPY may write its rows frozen: no later read has to set each row's hint bits
    # (at 3 M rows the first count(*) after the load took 8 s doing that). Like any
    # COPY FREEZE, the rows are visible at once to transactions that began before the
    # commit; nobody reads this table's empty state while the migration runs.
    dest.execute(sql.SQL("TRUNCATE {}").format(target))
    return detached


def rebuild(dest: psycopg.Connection, entity: Entity, detached: Detached) -> float:
    """Put back what ``take_empty_table`` dropped; returns the seconds it took."""
    started = time.perf_counter()
    for statement in detached.rebuilds:
        dest.execute(statement)
    seconds = time.perf_counter() - started
    log.info("%s: rebuilt %d indexes and constraints (%s) in %.2f s", entity.name, len(detached.names),
             ", ".join(detached.names), seconds)
    return seconds


def load(conns: Any, dest: psycopg.Connection, entity: Entity, run: runs.Run) -> dict[str, Any]:
    """Stream, check, index, ledger; commit once. ``dest`` holds the entity's lock.
    Returns the direct load's figures (also stored in the run's counts)."""
    assert run.stage_table is not None
    started = time.perf_counter()
    target = target_ident(entity)
    fields = len(entity.columns)
    detached = take_empty_table(dest, entity)
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in entity.column_names)
    stream_started = time.perf_counter()
    with db.connection(conns.legacy, application="migration-direct") as src, \
            tempfile.TemporaryFile(prefix="migration-side-") as spool:
        src.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        src.read_only = True
        snapshot_at = src.execute("SELECT now()").fetchone()[0]
        db.tune_legacy(src)
        with src.cursor() as rcur, dest.cursor() as wcur:
            with rcur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(
                    side_query(entity, legacy_encoding(src)))) as rows, \
                    wcur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY, FREEZE)").format(
                        target, columns)) as into:
                relayed = relay(db.copy_rows(rows), into, spool, fields, len(control_columns(entity)))
        source_rows = src.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier("public", entity.source_table))).fetchone()[0]
        src.commit()
        stream_seconds = time.perf_counter() - stream_started
        log.info("%s: streamed %s rows from %s in %.2f s (%s rows/s, %.1f MB): %s straight into %s, %s to the "
                 "stage (excluded, quarantined or repaired)", entity.name, f"{relayed.loaded + relayed.side:,}",
                 db.describe(conns.legacy), stream_seconds,
                 f"{int((relayed.loaded + relayed.side) / stream_seconds):,}" if stream_seconds else "-",
                 relayed.bytes / 1e6, f"{relayed.loaded:,}", f"{entity.schema_name}.{entity.target_table}",
                 f"{relayed.side:,}")
        spool.seek(0)
        mark = time.perf_counter()
        _unspool(dest, entity, run.stage_table, spool)
        steps = {"stream": stream_seconds, "unspool": time.perf_counter() - mark}
    # The destination's own checks: first on the staged rows, then on the streamed ones.
    mark = time.perf_counter()
    load_mod.check_stage(dest, entity, run.stage_table, commit=False)
    moved = _quarantine_orphans(dest, entity, run.stage_table)
    repaired = dest.execute(sql.SQL(
        "INSERT INTO {target} ({cols}) SELECT {cols} FROM {stage} WHERE _disposition = 'loaded'").format(
        target=target, cols=columns, stage=stage_ident(run.stage_table))).rowcount
    dest.execute("SET LOCAL session_replication_role = origin")
    steps["destination checks"] = time.perf_counter() - mark
    repairs = load_mod.repair_counts(dest, run.stage_table)
    log.info("%s: destination checks: %d streamed rows quarantined (parent not in the destination); %d repaired "
             "rows loaded from the stage; repaired: %s", entity.name, moved, repaired,
             ", ".join(f"{k} {v}" for k, v in repairs.items()) or "none")
    steps["index builds"] = rebuild(dest, entity, detached)
    mark = time.perf_counter()
    load_mod.record_ledgers(dest, entity, run.stage_table, run.run_id)
    _clean_ledgers(dest, entity, run.stage_table)
    images.record_insert_range(dest, run.run_id, entity.schema_name, entity.target_table, None, None)
    steps["ledgers"] = time.perf_counter() - mark
    inserted = relayed.loaded - moved + repaired
    figures = {"streamed_loaded": relayed.loaded - moved, "streamed_side": relayed.side,
               "moved_to_quarantine": moved, "repaired_loaded": repaired, "bytes": relayed.bytes,
               "max_change_ts": relayed.max_change_ts.isoformat() if relayed.max_change_ts else None,
               "steps": {k: round(v, 3) for k, v in steps.items()}, "rebuilt": detached.names}
    seconds = time.perf_counter() - started
    runs.update(dest, run.run_id, load_progress=DONE, stage_rows=relayed.loaded + relayed.side,
                source_rows=source_rows,
                counts={"direct": figures, "extract_seconds": stream_seconds,
                        "load": {"inserted": inserted, "updated": 0, "deleted": 0, "chunks": 1,
                                 "load_seconds": round(seconds, 3)}},
                report={"extracted_at": snapshot_at.isoformat(), "repaired": repairs})
    dest.commit()
    log.info("%s: direct load committed: %s rows inserted in %.2f s (%s)", entity.name, f"{inserted:,}", seconds,
             ", ".join(f"{k} {v:.2f} s" for k, v in steps.items()))
    return figures


def load_stage(conns: Any, dest: psycopg.Connection, entity: Entity, run: runs.Run) -> dict[str, Any]:
    """A staged run into an empty table (a partitioned backfill): the stage's loaded rows go
    into the table the way a direct load's stream does, by one binary ``COPY ... FREEZE``
    with the table's indexes and constraints dropped and rebuilt after, instead of a merge
    chunk by chunk. ``dest`` holds the entity's lock; the transform has already checked the
    staged rows against the destination. One transaction with the ledgers and the progress
    mark: a failure leaves the table empty, and the retry loads again."""
    assert run.stage_table is not None
    started = time.perf_counter()
    target, stage = target_ident(entity), stage_ident(run.stage_table)
    detached = take_empty_table(dest, entity)
    steps = {"lock and detach": time.perf_counter() - started}
    mark = time.perf_counter()
    load_mod.record_ledgers(dest, entity, run.stage_table, run.run_id)
    steps["ledgers"] = time.perf_counter() - mark
    mark = time.perf_counter()
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in entity.column_names)
    # The stage is read by a second session: this one is writing the table, in its transaction.
    with db.connection(conns.dest, application="migration-bulk") as reader, \
            reader.cursor() as rcur, dest.cursor() as wcur:
        reader.read_only = True
        with rcur.copy(sql.SQL("COPY (SELECT {cols} FROM {stage} WHERE _disposition = 'loaded') TO STDOUT "
                               "(FORMAT BINARY)").format(cols=columns, stage=stage)) as rows, \
                wcur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY, FREEZE)").format(target, columns)) as into:
            copied = db.relay_copy(rows, into, FLUSH_BYTES)
        inserted = wcur.rowcount
        reader.rollback()
    steps["copy"] = time.perf_counter() - mark
    mark = time.perf_counter()
    # The transform checked the staged rows against the destination; the parents are
    # locked (SHARE) since before the copy, so this finds a parent that left in between.
    load_mod.check_parents(dest, entity, None, None, lock=False)
    steps["destination checks"] = time.perf_counter() - mark
    steps["index builds"] = rebuild(dest, entity, detached)
    images.record_insert_range(dest, run.run_id, entity.schema_name, entity.target_table, None, None)
    seconds = time.perf_counter() - started
    figures = {"inserted": inserted, "bytes": copied, "steps": {k: round(v, 3) for k, v in steps.items()},
               "rebuilt": detached.names}
    runs.update(dest, run.run_id, load_progress=DONE,
                counts={"bulk": figures, "load": {"inserted": inserted, "updated": 0, "deleted": 0, "chunks": 1,
                                                  "load_seconds": round(seconds, 3)}})
    dest.commit()
    log.info("%s: the stage loaded into the empty table in one COPY: %s rows inserted in %.2f s (%s)", entity.name,
             f"{inserted:,}", seconds, ", ".join(f"{k} {v:.2f} s" for k, v in steps.items()))
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
