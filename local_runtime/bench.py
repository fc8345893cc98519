"""The benchmark: the pipeline measured against raw binary ``COPY`` in the same run.

``make bench SCALE=small|medium|large`` starts its own embedded PostgreSQL
(``.local/bench-pg``, a free port; or the server of ``BENCH_PG_URI``), builds
two fresh databases on it (``bench_legacy``, ``bench_supabase``), seeds the
legacy world at the scale and bootstraps the destination. Then, in one run:

* the **limit** of each entity: the legacy table streamed by binary
  ``COPY ... TO STDOUT`` into ``COPY ... FROM STDIN`` of an empty scratch
  table with the legacy column types and a primary key (``bench_limit``);
* the **naive** plan: rows read through a server-side cursor and written with
  ``INSERT ... ON CONFLICT (id) DO UPDATE``, ``executemany`` in batches of
  100, one commit per batch (``bench_naive``), on a slice of the messages;
* **the pipeline**, entity by entity in load order: (1) a full run into the
  empty destination, (2) a full run with nothing changed, (3) a full run after
  10 % of the messages were edited, (4) an incremental run after
  ``apply_changes(fraction=0.01)``, (5) the reconciliation alone;
* a profile of the messages full run: cProfile of the Python side,
  ``pg_stat_statements`` of the SQL side, ``EXPLAIN (ANALYZE, BUFFERS)`` of
  the transform query and of one merge chunk.

Every measured step runs in its own spawned child process, so its wall time
excludes interpreter start-up and its peak RSS (``ru_maxrss`` of the child)
is the step's alone. A ``CHECKPOINT`` precedes each step so no step pays for
an earlier one's writes. Output: a table with every figure, its ratio to the
limit and the targets (PASS/MISS), ``bench-results/<timestamp>-<scale>.json``
and ``.png``, and one line appended to ``bench-results/history.jsonl``; the
next run at another scale is compared against that line.

Environment: ``BENCH_PG_URI`` (use that server), ``BENCH_KEEP=1`` (leave the
embedded server running), ``BENCH_FAST=1`` (embedded server with fsync off).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import multiprocessing as mp
import os
import pstats
import resource
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench-results"
BENCH_PG_DIR = ROOT / ".local" / "bench-pg"
LEGACY_DB, DEST_DB = "bench_legacy", "bench_supabase"
ENTITY_ORDER = ("users", "agents", "conversations", "messages")
NAIVE_ROWS = 100_000
NAIVE_BATCH = 100
MB = 1_000_000

# Step kinds, in the order they run and print.
LIMIT, NAIVE = "limit", "naive"
FULL, UNCHANGED, CHANGED, INCREMENTAL, RECONCILE = (
    "full", "full_unchanged", "full_changed_10pct", "incremental_1pct", "reconcile")
STEP_LABELS = {
    LIMIT: "limit: binary COPY",
    NAIVE: "naive: executemany x100",
    FULL: "(1) full, empty destination",
    UNCHANGED: "(2) full, nothing changed",
    CHANGED: "(3) full, 10% messages edited",
    INCREMENTAL: "(4) incremental after 1%",
    RECONCILE: "(5) reconciliation",
}
# Steps that read the whole legacy table: their MB/s is the table's size over the time.
WHOLE_TABLE_STEPS = (LIMIT, FULL, UNCHANGED, CHANGED, RECONCILE)
RSS_LIMIT_MB = 400.0


# ---------------------------------------------------------------------------
# The report: pure functions of the measurements (unit-tested)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def find(steps: list[dict], step: str, entity: str) -> dict | None:
    for row in steps:
        if row["step"] == step and row["entity"] == entity:
            return row
    return None


def enrich(steps: list[dict], legacy_bytes: dict[str, int]) -> list[dict]:
    """Add rows/s, MB/s and the ratio to the entity's limit to every step row."""
    out = []
    for row in steps:
        row = dict(row)
        ok = row.get("error") is None
        limit = find(steps, LIMIT, row["entity"])
        row["rows_per_s"] = ratio(row.get("rows"), row.get("seconds")) if ok else None
        size = legacy_bytes.get(row["entity"]) if row["step"] in WHOLE_TABLE_STEPS else None
        row["mb_per_s"] = ratio(size / MB, row.get("seconds")) if ok and size else None
        usable = limit is not None and limit.get("error") is None and row["step"] != NAIVE
        row["x_limit"] = ratio(row.get("seconds"), limit["seconds"]) if ok and usable else None
        out.append(row)
    return out


def totals(steps: list[dict]) -> list[dict]:
    """One row per step kind over every entity it ran for: summed times, rows and writes."""
    kinds = [k for k in STEP_LABELS if k != NAIVE and any(r["step"] == k for r in steps)]
    limit_entities = {r["entity"]: r for r in steps if r["step"] == LIMIT}
    out = []
    for kind in kinds:
        rows = [r for r in steps if r["step"] == kind]
        failed = any(r.get("error") for r in rows)
        seconds = sum(r.get("seconds") or 0.0 for r in rows)
        limit_seconds = sum(limit_entities[r["entity"]]["seconds"] for r in rows
                            if r["entity"] in limit_entities)
        written = [r.get("written") for r in rows if r.get("written") is not None]
        out.append({
            "step": kind, "entity": "total", "seconds": seconds,
            "rows": sum(r.get("rows") or 0 for r in rows),
            "cpu_seconds": sum(r.get("cpu_seconds") or 0.0 for r in rows),
            "peak_rss_mb": max((r.get("peak_rss_mb") or 0.0 for r in rows), default=None),
            "written": sum(written) if written else None,
            "x_limit": None if failed else ratio(seconds, limit_seconds),
            "error": "a step failed" if failed else None,
        })
    return out


@dataclass(frozen=True)
class Target:
    name: str
    label: str
    op: str  # '<=', '>=', '<', '=='
    threshold: float
    unit: str  # 'x', 'MB', 'rows', '%'


TARGETS = (
    Target("full_vs_limit", "full run, messages / limit", "<=", 1.4, "x"),
    Target("unchanged_vs_limit", "full run, nothing changed, messages / limit", "<=", 1.5, "x"),
    Target("unchanged_written", "full run, nothing changed: rows written (all)", "==", 0, "rows"),
    Target("changed_vs_limit", "full run, 10% edited, messages / limit", "<=", 2.0, "x"),
    Target("incremental_vs_full", "incremental after 1%, messages / full run", "<=", 0.1, "x"),
    Target("reconcile_vs_limit", "reconciliation, messages / limit", "<=", 1.0, "x"),
    Target("pipeline_vs_naive", "pipeline rows/s / naive rows/s (messages)", ">=", 6.0, "x"),
    Target("peak_rss", "peak RSS of any pipeline step", "<", RSS_LIMIT_MB, "MB"),
)
SCALE_TARGETS = (
    Target("scale_memory", "peak RSS change against the other scale", "<=", 10.0, "%"),
    Target("scale_time", "time ratio off the row ratio (full, messages)", "<=", 10.0, "%"),
)


