"""Where the migration stands, read from the destination's ``migration`` schema: the console's queries.

Read-only: every function takes an open connection (or a DSN) and returns plain,
JSON-ready dicts; nothing here writes. The Airflow plugin (``plugins/``) serves them
as JSON and as a page, and scripts or alerting can call them directly.

Quarantined rows are kept whole in ``migration.quarantine``; before a row leaves
this module its password hashes and tokens are masked by Airflow's own secrets
masker (``redact``, the one that masks task logs), so the console shows what a
log would show and never more.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from include.migration import db
from include.migration.entities import ENTITIES, ORDER, SOURCE_TABLES, SQL_DIR
from include.migration.gate import DEFAULT_MAX_AGE_HOURS

ROOT = Path(__file__).resolve().parents[2]
# A page of quarantined rows is at most this long, whatever the caller asks.
MAX_PAGE_SIZE = 200
DEFAULT_PAGE_SIZE = 50
DEFAULT_RUNS = 10


class DestinationUnreachable(RuntimeError):
    """The destination cannot be reached; the message says which one and why, without a secret."""


def _sql(name: str) -> str:
    return (SQL_DIR / "console" / f"{name}.sql").read_text()


def state_dir() -> Path:
    return Path(os.environ.get("MIGRATION_STATE_DIR", Path.cwd() / ".local" / "reports"))


def bench_history_path() -> Path:
    return Path(os.environ.get("MIGRATION_BENCH_DIR", ROOT / "bench-results")) / "history.jsonl"


def dag_id_for(entity: str) -> str:
    return f"migrate_{entity}"


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _rows(cur: psycopg.Cursor) -> list[dict[str, Any]]:
    names = [d.name for d in cur.description or []]
    return [{n: _iso(v) for n, v in zip(names, row, strict=True)} for row in cur.fetchall()]


def mask(row: Any) -> Any:
    """A quarantined row as a log would show it: password hashes, tokens, keys masked."""
    from airflow.sdk.log import redact

    return redact(row)


def connect(dsn: str) -> psycopg.Connection:
    """A read-only session on the destination, or ``DestinationUnreachable`` naming it (never its password)."""
    try:
        conn = db.connect(dsn, autocommit=True, application="migration-console")
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DestinationUnreachable(
            f"the destination database ({db.describe(dsn)}, connection '{db.DEST_CONN_ID}') cannot be reached: "
            f"{reason}") from None
    conn.read_only = True
    return conn


def has_migration_schema(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass('migration.runs') IS NOT NULL").fetchone()[0]


# --------------------------------------------------------------------------- entities


def entities(conn: psycopg.Connection, *, legacy_newest: dict[str, datetime | None] | None = None,
             ui_base: str = "") -> list[dict[str, Any]]:
    """One row per entity: last run, its counts, reconciliation, watermark and its lag, gate, lock."""
    cur = conn.execute(_sql("entities"), {"entities": list(ORDER)})
    rows = _rows(cur)
    gate = schema_gate(conn)
    out = []
    for row in rows:
        entity = row["entity"]
        run = None
        if row["run_id"] is not None:
            run = {k: row[k] for k in ("run_id", "mode", "dry_run", "status", "dag_run_id", "started_at",
                                        "finished_at")}
            run["seconds"] = round(float(row["seconds"]), 1) if row["seconds"] is not None else None
            run["dag_id"] = dag_id_for(entity)
            run["url"] = f"{ui_base}/dags/{dag_id_for(entity)}/runs/{row['dag_run_id']}" if row["dag_run_id"] \
                else None
        reconciliation = None
        if row["reconcile_verdict"] is not None:
            differing = sum(row[k] or 0 for k in ("missing_keys", "extra_keys", "different_keys"))
            reconciliation = {"verdict": row["reconcile_verdict"], "checked_at": row["reconciled_at"],
                              "differing_keys": differing, "missing": row["missing_keys"],
                              "extra": row["extra_keys"], "different": row["different_keys"]}
        newest = (legacy_newest or {}).get(entity)
        lag = None
        if newest is not None and row["watermark"] is not None:
            lag = max(0.0, (newest - datetime.fromisoformat(row["watermark"])).total_seconds())
        out.append({
            "entity": entity,
            "last_run": run,
            "rows": {"in_scope": row["in_scope"] if row["in_scope"] is not None else row["stage_rows"],
                     "loaded": row["loaded"], "excluded": row["excluded"], "quarantined": row["quarantined"],
                     "repaired": row["repaired"]},
            "reconciliation": reconciliation,
            "watermark": {"change_ts": row["watermark"], "last_key": row["watermark_key"],
                          "legacy_newest": _iso(newest), "lag_seconds": lag},
            "gate": gate.get(entity, {"open": False, "why": "no schema check recorded"}),
            "lock": {"run_id": row["lock_run_id"], "holder": row["lock_holder"],
                     "since": row["lock_acquired_at"]} if row["lock_run_id"] else None,
        })
    return out


def legacy_newest(legacy_dsn: str) -> dict[str, datetime | None]:
    """The legacy source's newest change per entity (for the watermark's lag)."""
    tables = {t: sql.Identifier("public", t) for t in SOURCE_TABLES}
    with db.connection(legacy_dsn, application="migration-console") as conn:
        conn.read_only = True
        rows = conn.execute(sql.SQL(_sql("legacy_newest")).format(**tables)).fetchall()
        conn.rollback()
    return dict(rows)


# --------------------------------------------------------------------------- schema gate


def _latest_check(conn: psycopg.Connection) -> dict[str, Any] | None:
    cur = conn.execute(_sql("schema_check"))
    rows = _rows(cur)
    return rows[0] if rows else None


def schema_gate(conn: psycopg.Connection, max_age_hours: float = DEFAULT_MAX_AGE_HOURS) -> dict[str, dict]:
    """Per entity: would the load gate let a run through now (without an accepted override)?"""
    check = _latest_check(conn)
    if check is None:
        return {e: {"open": False, "why": "no schema check recorded: run schema_diff"} for e in ORDER}
    age = float(check["age_hours"])
    out = {}
    for e in ORDER:
        blocked = (check["blocked"] or {}).get(e) or []
        if age > max_age_hours:
            out[e] = {"open": False, "why": f"the latest schema check is {age:.1f} h old (limit {max_age_hours:g} h)"}
        elif blocked:
            out[e] = {"open": False, "why": "blocked by " + ", ".join(blocked)}
        else:
            out[e] = {"open": True, "why": f"schema check #{check['check_id']}: nothing blocks it"}
    return out


def schema(conn: psycopg.Connection, *, overrides_limit: int = 50) -> dict[str, Any]:
    """The latest schema verdict with its breaking and compatible differences, and the accept-override history."""
    check = _latest_check(conn)
    overrides = _rows(conn.execute(
        "SELECT override_id, entity, difference_id, accepted_by, reason, run_id, accepted_at "
        "FROM migration.schema_overrides ORDER BY accepted_at DESC, override_id DESC LIMIT %s", (overrides_limit,)))
    if check is None:
        return {"check": None, "overrides": overrides}
    report = check["report"] or {}
    diffs = report.get("differences") or []
    return {
        "check": {"check_id": check["check_id"], "checked_at": check["checked_at"], "verdict": check["verdict"],
                  "age_hours": round(float(check["age_hours"]), 2), "dag_run_id": check["dag_run_id"],
                  "counts": report.get("counts"), "blocked": check["blocked"],
                  "breaking": [d for d in diffs if d.get("severity") == "breaking"],
                  "compatible": [d for d in diffs if d.get("severity") == "compatible"]},
        "overrides": overrides,
    }


# --------------------------------------------------------------------------- quarantine


def quarantine(conn: psycopg.Connection, *, runs: int = DEFAULT_RUNS) -> dict[str, Any]:
    """Counts per entity and reason now, and each entity's quarantined rows per reason over its last runs."""
    counts = _rows(conn.execute(_sql("quarantine_counts")))
    trend_rows = _rows(conn.execute(_sql("quarantine_trend"), {"runs": runs}))
    trend: dict[str, list[dict[str, Any]]] = {}
    for r in trend_rows:
        points = trend.setdefault(r["entity"], [])
        if not points or points[-1]["run_id"] != r["run_id"]:
            points.append({"run_id": r["run_id"], "mode": r["mode"], "started_at": r["started_at"],
                           "total": 0, "by_reason": {}})
        points[-1]["by_reason"][r["reason"]] = r["rows"]
        points[-1]["total"] += r["rows"]
    return {"counts": counts, "total": sum(c["rows"] for c in counts), "trend": trend}


