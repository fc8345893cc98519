"""The steps of an entity's run, callable with or without Airflow.

Each step takes small arguments (entity name, run id, params) and returns a
small descriptor; the rows themselves stay in the databases. The DAG factory
wraps each step in a task; tests and the benchmark call them directly.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from types import ModuleType
from typing import Any

import psycopg
from psycopg import sql

from include.migration import abandoned, db, direct, runs
from include.migration import extract as extract_mod
from include.migration import load as load_mod
from include.migration.accounting import (
    AccountingMismatch,
    account,
    accounting_table,
    advance_watermark,
    enforce_quarantine_threshold,
    fmt_rows,
    is_direct,
)
from include.migration.entities import Entity, get
from include.migration.stage_health import newer_stage_loaded, stage_gone

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 50_000
DEFAULT_QUARANTINE_THRESHOLD_PCT = 0.1
# How a run's rows reach the destination table: "auto" streams a full run into
# an empty table directly (direct.py) and stages otherwise; "staged" always stages.
LOAD_METHODS = ("auto", "staged")


class SchemaMismatch(RuntimeError):
    pass


class ReconciliationFailed(RuntimeError):
    pass


@dataclass
class Conns:
    legacy: str
    dest: str

    @classmethod
    def from_airflow(cls) -> Conns:
        return cls(db.dsn_for(db.LEGACY_CONN_ID), db.dsn_for(db.DEST_CONN_ID))


def entity_hooks(entity: Entity) -> ModuleType | None:
    """The module named by ``Entity.hooks``, or None.

    It may define any of: ``dag_params()`` (extra DAG params; their values reach
    the hooks as the run's ``report["options"]``), ``on_transform(conns, dest,
    entity, run)`` (after the destination checks; may quarantine more staged
    rows), ``before_merge`` / ``after_merge`` (same arguments; around the
    chunked merge, inside the write lock; ``before_merge`` only until the merge
    has started) and ``on_reconcile(conns, entity, run)`` returning the
    verdict lines of what it found wrong (empty when clean).
    """
    return importlib.import_module(entity.hooks) if entity.hooks else None


def _hook(entity: Entity, name: str) -> Any:
    return entity.hook(name)


def _keeps_run_alive(step: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """A step holds its run's liveness lock while it works (abandoned.heartbeat), so a run
    whose process dies is told apart from one that is working or between two tasks."""
    @functools.wraps(step)
    def alive(conns: Conns, entity_name: str, run: str | dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        run_id = run["run_id"] if isinstance(run, dict) else run
        with abandoned.heartbeat(conns.dest, run_id, step.__name__):
            return step(conns, entity_name, run, *args, **kwargs)

    return alive


def extract(conns: Conns, entity_name: str, dag_run_id: str, *, mode: str, dry_run: bool,
            options: dict[str, Any] | None = None, load_method: str = "auto", partitions: int = 1,
            detect_changes: bool = True) -> dict[str, Any]:
    """``plan`` and every partition's ``extract_partition``, in one call (tests, the benchmark;
    the DAG runs the partitions as mapped tasks). Partitions run side by side in threads, as
    mapped tasks on separate workers would."""
    parts = plan(conns, entity_name, dag_run_id, mode=mode, dry_run=dry_run, options=options,
                 load_method=load_method, partitions=partitions, detect_changes=detect_changes)
    if len(parts) == 1:
        return extract_partition(conns, entity_name, parts[0])
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix=f"extract-{entity_name}") as pool:
        done = list(pool.map(lambda part: extract_partition(conns, entity_name, part), parts))
    return {"run_id": parts[0]["run_id"], "stage_rows": sum(d["stage_rows"] for d in done),
            "scope": done[0]["scope"], "load_method": parts[0]["load_method"], "partitions": len(parts)}


def plan(conns: Conns, entity_name: str, dag_run_id: str, *, mode: str, dry_run: bool,
         options: dict[str, Any] | None = None, load_method: str = "auto", partitions: int = 1,
         detect_changes: bool = True) -> list[dict]:
    """Start (or resume) the run: its scope, how it loads, and its partitions.

    Returns one small descriptor per partition, for ``extract_partition`` (the DAG maps
    its extract task over them). ``options``: the entity's own params (see
    ``entity_hooks``), kept with the run for its later steps. ``load_method``: see
    ``LOAD_METHODS``. ``partitions``: how many key ranges extract side by side. Into an
    empty table each streams its range straight into it (the indexes are dropped here,
    once, and rebuilt by the load); otherwise each stages its range. ``detect_changes``:
    a full, staged, single-partition run over a populated destination first compares the
    source and the destination per key range and stages only the ranges that differ
    (changes.py); False stages every row."""
    if load_method not in LOAD_METHODS:
        raise ValueError(f"load_method={load_method!r}: expected one of {', '.join(LOAD_METHODS)}")
    if partitions < 1:
        raise ValueError(f"partitions={partitions}: expected 1 or more")
    entity = get(entity_name)
    run_id = runs.make_run_id(entity.name, dag_run_id)
    # Runs of this entity whose process died are marked now, not left 'running' for ever.
    abandoned.mark_abandoned(conns.dest, entity.name, found_by=run_id)
    with db.connection(conns.dest) as dest:
        # A run that dropped the table's indexes for its partitions and never loaded: put them back first.
        direct.reattach_pending(dest, entity, run_id)
        run = runs.start(dest, entity.name, dag_run_id, mode, dry_run)
        if run.status == "abandoned":
            # Cleared by an operator after it was found dead: it starts again from a new stage.
            log.warning("%s: run %s was marked abandoned; starting it again", entity.name, run.run_id)
            runs.update(dest, run.run_id, status="running")
            run.status = "running"
        scope = extract_mod.plan_scope(dest, entity, mode)
        why_staged = _why_staged(dest, entity, scope, dry_run=dry_run, load_method=load_method)
        dest.rollback()
    ranges: list[tuple[str | None, str | None]] = [(None, None)]
    if partitions > 1:
        with db.connection(conns.legacy) as legacy:
            legacy.read_only = True
            ranges = extract_mod.key_ranges(legacy, entity, partitions)
    method = "staged" if why_staged else "direct"
    changes_found = None
    if mode == "full" and method == "staged" and scope.kind == "all":
        changes_found = _compare_first(conns, entity, scope, dry_run=dry_run, partitions=partitions,
                                       detect_changes=detect_changes)
    log.info("%s: %s run %s%s; scope: %s", entity.name, mode, run.run_id, " (dry run)" if dry_run else "",
             scope.describe())
    descriptor = {"run_id": run.run_id, "scope": scope.kind, "load_method": method}
    table = extract_mod.stage_name(run.run_id)
    with db.connection(conns.dest) as dest:
        runs.update(dest, run.run_id, scope=_scope_record(scope), stage_table=table, stage_rows=None,
                    source_rows=None, load_progress=None, counts={"partitions": {}},
                    report={"options": options or {}, "load_method": method, "changes": changes_found,
                            "partitions": [list(r) for r in ranges] if len(ranges) > 1 else None})
        if method == "direct" or len(ranges) > 1:
            # The run's stage: empty itself, the parent of every partition's stage (direct: of the side rows).
            extract_mod.create_stage(dest, entity, table)
        if len(ranges) > 1:
            extract_mod.index_stage(dest, entity, table)
            if method == "direct":
                direct.detach_for_partitions(dest, entity, run.run_id)
        dest.commit()
    _log_how(entity, why_staged, ranges, partitions, full=scope.kind == "all" and not dry_run)
    if len(ranges) == 1:
        return [descriptor]
    return [{**descriptor, "partition": i, "of": len(ranges), "key_range": list(r)} for i, r in enumerate(ranges)]


def _log_how(entity: Entity, why_staged: str | None, ranges: list, partitions: int, *, full: bool) -> None:
    """The plan's choices, for the on-call reader: the partitions, and how the rows reach the table."""
    if len(ranges) > 1:
        log.info("%s: %d partitions by %s: %s", entity.name, len(ranges), entity.key,
                 "; ".join(_describe_range(r) for r in ranges))
    elif partitions > 1:
        log.info("%s: one partition, not %d: the source table has too few rows to split", entity.name,
                 partitions)
    if why_staged is None:
        log.info("%s: %s.%s is empty, so %s straight into it (direct load), the side rows into the stage",
                 entity.name, entity.schema_name, entity.target_table,
                 "each partition streams its key range" if len(ranges) > 1
                 else "the load will stream the transformed source")
    elif full:
        log.info("%s: loading through the stage: %s", entity.name, why_staged)