def passes(value: float, op: str, threshold: float) -> bool:
    return {"<=": value <= threshold, ">=": value >= threshold, "<": value < threshold,
            "==": value == threshold}[op]


def _x(steps: list[dict], step: str, entity: str = "messages") -> float | None:
    row = find(steps, step, entity)
    return row.get("x_limit") if row else None


def _seconds(steps: list[dict], step: str, entity: str = "messages") -> float | None:
    row = find(steps, step, entity)
    return row.get("seconds") if row and row.get("error") is None else None


def target_values(steps: list[dict]) -> dict[str, float | None]:
    """The figure each target is judged on (None: the step did not run or failed)."""
    unchanged = [r for r in steps if r["step"] == UNCHANGED]
    written = None
    if unchanged and all(r.get("written") is not None for r in unchanged):
        written = float(sum(r["written"] for r in unchanged))
    full, naive = find(steps, FULL, "messages"), find(steps, NAIVE, "messages")
    pipeline_rate = full.get("rows_per_s") if full else None
    naive_rate = naive.get("rows_per_s") if naive else None
    rss = [r["peak_rss_mb"] for r in steps
           if r["step"] not in (LIMIT, NAIVE) and r.get("peak_rss_mb") is not None]
    return {
        "full_vs_limit": _x(steps, FULL),
        "unchanged_vs_limit": _x(steps, UNCHANGED),
        "unchanged_written": written,
        "changed_vs_limit": _x(steps, CHANGED),
        "incremental_vs_full": ratio(_seconds(steps, INCREMENTAL), _seconds(steps, FULL)),
        "reconcile_vs_limit": _x(steps, RECONCILE),
        "pipeline_vs_naive": ratio(pipeline_rate, naive_rate),
        "peak_rss": max(rss) if rss else None,
    }


def peak_rss_step(steps: list[dict]) -> str | None:
    """Which pipeline step used the most memory, as 'step entity'."""
    rows = [r for r in steps if r["step"] not in (LIMIT, NAIVE) and r.get("peak_rss_mb") is not None]
    if not rows:
        return None
    top = max(rows, key=lambda r: r["peak_rss_mb"])
    return f"{top['step']} {top['entity']}"


def judge(targets: tuple[Target, ...], values: dict[str, float | None]) -> list[dict]:
    out = []
    for t in targets:
        value = values.get(t.name)
        verdict = "n/a" if value is None else ("PASS" if passes(value, t.op, t.threshold) else "MISS")
        out.append({"name": t.name, "label": t.label, "value": value, "op": t.op, "threshold": t.threshold,
                    "unit": t.unit, "verdict": verdict})
    return out


def history_record(report: dict) -> dict:
    """The line ``history.jsonl`` keeps of a run: enough to compare two scales."""
    steps = report["steps"]
    full = find(steps, FULL, "messages") or {}
    values = target_values(steps)
    return {
        "timestamp": report["timestamp"], "scale": report["scale"],
        "messages_rows": report["counts"].get("messages"),
        "full_messages_seconds": full.get("seconds") if full.get("error") is None else None,
        "full_total_seconds": sum(r["seconds"] for r in steps if r["step"] == FULL),
        "peak_rss_mb": values["peak_rss"],
        "peak_rss_step": peak_rss_step(steps),
        "targets": {t["name"]: t["verdict"] for t in report["targets"]},
        "values": values,
        "result": report.get("result_file"),
    }


# Scales compared with each other: small is all fixed costs, so it has no partner.
SCALE_PARTNER = {"medium": "large", "large": "medium"}


def last_other_scale(lines: list[str], scale: str) -> dict | None:
    """The newest history record of ``scale``'s partner scale (medium <-> large)."""
    partner = SCALE_PARTNER.get(scale)
    for line in reversed(lines):
        line = line.strip()
        if not line or partner is None:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("scale") == partner:
            return record
    return None


def scale_values(current: dict, other: dict | None) -> dict[str, float | None]:
    """Memory change (%) and how far the time ratio is from the row ratio (%), two scales apart."""
    if other is None:
        return {"scale_memory": None, "scale_time": None}
    memory = ratio(current.get("peak_rss_mb"), other.get("peak_rss_mb"))
    row_ratio = ratio(current.get("messages_rows"), other.get("messages_rows"))
    time_ratio = ratio(current.get("full_messages_seconds"), other.get("full_messages_seconds"))
    off = ratio(time_ratio, row_ratio)
    return {
        "scale_memory": None if memory is None else abs(memory - 1) * 100,
        "scale_time": None if off is None else abs(off - 1) * 100,
        "row_ratio": row_ratio, "time_ratio": time_ratio,
    }


_STATEMENT_PARTS: tuple[tuple[Callable[[str], bool], str], ...] = (
    (lambda s: s.startswith("COPY (") and "TO STDOUT" in s, "extract: transform query (legacy, COPY TO)"),
    (lambda s: s.startswith("COPY ") and "FROM STDIN" in s, "extract: stage write (COPY FROM)"),
    (lambda s: s.startswith("WITH m AS (INSERT"), "load: chunk merge (INSERT ... ON CONFLICT)"),
    (lambda s: "migration.before_images" in s, "load: before-images"),
    (lambda s: s.startswith('INSERT INTO "public".'), "load: chunk insert into an empty range"),
    (lambda s: s.startswith("SELECT EXISTS"), "load: empty-range check"),
    (lambda s: "row_number() OVER" in s, "load: chunk bounds"),
    (lambda s: s.startswith('DELETE FROM "public".') and "NOT EXISTS" in s, "load: sweep of hard deletes"),
    (lambda s: s.startswith('DELETE FROM "public".'), "load: removal of excluded / quarantined rows"),
    (lambda s: "migration.quarantine" in s or 'migration."quarantine"' in s or "migration.exclusions" in s
     or 'migration."exclusions"' in s or "migration.user_id_map" in s, "load: ledgers"),
    (lambda s: s.startswith('UPDATE "migration_stage".'), "transform: destination checks"),
    (lambda s: any(t in s for t in ("migration.runs", "migration.watermarks", "migration.locks",
                                    "migration.run_accounting", "pg_constraint")), "run bookkeeping"),
    (lambda s: s.startswith("SELECT") and ("count(*)" in s or "max(" in s), "counts and accounting"),
    (lambda s: s.startswith(("CREATE", "DROP")), "stage DDL"),
)


