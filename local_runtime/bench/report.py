"""The benchmark's report: pure functions of the measurements (unit-tested).

This module owns what the figures mean: the step kinds and their labels,
rates and ratios to the limit, totals, the targets and their verdicts, the
history line and the comparison of two scales, the profile's statement
labels, and the text tables. Nothing here measures or prints.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

ENTITY_ORDER = ("users", "agents", "conversations", "messages")
NAIVE_ROWS = 100_000
NAIVE_BATCH = 100
MB = 1_000_000

# Step kinds, in the order the report prints them (bench.phases runs them: reconciliation before (4)).
# NAIVE is the migration plan's approach as written (psycopg2, execute_values); NAIVE_EXECUTEMANY
# the same upserts through psycopg 3's pipelined executemany, a second baseline.
LIMIT, NAIVE, NAIVE_EXECUTEMANY = "limit", "naive", "naive_psycopg3_executemany"
FULL, UNCHANGED, CHANGED, INCREMENTAL, RECONCILE = (
    "full", "full_unchanged", "full_changed_10pct", "incremental_1pct", "reconcile")
# Incremental runs after smaller and larger changes than (4)'s: their time should follow the change.
INCREMENTAL_SMALL, INCREMENTAL_LARGE = "incremental_0.1pct", "incremental_10pct"
STEP_LABELS = {
    LIMIT: "limit: binary COPY",
    NAIVE: "naive: plan's execute_values",
    NAIVE_EXECUTEMANY: "naive: psycopg3 executemany",
    FULL: "(1) full, empty destination",
    UNCHANGED: "(2) full, nothing changed",
    CHANGED: "(3) full, 10% messages edited",
    INCREMENTAL: "(4) incremental after 1%",
    INCREMENTAL_SMALL: "(4a) incremental after 0.1%",
    INCREMENTAL_LARGE: "(4b) incremental after 10%",
    RECONCILE: "(5) reconciliation",
}


def step_label(kind: str) -> str:
    """How the report names a step kind; a kind added later without a label prints as itself."""
    return STEP_LABELS.get(kind, kind)


def step_kinds(steps: list[dict]) -> list[str]:
    """The step kinds that ran, labelled ones in their order, then any others in the order they ran."""
    ran = list(dict.fromkeys(r["step"] for r in steps))
    return [k for k in STEP_LABELS if k in ran] + [k for k in ran if k not in STEP_LABELS]


# The baselines: a slice of the messages upserted from Python, no ratio to the limit, no totals.
NAIVE_STEPS = (NAIVE, NAIVE_EXECUTEMANY)

# Steps that read the whole legacy table: their MB/s is the table's size over the time.
WHOLE_TABLE_STEPS = (LIMIT, FULL, UNCHANGED, CHANGED, RECONCILE)
RSS_LIMIT_MB = 400.0


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
        usable = limit is not None and limit.get("error") is None and row["step"] not in NAIVE_STEPS
        row["x_limit"] = ratio(row.get("seconds"), limit["seconds"]) if ok and usable else None
        out.append(row)
    return out


def totals(steps: list[dict]) -> list[dict]:
    """One row per step kind over every entity it ran for: summed times, rows and writes."""
    kinds = [k for k in step_kinds(steps) if k not in NAIVE_STEPS]
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
    Target("unchanged_vs_limit", "full run, nothing changed, messages / limit", "<=", 1.2, "x"),
    Target("unchanged_written", "full run, nothing changed: rows written (all)", "==", 0, "rows"),
    Target("changed_vs_limit", "full run, 10% edited, messages / limit", "<=", 2.0, "x"),
    Target("incremental_vs_full", "incremental after 1%, messages / full run", "<=", 0.1, "x"),
    Target("incremental_small_vs_full", "incremental after 0.1%, messages / full run", "<=", 0.03, "x"),
    Target("reconcile_vs_limit", "reconciliation, messages / limit", "<=", 1.0, "x"),
    Target("pipeline_vs_naive", "pipeline rows/s / the plan's approach (messages)", ">=", 6.0, "x"),
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
    rss = [r["peak_rss_mb"] for r in steps
           if r["step"] not in (LIMIT, *NAIVE_STEPS) and r.get("peak_rss_mb") is not None]
    return {
        "full_vs_limit": _x(steps, FULL),
        "unchanged_vs_limit": _x(steps, UNCHANGED),
        "unchanged_written": written,
        "changed_vs_limit": _x(steps, CHANGED),
        "incremental_vs_full": ratio(_seconds(steps, INCREMENTAL), _seconds(steps, FULL)),
        "incremental_small_vs_full": ratio(_seconds(steps, INCREMENTAL_SMALL), _seconds(steps, FULL)),
        "reconcile_vs_limit": _x(steps, RECONCILE),
        "pipeline_vs_naive": baseline_ratios(steps)[NAIVE],
        "peak_rss": max(rss) if rss else None,
    }


def baseline_ratios(steps: list[dict]) -> dict[str, float | None]:
    """The messages full run's rows/s over each baseline's (None: a step missing or failed)."""
    full = find(steps, FULL, "messages")
    pipeline_rate = full.get("rows_per_s") if full else None
    out: dict[str, float | None] = {}
    for kind in NAIVE_STEPS:
        naive = find(steps, kind, "messages")
        out[kind] = ratio(pipeline_rate, naive.get("rows_per_s") if naive else None)
    return out


def baselines_note(steps: list[dict]) -> str:
    """One line: the pipeline's rows/s over each baseline's."""
    return "pipeline rows/s (full run, messages) over each baseline's: " + "; ".join(
        f"{step_label(kind)} {_fmt_x(value)}" for kind, value in baseline_ratios(steps).items())


def peak_rss_step(steps: list[dict]) -> str | None:
    """Which pipeline step used the most memory, as 'step entity'."""
    rows = [r for r in steps if r["step"] not in (LIMIT, *NAIVE_STEPS) and r.get("peak_rss_mb") is not None]
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
        # A run of some phases (--phases) only: not a figure to compare a scale with.
        "complete": report.get("phases", "all") == "all",
    }


# Scales compared with each other: small is all fixed costs, so it has no partner.
SCALE_PARTNER = {"medium": "large", "large": "medium"}


def last_other_scale(lines: list[str], scale: str) -> dict | None:
    """The newest history record of a whole run (not ``--phases``) of ``scale``'s partner scale
    (medium <-> large)."""
    partner = SCALE_PARTNER.get(scale)
    for line in reversed(lines):
        line = line.strip()
        if not line or partner is None:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("scale") == partner and record.get("complete", True):
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
    for kind in step_kinds(steps):
        rows = [r for r in steps if r["step"] == kind] + [r for r in total_rows if r["step"] == kind]
        for r in rows:
            lines.append(_step_line(r))
    return lines


def _step_line(r: dict) -> str:
    label = step_label(r["step"])
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
    for kind in (FULL, UNCHANGED, CHANGED, INCREMENTAL, INCREMENTAL_SMALL, INCREMENTAL_LARGE):
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
