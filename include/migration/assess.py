"""The current-state assessment of the legacy database, before the first backfill.

What an operator must know to plan the backfill: volumes per table (rows, bytes, the
largest rows), growth per day, the peak write hours (so the nightly sync avoids them),
the defect profile, a forecast (quarantine against the threshold, the backfill's
duration) and the schema check's verdict for both sides.

The defect profile runs the pipeline's own transform SQL (``extract.transform_query``
over every source row, the query a full run extracts with), counted per disposition,
reason and repair: one source of truth, no second implementation of the rules, so its
counts are what the following full run quarantines, excludes and repairs. Rules only
the destination or the files can decide (a parent missing from the destination, an
email already held there, media files missing or corrupt) are not in the transform and
are listed as such.

Reads only: every legacy read runs in one read-only, repeatable-read snapshot, the
destination is read for the measured throughput and the schema check (``compare``
writes nothing). The only writes are the report itself: JSON and Markdown under
``$MIGRATION_STATE_DIR/assessment/`` and its summary in ``migration.assessments``.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from include.migration import db
from include.migration import extract as extract_mod
from include.migration.entities import ENTITIES, ORDER, SQL_DIR, Entity
from include.migration.pipeline import DEFAULT_QUARANTINE_THRESHOLD_PCT

log = logging.getLogger(__name__)

DEFAULT_DAYS = 90
DEFAULT_SAMPLES = 5
# Rules decided after the transform SQL, which the profile cannot count from the source alone.
DESTINATION_RULES = ("<parent>_not_in_destination", "email_taken_in_destination")


def _sql(name: str) -> str:
    return (SQL_DIR / "assess" / f"{name}.sql").read_text()


def _table(entity: Entity) -> sql.Identifier:
    return sql.Identifier("public", entity.source_table)


# --------------------------------------------------------------------------- the legacy side


def profile_defects(legacy: psycopg.Connection, entity: Entity, *, samples: int = DEFAULT_SAMPLES) -> dict[str, Any]:
    """Every source row through the entity's transform, counted per ``disposition:reason`` and per repair."""
    query = extract_mod.transform_query(entity, extract_mod.Scope(kind="all"))
    rows = legacy.execute(sql.SQL(_sql("defects")).format(
        transform=query, key=sql.Identifier(entity.key), samples=sql.Literal(samples))).fetchall()
    dispositions: dict[str, int] = {}
    repairs: dict[str, int] = {}
    sample_keys: dict[str, list[str]] = {}
    for kind, disposition, reason, n, keys in rows:
        if kind == "disposition":
            dispositions[f"{disposition}:{reason}"] = n
            if keys:
                sample_keys[f"{disposition}:{reason}"] = list(keys)
        else:
            repairs[reason] = n
            sample_keys[f"repaired:{reason}"] = list(keys)
    totals = {d: sum(n for k, n in dispositions.items() if k.split(":", 1)[0] == d)
              for d in ("loaded", "excluded", "quarantined")}
    in_scope = sum(dispositions.values())
    out = {"in_scope": in_scope, **totals, "repaired": sum(repairs.values()), "dispositions": dispositions,
           "repairs": repairs, "samples": sample_keys,
           "quarantine_pct": round(100.0 * totals["quarantined"] / in_scope, 4) if in_scope else 0.0,
           "not_assessed": list(DESTINATION_RULES) + list(entity.hook_reasons)}
    return out


def volumes(legacy: psycopg.Connection, *, largest: int = 3) -> dict[str, dict[str, Any]]:
    out = {}
    for name in ORDER:
        entity = ENTITIES[name]
        table = _table(entity)
        rows, total, heap, avg_row, max_row = legacy.execute(
            sql.SQL(_sql("volume")).format(table=table), {"regclass": f"public.{entity.source_table}"}).fetchone()
        big = legacy.execute(sql.SQL(_sql("largest_rows")).format(table=table, key=sql.Identifier(entity.key)),
                             {"limit": largest}).fetchall()
        out[entity.source_table] = {"rows": rows, "total_bytes": total, "heap_bytes": heap,
                                    "avg_row_bytes": avg_row, "max_row_bytes": max_row,
                                    "largest_rows": [{"key": k, "bytes": b} for k, b in big]}
    return out


