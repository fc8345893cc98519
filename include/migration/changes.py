"""Change detection for a full run over a populated destination: which key ranges differ.

A full run decides every source row again. Over a destination that already holds the
previous run's outcome, most rows come out the same, and staging and comparing them
is most of the run's cost. So, before anything is staged, each database computes per
key range (the hard deletes' ranges, ``deletes.KeyRanges``) a count and a checksum
(the reconciliation's ``range_sums``) of every row's *outcome*:

* the legacy side runs the entity's whole transform (every fate: a parent newly
  quarantined or merged changes its children's disposition, reason or columns, so
  they differ although they did not change) and digests, per row, its key, its
  disposition and reason, and what that outcome writes: the destination's columns
  (loaded), ``_maps_to`` (excluded, the exclusion ledger's ``detail``) or ``_source``
  (quarantined, the quarantine ledger's ``source_row``);
* the destination side digests the same from what it holds: its table's rows
  (loaded, reason ``ok``) and the entity's rows in ``migration.exclusions`` and
  ``migration.quarantine``.

The first pass compares every 16th top-level range first: when most of them differ
over more rows than a key-by-key pass can afford (a scattered edit of one row in ten
of a large table), the comparison stops there and every row is staged, as without
it. Otherwise the other ranges follow. Ranges whose count or checksum differ are split into 16 and compared again while
that isolates them (fewer than a quarter of the ranges compared differ), down to
ranges of at most ``LEAF_ROWS`` rows; then (or at once, when a scattered change,
one row in ten, makes most ranges differ) their rows are compared key by key: each
side streams its rows' digests in key order and the two streams are merged, so
memory holds only the keys that differ (up to ``MAX_RANGES``; past that the ranges
are staged whole). Only the differing ranges (or keys) are extracted, staged and
merged.

A range that compares equal holds, in the destination, exactly what a staged run
would leave there: the same rows with the same values, the same ledger rows. Rules
the transform does not decide are the destination's own (a parent missing from the
destination): such a row is loaded by the transform and quarantined in the ledger,
so its range always differs and is decided again. Rows gone from the source leave a
key only the destination knows: their range differs and the run's sweep deletes them
there. Entities with side effects beyond their table and ledgers (users: Auth
accounts; media: files in Storage) are not compared (``why_not``).

The comparison keeps the count and checksum of the equal part's outcomes: the run's
accounting checks the destination's rows there against the count, and its
reconciliation (``reconcile.reconcile`` with the run's ranges) sums the destination
outside the staged ranges (``destination_outside``) instead of running the transform
over them again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from include.migration import db
from include.migration.deletes import TOP_BIGINT_SHIFT, TOP_UUID_HEX, KeyRanges
from include.migration.entities import Entity
from include.migration.extract import Scope, in_ranges, legacy_encoding, transform_query
from include.migration.reconcile import Stream, digest, legacy_streams, range_sums, stream_sums, typed_columns

log = logging.getLogger(__name__)

LEAF_ROWS = 64  # a differing range with at most this many rows on either side is compared key by key
SAMPLE_EVERY = 16  # the first pass compares every 16th top-level range before the others ...
GIVE_UP_SHARE = 0.5  # ... and stops when more than this share of them differ (a scattered change)
GIVE_UP_ROWS = 1_000_000  # ... over more rows than this (estimated): a key-by-key pass would cost more
MIN_SAMPLE = 8  # fewer sampled ranges than this decide nothing
MAX_SAMPLED_SPAN = 1 << 20  # bigint keys spread over more top-level ranges than this: no sample
SPLIT_WHILE_UNDER = 0.25  # split the differing ranges while fewer than this share of those compared differ
MAX_RANGES = 200_000  # differing ranges (or keys) kept with the run; past it, their top-level ranges instead


def why_not(entity: Entity) -> str | None:
    """Why a full run of ``entity`` stages every row instead of comparing first, or None."""
    if entity.hooks is not None or entity.extra_columns:
        return ("its rows have effects beyond its table and ledgers (Auth accounts, files in Storage) that "
                "its hooks apply to every staged row, which a comparison of the table cannot vouch for")
    if entity.key_type not in ("uuid", "bigint"):
        return f"no key ranges for key type {entity.key_type}"
    return None


@dataclass
class RangeDiff:
    """The key ranges that differ, and what the comparison saw and cost."""

    entity: str
    ranges: list[list[str]] = field(default_factory=list)  # inclusive [first, last] keys, in key order
    top_ranges: int = 0  # ranges of the first pass
    differing_top_ranges: int = 0
    ranges_compared: int = 0  # every range compared, every level
    levels: int = 0
    keys_listed: int = 0  # row digests listed, both sides
    source_rows: int = 0  # every source row (the snapshot's)
    equal_source_rows: int = 0  # those in ranges (or keys) found equal: accounted from the destination
    # The checksum of those rows' outcomes (``range_sums``' sum); None when not known (ranges coarsened).
    equal_checksum: int | None = 0
    differing_source_rows: int = 0  # those to stage
    differing_dest_rows: int = 0  # what the destination holds for them (table and ledgers)
    max_change_ts: datetime | None = None  # over every source row, as a staged run's watermark would see
    max_key: str | None = None  # append-only entities: the highest source key
    snapshot_at: datetime | None = None  # the legacy snapshot's time (the watermark stops there)
    top_counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # first pass: rows per range, each side
    stopped_by: str = ""
    gave_up: str = ""  # why the comparison stopped after its sample: every row is staged
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"top_ranges": self.top_ranges, "differing_top_ranges": self.differing_top_ranges,
                "ranges_compared": self.ranges_compared, "levels": self.levels, "keys_listed": self.keys_listed,
                "differing_ranges": len(self.ranges), "source_rows": self.source_rows,
                "equal_source_rows": self.equal_source_rows, "equal_checksum": self.equal_checksum,
                "differing_source_rows": self.differing_source_rows,
                "differing_dest_rows": self.differing_dest_rows,
                "max_change_ts": self.max_change_ts.isoformat() if self.max_change_ts else None,
                "max_key": self.max_key, "snapshot_at": self.snapshot_at.isoformat() if self.snapshot_at else None,
                "stopped_by": self.stopped_by, "gave_up": self.gave_up, "seconds": round(self.seconds, 3)}

    def summary(self) -> str:
        return (f"{self.ranges_compared:,} key ranges compared in each database ({self.top_ranges:,} top-level, "
                f"{self.levels} level{'s' if self.levels != 1 else ''}, {self.keys_listed:,} row digests listed), "
                f"{len(self.ranges):,} differ ({self.differing_top_ranges:,} top-level): "
                f"{self.differing_source_rows:,} source rows to stage (the destination holds "
                f"{self.differing_dest_rows:,} there); the other {self.equal_source_rows:,} of "
                f"{self.source_rows:,} source rows are in ranges whose count and checksum of every row's outcome "
                f"(key, disposition, reason, columns or ledger entry, through every fate) equal the destination's "
                f"table and ledgers, so they are not staged and are accounted from the destination"
                f"{'; ' + self.stopped_by if self.stopped_by else ''}; {self.seconds:.2f} s")


def _outcome_digest() -> sql.Composable:
    return digest([sql.SQL("t.k"), sql.SQL("t.disposition"), sql.SQL("t.reason"), sql.SQL("t.payload")])


class _Side:
    """One database's outcomes, read per key range in one repeatable-read snapshot.

    ``streams``: the legacy side's first pass over a large table is summed as several key
    ranges side by side, each on its own connection in the same snapshot
    (``reconcile.legacy_streams``)."""

    def __init__(self, conn: psycopg.Connection, entity: Entity, ranges: KeyRanges, legacy: bool,
                 streams: list[Stream] | None = None):
        self.conn, self.entity, self.ranges, self.legacy = conn, entity, ranges, legacy
        self.encoding = legacy_encoding(conn) if legacy else None
        self.streams = streams or [(conn, None)]

    def rows(self, within: list[list[str]] | None, *, outside: bool = False,
             key_range: tuple[str | None, str | None] | None = None) -> sql.Composable:
        """Every row's outcome (``k``, ``disposition``, ``reason``, ``payload``; the legacy side
        also ``change_ts``), of the keys ``within`` these inclusive ranges (None: every key);
        ``outside``: of the keys not in them (the destination side only)."""
        e = self.entity
        key, typ = sql.Identifier(e.key), sql.SQL(e.key_type)
        # A loaded row's payload is the digest of its columns, typed as the destination's, as text.
        row = digest(typed_columns(e, "t", e.column_names))
        if self.legacy:
            query = transform_query(e, Scope(kind="all", ranges=within, key_range=key_range), encoding=self.encoding)
            return sql.SQL(
                "SELECT t.{key} AS k, t._disposition AS disposition, t._reason AS reason, "
                "CASE t._disposition WHEN 'loaded' THEN {row}::text WHEN 'excluded' THEN t._maps_to "
                "ELSE t._source::text END AS payload, t._change_ts AS change_ts FROM ({q}) t"
            ).format(key=key, row=row, q=query)
        table = sql.SQL("{} t").format(sql.Identifier(e.schema_name, e.target_table))
        where, ledger_filter = sql.SQL(""), sql.SQL("")
        if within is not None:
            neg = sql.SQL("NOT " if outside else "")
            where = sql.SQL(" WHERE {}{}").format(neg, in_ranges(e, sql.SQL("t.{}").format(key), within))
            ledger_filter = sql.SQL(" AND {}{}").format(
                neg, in_ranges(e, sql.SQL("l.source_key::{}").format(typ), within))
        return sql.SQL(
            "SELECT t.{key} AS k, 'loaded' AS disposition, 'ok' AS reason, {row}::text AS payload "
            "FROM {table}{where} "
            "UNION ALL SELECT l.source_key::{typ}, 'excluded', l.rule, l.detail FROM migration.exclusions l "
            "WHERE l.entity = {name}{f} "
            "UNION ALL SELECT l.source_key::{typ}, 'quarantined', l.reason, l.source_row::text "
            "FROM migration.quarantine l WHERE l.entity = {name}{f}"
        ).format(key=key, row=row, table=table, where=where, typ=typ, name=sql.Literal(e.name), f=ledger_filter)

    def sums(self, level: int, within: list[list[str]] | None) -> dict[str, tuple]:
        extra: list[sql.Composable] = []
        if self.legacy and level == 0:
            extra = [sql.SQL("max(t.change_ts)"), sql.SQL("max(t.k)" if self.entity.append_only else "NULL")]
        streams = self.streams if level == 0 else [(self.conn, None)]
        return stream_sums(streams, lambda key_range: self.rows(within, key_range=key_range),
                           self.ranges.bucket(level, sql.SQL("t.k")), _outcome_digest(), extra=extra)

    @contextmanager
    def digests(self, within: list[list[str]]) -> Iterator[Iterator[tuple]]:
        """Each row's key and outcome digest, in key order, streamed through a server-side cursor."""
        query = sql.SQL("SELECT t.k, {} FROM ({}) t ORDER BY t.k").format(
            _outcome_digest(), self.rows(within))
        with self.conn.cursor(name=f"changes_{self.entity.name}") as cur:
            cur.itersize = 20_000
            cur.execute(query)
            yield iter(cur)


