"""Extract: stream the transformed legacy rows of a run's scope into a stage table.

The transform SQL runs inside the legacy database (one read-only,
repeatable-read snapshot), and its output goes by binary ``COPY ... TO
STDOUT`` straight into ``COPY ... FROM STDIN`` of an unlogged stage table in
the destination: no row passes through Python objects, and memory stays flat
whatever the table size.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from include.migration import db, runs
from include.migration.entities import SOURCE_TABLES, Entity, transform_sql_text

log = logging.getLogger(__name__)

COPY_BLOCK = 1 << 20  # relay in ~1 MiB writes


@dataclass
class Scope:
    """What a run reads from the source. Stored with the run (JSON)."""

    kind: str  # 'all' or 'changed'
    since: str | None = None  # ISO timestamp (naive UTC, like the source)
    last_key: str | None = None
    retry: list[str] | None = None
    key_range: tuple[str | None, str | None] | None = None  # (exclusive lo, inclusive hi)
    # A full run over a populated destination: only the key ranges whose rows differ
    # (inclusive [first, last] pairs; changes.py). Empty: nothing differs, nothing to read.
    ranges: list[list[str]] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    def describe(self) -> str:
        if self.kind == "all" and self.ranges is not None:
            return f"the source rows of the {len(self.ranges):,} key ranges that differ from the destination"
        if self.kind == "all":
            return "every source row"
        parts = [f"rows changed since {self.since}"]
        if self.last_key is not None:
            parts.append(f"keys above {self.last_key}")
        if self.retry:
            parts.append(f"{len(self.retry)} quarantined rows to retry")
        return ", ".join(parts)


def plan_scope(dest: psycopg.Connection, entity: Entity, mode: str) -> Scope:
    """Full: every row. Incremental: changed since the watermark (minus the lookback),
    plus every row still in quarantine. No watermark yet: every row."""
    if mode == "full":
        return Scope(kind="all")
    wm = runs.watermark(dest, entity.name)
    if wm is None or wm.change_ts is None:
        return Scope(kind="all")
    retry = [r[0] for r in dest.execute(
        "SELECT source_key FROM migration.quarantine WHERE entity = %s ORDER BY source_key", (entity.name,)
    )]
    since = wm.change_ts - timedelta(seconds=runs.LOOKBACK_SECONDS)
    return Scope(kind="changed", since=since.isoformat(sep=" "), last_key=wm.last_key, retry=retry)


def source_tables(source_schema: str = "public") -> dict[str, sql.Identifier]:
    """The legacy tables the transform SQL names as ``{src_<table>}``."""
    return {f"src_{t}": sql.Identifier(source_schema, t) for t in SOURCE_TABLES}


def _bind(template: str, entity: Entity, run_scope: Scope, tables: dict[str, sql.Identifier],
          **extra: sql.Composable) -> sql.Composed:
    key_cast = sql.SQL(entity.key_type)
    return sql.SQL("(" + template + ")").format(
        since=sql.SQL("{}::timestamp").format(sql.Literal(run_scope.since)),
        last_key=sql.SQL("{}::{}").format(sql.Literal(run_scope.last_key or _min_key(entity)), key_cast),
        retry=sql.SQL("{}::{}[]").format(sql.Literal(run_scope.retry or []), key_cast),
        **tables, **extra)


def scope_condition(entity: Entity, scope: Scope,
                    tables: dict[str, sql.Identifier] | None = None) -> sql.Composable:
    key = sql.SQL("{}.{}").format(sql.Identifier(entity.alias), sql.Identifier(entity.key))
    conds: list[sql.Composable] = []
    if scope.kind == "changed":
        conds.append(_bind(entity.incremental_scope, entity, scope, tables or source_tables()))
    if scope.ranges is not None:
        conds.append(in_ranges(entity, key, scope.ranges))
    if scope.key_range is not None:
        lo, hi = scope.key_range
        if lo is not None:
            conds.append(sql.SQL("{} > {}::{}").format(key, sql.Literal(lo), sql.SQL(entity.key_type)))
        if hi is not None:
            conds.append(sql.SQL("{} <= {}::{}").format(key, sql.Literal(hi), sql.SQL(entity.key_type)))
    return sql.SQL(" AND ").join(conds) if conds else sql.SQL("TRUE")


def in_ranges(entity: Entity, key: sql.Composable, ranges: list[list[str]]) -> sql.Composable:
    """``key`` lies in one of ``ranges`` (inclusive [first, last] pairs, disjoint): one binary
    search of the ranges' edges per row (``width_bucket``: an odd bucket is inside a range).
    As a join of the ranges, the planner guessed a hundred of them and scanned the table once
    for each of thousands. Written ``<> 0``, not ``= 1``: the planner guesses an equality on
    an expression passes 0.5 % of the rows, and over the change detection's 15 sixteenths of
    the key space it then sorted 2.8 M transformed rows before grouping them; it guesses an
    inequality passes 99.5 %, the safe side (hash joins, never nested loops over the fates)."""
    if not ranges:
        return sql.SQL("FALSE")
    edges = _edges(entity, ranges)
    return sql.SQL("width_bucket({}, {}::{}[]) % 2 <> 0").format(key, sql.Literal(edges), sql.SQL(entity.key_type))


def _edges(entity: Entity, ranges: list[list[str]]) -> list[str]:
    """The ranges as ascending half-open edges [first, next key after last), touching ranges
    merged; the last range open-ended when nothing follows its last key."""
    uuid = entity.key_type == "uuid"
    top = (1 << 128) - 1 if uuid else (1 << 63) - 1

    def num(k: str) -> int:
        return int(k.replace("-", ""), 16) if uuid else int(k)

    spans: list[list[int]] = []
    for lo, hi in sorted((num(lo), num(hi)) for lo, hi in ranges):
        if spans and lo <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], hi + 1)
        else:
            spans.append([lo, hi + 1])
    edges = [n for span in spans for n in span]
    if edges[-1] > top:
        edges.pop()  # the last range runs to the end of the key space
    return [f"{n:032x}" if uuid else str(n) for n in edges]


def _min_key(entity: Entity) -> str:
    return "-9223372036854775808" if entity.key_type == "bigint" else "00000000-0000-0000-0000-000000000000"


def transform_query(entity: Entity, scope: Scope, *, source_schema: str = "public",
                    encoding: str | None = None) -> sql.Composed:
    """The entity's transform SQL, bound to the legacy tables and the scope.

    It ends in ``OFFSET 0``, a fence: a caller's filter on its output (such as
    ``_disposition = 'loaded'``) stays on the output. Pushed down into the
    transform, that filter became a condition on a fate expression the planner
    guessed at 0.5 % of the rows, and it chose per-row nested loops over the
    fates (quadratic: more than ten minutes for 150,000 conversations).

    ``encoding``: the legacy database's ``server_encoding`` (``legacy_encoding``).
    A ``SQL_ASCII`` database stores any bytes; its rows holding text that is not
    UTF-8 are quarantined (``quarantine_invalid_utf8``). Any other encoding
    converts to UTF-8 on its own, so the query stays as it is."""
    tables = source_tables(source_schema)
    text = transform_sql_text(entity) + "\nOFFSET 0"
    where = scope_condition(entity, scope, tables)
    query = sql.SQL(text).format(scope=where, **fate_conditions(entity, scope, where, tables), **tables)
    if encoding == "SQL_ASCII":
        return quarantine_invalid_utf8(entity, query, source_schema)
    return query


def legacy_encoding(conn: psycopg.Connection) -> str:
    """The legacy database's encoding, as the server reported it at connect time (no query)."""
    return conn.info.parameter_status("server_encoding") or "UTF8"