def growth(legacy: psycopg.Connection, *, days: int = DEFAULT_DAYS) -> dict[str, dict[str, Any]]:
    out = {}
    for name in ORDER:
        entity = ENTITIES[name]
        per_day = legacy.execute(sql.SQL(_sql("growth")).format(table=_table(entity)), {"days": days}).fetchall()
        total = sum(n for _, n in per_day)
        out[entity.source_table] = {"days": days, "new_rows": total, "per_day_avg": round(total / days, 1),
                                    "busiest_day": max(per_day, key=lambda r: r[1])[0].isoformat() if per_day else None,
                                    "per_day": [{"day": d.isoformat(), "rows": n} for d, n in per_day]}
    return out


def write_hours(legacy: psycopg.Connection, *, days: int = DEFAULT_DAYS, window: int = 3) -> dict[str, Any]:
    """Writes per UTC hour, the peak hours, and the quietest ``window`` hours in a row (wrapping midnight)."""
    tables = {t: sql.Identifier("public", t) for t in ("users", "agents", "conversations", "messages",
                                                        "media_assets")}
    counts = dict(legacy.execute(sql.SQL(_sql("write_hours")).format(**tables), {"days": days}).fetchall())
    hours = [int(counts.get(h, 0)) for h in range(24)]
    peak = sorted(range(24), key=lambda h: (-hours[h], h))[:3]
    quiet_start = min(range(24), key=lambda h: (sum(hours[(h + i) % 24] for i in range(window)), h))
    return {"days": days, "per_hour_utc": hours, "peak_hours_utc": peak,
            "quietest_window_utc": {"start_hour": quiet_start, "hours": window,
                                    "writes": sum(hours[(quiet_start + i) % 24] for i in range(window))}}


# --------------------------------------------------------------------------- forecast


def measured_throughput(dest_dsn: str) -> dict[str, float]:
    """Rows/s of each entity's recent finished full runs in the destination ({} when there are none)."""
    try:
        with db.connection(dest_dsn, application="migration-assess") as conn:
            conn.read_only = True
            if not conn.execute("SELECT to_regclass('migration.runs') IS NOT NULL").fetchone()[0]:
                return {}
            rows = conn.execute(_sql("measured_throughput")).fetchall()
            conn.rollback()
    except psycopg.OperationalError as exc:
        log.warning("assessment: the destination could not be read for measured throughput: %s", exc)
        return {}
    return {entity: float(rate) for entity, rate in rows if rate}


def bench_throughput(history: Path) -> float | None:
    """Rows/s of the newest benchmark's full messages run (``bench-results/history.jsonl``), or None."""
    if not history.exists():
        return None
    for line in reversed(history.read_text().splitlines()):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("messages_rows") and rec.get("full_messages_seconds"):
            return rec["messages_rows"] / rec["full_messages_seconds"]
    return None


def estimate_backfill(rows: dict[str, int], measured: dict[str, float], bench_rate: float | None) -> dict[str, Any]:
    """Seconds a full backfill of ``rows`` (per entity) should take, saying which measurement it used."""
    if measured:
        overall = sum(measured.values()) / len(measured)
        per = {e: round(n / measured.get(e, overall), 1) for e, n in rows.items()}
        rates = ", ".join(f"{e} {r:,.0f} rows/s" for e, r in measured.items())
        basis = (f"measured throughput of the last full runs ({rates}"
                 + ("; entities never run use their average" if set(rows) - set(measured) else "") + ")")
        source = "runs"
    elif bench_rate:
        per = {e: round(n / bench_rate, 1) for e, n in rows.items()}
        basis = f"the benchmark history's full messages run ({bench_rate:,.0f} rows/s), for every entity"
        source = "benchmark"
    else:
        return {"source": "none", "seconds": None,
                "basis": "no full run and no benchmark history to measure from: run make bench, or a full run"}
    return {"source": source, "seconds": round(sum(per.values()), 1), "per_entity_seconds": per, "basis": basis}


def forecast(defects: dict[str, dict[str, Any]], threshold_pct: float, backfill: dict[str, Any]) -> dict[str, Any]:
    total = sum(d["in_scope"] for d in defects.values())
    quarantined = sum(d["quarantined"] for d in defects.values())
    per = {e: {"quarantine_pct": d["quarantine_pct"], "over_threshold": d["quarantine_pct"] > threshold_pct}
           for e, d in defects.items()}
    return {"quarantine_threshold_pct": threshold_pct,
            "quarantine_pct": round(100.0 * quarantined / total, 4) if total else 0.0,
            "per_entity": per, "entities_over_threshold": [e for e, p in per.items() if p["over_threshold"]],
            "backfill": backfill}


