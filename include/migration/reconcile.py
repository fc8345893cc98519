"""Reconciliation: every loaded row compared, source against destination, by checksums.

Each side computes, inside its own database, one checksum per key-range
bucket over the rows it should hold: the legacy side runs the entity's
transform SQL (so it compares what the destination *should* contain, not the
raw legacy row), the destination side reads its table. Only buckets whose
count or checksum differ are looked at row by row, so a clean comparison of
millions of rows moves a few kilobytes, and any difference comes out as a
list of keys: missing from the destination, extra in it, or different.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from include.migration import db
from include.migration.entities import SQL_DIR, Entity
from include.migration.extract import Scope, in_ranges, key_ranges, legacy_encoding, transform_query

log = logging.getLogger(__name__)

MAX_DETAIL_BUCKETS = 400  # beyond this, differences are reported per bucket only
MAX_LISTED_KEYS = 1000


@dataclass
class Reconciliation:
    entity: str
    source_rows: int
    target_rows: int
    buckets: int
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)
    differing_buckets: list[str] = field(default_factory=list)
    seconds: float = 0.0
    target_checksum: int = 0  # with target_rows: the destination table's fingerprint
    # Loaded rows outside the key ranges a full run staged, vouched for by its comparison's checksum
    # (changes.py) instead of compared again; None: every row was compared.
    vouched_rows: int | None = None
    # Rows the run's load deleted because their source row was gone (incremental runs; deletes.py).
    # None pending: any row still without a source row is in ``extra``, a difference.
    hard_deletes_applied: int | None = None

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.different or self.differing_buckets)

    def verdict_line(self) -> str:
        if self.clean:
            vouched = "" if self.vouched_rows is None else (
                f" ({self.vouched_rows} of them outside the ranges the run staged, equal to its comparison as "
                "one checksum)")
            return (f"{self.entity}: reconciliation CLEAN, {self.source_rows} source rows = "
                    f"{self.target_rows} destination rows, {self.buckets} key ranges, checksums equal{vouched}")
        return (f"{self.entity}: reconciliation FOUND DIFFERENCES: {len(self.missing)} missing, "
                f"{len(self.extra)} extra, {len(self.different)} different "
                f"(source {self.source_rows} rows, destination {self.target_rows}); "
                f"first keys: {', '.join((self.missing + self.extra + self.different)[:5])}")

    def fingerprint(self) -> dict[str, Any]:
        return _fingerprint(self.target_rows, self.target_checksum)

    def as_dict(self) -> dict[str, Any]:
        return {"entity": self.entity, "verdict": "clean" if self.clean else "differences",
                "source_rows": self.source_rows, "target_rows": self.target_rows, "buckets": self.buckets,
                "missing": self.missing[:MAX_LISTED_KEYS], "extra": self.extra[:MAX_LISTED_KEYS],
                "different": self.different[:MAX_LISTED_KEYS],
                "differing_buckets": self.differing_buckets[:MAX_LISTED_KEYS],
                "hard_deletes_applied_by_run": self.hard_deletes_applied, "vouched_rows": self.vouched_rows,
                "seconds": round(self.seconds, 3)}


def _bucket_expr(entity: Entity, alias: str) -> sql.Composable:
    key = sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(entity.key))
    if entity.key_type == "uuid":
        return sql.SQL("left({}::text, 3)").format(key)
    return sql.SQL("({} / {})::text").format(key, sql.Literal(entity.bucket_rows))


DIGEST = "hash_record_extended"  # recorded with a fingerprint: one taken another way is not compared


def digest(values: Sequence[sql.Composable]) -> sql.Composable:
    """A signed 64-bit digest of ``values``, computed by the server with each value's own hash
    function (``hash_record_extended``, PostgreSQL 14+), without building the row's text: the
    reconciliation and the change detection digest every row on both sides, and the ``md5``
    of ``ROW(...)::text`` they used before cost 40 % of their time (medium world, messages:
    unchanged rerun 5.5 s to 3.3 s, reconciliation 3.7 s to 2.1 s). Equal values give equal
    digests (servers of one byte order; a uuid hashes its bytes); the callers cast each value
    to the destination's type first, so both sides hash the same types."""
    return sql.SQL("hash_record_extended(ROW({}), 0)").format(sql.SQL(", ").join(values))