# Well-formed UTF-8 (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF), matched
# on the hex digits of the bytes, so the check reads bytes whatever the database's encoding.
_CONT = "[89ab][0-9a-f]"
_UTF8_HEX = ("^(?:[0-7][0-9a-f]|(?:c[2-9a-f]|d[0-9a-f])" + _CONT
             + "|e0[ab][0-9a-f]" + _CONT + "|(?:e[1-9a-c]|e[ef])" + _CONT * 2 + "|ed[89][0-9a-f]" + _CONT
             + "|f0[9ab][0-9a-f]" + _CONT * 2 + "|f[1-3]" + _CONT * 3 + "|f48[0-9a-f]" + _CONT * 2 + ")*$")
_TEXT_TYPES = ("text", "varchar", "character", "json")  # type names starting so: text, jsonb, text[], ...


def quarantine_invalid_utf8(entity: Entity, query: sql.Composable, source_schema: str) -> sql.Composed:
    """Wrap a transform run in a ``SQL_ASCII`` legacy database: a row whose text is not
    UTF-8 is quarantined (``invalid_utf8``) instead of failing the whole entity where the
    UTF-8 destination refuses its bytes. Its text columns go out as NULL, and its ledger
    entry keeps the legacy row as text with every byte above 0x7F written ``\\nnn``
    (``encode(..., 'escape')``; ``decode(..., 'escape')`` gives the bytes back).
    Only rows with a byte above 0x7F are checked byte by byte."""
    key = sql.Identifier(entity.key)
    bad = sql.SQL("(t::text ~ '[\\x80-\\xff]' AND encode(convert_to(t::text, 'SQL_ASCII'), 'hex') !~ {})").format(
        sql.Literal(_UTF8_HEX))
    source = sql.SQL(
        "jsonb_build_object('invalid_utf8', true, 'legacy_row_escaped', encode(convert_to(("
        "SELECT to_jsonb(s)::text FROM {table} s WHERE s.{key} = t.{key}), 'SQL_ASCII'), 'escape'))").format(
        table=sql.Identifier(source_schema, entity.source_table), key=key)
    overrides = {"_disposition": sql.SQL("'quarantined'"), "_reason": sql.SQL("'invalid_utf8'"),
                 "_repairs": sql.SQL("'{}'::text[]"), "_source": source}
    cols = []
    for name, typ in entity.stage_columns:
        col = sql.SQL("t.{}").format(sql.Identifier(name))
        if name in overrides:
            col = sql.SQL("CASE WHEN b._bad THEN {} ELSE {} END").format(overrides[name], col)
        elif name != entity.key and (typ.endswith("[]") or typ.startswith(_TEXT_TYPES)):
            col = sql.SQL("CASE WHEN b._bad THEN NULL ELSE {} END").format(col)
        cols.append(sql.SQL("{} AS {}").format(col, sql.Identifier(name)))
    return sql.SQL("SELECT {cols} FROM ({query}) t CROSS JOIN LATERAL (SELECT {bad} AS _bad) b OFFSET 0").format(
        cols=sql.SQL(", ").join(cols), query=query, bad=bad)

