"""What a run proves about its rows: the accounting invariant, the watermark it leaves, the quarantine threshold.

``account`` checks that every row in scope is loaded, excluded or quarantined
exactly once, against the destination itself, and stores the figures per reason;
``advance_watermark`` moves the entity's watermark no further than the run's
oldest snapshot; ``enforce_quarantine_threshold`` stops a run whose quarantine
is larger than the operator allows.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from psycopg import sql

from include.migration import db, runs
from include.migration import load as load_mod
from include.migration.entities import Entity

log = logging.getLogger(__name__)


class AccountingMismatch(RuntimeError):
    pass

class QuarantineThresholdExceeded(RuntimeError):
    pass

def fmt_rows(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"

def is_direct(run: runs.Run) -> bool:
    return run.report.get("load_method") == "direct"

def account(dest, entity: Entity, run: runs.Run, result: load_mod.LoadResult) -> dict[str, Any]:
    """The accounting invariant: in scope = loaded + excluded + quarantined, proven
    against the destination; stored per reason in ``migration.run_accounting``."""
    stage = sql.Identifier("migration_stage", run.stage_table)
    target = sql.Identifier(entity.schema_name, entity.target_table)
    counts = load_mod.disposition_counts(dest, run.stage_table)
    if is_direct(run):
        # Streamed rows never touched the stage; the table was empty before, so
        # every row it holds is this run's.
        streamed = run.counts["direct"]["streamed_loaded"]
        if streamed:
            counts["loaded:ok"] = counts.get("loaded:ok", 0) + streamed
        counts = dict(sorted(counts.items()))
        present = dest.execute(sql.SQL("SELECT count(*) FROM {}").format(target)).fetchone()[0]
    else:
        present = dest.execute(sql.SQL(
            "SELECT count(*) FROM {stage} s JOIN {target} t ON t.{key} = s.{key} WHERE s._disposition = 'loaded'"
        ).format(stage=stage, target=target, key=sql.Identifier(entity.key))).fetchone()[0]
    total = {d: sum(n for k, n in counts.items() if k.split(":", 1)[0] == d)
             for d in ("loaded", "excluded", "quarantined")}
    in_ledgers = dest.execute(sql.SQL(
        "SELECT (SELECT count(*) FROM migration.quarantine q JOIN {stage} s ON s.{key} = q.source_key::{typ} "
        "        WHERE q.entity = %s AND s._disposition = 'quarantined'), "
        "       (SELECT count(*) FROM migration.exclusions x JOIN {stage} s ON s.{key} = x.source_key::{typ} "
        "        WHERE x.entity = %s AND s._disposition = 'excluded')"
    ).format(stage=stage, key=sql.Identifier(entity.key), typ=sql.SQL(entity.key_type)),
        (entity.name, entity.name)).fetchone()
    problems = []
    in_scope = run.stage_rows or 0
    source_rows = run.source_rows
    compared = _compared(run)
    if compared is not None:
        # Only the differing key ranges were staged: the rows of the others are accounted from
        # what the destination holds for them, which the comparison found equal to the source's.
        equal, by_reason = _equal_ranges(dest, entity, stage)
        counts = {k: counts.get(k, 0) + by_reason.get(k, 0) for k in sorted({*counts, *by_reason})}
        total = {d: n + equal[d] for d, n in total.items()}
        present += equal["loaded"]
        in_ledgers = (in_ledgers[0] + equal["quarantined"], in_ledgers[1] + equal["excluded"])
        held = sum(equal.values())
        in_scope += held
        source_rows = None if source_rows is None else source_rows + compared["equal_source_rows"]
        if held != compared["equal_source_rows"]:
            problems.append(f"the key ranges found equal held {compared['equal_source_rows']} source rows, but the "
                            f"destination holds {held} rows and ledger entries there now")
    if sum(total.values()) != in_scope:
        problems.append(f"dispositions add up to {sum(total.values())}, not the {in_scope} rows in scope")
    if source_rows is not None and source_rows != in_scope:
        problems.append(f"the source had {source_rows} rows, the stage {in_scope}")
    if present != total["loaded"]:
        problems.append(f"{total['loaded']} rows should be loaded but {present} are in the destination")
    if in_ledgers[0] != total["quarantined"]:
        problems.append(f"{total['quarantined']} quarantined but {in_ledgers[0]} in migration.quarantine")
    if in_ledgers[1] != total["excluded"]:
        problems.append(f"{total['excluded']} excluded but {in_ledgers[1]} in migration.exclusions")
    dest.execute("DELETE FROM migration.run_accounting WHERE run_id = %s", (run.run_id,))
    for key, n in counts.items():
        disposition, reason = key.split(":", 1)
        dest.execute("INSERT INTO migration.run_accounting (run_id, entity, disposition, reason, rows) "
                     "VALUES (%s, %s, %s, %s, %s)", (run.run_id, entity.name, disposition, reason, n))
    summary = {"in_scope": in_scope, **total, "present_in_destination": present,
               "inserted": result.inserted, "updated": result.updated,
               "unchanged": total["loaded"] - result.inserted - result.updated,
               "deleted": result.deleted, "by_reason": counts, "balanced": not problems}
    runs.update(dest, run.run_id, counts={"accounting": summary})
    dest.commit()
    for line in accounting_table(entity.name, in_scope, counts):
        log.info(line)
    if problems:
        raise AccountingMismatch(f"{entity.name}: the accounting does not balance: " + "; ".join(problems))
    log.info("%s: accounting balanced: %s in scope = %s loaded + %s excluded + %s quarantined; "
             "all %s loaded rows are in the destination", entity.name, fmt_rows(in_scope), fmt_rows(total["loaded"]),
             fmt_rows(total["excluded"]), fmt_rows(total["quarantined"]), fmt_rows(present))
    return summary

def _compared(run: runs.Run) -> dict[str, Any] | None:
    """The comparison's figures when the run staged only the differing key ranges (changes.py)."""
    return run.report.get("changes") if run.scope.get("ranges") is not None else None