def typed_columns(entity: Entity, alias: str, names: Sequence[str]) -> list[sql.Composable]:
    """``alias.column::type`` for ``names``, typed as the destination's columns."""
    types = dict(entity.columns)
    return [sql.SQL("{}.{}::{}").format(sql.Identifier(alias), sql.Identifier(c), sql.SQL(types[c])) for c in names]


def _row_hash(entity: Entity, alias: str) -> sql.Composable:
    # The columns SQL can compute on both sides (media checks its file columns against Storage).
    return digest(typed_columns(entity, alias, entity.reconcile_column_names))


def _source_rows(entity: Entity, skip_keys: list[str], encoding: str | None = None,
                 ranges: list[list[str]] | None = None,
                 key_range: tuple[str | None, str | None] | None = None) -> sql.Composable:
    query = transform_query(entity, Scope(kind="all", ranges=ranges, key_range=key_range), encoding=encoding)
    return sql.SQL("SELECT * FROM ({q}) t WHERE t._disposition = 'loaded' AND NOT (t.{key}::text = ANY({skip}))")\
        .format(q=query, key=sql.Identifier(entity.key), skip=sql.Literal(skip_keys))


def _target_rows(entity: Entity, ranges: list[list[str]] | None = None) -> sql.Composable:
    rows = sql.SQL("SELECT * FROM {} t").format(sql.Identifier(entity.schema_name, entity.target_table))
    if ranges is None:
        return rows
    return sql.SQL("{} WHERE {}").format(rows, in_ranges(entity, sql.SQL("t.{}").format(sql.Identifier(entity.key)),
                                                         ranges))


def range_sums(conn, rows: sql.Composable, bucket: sql.Composable, digest: sql.Composable,
               params: dict | None = None, extra: Sequence[sql.Composable] = ()) -> dict[str, tuple]:
    """Row count and checksum per bucket of ``rows`` (alias ``t``), computed inside the
    database: ``bucket`` names a row's key range, ``digest`` a signed bigint digest of what
    is compared (``digest()``: a whole row here; only the key for the hard-delete key sets,
    deletes.py; a row's outcome for a full run's change detection, changes.py). ``extra``:
    more aggregates over the same rows, returned after the count and the checksum."""
    # Grouped by an expression over the key, the planner counted one group per row (the
    # key's statistics: 3 M for the messages), or, from the transform's filters, a few
    # hundred rows; either way it sorted every row with its payload before aggregating:
    # 5.6 s of the change detection's 14 s, 4.7 s of the reconciliation's 10.8 s. The
    # groups are key ranges, a few thousand at most: hashed, they cost nothing. So the
    # bucket is named in a subquery the planner cannot flatten (``OFFSET 0``: no statistics,
    # a few hundred groups assumed) and sorting is off for this statement (``set_config``
    # local to the transaction, put back after).
    query = sql.SQL(
        "SELECT t._bucket AS bucket, count(*), sum({h}){more} "
        "FROM (SELECT {b} AS _bucket, t.* FROM ({rows}) t OFFSET 0) t GROUP BY 1"
    ).format(b=bucket, h=digest, rows=rows,
             more=sql.SQL("").join(sql.SQL(", {}").format(e) for e in extra))
    before = conn.execute("SELECT current_setting('enable_sort'), set_config('enable_sort', 'off', true)").fetchone()[0]
    try:
        return {b: (n, int(s), *more) for b, n, s, *more in conn.execute(query, params)}
    finally:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
            conn.execute("SELECT set_config('enable_sort', %s, true)", (before,))