FATES = ("user_fates", "conversation_fates", "agent_fates")


def fate_conditions(entity: Entity, scope: Scope, where: sql.Composable,
                    tables: dict[str, sql.Identifier]) -> dict[str, sql.Composable]:
    """Whose fates the transform computes (_fates.sql): every row's in a full run; in an
    incremental run the rows its scope needs (``Entity.fate_scope``), so an incremental
    run's cost follows the change, not the table."""
    out: dict[str, sql.Composable] = {}
    for fate in FATES:
        template = entity.fate_scope.get(fate) if scope.kind == "changed" else None
        out[fate] = (sql.SQL("TRUE") if template is None
                     else _bind(template, entity, scope, tables, scope=where))
    return out


def stage_name(run_id: str, partition: int | None = None) -> str:
    entity = run_id.split(":", 1)[0]
    digest = hashlib.sha1(run_id.encode()).hexdigest()[:12]
    return f"{entity}_{digest}" + (f"_p{partition}" if partition is not None else "")


def create_stage(dest: psycopg.Connection, entity: Entity, table: str) -> None:
    cols = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(typ)) for name, typ in entity.stage_columns
    )
    ident = sql.Identifier("migration_stage", table)
    drop_stage(dest, table)
    # Unlogged: the stage is rebuilt from the source if the destination crashes.
    dest.execute(sql.SQL("CREATE UNLOGGED TABLE {} ({})").format(ident, cols))