def _scope_record(scope: extract_mod.Scope) -> dict[str, Any]:
    """The scope as the run keeps it: merged into the record, so ``ranges`` is always written
    (a resumed run's earlier comparison must not outlive a plan that made none)."""
    return {**scope.as_dict(), "ranges": scope.ranges}


def _compare_first(conns: Conns, entity: Entity, scope: extract_mod.Scope, *, dry_run: bool,
                   partitions: int, detect_changes: bool) -> dict[str, Any] | None:
    """A full run over a populated destination: narrow ``scope`` to the key ranges that differ
    (changes.py) and return the comparison's figures, for the run's report; or log why every
    row is staged and return None."""
    from include.migration import changes

    why_not = (changes.why_not(entity) or ("the detect_changes param is off" if not detect_changes else None)
               or ("a dry run compares the whole stage with the destination" if dry_run else None)
               or (f"partitions={partitions}: the partitions extract every row side by side"
                   if partitions > 1 else None))
    if why_not is None:
        with db.connection(conns.dest) as dest:
            if not dest.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(
                    sql.Identifier(entity.schema_name, entity.target_table))).fetchone()[0]:
                why_not = f"{entity.schema_name}.{entity.target_table} is empty: every row is new"
    if why_not is not None:
        log.info("%s: change detection off, every source row is staged: %s", entity.name, why_not)
        return None
    diff = changes.compare(conns.legacy, conns.dest, entity)
    if diff.gave_up:
        log.info("%s: change detection stopped after %.2f s, every source row is staged: %s", entity.name,
                 diff.seconds, diff.gave_up)
        return None
    scope.ranges = diff.ranges
    log.info("%s: change detection: %s", entity.name, diff.summary())
    return diff.as_dict()