def _bucket_sums(dsn: str, rows: sql.Composable, entity: Entity) -> dict[str, tuple[int, int]]:
    with db.connection(dsn, application="migration-reconcile") as conn:
        conn.read_only = True
        db.tune_legacy(conn)
        return range_sums(conn, rows, _bucket_expr(entity, "t"), _row_hash(entity, "t"))


def _source_sums(legacy_dsn: str, entity: Entity, skip: list[str], encoding: str | None,
                 ranges: list[list[str]] | None) -> dict[str, tuple[int, int]]:
    """The legacy side's sums: in streams over a large table (``legacy_streams``), unless the
    run staged only some ``ranges``."""
    with db.connection(legacy_dsn, application="migration-reconcile") as conn, ExitStack() as stack:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        streams = legacy_streams(conn, legacy_dsn, entity, stack, split=ranges is None)
        return stream_sums(streams, lambda key_range: _source_rows(entity, skip, encoding, ranges, key_range),
                           _bucket_expr(entity, "t"), _row_hash(entity, "t"))


# The legacy side runs the whole transform, the reconciliation's and the change detection's
# bottleneck: over a table of at least LEGACY_STREAM_ROWS rows it is summed as LEGACY_STREAMS
# key ranges side by side, each on a connection of its own, all in one snapshot (each stream
# computes the fates again: worth it only for large tables). Large messages on 2 cores: the
# reconciliation 8.6 s to 7.0 s, the change detection 11.1 s to 9.2 s.
LEGACY_STREAMS = 2
LEGACY_STREAM_ROWS = 1_000_000

# A connection and the key range it sums (None: every key).
Stream = tuple[psycopg.Connection, tuple[str | None, str | None] | None]


def legacy_key_ranges(legacy: psycopg.Connection, entity: Entity) -> list[tuple[str | None, str | None]]:
    """The key ranges the legacy side is summed in: ``LEGACY_STREAMS`` from the statistics'
    histogram of the key (no counting pass), or one, ``(None, None)``, for a smaller table or
    without fresh statistics."""
    rows = legacy.execute("SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", (
        sql.Identifier("public", entity.source_table).as_string(legacy),)).fetchone()
    if rows is None or rows[0] < LEGACY_STREAM_ROWS:
        return [(None, None)]
    return key_ranges(legacy, entity, LEGACY_STREAMS, count_if_stale=False)


def legacy_streams(legacy: psycopg.Connection, legacy_dsn: str, entity: Entity, stack: ExitStack, *,
                   split: bool = True) -> list[Stream]:
    """The streams the legacy side is summed in (``stream_sums``). ``legacy``: a repeatable-read,
    read-only connection that has run nothing yet; over a large table (and ``split``) one more
    connection per key range joins it, entered into ``stack``, importing its snapshot
    (``pg_export_snapshot``). Just ``legacy`` where the server refuses to share a snapshot.
    Every stream is tuned for the transform (``db.tune_legacy``)."""
    streams: list[Stream] = [(legacy, None)]
    parts = legacy_key_ranges(legacy, entity) if split else []
    if len(parts) > 1:
        try:
            snapshot = legacy.execute("SELECT pg_export_snapshot()").fetchone()[0]
            streams = [(legacy, parts[0])]
            for part in parts[1:]:
                conn = stack.enter_context(db.connection(legacy_dsn, application="migration-streams"))
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                conn.read_only = True
                conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
                db.tune_legacy(conn)
                streams.append((conn, part))
        except psycopg.Error as exc:
            log.info("%s: the source is read in one stream: the legacy server did not share a snapshot between "
                     "two connections (%s)", entity.name, exc.diag.message_primary or exc)
            legacy.rollback()
            streams = [(legacy, None)]
    db.tune_legacy(legacy)
    return streams


