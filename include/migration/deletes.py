"""Hard deletes seen by every run: destination rows whose source row is gone.

A full run sees every source key in its stage, so it deletes what is not
there (``load.sweep_gone``). An incremental run stages only what changed, so
it compares the *key sets* instead: the source table's keys against the keys
the destination knows (its table's, plus the quarantine and exclusion
ledgers', since every source row ends in exactly one of the three). Each side
counts and checksums its keys per key range inside its own database (the
reconciliation's ``range_sums``); only ranges whose count or checksum differ
are split into 16 and compared again, until a range is small enough to list
its keys. The work past the first pass (one index-only scan of the keys on
each side, nothing sent but one line per range) follows the number of ranges
that differ, not the size of the table.

The keys found gone are deleted with before-images, by the same code as a
full run's deletes (``load._delete_with_images``: rows a delete cascades to
are imaged too, so a rollback puts them back), and forgotten by the ledgers.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from include.migration import db, runs
from include.migration import load as load_mod
from include.migration.entities import Entity
from include.migration.reconcile import added_sums, digest, range_sums

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent / "sql" / "deletes"

FANOUT_BITS = 4  # a differing range is split into 2**4 = 16
TOP_BIGINT_SHIFT = 11  # bigint keys: first ranges of 2,048 keys (the reconciliation's are 2,000)
TOP_UUID_HEX = 3  # uuid keys: first ranges by the first 3 hex digits, 4,096 of them (as the reconciliation)
LEAF_ROWS = 64  # a differing range with at most this many keys on either side is listed key by key
UUID_HEX = 32


@dataclass
class KeyDiff:
    """What the key comparison found, and what it cost."""

    entity: str
    gone: list[str] = field(default_factory=list)  # known to the destination, gone from the source
    unaccounted: list[str] = field(default_factory=list)  # in the source, in no table or ledger
    top_ranges: int = 0  # ranges of the first pass
    differing_top_ranges: int = 0
    ranges_compared: int = 0  # ranges compared after the first pass (the bisection)
    keys_listed: int = 0  # keys read one by one, both sides
    levels: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"gone": len(self.gone), "unaccounted": len(self.unaccounted), "top_ranges": self.top_ranges,
                "differing_top_ranges": self.differing_top_ranges, "ranges_compared": self.ranges_compared,
                "keys_listed": self.keys_listed, "levels": self.levels, "seconds": round(self.seconds, 3),
                "unaccounted_keys": self.unaccounted[:20]}


@cache
def _sql(name: str) -> str:
    return (SQL_DIR / name).read_text()


class KeyRanges:
    """Key ranges by level: bigint keys by their high bits (``k >> shift``), uuids by
    their leading hex digits; level N+1 splits each range of level N into 16."""

    def __init__(self, entity: Entity):
        if entity.key_type not in ("uuid", "bigint"):
            raise ValueError(f"{entity.name}: no key ranges for key type {entity.key_type}")
        self.uuid = entity.key_type == "uuid"

    def _shift(self, level: int) -> int:
        return max(0, TOP_BIGINT_SHIFT - FANOUT_BITS * level)

    def finest(self, level: int) -> bool:
        return TOP_UUID_HEX + level >= UUID_HEX if self.uuid else self._shift(level) == 0

    def bucket(self, level: int, key: sql.Composable) -> sql.Composable:
        if self.uuid:
            return sql.SQL("left(replace({}::text, '-', ''), {})").format(key, sql.Literal(TOP_UUID_HEX + level))
        return sql.SQL("({} >> {})::text").format(key, sql.Literal(self._shift(level)))

    def bounds(self, level: int, bucket: str) -> tuple[str, str]:
        """The first and last key (inclusive) of a range of ``level``."""
        if self.uuid:
            return bucket.ljust(UUID_HEX, "0"), bucket.ljust(UUID_HEX, "f")
        shift, b = self._shift(level), int(bucket)
        return str(b << shift), str(((b + 1) << shift) - 1)


class _Side:
    """One database's key set, read per range."""

    def __init__(self, conn: psycopg.Connection, entity: Entity, ranges: KeyRanges, tables: list[sql.Composable],
                 ledgers: bool):
        self.conn, self.entity, self.ranges = conn, entity, ranges
        self.tables, self.ledgers = tables, ledgers
        self.key, self.typ = sql.Identifier(entity.key), sql.SQL(entity.key_type)

    def _parts(self, level: int, parents: list[str] | None) -> list[tuple[sql.Composable, dict[str, Any]]]:
        """Subqueries (alias-free, one column ``k``) over the keys of the ``parents`` ranges of
        ``level - 1`` (None: every key), with their parameters."""
        params: dict[str, Any] = {"entity": self.entity.name}
        parts = []
        for table in self.tables:
            if parents is None:
                q = sql.SQL("SELECT t.{key} AS k FROM {table} t").format(key=self.key, table=table)
            else:
                # One index range scan per parent range (a LATERAL subquery, so the plan is that
                # nested loop): the cost of this pass follows the ranges that differ, not the
                # table. As a plain join on BETWEEN, the planner scanned the whole table against
                # every range (172 s instead of 2 s for 1,290 ranges of a 3 M-row table).
                lo_hi = [self.ranges.bounds(level - 1, b) for b in parents]
                params["lo"], params["hi"] = [lo for lo, _ in lo_hi], [hi for _, hi in lo_hi]
                q = sql.SQL(
                    "SELECT x.k FROM unnest(%(lo)s::{typ}[], %(hi)s::{typ}[]) r(lo, hi) "
                    "CROSS JOIN LATERAL (SELECT t.{key} AS k FROM {table} t WHERE t.{key} BETWEEN r.lo AND r.hi) x"
                ).format(typ=self.typ, key=self.key, table=table)
            parts.append((q, params))
        if self.ledgers:
            # The ledgers are small and their keys are text: one scan, filtered by range through a
            # hashed set of the ranges (IN (SELECT unnest ...)); as ``= ANY(array)`` each ledger
            # key was compared with every range in turn (20 times slower at 900 ranges).
            q = sql.SQL("SELECT l.k FROM ({}) l").format(
                sql.SQL(_sql("ledger_keys.sql")).format(key_type=self.typ))
            if parents is not None:
                q = sql.SQL("{} WHERE {} IN (SELECT unnest(%(parents)s::text[]))").format(
                    q, self.ranges.bucket(level - 1, sql.SQL("l.k")))
                params = {**params, "parents": parents}
            parts.append((q, params))
        return parts

    def sums(self, level: int, parents: list[str] | None) -> dict[str, tuple[int, int]]:
        total = added_sums([range_sums(self.conn, rows, self.ranges.bucket(level, sql.SQL("t.k")),
                                       digest([sql.SQL("t.k")]), params)
                            for rows, params in self._parts(level, parents)])
        self.conn.rollback()
        return total

    def keys(self, level: int, buckets: list[str]) -> set[str]:
        out: set[str] = set()
        for rows, params in self._parts(level + 1, buckets):
            out.update(r[0] for r in self.conn.execute(sql.SQL("SELECT t.k::text FROM ({}) t").format(rows), params))
        self.conn.rollback()
        return out