def _why_staged(dest, entity: Entity, scope: extract_mod.Scope, *, dry_run: bool, load_method: str) -> str | None:
    """Why the run goes through the stage, or None when it may load directly."""
    if dry_run:
        return "a dry run compares the stage with the destination"
    if scope.kind != "all":
        return "an incremental run merges its changes"
    if load_method == "auto":
        return direct.eligibility(dest, entity)
    return "the load_method param says staged"


def partition_label(part: dict[str, Any]) -> str:
    """How the Airflow UI names a mapped extract task."""
    if part.get("partition") is None:
        return "direct load: streams in the load" if part["load_method"] == "direct" else "whole scope"
    return f"{part['partition'] + 1}/{part['of']} {_describe_range(part['key_range'])}"


def _describe_range(key_range: Any) -> str:
    lo, hi = key_range
    return f"({'start' if lo is None else lo}, {'end' if hi is None else hi}]"


@_keeps_run_alive
def extract_partition(conns: Conns, entity_name: str, part: dict[str, Any]) -> dict[str, Any]:
    """Stream a partition's transformed source rows into its stage (the whole scope when the
    run has one partition). A direct run's partition streams its key range straight into the
    empty table (``direct.stream_partition``); a direct run of one stream stages nothing here:
    its load streams."""
    entity = get(entity_name)
    run_id = part["run_id"]
    partition = part.get("partition")
    if part["load_method"] == "direct" and partition is None:
        return {"run_id": run_id, "stage_rows": None, "scope": part["scope"], "load_method": "direct"}
    with db.connection(conns.dest) as dest:
        run = _run(dest, run_id)
    if part["load_method"] == "direct":
        with _schema_mismatch(entity):
            done = direct.stream_partition(conns, entity, run, part)
        return {"run_id": run_id, "stage_rows": done["rows"], "scope": part["scope"], "load_method": "direct",
                "partition": partition}
    scope = extract_mod.Scope(**run.scope)
    label = entity.name
    if partition is not None:
        scope.key_range = tuple(part["key_range"])
        label = f"{entity.name} partition {partition_label(part)}"
    with _schema_mismatch(entity):
        res = extract_mod.extract(conns.legacy, conns.dest, entity, run_id, scope, partition=partition)
    rate = res.rows / res.seconds if res.seconds else 0.0
    log.info("%s: extracted %s rows (%.1f MB) from %s into stage %s in %.2f s, %s rows/s",
             label, fmt_rows(res.rows), res.bytes / 1e6, db.describe(conns.legacy), res.stage_table,
             res.seconds, fmt_rows(int(rate)))
    snapshot_at = res.snapshot_at
    compared_at = (run.report.get("changes") or {}).get("snapshot_at")
    if compared_at is not None:
        # The ranges found equal were read in the comparison's snapshot, before this one.
        compared = datetime.fromisoformat(compared_at)
        snapshot_at = compared if snapshot_at is None else min(snapshot_at, compared)
    extracted_at = snapshot_at.isoformat() if snapshot_at else None
    with db.connection(conns.dest) as dest:
        # A new stage: a load that had begun starts over (its merge writes no row twice).
        if partition is None:
            runs.update(dest, run_id, stage_rows=res.rows, source_rows=res.source_rows, load_progress=None,
                        counts={"extract_seconds": res.seconds}, report={"extracted_at": extracted_at})
        else:
            runs.update(dest, run_id, load_progress=None)
            runs.record_partition(dest, run_id, partition, {
                "stage_table": res.stage_table, "rows": res.rows, "source_rows": res.source_rows,
                "seconds": round(res.seconds, 3), "bytes": res.bytes, "extracted_at": extracted_at})
        dest.commit()
    if res.source_rows is not None and res.source_rows != res.rows:
        raise AccountingMismatch(
            f"{label}: the source has {res.source_rows} rows but {res.rows} reached the stage; "
            "nothing was loaded. Rerun; if it repeats, the transform SQL drops rows (a bug).")
    return {"run_id": run_id, "stage_rows": res.rows, "scope": scope.kind, "load_method": "staged",
            **({"partition": partition} if partition is not None else {})}