def compare(legacy_dsn: str, dest_dsn: str, entity: Entity) -> RangeDiff:
    """The key ranges whose rows' outcomes differ between the source and the destination;
    see the module docstring."""
    started = time.perf_counter()
    ranges = KeyRanges(entity)
    diff = RangeDiff(entity.name)
    with db.connection(legacy_dsn, application="migration-changes") as legacy, \
            db.connection(dest_dsn, application="migration-changes") as dest, ExitStack() as stack, \
            ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"changes-{entity.name}") as pool:
        for conn in (legacy, dest):
            # One snapshot each for every pass: the ranges found equal and those split are the same rows.
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
        streams = legacy_streams(legacy, legacy_dsn, entity, stack)
        diff.snapshot_at = legacy.execute("SELECT now()").fetchone()[0]
        db.tune_legacy(dest)
        src = _Side(legacy, entity, ranges, legacy=True, streams=streams)
        dst = _Side(dest, entity, ranges, legacy=False)
        _bisect(pool, src, dst, ranges, diff)
        legacy.rollback()
        dest.rollback()
    if len(diff.ranges) > MAX_RANGES:
        _coarsen(diff, ranges, entity)
    diff.ranges.sort(key=lambda r: int(r[0]) if entity.key_type == "bigint" else r[0].replace("-", ""))
    diff.seconds = time.perf_counter() - started
    return diff