def schema_verdict(legacy_dsn: str, dest_dsn: str) -> dict[str, Any]:
    """The schema check of both sides, computed and not recorded (``compare`` writes nothing)."""
    from include.migration.schema_diff import compare

    try:
        report = compare(legacy_dsn, dest_dsn)
    except (psycopg.Error, RuntimeError) as exc:
        return {"verdict": "unknown", "error": str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)}
    sides: dict[str, dict[str, int]] = {}
    for d in report.differences:
        side = sides.setdefault(d.side, {})
        side[d.severity] = side.get(d.severity, 0) + 1
    return {"verdict": report.verdict, "counts": report.counts(), "by_side": sides, "blocked": report.blocked,
            "breaking": [d.as_dict() for d in report.by_severity("breaking")]}


# --------------------------------------------------------------------------- the whole assessment


def assess(legacy_dsn: str, dest_dsn: str, *, threshold_pct: float = DEFAULT_QUARANTINE_THRESHOLD_PCT,
           days: int = DEFAULT_DAYS, samples: int = DEFAULT_SAMPLES, bench_history: Path | None = None,
           entities: list[str] | None = None) -> dict[str, Any]:
    """The assessment report (a dict); writes nothing."""
    names = entities or list(ORDER)
    started = datetime.now(UTC)
    with db.connection(legacy_dsn, application="migration-assess") as legacy:
        legacy.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        legacy.read_only = True
        snapshot_at = legacy.execute("SELECT now()").fetchone()[0]
        db.tune_legacy(legacy)
        vols = volumes(legacy)
        grow = growth(legacy, days=days)
        hours = write_hours(legacy, days=days)
        defects = {}
        for name in names:
            defects[name] = profile_defects(legacy, ENTITIES[name], samples=samples)
            log.info("assessment: %s: %s rows: %s loaded, %s excluded, %s quarantined (%.3f%%), %s repaired",
                     name, f"{defects[name]['in_scope']:,}", f"{defects[name]['loaded']:,}",
                     f"{defects[name]['excluded']:,}", f"{defects[name]['quarantined']:,}",
                     defects[name]["quarantine_pct"], f"{defects[name]['repaired']:,}")
        legacy.rollback()
    history = bench_history or Path(os.environ.get("MIGRATION_BENCH_DIR", Path(__file__).resolve().parents[2]
                                                   / "bench-results")) / "history.jsonl"
    backfill = estimate_backfill({n: defects[n]["in_scope"] for n in names}, measured_throughput(dest_dsn),
                                 bench_throughput(history))
    return {
        "assessed_at": started.isoformat(),
        "snapshot_at": snapshot_at.isoformat(),
        "legacy_database": db.describe(legacy_dsn),
        "supabase_database": db.describe(dest_dsn),
        "volumes": vols,
        "growth": grow,
        "write_hours": hours,
        "defects": defects,
        "forecast": forecast(defects, threshold_pct, backfill),
        "schema": schema_verdict(legacy_dsn, dest_dsn),
        "seconds": round((datetime.now(UTC) - started).total_seconds(), 2),
    }


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """What ``migration.assessments`` keeps (and the console shows): no sample keys, no per-day series."""
    fc = report["forecast"]
    backfill = fc["backfill"]
    seconds = backfill.get("seconds")
    return {
        "source_rows": sum(v["rows"] for v in report["volumes"].values()),
        "source_bytes": sum(v["total_bytes"] for v in report["volumes"].values()),
        "quarantine_pct": fc["quarantine_pct"],
        "quarantine_threshold_pct": fc["quarantine_threshold_pct"],
        "entities_over_threshold": fc["entities_over_threshold"],
        "backfill_estimate": (f"{seconds / 60:.1f} min ({backfill['source']})" if seconds is not None
                              else "unknown (nothing measured yet)"),
        "backfill": {k: v for k, v in backfill.items() if k != "per_entity_seconds"},
        "schema_verdict": report["schema"]["verdict"],
        "peak_hours_utc": report["write_hours"]["peak_hours_utc"],
        "quietest_window_utc": report["write_hours"]["quietest_window_utc"],
        "entities": {e: {k: d[k] for k in ("in_scope", "loaded", "excluded", "quarantined", "repaired",
                                           "quarantine_pct")} for e, d in report["defects"].items()},
    }