@contextmanager
def _schema_mismatch(entity: Entity) -> Iterator[None]:
    """A legacy schema that no longer fits the mapping, said so (the transform SQL fails on it)."""
    try:
        yield
    except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedTable, psycopg.errors.DatatypeMismatch,
            psycopg.errors.UndefinedFunction, psycopg.errors.InvalidBinaryRepresentation) as exc:
        raise SchemaMismatch(
            f"{entity.name}: the legacy schema no longer fits the {entity.name} mapping: "
            f"{exc.diag.message_primary}. Nothing was loaded. The schema_diff DAG lists every difference "
            "and how to clear it.") from None


def gather_partitions(dest, entity: Entity, run: runs.Run) -> runs.Run:
    """A partitioned run's stage totals, from its partitions' records: every partition must
    have extracted. The run's snapshot time is its oldest partition's (see ``stage_health.newer_stage_loaded``
    and ``accounting.advance_watermark``). Idempotent; returns the run as updated."""
    ranges = run.report.get("partitions")
    if not ranges:
        return run
    done = run.counts.get("partitions") or {}
    missing = [str(i + 1) for i in range(len(ranges)) if str(i) not in done]
    if missing:
        raise RuntimeError(
            f"{entity.name}: partitions {', '.join(missing)} of {len(ranges)} have not extracted (their extract "
            "tasks failed or did not run); nothing was loaded. Clear this DAG run's failed extract tasks.")
    parts = [done[str(i)] for i in range(len(ranges))]
    source = [p["source_rows"] for p in parts]
    snapshots = [p["extracted_at"] for p in parts if p.get("extracted_at")]
    runs.update(dest, run.run_id, stage_rows=sum(p["rows"] for p in parts),
                source_rows=None if None in source else sum(source),
                counts={"extract_seconds": max(p["seconds"] for p in parts)},
                report={"extracted_at": min(snapshots, key=datetime.fromisoformat) if snapshots else None})
    # Statistics of the whole tree: the load's queries read the run's stage with its partitions.
    dest.execute(sql.SQL("ANALYZE {} ({}, _disposition, _reason)").format(
        sql.Identifier("migration_stage", run.stage_table), sql.Identifier(entity.key)))
    dest.commit()
    return _run(dest, run.run_id)