def destination_outside(dest_dsn: str, entity: Entity, ranges: list[list[str]]) -> tuple[int, int, int]:
    """What the destination holds outside ``ranges`` (the ranges a run staged), as the comparison
    digests it: (rows and ledger entries, their checksum, the loaded rows among them). Equal to the
    comparison's ``equal_source_rows`` and ``equal_checksum``, it is still what the source held there."""
    with db.connection(dest_dsn, application="migration-reconcile") as conn:
        conn.read_only = True
        db.tune_legacy(conn)
        side = _Side(conn, entity, KeyRanges(entity), legacy=False)
        sums = range_sums(conn, side.rows(ranges, outside=True), sql.SQL("'all'"), _outcome_digest(),
                          extra=[sql.SQL("count(*) FILTER (WHERE t.disposition = 'loaded')")])
    n, checksum, loaded = sums.get("all", (0, 0, 0))
    return n, checksum, loaded


def _sums(pool: ThreadPoolExecutor, src: _Side, dst: _Side, level: int,
          within: list[list[str]] | None) -> tuple[dict[str, tuple], dict[str, tuple]]:
    fs, fd = pool.submit(src.sums, level, within), pool.submit(dst.sums, level, within)
    return fs.result(), fd.result()


def _differing(s: dict[str, tuple], d: dict[str, tuple]) -> list[str]:
    return sorted(b for b in set(s) | set(d) if s.get(b, (0, 0))[:2] != d.get(b, (0, 0))[:2])


