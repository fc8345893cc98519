"""The benchmark's phases, in the order they run, and their registry.

This module owns *what* the benchmark does to the two databases and in which
order. A phase is one function of the :class:`Run`: it measures steps
(``run.bench.measure(kind, entity, step_function, ...)``, whose rows land in
the step table), changes the source between steps, or adds a section to the
report (``run.sections[name] = {...}``, printed through ``run.notes``).

Adding a step is one function here (its measured body, when it has one, in
:mod:`local_runtime.bench.steps`) plus one line in :data:`PHASES`; a new step
kind prints under its own name unless :data:`~local_runtime.bench.report.STEP_LABELS`
gives it a label.
"""

from __future__ import annotations

import io
import pstats
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from local_runtime.bench import deletes as bench_deletes
from local_runtime.bench import steps as measured
from local_runtime.bench.measure import Bench, say
from local_runtime.bench.output import fmt_changes
from local_runtime.bench.report import (
    CHANGED,
    ENTITY_ORDER,
    FULL,
    INCREMENTAL,
    INCREMENTAL_LARGE,
    INCREMENTAL_SMALL,
    LIMIT,
    NAIVE,
    NAIVE_EXECUTEMANY,
    RECONCILE,
    UNCHANGED,
    _fmt_num,
    step_label,
)
from local_runtime.bench.server import (
    RESULTS,
    ROOT,
    Server,
    drop_scratch,
    empty_destination_messages,
    scratch_table,
    set_statement_tracking,
    statements_available,
    top_statements,
)


@dataclass
class Run:
    """One benchmark run as the phases build it up."""

    bench: Bench
    server: Server
    naive_rows: int  # messages the naive approach writes
    profile: bool  # whether the profiled extra run happens
    detect_changes: bool = True  # full reruns compare key ranges first (False: stage every row)
    steps: list[dict] = field(default_factory=list)  # rows of the step table
    sections: dict[str, Any] = field(default_factory=dict)  # report keys of their own (changes, ...)
    notes: list[str] = field(default_factory=list)  # one line per section, printed with the report


# ---------------------------------------------------------------------------
# Helpers of the phases


def run_limits(b: Bench) -> list[dict]:
    rows = []
    for entity in ENTITY_ORDER:
        scratch_table(b.legacy, b.dest, "bench_limit", entity)
        row = b.measure(LIMIT, entity, measured.step_limit, legacy=b.legacy, dest=b.dest, entity=entity)
        row["bytes"] = row["detail"].get("bytes_copied")
        rows.append(row)
    drop_scratch(b.dest, "bench_limit")
    return rows


def run_naive(b: Bench, limit_rows: int, kind: str = NAIVE,
              step: Callable[..., dict] = measured.step_naive) -> dict:
    scratch_table(b.legacy, b.dest, "bench_naive", "messages")  # empty: each baseline inserts every row
    row = b.measure(kind, "messages", step, legacy=b.legacy, dest=b.dest, entity="messages",
                    limit_rows=limit_rows)
    drop_scratch(b.dest, "bench_naive")
    return row


def run_pipeline_round(b: Bench, step: str, mode: str,
                       entities: tuple[str, ...] = ENTITY_ORDER, detect_changes: bool = True) -> list[dict]:
    rows = []
    for entity in entities:
        rows.append(b.measure(step, entity, measured.step_pipeline, legacy=b.legacy, dest=b.dest,
                              entity=entity, dag_run_id=f"bench-{b.stamp}-{step}", mode=mode,
                              detect_changes=detect_changes))
    return rows


def edit_messages(legacy: str) -> int:
    """The synthetic 10 % stress: messages are append-only in the app."""
    with psycopg.connect(legacy, autocommit=True) as conn:
        n = conn.execute("UPDATE messages SET content = content || ' (edited)' WHERE id % 10 = 0").rowcount
        conn.execute("VACUUM (ANALYZE) messages")
    return n


def run_changes(legacy: str, fraction: float = 0.01, seed: int = 7) -> dict[str, int]:
    from local_runtime.world import apply_changes

    report = apply_changes(legacy, seed=seed, fraction=fraction)
    with psycopg.connect(legacy, autocommit=True) as conn:
        conn.execute("ANALYZE")
    return {kind: len(keys) for kind, keys in report.changes.items()}


def partitions_note(out: dict) -> str:
    def one(n: str) -> str:
        r = out.get(n) or {}
        if r.get("error") or r.get("seconds") is None:
            return f"{n} partition{'s' if n != '1' else ''}: FAILED {r.get('error') or ''}".rstrip()
        ratio = f" ({r['seconds'] / out['limit_seconds']:.2f}x limit)" if out.get("limit_seconds") else ""
        return (f"{n} partition{'s' if n != '1' else ''}: {r['seconds']:.1f} s{ratio}, extract "
                f"{_fmt_num(r.get('extract_seconds'), '.1f')} s, "
                f"load {_fmt_num(r.get('load_seconds'), '.1f')} s")
    return ("partitions (messages full run into an empty table; 1: direct load, one stream; 2: two streams side "
            "by side straight into the table, indexes rebuilt once): " + "; ".join(one(n) for n in ("1", "2")))