def quarantine_page(conn: psycopg.Connection, entity: str, reason: str, *, after: str = "",
                    page_size: int = DEFAULT_PAGE_SIZE) -> dict[str, Any]:
    """One page of quarantined rows (masked), keyset-paged by source key; ``next_after`` fetches the next."""
    if entity not in ENTITIES:
        raise ValueError(f"unknown entity {entity!r}; known: {', '.join(ORDER)}")
    size = max(1, min(int(page_size), MAX_PAGE_SIZE))
    rows = _rows(conn.execute(_sql("quarantine_page"),
                              {"entity": entity, "reason": reason, "after": after, "limit": size + 1}))
    more = len(rows) > size
    rows = rows[:size]
    total = conn.execute("SELECT count(*) FROM migration.quarantine WHERE entity = %s AND reason = %s",
                         (entity, reason)).fetchone()[0]
    for r in rows:
        r["source_row"] = mask(r["source_row"])
    return {"entity": entity, "reason": reason, "total": total, "page_size": size, "after": after,
            "rows": rows, "next_after": rows[-1]["source_key"] if more else None}


# --------------------------------------------------------------------------- throughput, cutover, assessment


def throughput(conn: psycopg.Connection, *, runs: int = DEFAULT_RUNS) -> dict[str, Any]:
    """Rows/s per entity over its last finished runs, and the benchmark's history when there is one."""
    per: dict[str, list[dict[str, Any]]] = {}
    for r in _rows(conn.execute(_sql("throughput"), {"runs": runs})):
        r["rows_per_second"] = round(r["rows_per_second"], 1) if r["rows_per_second"] is not None else None
        per.setdefault(r["entity"], []).append(r)
    return {"runs": per, "bench_history": bench_history()}