def drop_stage(dest: psycopg.Connection, table: str) -> None:
    """Drop a stage, with its partitions' stages when it has them (its children)."""
    dest.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier("migration_stage", table)))


def index_stage(dest: psycopg.Connection, entity: Entity, table: str) -> None:
    """The load reads the stage in key-ordered chunks and joins it on the key (so do the
    ledgers and the accounting): an index and fresh statistics turn each into a range scan.
    Statistics only of the columns those queries filter and join on, not the wide ones."""
    stage = sql.Identifier("migration_stage", table)
    dest.execute(sql.SQL("CREATE INDEX ON {} ({})").format(stage, sql.Identifier(entity.key)))
    dest.execute(sql.SQL("ANALYZE {} ({}, _disposition, _reason)").format(stage, sql.Identifier(entity.key)))


STALE_STATS_SHARE = 0.1  # statistics older than a 10 % change of the table are not used to split it


def key_ranges(legacy: psycopg.Connection, entity: Entity, partitions: int, *,
               count_if_stale: bool = True) -> list[tuple[str | None, str | None]]:
    """``partitions`` key ranges (exclusive low, inclusive high; None: unbounded) of about
    equal row counts. Fewer when the table has fewer distinct keys than that; one,
    ``(None, None)``, for an empty table, and without fresh statistics when not
    ``count_if_stale``.

    The bounds come from the key column's histogram in the legacy server's statistics
    (``pg_stats``: equal-frequency quantiles of a sample, read in a millisecond) while they
    are fresh; else from one counted pass over the key index (2 to 3 s at 3 M rows). Either
    way the first and last range are unbounded, so every key falls in exactly one range:
    statistics can only make the ranges uneven, never leave a row out."""
    if partitions <= 1:
        return [(None, None)]
    table = sql.Identifier("public", entity.source_table)
    key = sql.Identifier(entity.key)
    bounds = _histogram_bounds(legacy, entity, partitions)
    if bounds is None and not count_if_stale:
        return [(None, None)]
    if bounds is None:
        # Counted, not estimated: no fresh statistics to split by.
        rows = legacy.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]
        if rows == 0:
            return [(None, None)]
        step = -(-rows // partitions)  # ceil: at most `partitions` ranges
        bounds = db.every_nth_key(legacy, table, key, step)
        if bounds and len(bounds) * step == rows:
            bounds.pop()  # the last key: nothing would follow it
    edges: list[str | None] = [None, *bounds, None]
    return list(zip(edges, edges[1:], strict=False))


def _histogram_bounds(legacy: psycopg.Connection, entity: Entity, partitions: int) -> list[str] | None:
    """``partitions - 1`` keys splitting the source table into ranges of about equal row
    counts, from the statistics' histogram of its key; None where there is no histogram or
    the table changed by more than ``STALE_STATS_SHARE`` of its rows since it was analyzed."""
    row = legacy.execute(sql.SQL(
        "SELECT s.histogram_bounds::text::{typ}[]::text[], c.reltuples, t.n_mod_since_analyze "
        "FROM pg_stats s JOIN pg_class c ON c.oid = to_regclass(%(table)s) "
        "JOIN pg_stat_user_tables t ON t.relid = c.oid "
        "WHERE s.schemaname = 'public' AND s.tablename = %(name)s AND s.attname = %(key)s"
    ).format(typ=sql.SQL(entity.key_type)), {
        "table": sql.Identifier("public", entity.source_table).as_string(legacy),
        "name": entity.source_table, "key": entity.key}).fetchone()
    if row is None or not row[0] or row[1] <= 0 or row[2] > STALE_STATS_SHARE * row[1]:
        return None
    hist = row[0]  # sorted: n + 1 bounds of n buckets of equal frequency
    picks = sorted({(i * (len(hist) - 1)) // partitions for i in range(1, partitions)})
    return [hist[i] for i in picks]


def attach_partition(dest: psycopg.Connection, parent: str, child: str) -> None:
    """Make a partition's stage a child of the run's stage: reading the run's stage reads
    every partition. Takes a lock on the parent that concurrent attaches queue on, so it
    runs last, just before the partition's commit."""
    dest.execute(sql.SQL("ALTER TABLE {} INHERIT {}").format(
        sql.Identifier("migration_stage", child), sql.Identifier("migration_stage", parent)))


@dataclass
class ExtractResult:
    stage_table: str
    rows: int
    bytes: int
    seconds: float
    source_rows: int | None
    # When the legacy snapshot was taken (the legacy server's clock): a stage
    # older than one another run already loaded must not be loaded after it.
    snapshot_at: datetime | None = None


def extract(legacy_dsn: str, dest_dsn: str, entity: Entity, run_id: str, scope: Scope,
            *, partition: int | None = None) -> ExtractResult:
    """Stream the scope's transformed rows into a fresh stage table; returns counts.

    With ``partition`` (and ``scope.key_range``), the rows of that key range go into
    the partition's own stage, a child of the run's stage (``attach_partition``)."""
    table = stage_name(run_id, partition)
    started = time.perf_counter()
    if scope.ranges == []:
        # Every key range equals the destination's (changes.py): nothing to read.
        with db.connection(dest_dsn, application="migration-extract") as dst:
            create_stage(dst, entity, table)
            index_stage(dst, entity, table)
            dst.commit()
        return ExtractResult(table, 0, 0, time.perf_counter() - started, 0, None)
    with db.connection(legacy_dsn, application="migration-extract") as src, \
            db.connection(dest_dsn, application="migration-extract") as dst:
        src.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        src.read_only = True
        # The first statement of the transaction takes its snapshot.
        snapshot_at = src.execute("SELECT now()").fetchone()[0]
        db.tune_legacy(src)
        create_stage(dst, entity, table)
        query = transform_query(entity, scope, encoding=legacy_encoding(src))
        columns = sql.SQL(", ").join(sql.Identifier(c) for c, _ in entity.stage_columns)
        # FREEZE: the stage was created in this transaction, so its rows can be
        # written frozen, and the load's many reads of it set no hint bits.
        into_stage = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY, FREEZE)").format(
            sql.Identifier("migration_stage", table), columns)
        with src.cursor() as rcur, dst.cursor() as wcur:
            with rcur.copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(query)) as out, \
                    wcur.copy(into_stage) as into:
                copied = db.relay_copy(out, into, COPY_BLOCK)
            rows = wcur.rowcount
        index_stage(dst, entity, table)
        source_rows = None
        if scope.kind == "all":
            # Same snapshot as the COPY: the stage must hold every source row (of the range).
            source_rows = src.execute(sql.SQL("SELECT count(*) FROM {} {} WHERE {}").format(
                sql.Identifier("public", entity.source_table), sql.Identifier(entity.alias),
                scope_condition(entity, scope))).fetchone()[0]
        src.commit()
        if partition is not None:
            attach_partition(dst, stage_name(run_id), table)
        dst.commit()
    seconds = time.perf_counter() - started
    return ExtractResult(table, rows, copied, seconds, source_rows, snapshot_at)