@_keeps_run_alive
def transform(conns: Conns, entity_name: str, run_id: str) -> dict[str, Any]:
    entity = get(entity_name)
    with db.connection(conns.dest) as dest:
        run = gather_partitions(dest, entity, _run(dest, run_id))
        if is_direct(run):
            log.info("%s: direct load: the destination checks run inside the load, on the streamed rows",
                     entity.name)
            return {"run_id": run_id, "dispositions": {}, "load_method": "direct"}
        counts = load_mod.check_stage(dest, entity, run.stage_table)
        hook = _hook(entity, "on_transform")
        if hook is not None:
            hook(conns, dest, entity, run)
            counts = load_mod.disposition_counts(dest, run.stage_table)
        repairs = load_mod.repair_counts(dest, run.stage_table)
        runs.update(dest, run_id, report={"dispositions": counts, "repaired": repairs})
        dest.commit()
        by_disp: dict[str, int] = {}
        for k, n in counts.items():
            by_disp[k.split(":")[0]] = by_disp.get(k.split(":")[0], 0) + n
        staged = " staged (the key ranges that differ; the rest compared equal)" \
            if run.scope.get("ranges") is not None else " in scope"
        log.info("%s: %s rows%s: %s loaded, %s excluded, %s quarantined; repaired: %s", entity.name,
                 fmt_rows(run.stage_rows), staged, fmt_rows(by_disp.get("loaded", 0)),
                 fmt_rows(by_disp.get("excluded", 0)), fmt_rows(by_disp.get("quarantined", 0)),
                 ", ".join(f"{k} {v}" for k, v in repairs.items()) or "none")
        if run.dry_run:
            plan = load_mod.plan_changes(dest, entity, run.stage_table, full=run.mode == "full")
            if run.mode == "incremental":
                from include.migration import deletes

                plan["delete_gone_from_source"] = len(deletes.compare_keys(conns.legacy, conns.dest, entity).gone)
            runs.update(dest, run_id, report={"dry_run_plan": plan})
            dest.commit()
            log.info("%s: DRY RUN, nothing will be written. A load would: %s", entity.name,
                     ", ".join(f"{k.replace('_', ' ')} {fmt_rows(v)}" for k, v in plan.items()))
            for line in accounting_table(entity.name, run.stage_rows or 0, counts):
                log.info(line)
    return {"run_id": run_id, "dispositions": counts}