def statement_label(query: str) -> str:
    """Which part of the pipeline a SQL statement belongs to (for the profile)."""
    q = " ".join(query.split())
    for test, label in _STATEMENT_PARTS:
        if test(q):
            return label
    return "other"


def by_part(statements: list[dict]) -> list[tuple[str, str, float, int]]:
    """Statement times summed per (database, pipeline part), largest first."""
    sums: dict[tuple[str, str], list[float]] = {}
    for st in statements:
        acc = sums.setdefault((st["database"], st["part"]), [0.0, 0])
        acc[0] += st["seconds"]
        acc[1] += st["calls"]
    return sorted(((d, part, secs, int(calls)) for (d, part), (secs, calls) in sums.items()),
                  key=lambda t: -t[2])


def _fmt_num(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def _fmt_x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def step_table(steps: list[dict], total_rows: list[dict]) -> list[str]:
    head = (f"{'step':<31} {'entity':<13} {'rows':>10} {'seconds':>8} {'rows/s':>10} {'MB/s':>7} "
            f"{'RSS MB':>7} {'srv MB':>7} {'py CPU':>7} {'load':>5} {'written':>9} {'x limit':>8}")
    lines = [head, "-" * len(head)]
    for kind in STEP_LABELS:
        rows = [r for r in steps if r["step"] == kind] + [r for r in total_rows if r["step"] == kind]
        for r in rows:
            lines.append(_step_line(r))
    return lines


def _step_line(r: dict) -> str:
    label = STEP_LABELS[r["step"]]
    if r.get("error") and r["entity"] != "total":
        return f"{label:<31} {r['entity']:<13} FAILED: {r['error'][:120]}"
    return (f"{label:<31} {r['entity']:<13} {_fmt_num(r.get('rows')):>10} "
            f"{_fmt_num(r.get('seconds'), '.2f'):>8} "
            f"{_fmt_num(r.get('rows_per_s')):>10} {_fmt_num(r.get('mb_per_s'), '.1f'):>7} "
            f"{_fmt_num(r.get('peak_rss_mb')):>7} {_fmt_num(r.get('server_peak_mb')):>7} "
            f"{_fmt_num(r.get('cpu_seconds'), '.2f'):>7} {_fmt_num(r.get('load_1m'), '.1f'):>5} "
            f"{_fmt_num(r.get('written')):>9} {_fmt_x(r.get('x_limit')):>8}")


def breakdown_lines(steps: list[dict], entity: str = "messages") -> list[str]:
    """Each pipeline run of ``entity`` split by its run record: extract, load (merge), the rest."""
    lines = []
    for kind in (FULL, UNCHANGED, CHANGED, INCREMENTAL):
        row = find(steps, kind, entity)
        if not row or row.get("error") or row.get("seconds") is None:
            continue
        detail = row.get("detail") or {}
        ext, load = detail.get("extract_seconds"), detail.get("load_seconds")
        rest = row["seconds"] - (ext or 0) - (load or 0)
        lines.append(f"  {STEP_LABELS[kind]:<31} extract {_fmt_num(ext, '.2f'):>7} s   "
                     f"load {_fmt_num(load, '.2f'):>7} s"
                     f"   transform checks + accounting + finish {rest:6.2f} s   of {row['seconds']:.2f} s")
    return lines


def _fmt_target_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    formats = {"x": f"{value:.2f}x", "MB": f"{value:.0f} MB", "rows": f"{value:,.0f}", "%": f"{value:.1f}%"}
    return formats[unit]


def target_table(verdicts: list[dict]) -> list[str]:
    lines = [f"{'target':<52} {'value':>10} {'target':>12}  result"]
    for v in verdicts:
        goal = f"{v['op']} {_fmt_target_value(v['threshold'], v['unit'])}"
        value = _fmt_target_value(v["value"], v["unit"])
        lines.append(f"{v['label']:<52} {value:>10} {goal:>12}  {v['verdict']}")
    return lines


# ---------------------------------------------------------------------------
# Child processes: every measured step runs in its own


def _rss_mb(field: str) -> float:
    """This process's resident memory now (VmRSS) or at its peak (VmHWM), in MB.

    Not ``ru_maxrss``: Linux carries it across exec, so a spawned child would
    report its parent's peak whenever that is higher than its own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # KiB on Linux


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child_main(pipe: Any, func_name: str, kwargs: dict, log_path: str, profile_path: str | None) -> None:
    logging.basicConfig(filename=log_path, level=logging.INFO,
                        format="%(asctime)s %(processName)s %(name)s %(levelname)s %(message)s")
    func = globals()[func_name]
    baseline = _rss_mb("VmRSS")
    cpu_before = _cpu_seconds()
    profiler = cProfile.Profile() if profile_path else None
    out: dict[str, Any] = {"error": None, "result": {}}
    started = time.perf_counter()
    try:
        if profiler:
            profiler.enable()
        out["result"] = func(**kwargs)
    except Exception as err:  # reported in the table; the benchmark goes on
        logging.getLogger("bench").exception("%s failed", func_name)
        out["error"] = f"{type(err).__name__}: {err}"
    finally:
        if profiler:
            profiler.disable()
            profiler.dump_stats(profile_path)
    out["seconds"] = time.perf_counter() - started
    out["peak_rss_mb"] = _rss_mb("VmHWM")
    out["cpu_seconds"] = _cpu_seconds() - cpu_before
    out["baseline_rss_mb"] = baseline
    pipe.send(out)
    pipe.close()


class ServerMemory:
    """Samples the embedded server's private memory (sum of USS of its processes)."""

    def __init__(self, postmaster_pid: int | None, interval: float = 0.5):
        self.pid, self.interval = postmaster_pid, interval

    def _sample(self) -> float | None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None
        total = 0
        for proc in procs:
            try:
                total += proc.memory_full_info().uss
            except psutil.Error:
                continue
        return total / MB

    @contextmanager
    def window(self) -> Iterator[dict]:
        peak: dict[str, float | None] = {"mb": None}
        if self.pid is None:
            yield peak
            return
        stop = threading.Event()

        def run() -> None:
            while not stop.is_set():
                value = self._sample()
                if value is not None and (peak["mb"] is None or value > peak["mb"]):
                    peak["mb"] = value
                stop.wait(self.interval)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield peak
        finally:
            stop.set()
            thread.join()


@dataclass
class Bench:
    legacy: str
    dest: str
    scale: str
    stamp: str
    log_path: Path
    memory: ServerMemory
    base_uri: str

    def measure(self, step: str, entity: str, func_name: str, /, *, profile_path: Path | None = None,
                **kwargs: Any) -> dict:
        """Run ``func_name(**kwargs)`` in a spawned child; return its figures as a step row."""
        checkpoint(self.base_uri)
        ctx = mp.get_context("spawn")
        receive, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child_main, name=f"bench-{step}-{entity}",
                           args=(send, func_name, kwargs, str(self.log_path),
                                 str(profile_path) if profile_path else None))
        load_before = os.getloadavg()[0]
        with self.memory.window() as server:
            proc.start()
            send.close()
            try:
                out = receive.recv()
            except EOFError:
                out = {"error": "the child process died", "result": {}, "seconds": None, "peak_rss_mb": None}
            proc.join()
        result = out.get("result") or {}
        row = {"step": step, "entity": entity, "seconds": out.get("seconds"), "rows": result.get("rows"),
               "peak_rss_mb": out.get("peak_rss_mb"), "baseline_rss_mb": out.get("baseline_rss_mb"),
               "server_peak_mb": server["mb"], "written": result.get("written"), "error": out.get("error"),
               "cpu_seconds": out.get("cpu_seconds"), "load_1m": max(load_before, os.getloadavg()[0]),
               "detail": {k: v for k, v in result.items() if k not in ("rows", "written")}}
        say(f"  {STEP_LABELS[step]:<31} {entity:<13} " + (
            f"FAILED: {row['error']}" if row["error"] else
            f"{_fmt_num(row['rows'])} rows in {row['seconds']:.2f} s, peak RSS {row['peak_rss_mb']:.0f} MB"))
        return row