def _top_level(pool: ThreadPoolExecutor, src: _Side, dst: _Side, ranges: KeyRanges,
               diff: RangeDiff) -> tuple[dict[str, tuple], dict[str, tuple]] | None:
    """The first pass: every 16th top-level range first, then (unless most of those differ:
    ``diff.gave_up``, None returned) the others. A scattered change (one row in ten edited)
    makes nearly every range differ, and comparing further would cost more than staging
    every row; the sample says so for a sixteenth of the full pass's cost."""
    sample, rest = _sample(src, ranges)
    if not sample:
        return _sums(pool, src, dst, 0, None)
    s, d = _sums(pool, src, dst, 0, sample)
    differs = _differing(s, d)
    compared, differing = len(set(s) | set(d)), len(differs)
    rows = SAMPLE_EVERY * sum(max(s.get(b, (0,))[0], d.get(b, (0,))[0]) for b in differs)
    if compared >= MIN_SAMPLE and differing > GIVE_UP_SHARE * compared and rows > GIVE_UP_ROWS:
        diff.ranges_compared, diff.levels = compared, 1
        diff.gave_up = (f"{differing:,} of the {compared:,} top-level key ranges compared first (every "
                        f"{SAMPLE_EVERY}th) differ, about {rows:,} rows in all: a change this scattered leaves "
                        "few rows in equal ranges, and comparing them key by key would cost more than staging "
                        "every row")
        return None
    s2, d2 = _sums(pool, src, dst, 0, rest)
    return {**s, **s2}, {**d, **d2}