@_keeps_run_alive
def load(conns: Conns, entity_name: str, run_id: str, *, batch_size: int = DEFAULT_BATCH_SIZE,
         quarantine_threshold_pct: float = DEFAULT_QUARANTINE_THRESHOLD_PCT, gate: dict | None = None,
         lock_wait_seconds: float = 60.0) -> dict[str, Any]:
    """Gate, lock, merge, account. Raises if the accounting does not add up."""
    entity = get(entity_name)
    with db.connection(conns.dest) as dest:
        run = _run(dest, run_id)
        if run.dry_run:
            log.info("%s: dry run, the load writes nothing", entity.name)
            return {"run_id": run_id, "dry_run": True}
        if gate is not None:
            from include.migration.gate import check_load_allowed

            accepted = check_load_allowed(dest, entity.name, run_id=run_id, **gate)
            dest.commit()
            if accepted:
                log.warning("%s: schema differences accepted for this run only: %s", entity.name,
                            ", ".join(accepted))
    # The lock is held by the writing session itself: if that session ends, so does the lock.
    with db.connection(conns.dest, application=f"migration-load-{entity.name}") as dest, \
            runs.EntityLock(conns.dest, entity.name, run_id, wait_seconds=lock_wait_seconds, conn=dest):
        run = _run(dest, run_id)
        if run.status == "loaded":
            log.info("%s: run %s already loaded; nothing to do", entity.name, run_id)
            return {"run_id": run_id, **run.counts.get("load", {})}
        if not is_direct(run):
            why = stage_gone(dest, run) or newer_stage_loaded(dest, run)
            if why:
                run = _restage(conns, dest, entity, run, why)
        if run.load_progress is None and "watermark_before" not in run.report:
            # Recorded once per run: after a re-stage, another run may have moved it since.
            wm = runs.watermark(dest, entity.name)
            runs.update(dest, run_id, report={"watermark_before": runs.jsonable(wm.__dict__) if wm else None})
            dest.commit()
        if is_direct(run) or run.load_progress == direct.DONE:
            # One transaction into the empty table: the stream, or (partitioned) what the partitions streamed.
            if run.load_progress != direct.DONE:
                if run.report.get("partitions"):
                    # Every partition must have streamed (the transform checked it; a load cleared alone has not).
                    direct.load_partitioned(dest, entity, gather_partitions(dest, entity, run))
                else:
                    direct.load(conns, dest, entity, run)
                run = _run(dest, run_id)
            result = load_mod.LoadResult.from_counts(run.counts["load"])
        else:
            before, after = _hook(entity, "before_merge"), _hook(entity, "after_merge")
            if before is not None and run.load_progress is None:
                before(conns, dest, entity, run)
            result = load_mod.load(dest, entity, run, batch_size=batch_size, full=run.mode == "full")
            if run.mode == "incremental":
                # A full run's sweep saw every source key in its stage; an incremental stage holds
                # only what changed, so the key sets are compared range by range instead.
                from include.migration import deletes

                result.deleted += deletes.apply_hard_deletes(conns.legacy, conns.dest, dest, entity, run)
            if after is not None:
                after(conns, dest, entity, run)
        rate = (result.inserted + result.updated) / result.seconds if result.seconds else 0
        log.info("%s: load done: %s inserted, %s updated, %s deleted in %d chunks, %.2f s (%s rows/s written)",
                 entity.name, fmt_rows(result.inserted), fmt_rows(result.updated), fmt_rows(result.deleted), result.chunks,
                 result.seconds, fmt_rows(int(rate)))
        accounting = account(dest, entity, run, result)
        advance_watermark(dest, entity, run)
        runs.update(dest, run_id, status="loaded", finished_at=_now(dest), counts={"accounting": accounting})
        dest.commit()
    enforce_quarantine_threshold(conns.dest, entity, run, quarantine_threshold_pct)
    check_lockdown(conns)
    return {"run_id": run_id, **result.as_dict()}


class LockdownBroken(RuntimeError):
    pass


def check_lockdown(conns: Conns) -> None:
    """After every load: RLS on, owner-only policies, nothing for anon, migration schema private."""
    from include.migration.bootstrap import security_report

    with db.connection(conns.dest) as dest:
        findings = security_report(dest)
    if findings:
        raise LockdownBroken("the destination is not locked down: " + " | ".join(str(f) for f in findings)
                             + " Rerun the bootstrap (python -m include.migration.bootstrap) or fix the grants.")
    log.info("lock-down check: RLS on every public table, owner-only policies, no grants for anon, "
             "migration schema private")


def _run(dest, run_id: str) -> runs.Run:
    run = runs.get(dest, run_id)
    if run is not None and run.status == "abandoned":
        found = dest.execute("SELECT abandoned_at, abandoned_by FROM migration.runs WHERE run_id = %s",
                             (run_id,)).fetchone()
        dest.rollback()
        raise RuntimeError(abandoned.describe(run_id, *found))
    if run is None or run.stage_table is None:
        raise RuntimeError(f"run {run_id} has no extract; rerun the whole DAG run (clear from extract)")
    return run