# ---------------------------------------------------------------------------
# The measured steps (each runs inside a child)


def _legacy_columns(entity_name: str) -> list[str]:
    from include.migration.entities import get

    return list(get(entity_name).source_columns)


def step_limit(legacy: str, dest: str, entity: str) -> dict:
    """Binary COPY of the legacy table into the empty scratch copy: the floor.
    Read and written as fast as the pipeline's own relay does (db.copy_rows, 1 MiB writes)."""
    from include.migration import db

    cols = sql.SQL(", ").join(sql.Identifier(c) for c in _legacy_columns(entity))
    with psycopg.connect(legacy) as src, psycopg.connect(dest) as dst:
        with src.cursor() as rcur, dst.cursor() as wcur:
            with rcur.copy(sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT BINARY)").format(
                    cols, sql.Identifier("public", entity))) as out, \
                    wcur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                        sql.Identifier("bench_limit", entity), cols)) as into:
                copied = db.relay_copy(out, into)
            rows = wcur.rowcount
        dst.commit()
    return {"rows": rows, "bytes_copied": copied}


def step_naive(legacy: str, dest: str, entity: str, limit_rows: int) -> dict:
    """The plan's first idea: read rows in Python, upsert 100 at a time, commit each batch."""
    from include.migration.entities import get

    names = _legacy_columns(entity)
    key = get(entity).key
    insert = sql.SQL(
        "INSERT INTO {t} ({cols}) VALUES ({vals}) ON CONFLICT ({key}) DO UPDATE SET {sets}").format(
        t=sql.Identifier("bench_naive", entity), cols=sql.SQL(", ").join(map(sql.Identifier, names)),
        vals=sql.SQL(", ").join(sql.Placeholder() * len(names)), key=sql.Identifier(key),
        sets=sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in names if c != key))
    rows = 0
    with psycopg.connect(legacy) as src, psycopg.connect(dest) as dst:
        with src.cursor(name="bench_naive") as rcur:
            rcur.itersize = 2000
            rcur.execute(sql.SQL("SELECT {} FROM {} ORDER BY {} LIMIT {}").format(
                sql.SQL(", ").join(map(sql.Identifier, names)), sql.Identifier("public", entity),
                sql.Identifier(key), sql.Literal(limit_rows)))
            batch: list[tuple] = []
            for record in rcur:
                batch.append(record)
                if len(batch) == NAIVE_BATCH:
                    rows += _naive_flush(dst, insert, batch)
            rows += _naive_flush(dst, insert, batch)
    return {"rows": rows}


def _naive_flush(dst: psycopg.Connection, insert: sql.Composable, batch: list[tuple]) -> int:
    if not batch:
        return 0
    with dst.cursor() as cur:
        cur.executemany(insert, batch)
    dst.commit()
    n = len(batch)
    batch.clear()
    return n


def step_pipeline(legacy: str, dest: str, entity: str, dag_run_id: str, mode: str, **extra: Any) -> dict:
    """One ``run_entity`` without validation and reconciliation; figures from its run record."""
    from include.migration import pipeline

    out = pipeline.run_entity(pipeline.Conns(legacy, dest), entity, dag_run_id, mode=mode,
                              validate_with_gx=False, reconcile_after=False, quarantine_threshold_pct=100,
                              **extra)
    written = sum(out.get(k) or 0 for k in ("inserted", "updated", "deleted"))
    record = _run_record(dest, out["run_id"])
    return {"rows": record.get("stage_rows"), "written": written, **out, **record}


def _run_record(dest: str, run_id: str) -> dict:
    with psycopg.connect(dest) as conn:
        row = conn.execute("SELECT stage_rows, source_rows, scope->>'kind', counts FROM migration.runs "
                           "WHERE run_id = %s", (run_id,)).fetchone()
    if row is None:
        return {}
    counts = row[3] or {}
    accounting = counts.get("accounting") or {}
    return {"stage_rows": row[0], "source_rows": row[1], "scope": row[2],
            "extract_seconds": counts.get("extract_seconds"),
            "load_seconds": (counts.get("load") or {}).get("load_seconds"),
            "dispositions": {k: accounting.get(k) for k in ("loaded", "excluded", "quarantined")}}


def step_reconcile(legacy: str, dest: str, entity: str) -> dict:
    from include.migration.entities import get
    from include.migration.reconcile import reconcile

    rec = reconcile(legacy, dest, get(entity))
    return {"rows": rec.source_rows, "target_rows": rec.target_rows, "buckets": rec.buckets,
            "clean": rec.clean, "verdict": rec.verdict_line()}