def _sample(src: _Side, ranges: KeyRanges) -> tuple[list[list[str]], list[list[str]]]:
    """Every ``SAMPLE_EVERY``-th top-level range over the source's keys, and the rest of the key
    space (inclusive bounds, open at both ends, so the destination's keys outside the source's
    span are in it); ([], []) when the keys are too sparse to sample."""
    e = src.entity
    if ranges.uuid:
        picked = [f"{b:0{TOP_UUID_HEX}x}" for b in range(0, 16 ** TOP_UUID_HEX, SAMPLE_EVERY)]
        lowest, highest = 0, (1 << 128) - 1
    else:
        key = sql.Identifier(e.key)
        first, last = src.conn.execute(sql.SQL("SELECT min({k}) >> {s}, max({k}) >> {s} FROM {t}").format(
            k=key, s=sql.Literal(TOP_BIGINT_SHIFT), t=sql.Identifier("public", e.source_table))).fetchone()
        if first is None or (last - first) > MAX_SAMPLED_SPAN:
            return [], []
        start = first + (-first) % SAMPLE_EVERY
        picked = [str(b) for b in range(start, last + 1, SAMPLE_EVERY)]
        lowest, highest = -(1 << 63), (1 << 63) - 1

    def num(k: str) -> int:
        return int(k, 16) if ranges.uuid else int(k)

    def text(n: int) -> str:
        return f"{n:032x}" if ranges.uuid else str(n)

    sample = [list(ranges.bounds(0, b)) for b in picked]
    rest, at = [], lowest
    for lo, hi in sample:
        if num(lo) > at:
            rest.append([text(at), text(num(lo) - 1)])
        at = num(hi) + 1
    if at <= highest:
        rest.append([text(at), text(highest)])
    return sample, rest


def _bisect(pool: ThreadPoolExecutor, src: _Side, dst: _Side, ranges: KeyRanges, diff: RangeDiff) -> None:
    level, within = 0, None
    while True:
        if level == 0:
            top = _top_level(pool, src, dst, ranges, diff)
            if top is None:
                return
            s, d = top
        else:
            s, d = _sums(pool, src, dst, level, within)
        every = set(s) | set(d)
        differing = _differing(s, d)
        if level == 0:
            _first_pass(diff, s, d, every, differing)
        diff.ranges_compared += len(every)
        diff.levels = level + 1
        differs = set(differing)
        diff.equal_source_rows += sum(n for b, (n, *_) in s.items() if b not in differs)
        diff.equal_checksum = (diff.equal_checksum or 0) + sum(c for b, (_, c, *_) in s.items() if b not in differs)
        split = _settle(src, dst, ranges, diff, level, s, d, len(every), differing)
        if not split:
            return
        within = [list(ranges.bounds(level, b)) for b in split]
        level += 1


def _first_pass(diff: RangeDiff, s: dict[str, tuple], d: dict[str, tuple], every: set[str],
                differing: list[str]) -> None:
    diff.top_ranges, diff.differing_top_ranges = len(every), len(differing)
    diff.source_rows = sum(v[0] for v in s.values())
    stamps = [v[2] for v in s.values() if v[2] is not None]
    keys = [int(v[3]) for v in s.values() if v[3] is not None]
    diff.max_change_ts = max(stamps) if stamps else None
    diff.max_key = str(max(keys)) if keys else None
    diff.top_counts = {b: (s.get(b, (0,))[0], d.get(b, (0,))[0]) for b in every}


