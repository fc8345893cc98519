"""The schema check's report: compare, record, log.

:func:`compare` reads both catalogs (``catalog.py``) and classifies every
difference (``classify.py``) into a :class:`SchemaReport`; :func:`record`
stores it in ``migration.schema_checks`` (the load gate reads it) and as JSON
files under ``$MIGRATION_STATE_DIR/schema/``; :func:`run_schema_diff` does
both and logs the table; :func:`main` is the command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from include.migration import db
from include.migration.entities import ENTITIES
from include.migration.schema_diff.catalog import (
    DEST_SCHEMAS,
    EXPOSED_SCHEMA,
    LEGACY_SCHEMA,
    NullCounts,
    Table,
    read_catalog,
    schema_sql,
)
from include.migration.schema_diff.classify import (
    BREAKING,
    COMPATIBLE,
    INFORMATIONAL,
    SEVERITY_ORDER,
    Difference,
    compare_destination,
    compare_legacy,
    probe_transforms,
    security_differences,
    unused_tables,
)
from include.migration.schema_diff.expectations import destination_contracts, legacy_contracts

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- the report


@dataclass
class SchemaReport:
    differences: list[Difference]
    legacy_database: str
    supabase_database: str
    catalogs: dict[str, Any] = field(default_factory=dict)
    dag_run_id: str | None = None
    check_id: int | None = None
    checked_at: datetime | None = None
    json_path: Path | None = None

    def by_severity(self, severity: str) -> list[Difference]:
        return [d for d in self.differences if d.severity == severity]

    @property
    def verdict(self) -> str:
        return BREAKING if self.by_severity(BREAKING) else "compatible"

    @property
    def blocked(self) -> dict[str, list[str]]:
        """Entity -> the ids of the breaking differences that block its load."""
        out: dict[str, set[str]] = {}
        for d in self.by_severity(BREAKING):
            for e in d.entities:
                out.setdefault(e, set()).add(d.id)
        return {e: sorted(out[e]) for e in sorted(out, key=_entity_order)}

    def counts(self) -> dict[str, int]:
        return {s: len(self.by_severity(s)) for s in (BREAKING, COMPATIBLE, INFORMATIONAL)}

    def comparison(self) -> dict[str, Any]:
        """Per side: missing tables, new tables, and per table missing / new / changed columns."""
        sides: dict[str, Any] = {}
        for side in ("legacy", "supabase"):
            diffs = [d for d in self.differences if d.side == side]
            tables: dict[str, dict[str, list]] = {}
            for d in diffs:
                if d.kind in ("missing_column", "new_column", "new_required_column", "type_changed",
                              "type_widened"):
                    entry = tables.setdefault(d.table, {"missing_columns": [], "new_columns": [],
                                                        "changed_columns": []})
                    if d.kind == "missing_column":
                        entry["missing_columns"].append(d.column)
                    elif d.kind.startswith("new_"):
                        entry["new_columns"].append({"column": d.column, "type": d.actual})
                    else:
                        entry["changed_columns"].append({"column": d.column, "expected": d.expected,
                                                         "actual": d.actual, "change": d.kind})
            sides[side] = {
                "missing_tables": [d.table for d in diffs if d.kind == "missing_table"],
                "new_tables": [d.table for d in diffs if d.kind == "unused_table"],
                "tables": tables,
            }
        return sides

    def summary(self) -> dict[str, Any]:
        """The small descriptor a task hands on (XCom, asset extra): never the whole report."""
        return {"check_id": self.check_id, "verdict": self.verdict, "counts": self.counts(),
                "blocked": self.blocked, "report": str(self.json_path) if self.json_path else None}

    def as_dict(self) -> dict[str, Any]:
        return {
            "check_id": self.check_id,
            "checked_at": self.checked_at.isoformat() if self.checked_at else None,
            "dag_run_id": self.dag_run_id,
            "legacy_database": self.legacy_database,
            "supabase_database": self.supabase_database,
            "verdict": self.verdict,
            "counts": self.counts(),
            "blocked": self.blocked,
            "comparison": self.comparison(),
            "differences": [d.as_dict() for d in self.differences],
            "catalogs": self.catalogs,
        }

    def table_lines(self, detail_width: int = 100) -> list[str]:
        """The report as a fixed-width table for the task log (the JSON file has every detail)."""
        when = f" at {self.checked_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if self.checked_at else ""
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items())
        lines = [f"schema check #{self.check_id}{when}: verdict {self.verdict.upper()} ({counts})"]
        if not self.differences:
            return lines + ["no differences: both schemas are what the mapping expects"]
        header = ("severity", "difference", "entities", "detail")
        rows = [(d.severity, d.id, ", ".join(d.entities) or "-", _shorten(d.detail, detail_width))
                for d in self.differences]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
        for r in [header, tuple("-" * w for w in widths), *rows]:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        lines += [f"BLOCKED {entity}: {', '.join(ids)}" for entity, ids in self.blocked.items()]
        return lines


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _entity_order(name: str) -> tuple[int, str]:
    order = list(ENTITIES)
    return (order.index(name) if name in order else len(order), name)


def _dedupe(diffs: Iterable[Difference]) -> list[Difference]:
    """One difference per id (the first wins), breaking first, then by id."""
    seen: dict[str, Difference] = {}
    for d in diffs:
        seen.setdefault(d.id, d)
    return sorted(seen.values(), key=lambda d: (SEVERITY_ORDER[d.severity], d.id))


def _catalog_extract(catalog: dict[str, Table], relevant: Iterable[str]) -> dict[str, Any]:
    return {
        "tables": sorted(catalog),
        "mapped": {k: catalog[k].as_dict() for k in sorted(set(relevant)) if k in catalog},
    }


def _security(conn: psycopg.Connection) -> list[Difference]:
    try:
        return security_differences(conn)
    except ImportError:
        # No lock-down report in this checkout: the RLS check of every mapped
        # public table (compare_destination) still runs.
        log.warning("bootstrap.security_report is not available; checking RLS state only")
        return []


def compare(legacy_dsn: str, dest_dsn: str) -> SchemaReport:
    """Read both catalogs and classify every difference. Writes nothing."""
    legacy_contracts_, dest_contracts = legacy_contracts(), destination_contracts()
    with db.connection(dest_dsn, application="migration-schema-diff") as conn:
        conn.read_only = True
        dest_catalog = read_catalog(conn, DEST_SCHEMAS)
        # Security findings first: on the same id their message wins over our own RLS check's.
        diffs = _security(conn)
        conn.rollback()
    with db.connection(legacy_dsn, application="migration-schema-diff") as conn:
        conn.read_only = True
        legacy_catalog = read_catalog(conn, [LEGACY_SCHEMA])
        nulls = NullCounts(conn, legacy_catalog)
        for contract in dest_contracts:
            diffs += compare_destination(dest_catalog, contract, nulls)
        for legacy in legacy_contracts_:
            diffs += compare_legacy(legacy_catalog, legacy)
        diffs += probe_transforms(conn)
        conn.rollback()
    used_public = {c.table.split(".", 1)[1] for c in dest_contracts
                   if c.table.startswith(f"{EXPOSED_SCHEMA}.")}
    diffs += unused_tables(dest_catalog, "supabase", EXPOSED_SCHEMA, used_public)
    diffs += unused_tables(legacy_catalog, "legacy", LEGACY_SCHEMA, {c.table for c in legacy_contracts_})
    return SchemaReport(
        differences=_dedupe(diffs),
        legacy_database=db.describe(legacy_dsn),
        supabase_database=db.describe(dest_dsn),
        catalogs={
            "legacy": _catalog_extract(legacy_catalog,
                                       (f"{LEGACY_SCHEMA}.{c.table}" for c in legacy_contracts_))
            | {"null_counts": nulls.counted},
            "supabase": _catalog_extract(dest_catalog, (c.table for c in dest_contracts)),
        },
    )


# --------------------------------------------------------------------------- recording


def reports_dir() -> Path:
    base = Path(os.environ.get("MIGRATION_STATE_DIR", Path.cwd() / ".local" / "reports"))
    path = base / "schema"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_atomically(path: Path, text: str) -> None:
    # latest.json may be read while the next check writes it.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def record(dest_dsn: str, report: SchemaReport) -> None:
    """Store the check in ``migration.schema_checks`` (the gate reads it) and as JSON files."""
    with db.connection(dest_dsn, application="migration-schema-diff") as conn:
        try:
            row = conn.execute(schema_sql("record_check"), {
                "dag_run_id": report.dag_run_id, "verdict": report.verdict,
                "blocked": Jsonb(report.blocked), "report": Jsonb(report.as_dict()),
            }).fetchone()
        except psycopg.errors.UndefinedTable as err:
            raise RuntimeError(
                "migration.schema_checks does not exist in the destination: bootstrap it first "
                "(python -m include.migration.bootstrap --dsn ...)") from err
        conn.commit()
    report.check_id, report.checked_at = row
    stamp = report.checked_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(report.as_dict(), indent=2, default=str)
    report.json_path = reports_dir() / f"{stamp}-check-{report.check_id}.json"
    _write_atomically(report.json_path, text)
    _write_atomically(report.json_path.with_name("latest.json"), text)


def run_schema_diff(legacy_dsn: str, dest_dsn: str, dag_run_id: str | None = None) -> SchemaReport:
    """Compare, record (row + JSON files) and log the table. Usable without Airflow."""
    report = compare(legacy_dsn, dest_dsn)
    report.dag_run_id = dag_run_id
    record(dest_dsn, report)
    for line in report.table_lines():
        log.info("%s", line)
    log.info("schema report: %s", report.json_path)
    return report


def breaking_message(summary: dict[str, Any]) -> str:
    """One line for a failed verdict: what blocks which entity and how to clear it."""
    blocked = "; ".join(f"{e}: {', '.join(ids)}" for e, ids in summary["blocked"].items())
    return (f"schema check #{summary['check_id']} found breaking differences, loads are blocked ({blocked}). "
            "Fix the schema and rerun schema_diff, or accept a difference for one run of an entity DAG "
            "with the params accept_schema_differences + override_reason. "
            f"Report: {summary.get('report')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m include.migration.schema_diff",
        description="Compare both schemas with the mapping and record the check.")
    parser.add_argument("--legacy-dsn", required=True)
    parser.add_argument("--dest-dsn", required=True)
    parser.add_argument("--run-id", default=None, help="recorded as dag_run_id")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = run_schema_diff(args.legacy_dsn, args.dest_dsn, args.run_id)
    return 1 if report.verdict == BREAKING else 0