def compare_keys(legacy_dsn: str, dest_dsn: str, entity: Entity, *, source_schema: str = "public") -> KeyDiff:
    """The keys the destination knows (table and ledgers) that the source no longer has, and
    the reverse; see the module docstring."""
    started = time.perf_counter()
    ranges = KeyRanges(entity)
    diff = KeyDiff(entity.name)
    target = sql.Identifier(entity.schema_name, entity.target_table)
    with db.connection(legacy_dsn, application="migration-deletes") as legacy, \
            db.connection(dest_dsn, application="migration-deletes") as dest, \
            ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"deletes-{entity.name}") as pool:
        legacy.read_only = dest.read_only = True
        src = _Side(legacy, entity, ranges, [sql.Identifier(source_schema, entity.source_table)], ledgers=False)
        dst = _Side(dest, entity, ranges, [target], ledgers=True)
        level, parents = 0, None
        while True:
            fs, fd = pool.submit(src.sums, level, parents), pool.submit(dst.sums, level, parents)
            s, d = fs.result(), fd.result()
            every = set(s) | set(d)
            differing = sorted(b for b in every if s.get(b) != d.get(b))
            if level == 0:
                diff.top_ranges, diff.differing_top_ranges = len(every), len(differing)
            else:
                diff.ranges_compared += len(every)
            diff.levels = level + 1
            leaves = [b for b in differing if ranges.finest(level)
                      or max(s.get(b, (0, 0))[0], d.get(b, (0, 0))[0]) <= LEAF_ROWS]
            if leaves:
                fs, fd = pool.submit(src.keys, level, leaves), pool.submit(dst.keys, level, leaves)
                src_keys, dst_keys = fs.result(), fd.result()
                diff.keys_listed += len(src_keys) + len(dst_keys)
                diff.gone += sorted(dst_keys - src_keys)
                diff.unaccounted += sorted(src_keys - dst_keys)
            parents = [b for b in differing if b not in set(leaves)]
            if not parents:
                break
            level += 1
    diff.seconds = time.perf_counter() - started
    return diff


