"""The cutover verdict: GO or NO-GO, from evidence, against the migration plan's criteria.

Criteria (each NO-GO line names its evidence):

1. every in-scope source row is accounted for: per entity, source rows =
   destination rows + quarantined + excluded (by a documented rule);
2. quarantine under 0.1 % of users (the plan's rollback trigger);
3. zero reconciliation differences, from a full reconciliation of every entity;
4. zero breaking schema differences, from a fresh schema check;
5. the destination is locked down: RLS on every public table, owner-only
   policies, nothing for ``anon``, the migration schema private;
6. the application can insert messages: ``public.messages.id`` has an
   identity (or sequence) whose next value is above every migrated id and
   every legacy id (a quarantined message fixed later keeps its legacy id);
7. with media in scope, Storage holds every ``public.media`` row's object and
   nothing else, verified (``media.cutover.storage_verified``).

Before the criteria, the cutover step moves that identity above those ids
(``advance_message_ids``): from here on the application writes messages.

The report is logged, written as JSON (``$MIGRATION_STATE_DIR/cutover/``)
and returned; the DAG fails and alerts on NO-GO.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg import sql

from include.migration import db
from include.migration.entities import ENTITIES, ORDER

log = logging.getLogger(__name__)

MAX_USER_QUARANTINE_PCT = 0.1
MESSAGE_IDS = "application inserts messages with new ids"

# The generator of public.messages.id (an identity, or a serial's sequence), its next value, and
# the highest id the destination holds. No generator: NULL sequence.
_MESSAGE_ID_STATE = """
SELECT s.seq, CASE WHEN s.seq IS NULL THEN NULL
                   ELSE coalesce(pg_sequence_last_value(s.seq::regclass) + q.seqincrement, q.seqstart) END,
       (SELECT max(id) FROM public.messages)