def step_profile(legacy: str, dest: str, entity: str, dag_run_id: str) -> dict:
    """The messages full run's steps one by one, timed, with its first load chunk explained (untimed)."""
    from include.migration import pipeline

    conns = pipeline.Conns(legacy, dest)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    run_id = pipeline.extract(conns, entity, dag_run_id, mode="full", dry_run=False)["run_id"]
    timings["extract"] = time.perf_counter() - started
    started = time.perf_counter()
    pipeline.transform(conns, entity, run_id)
    timings["transform (destination checks)"] = time.perf_counter() - started
    chunk_plan = explain_first_chunk(dest, entity, run_id)
    empty_destination_messages(dest)  # the explained chunk was rolled back: drop its dead rows too
    started = time.perf_counter()
    loaded = pipeline.load(conns, entity, run_id, quarantine_threshold_pct=100)
    timings["load (merge, ledgers, accounting)"] = time.perf_counter() - started
    with psycopg.connect(dest) as conn:
        direct_steps = conn.execute("SELECT counts->'direct'->'steps' FROM migration.runs WHERE run_id = %s",
                                    (run_id,)).fetchone()[0]
    for name, secs in (direct_steps or {}).items():  # a direct load: its own steps, inside the load
        timings[f"  of which direct load: {name}"] = secs
    started = time.perf_counter()
    pipeline.finish(conns, run_id, "succeeded")
    timings["finish (drop stage)"] = time.perf_counter() - started
    record = _run_record(dest, run_id)
    return {"rows": record.get("stage_rows"), "timings": timings, "chunk_plan": chunk_plan,
            "extract_seconds": record.get("extract_seconds"), "load_seconds": record.get("load_seconds"),
            "chunks": loaded.get("chunks")}


class _FirstWriteSeen(Exception):
    pass


class _ExplainFirstWrite:
    """A connection stand-in for the load: passes statements through, holds its
    commits back, and runs the first statement that writes the target table
    (plain INSERT into an empty range, or the merge) under ``EXPLAIN (ANALYZE,
    BUFFERS)``, then stops the load. The caller rolls everything back."""

    def __init__(self, conn: psycopg.Connection, target: sql.Identifier):
        self.conn = conn
        self.target = target.as_string(conn)
        self.plan: list[str] = []

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        text = query.as_string(self.conn) if isinstance(query, sql.Composable) else str(query)
        if f"INSERT INTO {self.target}" not in text:
            return self.conn.execute(query, params, **kwargs)
        explained = sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ") + (
            query if isinstance(query, sql.Composable) else sql.SQL(text))
        self.plan = [r[0] for r in self.conn.execute(explained, params)]
        raise _FirstWriteSeen

    def commit(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def explain_first_chunk(dest: str, entity_name: str, run_id: str) -> list[str]:
    """The first chunk of a staged run's load, explained, in a transaction that is rolled back."""
    try:
        from include.migration import db, pipeline, runs
        from include.migration import load as load_mod
        from include.migration.entities import get

        entity = get(entity_name)
        with db.connection(dest) as conn:
            run = runs.get(conn, run_id)
            assert run is not None and run.stage_table is not None
            spy = _ExplainFirstWrite(conn, sql.Identifier(entity.schema_name, entity.target_table))
            try:
                load_mod.load(spy, entity, run, batch_size=pipeline.DEFAULT_BATCH_SIZE,  # type: ignore[arg-type]
                              full=run.mode == "full")
            except _FirstWriteSeen:
                pass
            conn.rollback()
        return spy.plan or ["not captured: the load wrote no chunk"]
    except Exception as err:  # the load's internals moved: the rest of the profile stands
        return [f"not captured: {type(err).__name__}: {err}"]


# ---------------------------------------------------------------------------
# The server, the databases, the world


def say(message: str) -> None:
    print(message, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _running_port(data_dir: Path) -> int | None:
    from local_runtime import postgres as local_pg

    if not local_pg.is_running(data_dir.resolve()):
        return None
    return int((data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()[3])


@dataclass
class Server:
    base_uri: str
    data_dir: Path | None  # the embedded server's folder; None for BENCH_PG_URI
    postmaster_pid: int | None


def start_server() -> Server:
    uri = os.environ.get("BENCH_PG_URI")
    if uri:
        return Server(uri.rstrip("/"), None, None)
    from local_runtime import postgres as local_pg

    fast = os.environ.get("BENCH_FAST") == "1"
    port = _running_port(BENCH_PG_DIR) or _free_port()
    base = local_pg.start(BENCH_PG_DIR, port, fast=fast)
    if _preload_statements(base):
        base = local_pg.restart(BENCH_PG_DIR, port, fast=fast)
    pid = int((BENCH_PG_DIR / "pgdata" / "postmaster.pid").read_text().split()[0])
    return Server(base, BENCH_PG_DIR, pid)


def _preload_statements(base: str) -> bool:
    """Ask for pg_stat_statements (off until the profile); True when a restart is needed."""
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        loaded = conn.execute("SHOW shared_preload_libraries").fetchone()[0]
        if "pg_stat_statements" in loaded:
            return False
        conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        conn.execute("ALTER SYSTEM SET pg_stat_statements.track = 'none'")
    return True


def statements_available(base: str) -> bool:
    try:
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT count(*) FROM pg_stat_statements").fetchone()
        return True
    except psycopg.Error:
        return False


def set_statement_tracking(base: str, on: bool) -> None:
    """Track the bench databases' statements (and only theirs) during the profile."""
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        for name in (LEGACY_DB, DEST_DB):
            statement = ("ALTER DATABASE {} SET pg_stat_statements.track = 'top'" if on
                         else "ALTER DATABASE {} RESET pg_stat_statements.track")
            conn.execute(sql.SQL(statement).format(sql.Identifier(name)))
        if on:
            conn.execute("SELECT pg_stat_statements_reset()")


def fresh_databases(base: str) -> tuple[str, str]:
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        for name in (LEGACY_DB, DEST_DB):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return f"{base}/{LEGACY_DB}", f"{base}/{DEST_DB}"


def checkpoint(base: str) -> None:
    try:
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute("CHECKPOINT")
    except psycopg.Error:  # not allowed on a shared server without pg_checkpoint: measure anyway
        pass


def code_version() -> dict[str, Any]:
    """The commit measured, and the pipeline files that differ from it (figures of a moving tree)."""
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "include").splitlines()
             if line.startswith(" M") or line.startswith("M")]
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or None, "modified": dirty}


def server_settings(base: str) -> dict[str, str]:
    names = ("server_version", "fsync", "synchronous_commit", "full_page_writes", "shared_buffers",
             "work_mem", "maintenance_work_mem", "max_wal_size", "wal_level")
    with psycopg.connect(f"{base}/postgres") as conn:
        return {n: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(n))).fetchone()[0] for n in names}


def settle(legacy: str) -> None:
    """Vacuum and analyze the fresh legacy tables, so no measured step sets hint bits for the others."""
    with psycopg.connect(legacy, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")


def table_bytes(dsn: str, schema: str = "public") -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {e: conn.execute("SELECT pg_total_relation_size(%s)", (f"{schema}.{e}",)).fetchone()[0]
                for e in ENTITY_ORDER}


def scratch_table(legacy: str, dest: str, schema: str, entity: str) -> None:
    """An empty table with the legacy columns and types (binary COPY matches) and a primary key."""
    from include.migration.entities import get

    names = _legacy_columns(entity)
    with psycopg.connect(legacy) as conn:
        types = dict(conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (f"public.{entity}",)).fetchall())
    table = sql.Identifier(schema, entity)
    with psycopg.connect(dest, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(table, sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(types[n])) for n in names)))
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(
            table, sql.Identifier(get(entity).key)))