def bench_history(limit: int = 20) -> list[dict[str, Any]]:
    path = bench_history_path()
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    out = []
    for line in lines[-limit:]:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being appended right now
    return out


def cutover() -> dict[str, Any] | None:
    """The latest GO / NO-GO (the cutover_check DAG's ``cutover/latest.json``), or None."""
    path = state_dir() / "cutover" / "latest.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def latest_assessment(conn: psycopg.Connection) -> dict[str, Any] | None:
    if conn.execute("SELECT to_regclass('migration.assessments') IS NULL").fetchone()[0]:
        return None
    rows = _rows(conn.execute(
        "SELECT assessment_id, assessed_at, dag_run_id, summary, report_path FROM migration.assessments "
        "ORDER BY assessed_at DESC, assessment_id DESC LIMIT 1"))
    return rows[0] if rows else None


# --------------------------------------------------------------------------- everything


def overview(dest_dsn: str, *, legacy_dsn: str | None = None, ui_base: str = "") -> dict[str, Any]:
    """Everything the console's page shows, in one call. Raises ``DestinationUnreachable``."""
    notes: list[str] = []
    newest = None
    if legacy_dsn:
        try:
            newest = legacy_newest(legacy_dsn)
        except psycopg.Error as exc:
            notes.append(f"the legacy database ({db.describe(legacy_dsn)}) could not be read, so the watermark "
                         f"lag is unknown: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}")
    with connect(dest_dsn) as conn:
        if not has_migration_schema(conn):
            return {"state": "empty", "destination": db.describe(dest_dsn), "notes": notes,
                    "message": "The destination has no migration schema yet: bootstrap it "
                               "(python -m include.migration.bootstrap), then run schema_diff and the backfill."}
        rows = entities(conn, legacy_newest=newest, ui_base=ui_base)
        started = any(r["last_run"] for r in rows)
        return {
            "state": "migrating" if started else "empty",
            "generated_at": datetime.now(UTC).isoformat(),
            "destination": db.describe(dest_dsn),
            "notes": notes,
            "message": None if started else (
                "Nothing has been migrated yet. Run assess_legacy to profile the legacy database, then "
                "schema_diff, then trigger migrate_users with mode=full: the chain follows."),
            "entities": rows,
            "quarantine": quarantine(conn),
            "schema": schema(conn),
            "cutover": cutover(),
            "throughput": throughput(conn),
            "assessment": latest_assessment(conn),
        }