def python_hotspots(path: Path, limit: int = 12) -> list[str]:
    stream = io.StringIO()
    stats = pstats.Stats(str(path), stream=stream)
    stats.sort_stats("tottime").print_stats(limit)
    lines = stream.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("ncalls")), 0)
    return [line.rstrip() for line in lines[start:] if line.strip()]


# ---------------------------------------------------------------------------
# The phases


def limits(run: Run) -> None:
    """The floor of each entity: binary COPY into an empty scratch table."""
    run.steps += run_limits(run.bench)


def naive(run: Run) -> None:
    """The plan's approach as written (psycopg2, execute_values), on a slice of the messages."""
    run.steps.append(run_naive(run.bench, run.naive_rows))


def naive_executemany(run: Run) -> None:
    """The same upserts through psycopg 3's pipelined executemany: a second baseline."""
    run.steps.append(run_naive(run.bench, run.naive_rows, NAIVE_EXECUTEMANY, measured.step_naive_executemany))


def bootstrap_destination(run: Run) -> None:
    from include.migration.bootstrap import bootstrap

    bootstrap(run.bench.dest)


def full(run: Run) -> None:
    """(1) every entity into the empty destination."""
    run.steps += run_pipeline_round(run.bench, FULL, "full")


def changes_note(kind: str, rows: list[dict]) -> str:
    """What each full rerun's change detection (include/migration/changes.py) compared and staged."""
    parts = []
    for r in rows:
        c = (r.get("detail") or {}).get("changes")
        if r.get("error"):
            parts.append(f"{r['entity']} FAILED")
        elif not c:
            parts.append(f"{r['entity']} staged every row (no change detection)")
        else:
            parts.append(f"{r['entity']} {c['ranges_compared']:,} ranges compared, {c['differing_ranges']:,} "
                         f"differed ({c['differing_top_ranges']:,} of {c['top_ranges']:,} top-level), "
                         f"{c['differing_source_rows']:,} of {c['source_rows']:,} rows staged, "
                         f"{c['keys_listed']:,} digests listed, {c['seconds']:.2f} s")
    return f"{step_label(kind)}: change detection: " + "; ".join(parts)


def unchanged(run: Run) -> None:
    """(2) the same again, nothing changed: the comparison finds no range that differs."""
    rows = run_pipeline_round(run.bench, UNCHANGED, "full", detect_changes=run.detect_changes)
    run.steps += rows
    run.notes.append(changes_note(UNCHANGED, rows))


def changed(run: Run) -> None:
    """(3) after 10 % of the messages were edited; only the messages changed, so only they rerun
    (the other entities' rerun would repeat (2))."""
    say(f"  edited {edit_messages(run.bench.legacy):,} legacy messages (10 %)")
    rows = run_pipeline_round(run.bench, CHANGED, "full", ("messages",), detect_changes=run.detect_changes)
    run.steps += rows
    run.notes.append(changes_note(CHANGED, rows))


def reconcile(run: Run) -> None:
    """(5) on the state a full run leaves (every table in step with the source), so the figure is
    the clean comparison; after (4) the pending hard deletes would add a row-by-row pass."""
    b = run.bench
    run.steps += [b.measure(RECONCILE, entity, measured.step_reconcile, legacy=b.legacy, dest=b.dest,
                            entity=entity) for entity in ENTITY_ORDER]


def changes(run: Run) -> None:
    """The app keeps running: apply_changes(fraction=0.01) on the legacy world."""
    run.sections["changes"] = run_changes(run.bench.legacy)
    say(f"  apply_changes(fraction=0.01): {fmt_changes(run.sections['changes'])}")


def incremental(run: Run) -> None:
    """(4) an incremental run after those changes."""
    run.steps += run_pipeline_round(run.bench, INCREMENTAL, "incremental")


def incremental_after(run: Run, kind: str, fraction: float, seed: int) -> None:
    """apply_changes(fraction) on the legacy world, then an incremental run of every entity."""
    changed = run_changes(run.bench.legacy, fraction, seed)
    run.sections[f"changes_{kind}"] = changed
    run.notes.append(f"{step_label(kind)}: after apply_changes(fraction={fraction}): {fmt_changes(changed)}")
    say(f"  apply_changes(fraction={fraction}): {fmt_changes(changed)}")
    run.steps += run_pipeline_round(run.bench, kind, "incremental")


def incremental_small(run: Run) -> None:
    """(4a) a nightly sync after a change a tenth the size of (4)'s (run before (4): see PHASES)."""
    incremental_after(run, INCREMENTAL_SMALL, 0.001, seed=8)


def incremental_large(run: Run) -> None:
    """(4b) a nightly sync after a change ten times the size of (4)'s."""
    incremental_after(run, INCREMENTAL_LARGE, 0.1, seed=9)