def apply_hard_deletes(legacy_dsn: str, dest_dsn: str, dest: psycopg.Connection, entity: Entity,
                       run: runs.Run) -> int:
    """Delete, with before-images, the destination rows whose source row is gone, and forget
    their ledger rows; commits. Called by an incremental run's load, under the entity's write
    lock (``dest`` is the session holding it; the comparison reads on connections of its own).
    Idempotent: a retried load compares again and finds nothing left. Returns the rows deleted
    (the comparison's figures go to the run's ``counts.hard_deletes``)."""
    diff = compare_keys(legacy_dsn, dest_dsn, entity)
    deleted = 0
    if diff.gone:
        gone = sql.Identifier(f"migration_gone_{entity.name}")
        # Kept past a commit (the admin_api path commits before its HTTP deletes), dropped below.
        dest.execute(sql.SQL("CREATE TEMPORARY TABLE IF NOT EXISTS {} (k {} PRIMARY KEY)").format(
            gone, sql.SQL(entity.key_type)))
        dest.execute(sql.SQL("TRUNCATE {}").format(gone))
        with dest.cursor().copy(sql.SQL("COPY {} (k) FROM STDIN").format(gone)) as copy:
            for key in diff.gone:
                copy.write_row((key,))
        deleted = load_mod._delete_with_images(dest, entity, run.run_id, sql.SQL("SELECT k FROM {}").format(gone))
        for ledger in ("quarantine", "exclusions"):
            dest.execute(sql.SQL(_sql("forget_gone.sql")).format(
                ledger=sql.Identifier(ledger), key_type=sql.SQL(entity.key_type), gone=gone),
                {"entity": entity.name})
        dest.execute(sql.SQL("DROP TABLE {}").format(gone))
    runs.update(dest, run.run_id, counts={"hard_deletes": {**diff.as_dict(), "deleted": deleted}})
    dest.commit()
    cost = (f"{diff.top_ranges:,} key ranges compared in each database, {diff.differing_top_ranges:,} differed; "
            f"{diff.ranges_compared:,} sub-ranges compared, {diff.keys_listed:,} keys listed, {diff.seconds:.2f} s")
    if diff.gone:
        log.info("%s: %d destination rows deleted (%d keys, with ledger rows), their source rows are gone "
                 "(hard deletes); before-images taken, rows their deletes cascaded to included; %s",
                 entity.name, deleted, len(diff.gone), cost)
    else:
        log.info("%s: no hard deletes: every key the destination holds is still in the source; %s", entity.name, cost)
    if diff.unaccounted:
        log.warning("%s: %d source rows are neither loaded nor in a ledger (new since this run's snapshot, or "
                    "their parent's delete removed them from the destination); the next run's scope or the next "
                    "full run takes them. Keys: %s", entity.name, len(diff.unaccounted),
                    ", ".join(diff.unaccounted[:10]))
    return deleted