def markdown(report: dict[str, Any]) -> str:
    fc, hours, schema = report["forecast"], report["write_hours"], report["schema"]
    lines = [f"# Legacy assessment, {report['assessed_at'][:19]} UTC", "",
             f"Legacy `{report['legacy_database']}` (snapshot {report['snapshot_at'][:19]}), "
             f"Supabase `{report['supabase_database']}`.", "", "## Volumes", "",
             "| table | rows | on disk (MB) | avg row (B) | largest row (B) | new rows / day (last "
             f"{hours['days']} d) |", "|---|--:|--:|--:|--:|--:|"]
    for table, v in report["volumes"].items():
        g = report["growth"][table]
        lines.append(f"| {table} | {v['rows']:,} | {v['total_bytes'] / 1e6:,.1f} | {v['avg_row_bytes']:,} | "
                     f"{v['max_row_bytes']:,} | {g['per_day_avg']:,} |")
    q = hours["quietest_window_utc"]
    lines += ["", "## Write hours (UTC)", "",
              f"Peak hours: {', '.join(f'{h:02d}:00' for h in hours['peak_hours_utc'])}. Quietest "
              f"{q['hours']} hours: from {q['start_hour']:02d}:00 ({q['writes']:,} writes): schedule the nightly "
              "sync there.", "", "## Defect profile (the pipeline's transform SQL, every source row)", "",
              "| entity | disposition | reason | rows | sample keys |", "|---|---|---|--:|---|"]
    for entity, d in report["defects"].items():
        for key, n in sorted(d["dispositions"].items()):
            disposition, reason = key.split(":", 1)
            keys = ", ".join(d["samples"].get(key, [])[:3])
            lines.append(f"| {entity} | {disposition} | {reason} | {n:,} | {keys} |")
        for reason, n in sorted(d["repairs"].items()):
            keys = ", ".join(d["samples"].get(f"repaired:{reason}", [])[:3])
            lines.append(f"| {entity} | repaired | {reason} | {n:,} | {keys} |")
    backfill = fc["backfill"]
    lines += ["", "Not counted here (decided at load time, from the destination or the files): "
              + ", ".join(sorted({r for d in report["defects"].values() for r in d["not_assessed"]})) + ".",
              "", "## Forecast", "",
              f"Expected quarantine: {fc['quarantine_pct']}% of all rows (threshold "
              f"{fc['quarantine_threshold_pct']}% per entity).",
              "Entities over the threshold: " + (", ".join(fc["entities_over_threshold"]) or "none") + ".",
              (f"Backfill estimate: {summary(report)['backfill_estimate']}, from {backfill['basis']}."
               if backfill.get("seconds") is not None else f"Backfill estimate: unknown: {backfill['basis']}."),
              "", "## Schema check", "", f"Verdict: **{schema['verdict']}**"
              + (f" ({schema.get('error')})" if schema.get("error") else
                 f"; by side: {json.dumps(schema.get('by_side', {}))}"), ""]
    for d in schema.get("breaking", []):
        lines.append(f"- breaking `{d['id']}`: {d['detail']}")
    return "\n".join(lines) + "\n"


def reports_dir() -> Path:
    path = Path(os.environ.get("MIGRATION_STATE_DIR", Path.cwd() / ".local" / "reports")) / "assessment"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_report(report: dict[str, Any]) -> Path:
    """The JSON report and its Markdown summary, stamped, and as ``latest.*``; returns the JSON path."""
    base = reports_dir()
    stamp = report["assessed_at"][:19].replace("-", "").replace(":", "")
    text, md = json.dumps(report, indent=2, default=str), markdown(report)
    path = base / f"assessment-{stamp}Z.json"
    for target, content in ((path, text), (path.with_suffix(".md"), md), (base / "latest.json", text),
                            (base / "latest.md", md)):
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(content)
        os.replace(tmp, target)
    return path


def record(dest_dsn: str, report: dict[str, Any], report_path: Path, dag_run_id: str | None = None) -> int:
    """Store the summary in ``migration.assessments``; returns its id."""
    with db.connection(dest_dsn, application="migration-assess") as conn:
        row = conn.execute(
            "INSERT INTO migration.assessments (assessed_at, dag_run_id, summary, report_path) "
            "VALUES (%s, %s, %s, %s) RETURNING assessment_id",
            (report["assessed_at"], dag_run_id, Jsonb(summary(report)), str(report_path))).fetchone()
        conn.commit()
    return row[0]


def run_assessment(legacy_dsn: str, dest_dsn: str, *, dag_run_id: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """Assess, write the report files, record the summary; returns the summary with where it went."""
    report = assess(legacy_dsn, dest_dsn, **kwargs)
    path = write_report(report)
    assessment_id = record(dest_dsn, report, path, dag_run_id)
    for line in markdown(report).splitlines():
        if line.strip():
            log.info("%s", line)
    return {"assessment_id": assessment_id, "report": str(path), **summary(report)}