FROM (SELECT pg_get_serial_sequence('public.messages', 'id') AS seq) s
LEFT JOIN pg_sequence q ON q.seqrelid = s.seq::regclass
"""


@dataclass
class Criterion:
    name: str
    ok: bool
    evidence: str
    value: Any = None  # what was measured, where the criterion is a number against a threshold
    threshold: Any = None


@dataclass
class Verdict:
    criteria: list[Criterion] = field(default_factory=list)
    report_path: str | None = None

    @property
    def go(self) -> bool:
        return all(c.ok for c in self.criteria)

    def lines(self) -> list[str]:
        return [f"{'PASS' if c.ok else 'FAIL'} {c.name}: {c.evidence}" for c in self.criteria]

    def nogo_lines(self) -> list[str]:
        return [f"{c.name}: {c.evidence}" for c in self.criteria if not c.ok]

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": "GO" if self.go else "NO-GO", "checked_at": datetime.now(UTC).isoformat(),
                "criteria": [c.__dict__ for c in self.criteria]}


def accounted(legacy_dsn: str, dest_dsn: str, entities: list[str]) -> Criterion:
    gaps = []
    totals = []
    with db.connection(legacy_dsn) as legacy, db.connection(dest_dsn) as dest:
        legacy.read_only = True
        for name in entities:
            e = ENTITIES[name]
            source = legacy.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier("public", e.source_table))).fetchone()[0]
            loaded, quarantined, excluded = dest.execute(sql.SQL(
                "SELECT (SELECT count(*) FROM {t}), "
                "(SELECT count(*) FROM migration.quarantine WHERE entity = %s), "
                "(SELECT count(*) FROM migration.exclusions WHERE entity = %s)").format(
                t=sql.Identifier(e.schema_name, e.target_table)), (name, name)).fetchone()
            totals.append(f"{name} {source} = {loaded} + {quarantined} + {excluded}")
            if source != loaded + quarantined + excluded:
                gaps.append(f"{name}: {source} source rows but {loaded} loaded + {quarantined} quarantined + "
                            f"{excluded} excluded = {loaded + quarantined + excluded}")
    if gaps:
        return Criterion("100% of rows accounted for", False, "; ".join(gaps))
    return Criterion("100% of rows accounted for", True, "; ".join(totals))


def user_quarantine(legacy_dsn: str, dest_dsn: str) -> Criterion:
    with db.connection(legacy_dsn) as legacy, db.connection(dest_dsn) as dest:
        users = legacy.execute("SELECT count(*) FROM public.users").fetchone()[0]
        quarantined = dest.execute("SELECT count(*) FROM migration.quarantine WHERE entity = 'users'").fetchone()[0]
    pct = 100.0 * quarantined / users if users else 0.0
    evidence = (f"{quarantined} of {users} users quarantined ({pct:.3f}%, limit {MAX_USER_QUARANTINE_PCT}%); "
                "see migration.quarantine where entity = 'users'")
    return Criterion("quarantine under 0.1% of users", pct < MAX_USER_QUARANTINE_PCT, evidence)


def reconciled(legacy_dsn: str, dest_dsn: str, entities: list[str], run_id: str) -> Criterion:
    from include.migration.reconcile import persist, reconcile

    bad = []
    rows = 0
    for name in entities:
        rec = reconcile(legacy_dsn, dest_dsn, ENTITIES[name])
        persist(dest_dsn, run_id, rec)
        rows += rec.target_rows
        if not rec.clean:
            bad.append(rec.verdict_line())
    if bad:
        return Criterion("zero reconciliation differences", False, " | ".join(bad))
    return Criterion("zero reconciliation differences", True,
                     f"{len(entities)} entities, {rows} rows compared by checksum, all equal")


def schema_clean(legacy_dsn: str, dest_dsn: str, run_id: str) -> Criterion:
    from include.migration.schema_diff import run_schema_diff

    report = run_schema_diff(legacy_dsn, dest_dsn, dag_run_id=run_id)
    breaking = [d for ids in report.blocked.values() for d in ids]
    if report.verdict == "breaking":
        return Criterion("zero breaking schema differences", False,
                         f"schema check #{report.check_id}: {', '.join(sorted(set(breaking)))}")
    return Criterion("zero breaking schema differences", True, f"schema check #{report.check_id}: compatible")


def locked_down(dest_dsn: str) -> Criterion:
    from include.migration.bootstrap import security_report

    with db.connection(dest_dsn) as conn:
        findings = security_report(conn)
    if findings:
        return Criterion("destination locked down (RLS on)", False, " | ".join(str(f) for f in findings))
    return Criterion("destination locked down (RLS on)", True,
                     "RLS on every public table, owner-only policies, anon has no grants, migration schema private")


def _highest_legacy_message_id(legacy_dsn: str) -> int | None:
    with db.connection(legacy_dsn) as legacy:
        legacy.read_only = True
        return legacy.execute("SELECT max(id) FROM public.messages").fetchone()[0]


def advance_message_ids(legacy_dsn: str, dest_dsn: str) -> str:
    """Move the generator of ``public.messages.id`` above the highest migrated and legacy id,
    so the application's first message after cutover takes a free id. Never moves it back
    (the application may already have inserted). Returns what it did, for the log."""
    legacy_max = _highest_legacy_message_id(legacy_dsn)
    with db.connection(dest_dsn, application="migration-cutover") as dest:
        seq, next_value, dest_max = dest.execute(_MESSAGE_ID_STATE).fetchone()
        if seq is None:
            return "public.messages.id has no identity or sequence; nothing to advance (rerun the bootstrap)"
        highest = max((v for v in (legacy_max, dest_max) if v is not None), default=0)
        if next_value > highest:
            return f"{seq} already gives {next_value}, above the highest message id {highest}; left as it is"
        dest.execute("SELECT setval(%s::regclass, %s, true)", (seq, highest))
        dest.commit()
    return f"{seq} set so the next message id is {highest + 1} (it would have been {next_value}; " \
           f"highest id: destination {dest_max}, legacy {legacy_max})"


def message_ids(legacy_dsn: str, dest_dsn: str) -> Criterion:
    legacy_max = _highest_legacy_message_id(legacy_dsn)
    with db.connection(dest_dsn) as dest:
        seq, next_value, dest_max = dest.execute(_MESSAGE_ID_STATE).fetchone()
    if seq is None:
        return Criterion(MESSAGE_IDS, False, "public.messages.id has no identity or sequence, so the application "
                         "cannot insert a message without naming its id; rerun the bootstrap")
    highest = max((v for v in (legacy_max, dest_max) if v is not None), default=0)
    evidence = (f"{seq} next value {next_value}; highest message id: destination {dest_max}, legacy {legacy_max}")
    if next_value <= highest:
        return Criterion(MESSAGE_IDS, False, f"{evidence}: the application's next message would collide with a "
                         "migrated id")
    return Criterion(MESSAGE_IDS, True, evidence)


def evaluate(legacy_dsn: str, dest_dsn: str, run_id: str, *, entities: list[str] | None = None) -> Verdict:
    names = entities or list(ORDER)
    log.info("cutover: message ids: %s", advance_message_ids(legacy_dsn, dest_dsn))
    verdict = Verdict([
        accounted(legacy_dsn, dest_dsn, names),
        user_quarantine(legacy_dsn, dest_dsn),
        reconciled(legacy_dsn, dest_dsn, names, run_id),
        schema_clean(legacy_dsn, dest_dsn, run_id),
        locked_down(dest_dsn),
        message_ids(legacy_dsn, dest_dsn),
    ])
    if "media" in names:  # the files as well as the rows (media_cutover.py)
        from include.migration.media.cutover import storage_verified

        verdict.criteria.append(storage_verified(dest_dsn, run_id))
    verdict.report_path = str(write_report(verdict, run_id))
    for line in verdict.lines():
        log.info("cutover: %s", line)
    log.info("cutover verdict: %s (report %s)", "GO" if verdict.go else "NO-GO", verdict.report_path)
    return verdict


def write_report(verdict: Verdict, run_id: str) -> Path:
    base = Path(os.environ.get("MIGRATION_STATE_DIR", Path.cwd() / ".local" / "reports")) / "cutover"
    base.mkdir(parents=True, exist_ok=True)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)
    path = base / f"cutover-{safe}.json"
    data = json.dumps(verdict.as_dict(), indent=2)
    path.write_text(data)
    (base / "latest.json").write_text(data)
    return path