def _settle(src: _Side, dst: _Side, ranges: KeyRanges, diff: RangeDiff, level: int,
            s: dict[str, tuple], d: dict[str, tuple], compared: int, differing: list[str]) -> list[str]:
    """Decide each differing range of ``level``: split it (the ranges returned), compare its
    rows key by key, or (when more keys differ than a run keeps) stage it whole."""
    def rows(b: str) -> int:
        return max(s.get(b, (0,))[0], d.get(b, (0,))[0])

    isolating = len(differing) < SPLIT_WHILE_UNDER * compared
    leaves = [b for b in differing if ranges.finest(level) or rows(b) <= LEAF_ROWS]
    rest = [b for b in differing if not (ranges.finest(level) or rows(b) <= LEAF_ROWS)]
    if rest and not isolating:
        diff.stopped_by = (f"at level {level + 1}, {len(differing):,} of {compared:,} ranges differed "
                           "(a scattered change): not split further, compared key by key")
        leaves, rest = leaves + rest, []
    if leaves and not _list_keys(src, dst, [list(ranges.bounds(level, b)) for b in leaves], diff):
        diff.stopped_by = (f"more than {MAX_RANGES:,} keys differ: {len(leaves):,} ranges of level {level + 1} "
                           "staged whole")
        for b in leaves:
            diff.ranges.append(list(ranges.bounds(level, b)))
            diff.differing_source_rows += s.get(b, (0,))[0]
            diff.differing_dest_rows += d.get(b, (0,))[0]
    return rest


def _list_keys(src: _Side, dst: _Side, within: list[list[str]], diff: RangeDiff) -> bool:
    """Compare the rows of ``within`` key by key, both sides read in key order and merged as
    they stream (memory holds the differing keys only): each differing key becomes a range of
    one key. False, with nothing recorded, when more than ``MAX_RANGES`` keys differ."""
    found: list[str] = []
    n_src = n_dst = src_only = dst_only = equal = equal_sum = 0
    with src.digests(within) as s_rows, dst.digests(within) as d_rows:
        a, b = next(s_rows, None), next(d_rows, None)
        while a is not None or b is not None:
            if b is None or (a is not None and a[0] < b[0]):  # only the source has the key
                found.append(str(a[0]))
                src_only, n_src, a = src_only + 1, n_src + 1, next(s_rows, None)
            elif a is None or b[0] < a[0]:  # only the destination has it
                found.append(str(b[0]))
                dst_only, n_dst, b = dst_only + 1, n_dst + 1, next(d_rows, None)
            else:
                if a[1] == b[1]:
                    equal += 1
                    equal_sum += a[1]
                else:
                    found.append(str(a[0]))
                n_src, n_dst = n_src + 1, n_dst + 1
                a, b = next(s_rows, None), next(d_rows, None)
            if len(found) > MAX_RANGES:
                return False
    both = len(found) - src_only - dst_only
    diff.keys_listed += n_src + n_dst
    diff.ranges += [[k, k] for k in found]
    diff.differing_source_rows += src_only + both
    diff.differing_dest_rows += dst_only + both
    diff.equal_source_rows += equal
    diff.equal_checksum = (diff.equal_checksum or 0) + equal_sum
    return True


def _coarsen(diff: RangeDiff, ranges: KeyRanges, entity: Entity) -> None:
    """Too many ranges to keep with the run: their top-level ranges instead (each holds whole
    the ranges and keys found, so nothing differing is left out; more rows are staged)."""
    found = len(diff.ranges)
    top = {_top_bucket(lo, entity) for lo, _hi in diff.ranges}
    diff.ranges = [list(ranges.bounds(0, b)) for b in top]
    diff.differing_source_rows = sum(diff.top_counts[b][0] for b in top)
    diff.differing_dest_rows = sum(diff.top_counts[b][1] for b in top)
    diff.equal_source_rows = diff.source_rows - diff.differing_source_rows
    diff.equal_checksum = None
    log.info("%s: %d differing ranges, more than %d: staging their %d top-level ranges whole", entity.name,
             found, MAX_RANGES, len(top))


def _top_bucket(key: str, entity: Entity) -> str:
    """The first pass's range of a key (``KeyRanges.bucket`` at level 0, in Python)."""
    if entity.key_type == "uuid":
        return key.replace("-", "")[:TOP_UUID_HEX]
    return str(int(key) >> TOP_BIGINT_SHIFT)