def stream_sums(streams: list[Stream], rows: Callable[[tuple[str | None, str | None] | None], sql.Composable],
                bucket: sql.Composable, digest: sql.Composable,
                extra: Sequence[sql.Composable] = ()) -> dict[str, tuple]:
    """``range_sums`` of ``rows(key_range)`` over every stream, side by side, added up."""
    if len(streams) == 1:
        conn, key_range = streams[0]
        return range_sums(conn, rows(key_range), bucket, digest, extra=extra)
    with ThreadPoolExecutor(max_workers=len(streams), thread_name_prefix="legacy-stream") as pool:
        return added_sums(list(pool.map(
            lambda stream: range_sums(stream[0], rows(stream[1]), bucket, digest, extra=extra), streams)))


def added_sums(parts: Sequence[dict[str, tuple]]) -> dict[str, tuple]:
    """``range_sums`` of disjoint parts of the rows, per bucket (a bucket may span two parts):
    counts and checksums added, any extra aggregate (a maximum) the greatest, NULL ignored."""
    out: dict[str, tuple] = {}
    for part in parts:
        for bucket, sums in part.items():
            seen = out.get(bucket)
            if seen is None:
                out[bucket] = tuple(sums)
                continue
            more = tuple(a if b is None else b if a is None else max(a, b) for a, b in zip(seen[2:], sums[2:]))
            out[bucket] = (seen[0] + sums[0], seen[1] + sums[1], *more)
    return out


def _row_hashes(dsn: str, rows: sql.Composable, entity: Entity, buckets: list[str]) -> dict[str, int]:
    query = sql.SQL("SELECT t.{key}::text, {h} FROM ({rows}) t WHERE {b} = ANY({buckets})").format(
        key=sql.Identifier(entity.key), h=_row_hash(entity, "t"), rows=rows,
        b=_bucket_expr(entity, "t"), buckets=sql.Literal(buckets))
    with db.connection(dsn, application="migration-reconcile") as conn:
        conn.read_only = True
        db.tune_legacy(conn)
        return dict(conn.execute(query).fetchall())


def reconcile(legacy_dsn: str, dest_dsn: str, entity: Entity, *, ranges: list[list[str]] | None = None,
              compared: dict[str, Any] | None = None) -> Reconciliation:
    """Compare every row the destination should hold with what it holds.

    ``ranges`` and ``compared``: a full run that staged only the key ranges that differed, and
    its comparison's figures (changes.py). The rows of those ranges are compared as any; the
    destination's rows and ledger entries outside them are summed in one checksum of their
    outcomes, without the transform: equal to the comparison's sum of the source there, they
    are still what the source held when the run compared (and the transform, the costly part,
    runs only over the ranges that changed). Not equal: every row is compared."""
    started = time.perf_counter()
    vouched = _vouched_outside(dest_dsn, entity, ranges, compared)
    if vouched is None:
        ranges = None
    with db.connection(dest_dsn) as conn:
        # Rows the destination refused on its own terms are in quarantine, not missing.
        skip = [r[0] for r in conn.execute(
            "SELECT source_key FROM migration.quarantine WHERE entity = %s", (entity.name,))]
    with db.connection(legacy_dsn) as conn:
        encoding = legacy_encoding(conn)  # a SQL_ASCII source quarantines rows that are not UTF-8
    src_rows, dst_rows = _source_rows(entity, skip, encoding, ranges), _target_rows(entity, ranges)
    src, dst = {}, {}  # no staged range: nothing to compare row by row
    if ranges != []:
        with ThreadPoolExecutor(max_workers=2) as pool:
            fs = pool.submit(_source_sums, legacy_dsn, entity, skip, encoding, ranges)
            fd = pool.submit(_bucket_sums, dest_dsn, dst_rows, entity)
            src, dst = fs.result(), fd.result()
    differing = sorted(b for b in set(src) | set(dst) if src.get(b) != dst.get(b))
    result = Reconciliation(entity.name, sum(n for n, _ in src.values()), sum(n for n, _ in dst.values()),
                            len(set(src) | set(dst)), target_checksum=sum(c for _, c in dst.values()))
    detail, rest = differing[:MAX_DETAIL_BUCKETS], differing[MAX_DETAIL_BUCKETS:]
    if detail:
        with ThreadPoolExecutor(max_workers=2) as pool:
            fs = pool.submit(_row_hashes, legacy_dsn, src_rows, entity, detail)
            fd = pool.submit(_row_hashes, dest_dsn, dst_rows, entity, detail)
            src_h, dst_h = fs.result(), fd.result()
        result.missing = sorted(k for k in src_h if k not in dst_h)
        result.extra = sorted(k for k in dst_h if k not in src_h)
        result.different = sorted(k for k in src_h if k in dst_h and src_h[k] != dst_h[k])
    result.differing_buckets = rest
    if vouched is not None:
        with db.connection(dest_dsn) as conn:
            whole = fingerprint(conn, entity)
        result.source_rows += vouched
        result.target_rows, result.target_checksum = whole["rows"], whole["checksum"]
        result.vouched_rows = vouched
    result.seconds = time.perf_counter() - started
    return result