def _equal_ranges(dest, entity: Entity, stage: sql.Identifier) -> tuple[dict[str, int], dict[str, int]]:
    """What the destination holds outside a partial stage (the key ranges a comparison found
    equal): rows of its table (loaded, reason ``ok`` as the transform gives every loaded row)
    and entries of its ledgers, counted per disposition and per "disposition:reason"."""
    key, typ = sql.Identifier(entity.key), sql.SQL(entity.key_type)

    def outside(ref: sql.Composable) -> sql.Composable:
        return sql.SQL("NOT EXISTS (SELECT 1 FROM {} s WHERE s.{} = {})").format(stage, key, ref)

    loaded = dest.execute(sql.SQL("SELECT count(*) FROM {} t WHERE {}").format(
        sql.Identifier(entity.schema_name, entity.target_table), outside(sql.SQL("t.{}").format(key)))).fetchone()[0]
    by_reason = {"loaded:ok": loaded} if loaded else {}
    for disposition, ledger, reason in (("excluded", "exclusions", "rule"), ("quarantined", "quarantine", "reason")):
        by_reason |= {f"{disposition}:{r}": n for r, n in dest.execute(sql.SQL(
            "SELECT l.{reason}, count(*) FROM migration.{ledger} l WHERE l.entity = %s AND {cond} GROUP BY 1").format(
            reason=sql.Identifier(reason), ledger=sql.Identifier(ledger),
            cond=outside(sql.SQL("l.source_key::{}").format(typ))), (entity.name,))}
    totals = {d: sum(n for k, n in by_reason.items() if k.split(":", 1)[0] == d)
              for d in ("loaded", "excluded", "quarantined")}
    return totals, by_reason


def accounting_table(entity: str, in_scope: int, counts: dict[str, int]) -> list[str]:
    lines = [f"{entity} accounting", f"  {'disposition':<12} {'reason':<34} {'rows':>12}"]
    for key in sorted(counts):
        d, r = key.split(":", 1)
        lines.append(f"  {d:<12} {r:<34} {counts[key]:>12,}")
    lines.append(f"  {'in scope':<12} {'':<34} {in_scope:>12,}")
    return lines