def drop_scratch(dest: str, schema: str) -> None:
    with psycopg.connect(dest, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


# ---------------------------------------------------------------------------
# The run


def run_limits(b: Bench) -> list[dict]:
    rows = []
    for entity in ENTITY_ORDER:
        scratch_table(b.legacy, b.dest, "bench_limit", entity)
        row = b.measure(LIMIT, entity, "step_limit", legacy=b.legacy, dest=b.dest, entity=entity)
        row["bytes"] = row["detail"].get("bytes_copied")
        rows.append(row)
    drop_scratch(b.dest, "bench_limit")
    return rows


def run_naive(b: Bench, limit_rows: int) -> dict:
    scratch_table(b.legacy, b.dest, "bench_naive", "messages")
    row = b.measure(NAIVE, "messages", "step_naive", legacy=b.legacy, dest=b.dest, entity="messages",
                    limit_rows=limit_rows)
    drop_scratch(b.dest, "bench_naive")
    return row


def run_pipeline_round(b: Bench, step: str, mode: str,
                       entities: tuple[str, ...] = ENTITY_ORDER) -> list[dict]:
    rows = []
    for entity in entities:
        rows.append(b.measure(step, entity, "step_pipeline", legacy=b.legacy, dest=b.dest, entity=entity,
                              dag_run_id=f"bench-{b.stamp}-{step}", mode=mode))
    return rows


def edit_messages(legacy: str) -> int:
    """The synthetic 10 % stress: messages are append-only in the app."""
    with psycopg.connect(legacy, autocommit=True) as conn:
        n = conn.execute("UPDATE messages SET content = content || ' (edited)' WHERE id % 10 = 0").rowcount
        conn.execute("VACUUM (ANALYZE) messages")
    return n


def run_changes(legacy: str) -> dict[str, int]:
    from local_runtime.world import apply_changes

    report = apply_changes(legacy, seed=7, fraction=0.01)
    with psycopg.connect(legacy, autocommit=True) as conn:
        conn.execute("ANALYZE")
    return {kind: len(keys) for kind, keys in report.changes.items()}


def run_reconcile(b: Bench) -> list[dict]:
    return [b.measure(RECONCILE, entity, "step_reconcile", legacy=b.legacy, dest=b.dest, entity=entity)
            for entity in ENTITY_ORDER]


def run_partitions(b: Bench, steps: list[dict]) -> dict:
    """The messages full run into an emptied table with 1 partition (the direct load: one
    stream) and with 2 key-range partitions (extracted side by side, as two mapped tasks on
    two workers would run, then the stage copied into the empty table in one COPY)."""
    limit = next((r["seconds"] for r in steps if r["step"] == LIMIT and r["entity"] == "messages"
                  and not r.get("error")), None)
    out: dict[str, Any] = {"limit_seconds": limit}
    for n in (1, 2):
        empty_destination_messages(b.dest)
        row = b.measure(FULL, "messages", "step_pipeline", legacy=b.legacy, dest=b.dest, entity="messages",
                        dag_run_id=f"bench-{b.stamp}-partitions-{n}", mode="full", partitions=n)
        detail = row.get("detail") or {}
        out[str(n)] = {"seconds": row.get("seconds"), "rows": row.get("rows"), "peak_rss_mb": row.get("peak_rss_mb"),
                       "extract_seconds": detail.get("extract_seconds"), "load_seconds": detail.get("load_seconds"),
                       "error": row.get("error")}
    out["note"] = partitions_note(out)
    return out


def partitions_note(out: dict) -> str:
    def one(n: str) -> str:
        r = out.get(n) or {}
        if r.get("error") or r.get("seconds") is None:
            return f"{n} partition{'s' if n != '1' else ''}: FAILED {r.get('error') or ''}".rstrip()
        ratio = f" ({r['seconds'] / out['limit_seconds']:.2f}x limit)" if out.get("limit_seconds") else ""
        return (f"{n} partition{'s' if n != '1' else ''}: {r['seconds']:.1f} s{ratio}, extract "
                f"{_fmt_num(r.get('extract_seconds'), '.1f')} s, load {_fmt_num(r.get('load_seconds'), '.1f')} s")
    return ("partitions (messages full run into an empty table; 1: direct load, 2: staged side by side, then "
            "copied in whole): " + "; ".join(one(n) for n in ("1", "2")))


def empty_destination_messages(dest: str) -> None:
    with psycopg.connect(dest, autocommit=True) as conn:
        conn.execute("TRUNCATE public.messages CASCADE")


def run_profile(b: Bench, server: Server) -> dict:
    """The messages full run again, into an emptied messages table, with every profiler on."""
    empty_destination_messages(b.dest)
    tracked = statements_available(server.base_uri)
    if tracked:
        set_statement_tracking(server.base_uri, True)
    prof_path = RESULTS / f"{b.stamp}-{b.scale}.prof"
    row = b.measure(FULL, "messages", "step_profile", profile_path=prof_path, legacy=b.legacy, dest=b.dest,
                    entity="messages", dag_run_id=f"bench-{b.stamp}-profile")
    statements: list[dict] = []
    if tracked:
        statements = top_statements(server.base_uri)
        set_statement_tracking(server.base_uri, False)
    detail = row.get("detail") or {}
    return {"seconds": row.get("seconds"), "error": row.get("error"), "peak_rss_mb": row.get("peak_rss_mb"),
            "load_1m": row.get("load_1m"),
            "timings": detail.get("timings"), "chunks": detail.get("chunks"),
            "python": python_hotspots(prof_path) if prof_path.exists() else [],
            "profile_file": str(prof_path.relative_to(ROOT)),
            "statements": statements if tracked else "pg_stat_statements not available on this server",
            "chunk_plan": detail.get("chunk_plan") or [],
            "transform_plan": explain_transform(b.legacy, "messages")}


def top_statements(base: str, limit: int = 40) -> list[dict]:
    with psycopg.connect(f"{base}/postgres") as conn:
        rows = conn.execute(
            "SELECT d.datname, s.calls, s.total_exec_time / 1000, s.rows, s.shared_blks_hit, "
            "s.shared_blks_read, "
            "s.wal_bytes, s.query FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
            "WHERE d.datname IN (%s, %s) AND s.query NOT ILIKE 'EXPLAIN%%' ORDER BY s.total_exec_time DESC "
            "LIMIT %s", (LEGACY_DB, DEST_DB, limit)).fetchall()
    return [{"database": db_name, "calls": calls, "seconds": round(secs, 3), "rows": n, "blks_hit": hit,
             "blks_read": read, "wal_mb": round(float(wal or 0) / MB, 1), "part": statement_label(query),
             "query": " ".join(query.split())[:300]}
            for db_name, calls, secs, n, hit, read, wal, query in rows]


def python_hotspots(path: Path, limit: int = 12) -> list[str]:
    stream = io.StringIO()
    stats = pstats.Stats(str(path), stream=stream)
    stats.sort_stats("tottime").print_stats(limit)
    lines = stream.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("ncalls")), 0)
    return [line.rstrip() for line in lines[start:] if line.strip()]