def _restage(conns: Conns, dest, entity: Entity, run: runs.Run, why: str) -> runs.Run:
    """Stage the run's scope again from the source, now (every partition, each in its own
    snapshot), and transform it, inside the write lock; returns the run as updated.

    The scope is the run's own (the same watermark, quarantine retries and key ranges), read
    in a newer snapshot, so it holds every change the old stage held and any made since. The
    merge starts over from its first chunk (the extract clears ``load_progress``): resumed at
    its progress mark, the new stage's changes to rows in chunks already merged would be
    skipped while the watermark moved past them. Rows already merged compare equal and are
    not written twice."""
    log.warning("%s: run %s: %s. Staging its scope again from the source (the load's merge starts over from "
                "its first chunk; rows already merged are compared, not written twice)", entity.name, run.run_id, why)
    if run.scope.get("ranges") is not None:
        # The key ranges found equal were compared before the newer stage was loaded: stage them all.
        log.warning("%s: run %s: its comparison of key ranges is older than that; every source row is staged",
                    entity.name, run.run_id)
        runs.update(dest, run.run_id, scope={"ranges": None}, report={"changes": None})
        dest.commit()
    descriptor = {"run_id": run.run_id, "scope": run.scope.get("kind", "all"), "load_method": "staged"}
    ranges = run.report.get("partitions")
    parts: list[dict[str, Any]] = [descriptor]
    if ranges:
        # The run's stage, parent of every partition's: made again (with its children dropped).
        extract_mod.create_stage(dest, entity, run.stage_table)
        extract_mod.index_stage(dest, entity, run.stage_table)
        runs.update(dest, run.run_id, counts={"partitions": {}})
        dest.commit()
        parts = [{**descriptor, "partition": i, "of": len(ranges), "key_range": list(r)}
                 for i, r in enumerate(ranges)]
    for part in parts:
        extract_partition(conns, entity.name, part)
    transform(conns, entity.name, run.run_id)
    restaged = [*run.report.get("restaged", []), why]
    # The load's figures start over with its merge: they describe what merging this stage wrote.
    if run.counts.get("load"):
        log.info("%s: the merge of the earlier stage had written: %s", entity.name, run.counts["load"])
    runs.update(dest, run.run_id, report={"restaged": restaged}, counts={"load": {}})
    dest.commit()
    return _run(dest, run.run_id)


@_keeps_run_alive
def validate(conns: Conns, entity_name: str, run_id: str) -> dict[str, Any]:
    from include.migration import validation

    entity = get(entity_name)
    with db.connection(conns.dest) as dest:
        mode = _run(dest, run_id).mode
    # The expected count runs the whole transform in the legacy database: full runs
    # only. An incremental run's reconciliation compares every row (hard deletes included).
    expected = expected_rows(conns, entity) if mode == "full" else None
    report = validation.validate_table(db.sqlalchemy_url(conns.dest), table=entity.target_table,
                                       schema=entity.schema_name, key_column=entity.key,
                                       suite=validation.load_suite(entity.name), expected_row_count=expected)
    for line in report.summary_lines():
        log.info("%s: %s", entity.name, line)
    with db.connection(conns.dest) as dest:
        runs.update(dest, run_id, report={"validation": {"success": report.success,
                                                          "lines": report.summary_lines()}})
        dest.commit()
    if not report.success:
        raise ValidationFailed(f"{entity.name}: validation failed\n{report.failure_message()}")
    return {"run_id": run_id, "validated": True, "expected_rows": expected}


class ValidationFailed(RuntimeError):
    pass


def expected_rows(conns: Conns, entity: Entity) -> int:
    """Rows the destination should hold: the source's loadable rows, less those the
    destination itself quarantined (the same set the reconciliation compares)."""
    with db.connection(conns.legacy) as legacy:
        legacy.read_only = True
        db.tune_legacy(legacy)
        query = extract_mod.transform_query(entity, extract_mod.Scope(kind="all"),
                                            encoding=extract_mod.legacy_encoding(legacy))
        keys_loaded = legacy.execute(sql.SQL(
            "SELECT count(*) FROM ({}) t WHERE t._disposition = 'loaded'").format(query)).fetchone()[0]
    with db.connection(conns.dest) as dest:
        dest_only = dest.execute(
            "SELECT count(*) FROM migration.quarantine WHERE entity = %s AND (reason IN "
            "('email_taken_in_destination') OR reason LIKE '%%_not_in_destination' OR reason = ANY(%s))",
            (entity.name, list(entity.hook_reasons))).fetchone()[0]
    return keys_loaded - dest_only