def advance_watermark(dest, entity: Entity, run: runs.Run) -> None:
    stage = sql.Identifier("migration_stage", run.stage_table)
    max_key_expr = sql.SQL("max({})::text").format(sql.Identifier(entity.key)) if entity.append_only \
        else sql.SQL("NULL::text")
    change_ts, max_key = dest.execute(sql.SQL("SELECT max(_change_ts), {} FROM {}").format(
        max_key_expr, stage)).fetchone()
    if is_direct(run):
        # Streamed rows: their highest change timestamp came with the stream, their keys are in the table.
        streamed_ts = run.counts["direct"].get("max_change_ts")
        if streamed_ts is not None:
            streamed_ts = datetime.fromisoformat(streamed_ts)
            change_ts = streamed_ts if change_ts is None else max(change_ts, streamed_ts)
        if entity.append_only:
            table_key = dest.execute(sql.SQL("SELECT max({})::text FROM {}").format(
                sql.Identifier(entity.key), sql.Identifier(entity.schema_name, entity.target_table))).fetchone()[0]
            if table_key is not None and (max_key is None or int(table_key) > int(max_key)):
                max_key = table_key
    compared = _compared(run)
    if compared is not None:
        # A partial stage (changes.py): the comparison saw every source row, as a whole stage would.
        if compared.get("max_change_ts"):
            seen = datetime.fromisoformat(compared["max_change_ts"])
            change_ts = seen if change_ts is None else max(change_ts, seen)
        if entity.append_only and compared.get("max_key") is not None:
            max_key = compared["max_key"] if max_key is None else str(max(int(max_key), int(compared["max_key"])))
    if (run.report.get("partitions") or compared is not None) and change_ts is not None \
            and run.report.get("extracted_at"):
        # The partitions (or the comparison and the stage) read the source at different moments: a
        # change after the oldest snapshot may be in a range already read, so the next run starts there.
        oldest = datetime.fromisoformat(run.report["extracted_at"]).astimezone(UTC).replace(tzinfo=None)
        change_ts = min(change_ts, oldest)
    old = runs.watermark(dest, entity.name)
    last_key = max_key if entity.append_only else None
    if entity.append_only and old and old.last_key and max_key and int(old.last_key) > int(max_key):
        last_key = old.last_key
    if change_ts is None and old is not None:
        change_ts = old.change_ts
    runs.set_watermark(dest, entity.name, runs.Watermark(change_ts, last_key or (old.last_key if old else None)),
                       run.run_id)

def enforce_quarantine_threshold(dest_dsn: str, entity: Entity, run: runs.Run, threshold_pct: float) -> None:
    with db.connection(dest_dsn) as dest:
        quarantined, total = dest.execute(sql.SQL(
            "SELECT (SELECT count(*) FROM migration.quarantine WHERE entity = %s), "
            "(SELECT count(*) FROM {t}) + (SELECT count(*) FROM migration.quarantine WHERE entity = %s) "
            "+ (SELECT count(*) FROM migration.exclusions WHERE entity = %s)"
        ).format(t=sql.Identifier(entity.schema_name, entity.target_table)),
            (entity.name, entity.name, entity.name)).fetchone()
    pct = 100.0 * quarantined / total if total else 0.0
    if pct > threshold_pct:
        raise QuarantineThresholdExceeded(
            f"{entity.name}: {quarantined} rows are in quarantine, {pct:.3f}% of the {total} known rows, above "
            f"the {threshold_pct}% threshold. The load and its report are written; read migration.quarantine "
            f"(entity '{entity.name}') for the reasons. For a known-dirty source, rerun with the param "
            f"quarantine_threshold_pct raised.")
    log.info("%s: quarantine %d rows, %.3f%% of %d known rows (threshold %s%%)", entity.name, quarantined, pct,
             total, threshold_pct)