def partitions(run: Run) -> None:
    """The messages full run into an emptied table with 1 partition (the direct load: one
    stream) and with 2 key-range partitions (each streamed straight into the table side by
    side, as two mapped tasks on two workers would run; the indexes rebuilt once at the load)."""
    b = run.bench
    limit = next((r["seconds"] for r in run.steps if r["step"] == LIMIT and r["entity"] == "messages"
                  and not r.get("error")), None)
    out: dict[str, Any] = {"limit_seconds": limit}
    for n in (1, 2):
        empty_destination_messages(b.dest)
        row = b.measure(FULL, "messages", measured.step_pipeline, legacy=b.legacy, dest=b.dest,
                        entity="messages", dag_run_id=f"bench-{b.stamp}-partitions-{n}", mode="full",
                        partitions=n)
        detail = row.get("detail") or {}
        out[str(n)] = {"seconds": row.get("seconds"), "rows": row.get("rows"),
                       "peak_rss_mb": row.get("peak_rss_mb"),
                       "extract_seconds": detail.get("extract_seconds"),
                       "load_seconds": detail.get("load_seconds"), "error": row.get("error")}
    out["note"] = partitions_note(out)
    run.sections["partitions"] = out
    run.notes.append(out["note"])


def profile(run: Run) -> None:
    """The messages full run again, into an emptied messages table, with every profiler on."""
    if not run.profile:
        run.sections["profile"] = {}
        return
    b, server = run.bench, run.server
    empty_destination_messages(b.dest)
    tracked = statements_available(server.base_uri)
    if tracked:
        set_statement_tracking(server.base_uri, True)
    prof_path = RESULTS / f"{b.stamp}-{b.scale}.prof"
    row = b.measure(FULL, "messages", measured.step_profile, profile_path=prof_path, legacy=b.legacy,
                    dest=b.dest, entity="messages", dag_run_id=f"bench-{b.stamp}-profile")
    statements: list[dict] = []
    if tracked:
        statements = top_statements(server.base_uri)
        set_statement_tracking(server.base_uri, False)
    detail = row.get("detail") or {}
    run.sections["profile"] = {
        "seconds": row.get("seconds"), "error": row.get("error"), "peak_rss_mb": row.get("peak_rss_mb"),
        "load_1m": row.get("load_1m"),
        "timings": detail.get("timings"), "chunks": detail.get("chunks"),
        "python": python_hotspots(prof_path) if prof_path.exists() else [],
        "profile_file": str(prof_path.relative_to(ROOT)),
        "statements": statements if tracked else "pg_stat_statements not available on this server",
        "chunk_plan": detail.get("chunk_plan") or [],
        "transform_plan": measured.explain_transform(b.legacy, "messages")}


# Objects in storage.objects for the Storage reconciliation step, per scale (the target is at 1 M).
STORAGE_OBJECTS = {"small": 20_000, "medium": 200_000, "large": 1_000_000}


def storage(run: Run) -> None:
    """The media Storage reconciliation through storage.objects (``local_runtime/bench/storage.py``),
    in a database of its own on the same server; its figures are a report section."""
    from local_runtime.bench import storage as bench_storage

    b = run.bench
    objects = STORAGE_OBJECTS.get(b.scale, STORAGE_OBJECTS["small"])
    figures = bench_storage.step_storage_reconcile(b.base_uri, objects)
    run.sections["storage_reconcile"] = figures
    run.notes.extend(bench_storage.report_lines(figures))
    for line in bench_storage.report_lines(figures):
        say(f"  {line}")

def cluster(run: Run) -> None:
    """The same backfill with 1, 2 and 4 partitions through the CeleryExecutor cluster
    (``local_runtime.bench.cluster``; ``BENCH_CLUSTER=0`` skips it)."""
    from local_runtime.bench.cluster import cluster_step

    run.sections["cluster"] = out = cluster_step(run.bench, run.server, run.steps)
    run.notes += out["lines"]


Phase = Callable[[Run], None]

# The run, in order: one line per phase. Reconciliation runs before the changes
# of (4) (see ``reconcile``), so the table numbers steps as the report prints them.
# An incremental run re-reads the lookback (runs.LOOKBACK_SECONDS) before its
# watermark, which holds the previous round's changes (seconds apart here, a day
# apart in production): the 0.1 % round goes first so its scope is its own; (4)
# then also re-reads it (1.1 %), and (4b) re-reads (4)'s.
PHASES: tuple[tuple[str, Phase], ...] = (
    ("limits", limits),
    ("naive", naive),
    ("naive_executemany", naive_executemany),
    ("bootstrap", bootstrap_destination),
    ("full", full),
    ("unchanged", unchanged),
    ("changed", changed),
    ("reconcile", reconcile),
    ("incremental_small", incremental_small),
    ("changes", changes),
    ("incremental", incremental),
    ("hard_deletes", bench_deletes.phase),  # incremental after 1 % with 0.1 % hard deletes
    ("incremental_large", incremental_large),
    ("partitions", partitions),
    ("storage", storage),
    ("cluster", cluster),
    ("profile", profile),
)


def run_phases(run: Run, phases: tuple[tuple[str, Phase], ...] = PHASES) -> Run:
    for _name, phase in phases:
        phase(run)
    return run