def _vouched_outside(dest_dsn: str, entity: Entity, ranges: list[list[str]] | None,
                     compared: dict[str, Any] | None) -> int | None:
    """The loaded rows outside a run's staged ranges when the destination there still sums to
    what the run's comparison found in the source; None otherwise (compare every row)."""
    if ranges is None or not compared or compared.get("equal_checksum") is None:
        return None
    from include.migration import changes

    held, checksum, loaded = changes.destination_outside(dest_dsn, entity, ranges)
    if (held, checksum) == (compared["equal_source_rows"], compared["equal_checksum"]):
        return loaded
    log.warning("%s: outside the key ranges the run staged, the destination holds %d rows and ledger entries "
                "that no longer sum to the %d the run's comparison found in the source: every row is compared",
                entity.name, held, compared["equal_source_rows"])
    return None


def persist(dest_dsn: str, run_id: str, rec: Reconciliation) -> Path:
    """Store the verdict in ``migration.reconciliations`` and as a JSON report file."""
    data = rec.as_dict()
    with db.connection(dest_dsn) as conn:
        record_verdict(conn, run_id, rec.entity, data["verdict"], rec.source_rows, rec.target_rows, rec.buckets,
                       data["missing"], data["extra"], data["different"])
        conn.commit()
    path = report_dir(run_id) / f"reconcile-{rec.entity}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def record_verdict(conn: psycopg.Connection, run_id: str, entity: str, verdict: str, source_rows: int,
                   target_rows: int, buckets: int, missing: list, extra: list, different: list) -> None:
    """Upsert one verdict into ``migration.reconciliations`` (the rows' and media's Storage
    reconciliation alike); the caller commits."""
    conn.execute((SQL_DIR / "reconcile" / "record_verdict.sql").read_text(), {
        "run_id": run_id, "entity": entity, "verdict": verdict, "source_rows": source_rows,
        "target_rows": target_rows, "buckets": buckets,
        "missing": Jsonb(missing), "extra": Jsonb(extra), "different": Jsonb(different)})


def report_dir(run_id: str) -> Path:
    base = Path(os.environ.get("MIGRATION_STATE_DIR", Path.cwd() / ".local" / "reports"))
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)
    path = base / safe
    path.mkdir(parents=True, exist_ok=True)
    return path


def fingerprint(conn, entity: Entity) -> dict[str, Any]:
    """Row count and checksum of the destination table: the state a rollback must return to."""
    row = conn.execute(sql.SQL(
        "SELECT count(*), coalesce(sum({h}), 0) FROM {t} t"
    ).format(h=_row_hash(entity, "t"), t=sql.Identifier(entity.schema_name, entity.target_table))).fetchone()
    return _fingerprint(int(row[0]), int(row[1]))


def _fingerprint(rows: int, checksum: int) -> dict[str, Any]:
    """A fingerprint as runs record it, naming the digest its checksum was summed with."""
    return {"rows": rows, "checksum": checksum, "digest": DIGEST}