@_keeps_run_alive
def reconcile(conns: Conns, entity_name: str, run_id: str) -> dict[str, Any]:
    from include.migration import reconcile as rec_mod

    entity = get(entity_name)
    with db.connection(conns.dest) as dest:
        staged = _run(dest, run_id)
    # A full run that staged only the ranges that differed: its comparison vouches for the rest.
    ranges = staged.scope.get("ranges")
    rec = rec_mod.reconcile(conns.legacy, conns.dest, entity, ranges=ranges,
                            compared=staged.report.get("changes") if ranges is not None else None)
    with db.connection(conns.dest) as dest:
        # An incremental run's load deleted the rows whose source row was gone: the report says how many.
        rec.hard_deletes_applied = (_run(dest, run_id).counts.get("hard_deletes") or {}).get("deleted")
    path = rec_mod.persist(conns.dest, run_id, rec)
    with db.connection(conns.dest) as dest:
        # The destination's state after this run, for the rollback's proof.
        runs.update(dest, run_id, counts={"fingerprint": rec.fingerprint()})
        dest.commit()
    log.info(rec.verdict_line())
    log.info("%s: reconciliation report written to %s (%.2f s)", entity.name, path, rec.seconds)
    with db.connection(conns.dest) as dest:
        run = _run(dest, run_id)
    hook = _hook(entity, "on_reconcile")
    problems = list(hook(conns, entity, run)) if hook is not None else []
    swept = rec.hard_deletes_applied
    if rec.extra:
        # Every run, incremental too, has deleted the rows whose source row was gone before this
        # comparison (deletes.py): an extra row now is a difference, not a delete left for later.
        log.warning("%s: %d destination rows have no source row (extra)%s. Keys: %s", entity.name, len(rec.extra),
                    f"; this run's load deleted {swept} rows whose source row was gone, so these are rows deleted "
                    "from the source since, or a fault" if swept is not None else "", ", ".join(rec.extra[:10]))
    elif swept is not None:
        log.info("%s: hard deletes: this run deleted %d destination rows whose source row was gone; none is left",
                 entity.name, swept)
    clean = rec.clean and not problems
    finish(conns, run_id, "succeeded" if clean else "reconciliation_failed")
    if not clean:
        raise ReconciliationFailed("; ".join(([] if rec.clean else [rec.verdict_line()]) + problems))
    return {"run_id": run_id, "verdict": "clean", "rows": rec.target_rows}


def finish(conns: Conns, run_id: str, status: str) -> None:
    """Close the run and drop its stage."""
    with db.connection(conns.dest) as dest:
        run = runs.get(dest, run_id)
        if run and run.stage_table:
            extract_mod.drop_stage(dest, run.stage_table)
        runs.update(dest, run_id, status=status, finished_at=_now(dest))
        dest.commit()


def _now(dest):
    return dest.execute("SELECT now()").fetchone()[0]


def run_entity(conns: Conns, entity_name: str, dag_run_id: str, *, mode: str = "incremental",
               dry_run: bool = False, batch_size: int = DEFAULT_BATCH_SIZE, validate_with_gx: bool = True,
               reconcile_after: bool = True, gate: dict | None = None,
               quarantine_threshold_pct: float = DEFAULT_QUARANTINE_THRESHOLD_PCT,
               options: dict[str, Any] | None = None, load_method: str = "auto",
               partitions: int = 1, detect_changes: bool = True,
               lock_wait_seconds: float = 60.0) -> dict[str, Any]:
    """Every step of one entity's run, in order, without Airflow (tests, benchmark).
    ``lock_wait_seconds``: how long the load waits for another run's write lock on the entity."""
    out = extract(conns, entity_name, dag_run_id, mode=mode, dry_run=dry_run, options=options,
                  load_method=load_method, partitions=partitions, detect_changes=detect_changes)
    run_id = out["run_id"]
    transform(conns, entity_name, run_id)
    if dry_run:
        finish(conns, run_id, "dry_run")
        return {"run_id": run_id, "dry_run": True}
    loaded = load(conns, entity_name, run_id, batch_size=batch_size, gate=gate,
                  quarantine_threshold_pct=quarantine_threshold_pct, lock_wait_seconds=lock_wait_seconds)
    if validate_with_gx:
        validate(conns, entity_name, run_id)
    if reconcile_after:
        reconcile(conns, entity_name, run_id)
    else:
        finish(conns, run_id, "succeeded")  # no fingerprint: a rollback to here reports it unverified
    return {"run_id": run_id, **loaded}