def explain_transform(legacy: str, entity_name: str) -> list[str]:
    from include.migration import db
    from include.migration.entities import get
    from include.migration.extract import Scope, transform_query

    query = transform_query(get(entity_name), Scope(kind="all"))
    with db.connection(legacy) as conn:
        conn.read_only = True
        db.tune_legacy(conn)  # the settings the pipeline's own legacy sessions run with
        try:
            rows = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS, SERIALIZE BINARY) ") + query).fetchall()
        except psycopg.Error:  # before PostgreSQL 17: no SERIALIZE
            conn.rollback()
            db.tune_legacy(conn)
            rows = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ") + query).fetchall()
    return [r[0] for r in rows]


# ---------------------------------------------------------------------------
# Output


def write_outputs(report: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / f"{report['stamp']}-{report['scale']}"
    json_path, png_path = base.with_suffix(".json"), base.with_suffix(".png")
    json_path.write_text(json.dumps(report, indent=1, default=str))
    try:
        plot(report, png_path)
    except Exception as err:  # a chart is not worth losing the figures for
        say(f"chart not written: {err}")
    with (out_dir / "history.jsonl").open("a") as history:
        history.write(json.dumps(history_record(report), default=str) + "\n")
    return json_path, png_path


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = report["steps"]
    kinds = [k for k in (LIMIT, FULL, UNCHANGED, CHANGED, INCREMENTAL, RECONCILE)
             if any(r["step"] == k for r in steps)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 5.5))
    width = 0.8 / max(1, len(kinds))
    for i, kind in enumerate(kinds):
        values = [(find(steps, kind, e) or {}).get("seconds") or 0 for e in ENTITY_ORDER]
        left.bar([x + i * width for x in range(len(ENTITY_ORDER))], values, width, label=STEP_LABELS[kind])
    left.set_xticks([x + width * (len(kinds) - 1) / 2 for x in range(len(ENTITY_ORDER))], ENTITY_ORDER)
    left.set_ylabel("wall seconds")
    left.set_title(f"scale={report['scale']}: seconds per step and entity")
    left.legend(fontsize=8)
    ratios = [(t["label"], t["value"], t["threshold"], t["verdict"]) for t in report["targets"]
              if t["unit"] == "x" and t["value"] is not None]
    labels = [r[0] for r in ratios]
    right.barh(labels, [r[1] for r in ratios], label="measured (green PASS, orange MISS)",
               color=["tab:green" if r[3] == "PASS" else "tab:orange" for r in ratios])
    right.scatter([r[2] for r in ratios], labels, color="tab:red", marker="|", s=400, label="target")
    right.set_title("messages: ratios (limit = 1) and targets")
    right.invert_yaxis()
    right.tick_params(axis="y", labelsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_report(report: dict) -> None:
    counts = report["counts"]
    say("")
    say(f"benchmark scale={report['scale']} at {report['timestamp']}")
    say("legacy rows: " + ", ".join(f"{counts.get(e, 0):,} {e}" for e in ENTITY_ORDER)
        + f"; seeded in {report['seed_seconds']:.1f} s")
    code = report.get("code") or {}
    say(f"code: commit {code.get('commit')}" + (f", with uncommitted changes to {', '.join(code['modified'])}"
                                                 if code.get("modified") else ""))
    s = report["server"]
    say(f"server: PostgreSQL {s.get('server_version')} ({report['server_kind']}), fsync={s.get('fsync')}, "
        f"synchronous_commit={s.get('synchronous_commit')}, shared_buffers={s.get('shared_buffers')}, "
        f"max_wal_size={s.get('max_wal_size')}; legacy and destination databases on this one server")
    say("MB/s = the legacy table's pg_total_relation_size (heap, TOAST, indexes; taken after seeding) / wall "
        "time; RSS MB = peak RSS of the child process doing the step; srv MB = peak private memory "
        "(sum of USS) of the server's processes; x limit = seconds / that entity's limit seconds")
    say(f"machine: {os.cpu_count()} CPUs; load = the 1-minute load average around each step"
        + ("; WARNING: other work shared the CPUs during this run, times are inflated and noisy"
           if max((r.get("load_1m") or 0 for r in report["steps"]), default=0) > (os.cpu_count() or 1)
           else ""))
    say("")
    for line in step_table(report["steps"], report["totals"]):
        say(line)
    say("")
    say("where the messages runs spend their time (migration.runs: extract_seconds, load.load_seconds):")
    for line in breakdown_lines(report["steps"]):
        say(line)
    say("(3) edits 10% of the legacy messages (content || ' (edited)' where id % 10 = 0), then VACUUM: "
        "messages are append-only in the app, so this is a synthetic stress; (3) runs messages only "
        "(nothing else changed).")
    say(f"(4) apply_changes(fraction=0.01): {_fmt_changes(report.get('changes'))}")
    say("(5) runs right after (3), on the state a full run leaves: a clean comparison of every row")
    for r in report["steps"]:
        if r["step"] == RECONCILE and not r.get("error"):
            say(f"(5) {(r.get('detail') or {}).get('verdict', '')[:160]}")
    say(report["partitions"]["note"])
    say("")
    for line in target_table(report["targets"] + report["scale_targets"]):
        say(line)
    if report.get("scale_note"):
        say(report["scale_note"])
    print_profile(report.get("profile") or {})


def _fmt_changes(changes: dict | None) -> str:
    if not changes:
        return "-"
    return ", ".join(f"{k} {v:,}" for k, v in changes.items() if v)


def print_profile(profile: dict) -> None:
    if not profile:
        return
    say("")
    say(f"profile: messages full run into an emptied messages table, "
        f"{_fmt_num(profile.get('seconds'), '.2f')} s "
        f"with cProfile on and one chunk explained, load {_fmt_num(profile.get('load_1m'), '.1f')}, "
        f"{profile.get('chunks')} merge chunks")
    if profile.get("error"):
        say(f"  the profiled run FAILED: {profile['error'][:200]} (figures below cover what ran)")
    for name, secs in (profile.get("timings") or {}).items():
        say(f"  {name:<40} {secs:8.2f} s")
    statements = profile.get("statements")
    if isinstance(statements, list) and statements:
        say("  SQL by total execution time (pg_stat_statements; the extract's two COPYs overlap in time):")
        for database, part, secs, calls in by_part(statements):
            say(f"    {secs:8.2f} s {calls:>5} calls  {database:<14} {part}")
    plan = profile.get("transform_plan") or []
    say("  transform query on legacy, EXPLAIN (ANALYZE, BUFFERS, SERIALIZE BINARY): "
        + "; ".join(line.strip() for line in plan if "Time:" in line or line.strip().startswith("Serializ")))
    chunk = profile.get("chunk_plan") or []
    say(f"  first load chunk ({(chunk[0] if chunk else '').split('  ')[0]}), EXPLAIN (ANALYZE, BUFFERS): "
        + "; ".join(line.strip() for line in chunk if "Time:" in line or line.startswith("Trigger")))
    say("  Python self time (cProfile, top 6 by tottime):")
    for line in (profile.get("python") or [])[:7]:
        say("    " + line)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def measure_world(b: Bench, naive_rows: int) -> tuple[list[dict], dict]:
    """Every measured step, in order; returns the step rows and what changed the source."""
    steps = run_limits(b)
    steps.append(run_naive(b, naive_rows))
    bootstrap_destination(b.dest)
    steps += run_pipeline_round(b, FULL, "full")
    steps += run_pipeline_round(b, UNCHANGED, "full")
    say(f"  edited {edit_messages(b.legacy):,} legacy messages (10 %)")
    # Only the messages changed: the other entities' rerun would repeat (2).
    steps += run_pipeline_round(b, CHANGED, "full", ("messages",))
    # On the state a full run leaves (every table in step with the source), so the
    # figure is the clean comparison; after (4) the pending hard deletes would add
    # a row-by-row pass over their key ranges.
    steps += run_reconcile(b)
    changes = run_changes(b.legacy)
    say(f"  apply_changes(fraction=0.01): {_fmt_changes(changes)}")
    steps += run_pipeline_round(b, INCREMENTAL, "incremental")
    return steps, changes


def bootstrap_destination(dest: str) -> None:
    from include.migration.bootstrap import bootstrap

    bootstrap(dest)


def seed_world(legacy: str, scale: str, media_root: Path) -> tuple[dict[str, int], float]:
    from local_runtime.world import seed

    started = time.perf_counter()
    report = seed(legacy, scale=scale, seed=42, media_root=media_root)
    seconds = time.perf_counter() - started
    settle(legacy)
    return dict(report.counts), seconds


def assemble(b: Bench, server: Server, steps: list[dict], extra: dict) -> dict:
    steps = enrich(steps, extra["legacy_bytes"])
    report = {"timestamp": datetime.now(UTC).isoformat(timespec="seconds"), "stamp": b.stamp,
              "scale": b.scale,
              "server_kind": "embedded" if server.data_dir else "BENCH_PG_URI", **extra,
              "steps": steps, "totals": totals(steps),
              "result_file": f"bench-results/{b.stamp}-{b.scale}.json"}
    report["targets"] = judge(TARGETS, target_values(steps))
    history = RESULTS / "history.jsonl"
    other = last_other_scale(history.read_text().splitlines(), b.scale) if history.exists() else None
    values = scale_values(history_record(report), other)
    report["scale_targets"] = judge(SCALE_TARGETS, values)
    report["scale_note"] = (
        f"scale comparison against {other['scale']} ({other['timestamp']}): rows x{values['row_ratio']:.2f}, "
        f"full messages time x{values['time_ratio']:.2f}"
        if other and values.get("row_ratio") and values.get("time_ratio") else
        "scale comparison: medium and large only; no history line of the other one yet "
        "(run SCALE=medium, then SCALE=large)")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_runtime.bench",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=("small", "medium", "large"), default="small")
    parser.add_argument("--naive-rows", type=int, default=NAIVE_ROWS,
                        help="messages the naive approach writes (its rate is stable well before 100k)")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled extra run")
    args = parser.parse_args(argv)
    stamp = _stamp()
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_path = RESULTS / f"{stamp}-{args.scale}.log"
    logging.basicConfig(filename=log_path, level=logging.INFO,
                        format="%(asctime)s %(processName)s %(name)s %(levelname)s %(message)s")
    started = time.perf_counter()
    server = start_server()
    say(f"bench: scale={args.scale}, server {server.base_uri} "
        f"({'embedded, ' + str(server.data_dir) if server.data_dir else 'BENCH_PG_URI'}); log {log_path}")
    try:
        report = run(args, server, stamp, log_path)
    finally:
        if server.data_dir and os.environ.get("BENCH_KEEP") != "1":
            from local_runtime import postgres as local_pg

            local_pg.stop(server.data_dir)
    print_report(report)
    json_path, png_path = write_outputs(report, RESULTS)
    say(f"\nwritten: {json_path.relative_to(ROOT)}, {png_path.relative_to(ROOT)}, "
        "bench-results/history.jsonl "
        f"(whole benchmark {time.perf_counter() - started:.0f} s)")
    return 0


def run(args: argparse.Namespace, server: Server, stamp: str, log_path: Path) -> dict:
    legacy, dest = fresh_databases(server.base_uri)
    say(f"seeding the legacy world at scale={args.scale} ...")
    media = (server.data_dir or ROOT / ".local" / "bench-world") / "media"
    counts, seed_seconds = seed_world(legacy, args.scale, media)
    say(f"  seeded in {seed_seconds:.1f} s: " + ", ".join(f"{counts.get(e, 0):,} {e}" for e in ENTITY_ORDER))
    b = Bench(legacy, dest, args.scale, stamp, log_path, ServerMemory(server.postmaster_pid), server.base_uri)
    extra: dict[str, Any] = {"counts": counts, "seed_seconds": seed_seconds, "code": code_version(),
                             "server": server_settings(server.base_uri), "legacy_bytes": table_bytes(legacy),
                             "naive_batch": NAIVE_BATCH}
    steps, extra["changes"] = measure_world(b, min(args.naive_rows, counts.get("messages", args.naive_rows)))
    extra["partitions"] = run_partitions(b, steps)
    skip = args.no_profile or os.environ.get("BENCH_PROFILE") == "0"
    extra["profile"] = {} if skip else run_profile(b, server)
    return assemble(b, server, steps, extra)


if __name__ == "__main__":
    sys.exit(main())
