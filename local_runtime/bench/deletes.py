"""The benchmark's hard-delete step: an incremental run after 1 % changed with 0.1 % hard-deleted.

On a destination a full run has loaded, the legacy world changes as the app
would (``world.apply_changes``, 1 %), then 0.1 % more of its rows are
hard-deleted: agents, conversations with their messages, and messages scattered
one by one over the whole key space (the worst case for key ranges). One
incremental run per entity follows; it must delete exactly the rows whose
source is gone (each run's reconciliation is then clean, no extra row). The
figures: each run's time against the full run's, the key comparison's own
time with nothing gone and with the deletes, and how many keys it listed
against the table's rows (the work past its first pass follows the ranges that
differ, not the table).

    python -m local_runtime.bench.deletes --scale small     # standalone, its own embedded server

In ``make bench`` it is the phase ``hard_deletes`` (``phase``, registered in
``local_runtime.bench.phases.PHASES`` after the incremental step (4)): on the
benchmark's destination, in step with the source after (4), with the ratios
against the benchmark's own full runs (1).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results"
PG_DIR = ROOT / ".local" / "bench-deletes-pg"
ENTITIES = ("users", "agents", "conversations", "messages")
CHANGED_FRACTION = 0.01
DELETED_FRACTION = 0.001


def say(line: str) -> None:
    print(line, flush=True)


def hard_delete(legacy: str, fraction: float = DELETED_FRACTION, seed: int = 11) -> dict[str, int]:
    """Hard-delete ``fraction`` of the agents, of the conversations (with their messages, as
    the app does) and of the messages (scattered at random). Users are left: the app never
    hard-deletes an account whose conversations stay. Returns the rows deleted per table."""
    deleted: dict[str, int] = {}
    salt = sql.Literal(str(seed))
    with psycopg.connect(legacy) as conn:
        def pick(table: str) -> sql.Composable:
            n = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]
            return sql.SQL("SELECT id FROM {t} ORDER BY md5(id::text || {salt}) LIMIT {n}").format(
                t=sql.Identifier(table), salt=salt, n=sql.Literal(max(1, round(n * fraction))))

        deleted["agents"] = conn.execute(sql.SQL("DELETE FROM agents WHERE id IN ({})").format(
            pick("agents"))).rowcount
        gone = [r[0] for r in conn.execute(pick("conversations"))]
        deleted["messages"] = conn.execute("DELETE FROM messages WHERE conversation_id = ANY(%s)", (gone,)).rowcount
        deleted["conversations"] = conn.execute("DELETE FROM conversations WHERE id = ANY(%s)", (gone,)).rowcount
        deleted["messages"] += conn.execute(sql.SQL("DELETE FROM messages WHERE id IN ({})").format(
            pick("messages"))).rowcount
        conn.commit()
    return deleted


def _table_rows(dest: str) -> dict[str, int]:
    with psycopg.connect(dest) as conn:
        return {e: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", e))).fetchone()[0]
                for e in ENTITIES}


def _compare_only(legacy: str, dest: str) -> dict[str, dict[str, Any]]:
    from include.migration import deletes
    from include.migration.entities import get

    return {e: deletes.compare_keys(legacy, dest, get(e)).as_dict() for e in ENTITIES}


def measure(legacy: str, dest: str, full_seconds: dict[str, float]) -> dict[str, Any]:
    """The step, on a destination every entity has loaded; ``full_seconds``: each entity's
    full run, for the ratios. Returns the figures (``rows``: one per entity)."""
    from include.migration import pipeline
    from include.migration.entities import get
    from include.migration.reconcile import reconcile
    from local_runtime.world import apply_changes

    conns = pipeline.Conns(legacy, dest)
    nothing_gone = _compare_only(legacy, dest)
    changes = apply_changes(legacy, seed=7, fraction=CHANGED_FRACTION)
    deleted = hard_delete(legacy)
    for table in ("agents", "conversations", "messages"):
        deleted[table] += len(changes.changes.get(f"{table}.hard_deleted", []))
    before = _table_rows(dest)
    run_tag = f"bench-deletes-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    rows = []
    for entity in ENTITIES:
        started = time.perf_counter()
        out = pipeline.run_entity(conns, entity, run_tag, mode="incremental", validate_with_gx=False,
                                  reconcile_after=False, quarantine_threshold_pct=100)
        seconds = time.perf_counter() - started
        with psycopg.connect(dest) as conn:
            figures = conn.execute("SELECT counts->'hard_deletes' FROM migration.runs WHERE run_id = %s",
                                   (out["run_id"],)).fetchone()[0] or {}
        rec = reconcile(legacy, dest, get(entity))
        rows.append({
            "entity": entity, "table_rows": before[entity], "seconds": round(seconds, 3),
            "full_seconds": full_seconds.get(entity),
            "vs_full": round(seconds / full_seconds[entity], 3) if full_seconds.get(entity) else None,
            "deleted": figures.get("deleted"), "compare_seconds": figures.get("seconds"),
            "compare_seconds_nothing_gone": nothing_gone[entity]["seconds"],
            "differing_top_ranges": figures.get("differing_top_ranges"), "top_ranges": figures.get("top_ranges"),
            "ranges_compared": figures.get("ranges_compared"), "keys_listed": figures.get("keys_listed"),
            "keys_listed_share": round(figures.get("keys_listed", 0) / before[entity], 5) if before[entity] else None,
            "reconciliation_clean": rec.clean, "extra_after": len(rec.extra)})
    return {"changed_fraction": CHANGED_FRACTION, "deleted_fraction": DELETED_FRACTION,
            "hard_deleted_in_source": deleted, "rows": rows}


def phase(run: Any) -> None:
    """The benchmark phase (``local_runtime.bench.phases.Run``): the step on the benchmark's
    databases, its figures in the report's ``hard_deletes`` section and its table in the notes."""
    full: dict[str, float] = {}
    for row in run.steps:  # the first full run of each entity: step (1)
        if row["step"] == "full" and not row.get("error") and row.get("seconds"):
            full.setdefault(row["entity"], row["seconds"])
    say("  hard deletes: apply_changes(1 %) and 0.1 % hard-deleted, then an incremental run per entity ...")
    result = measure(run.bench.legacy, run.bench.dest, full)
    run.sections["hard_deletes"] = result
    run.notes.extend(table(result))


def table(result: dict[str, Any]) -> list[str]:
    lines = [f"incremental after {result['changed_fraction']:.0%} changed with {result['deleted_fraction']:.1%} "
             f"hard-deleted (source deletes: {', '.join(f'{k} {v:,}' for k, v in result['hard_deleted_in_source'].items())})",
             f"  {'entity':<14}{'rows':>10}{'run s':>8}{'x full':>8}{'deleted':>9}{'compare s':>10}"
             f"{'(none gone)':>12}{'ranges diff/all':>17}{'sub-ranges':>11}{'keys listed':>12}  reconciliation"]
    for r in result["rows"]:
        lines.append(
            f"  {r['entity']:<14}{r['table_rows']:>10,}{r['seconds']:>8.2f}"
            f"{(r['vs_full'] if r['vs_full'] is not None else float('nan')):>8.2f}{r['deleted'] or 0:>9,}"
            f"{r['compare_seconds'] or 0:>10.2f}{r['compare_seconds_nothing_gone']:>12.2f}"
            f"{(str(r['differing_top_ranges']) + '/' + str(r['top_ranges'])):>17}{r['ranges_compared'] or 0:>11,}"
            f"{r['keys_listed'] or 0:>12,}  {'clean' if r['reconciliation_clean'] else 'DIFFERENCES'}"
            f"{'' if not r['extra_after'] else ', ' + str(r['extra_after']) + ' extra'}")
    return lines


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_runtime.bench.deletes", description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=("small", "medium", "large"), default="small")
    args = parser.parse_args(argv)
    from include.migration import pipeline
    from include.migration.bootstrap import bootstrap
    from local_runtime import postgres as local_pg
    from local_runtime.world import seed

    base = local_pg.start(PG_DIR, _free_port(), fast=os.environ.get("BENCH_FAST") == "1").rstrip("/")
    try:
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            for name in ("bench_deletes_legacy", "bench_deletes_dest"):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        legacy, dest = f"{base}/bench_deletes_legacy", f"{base}/bench_deletes_dest"
        say(f"bench_deletes: scale={args.scale}; seeding the legacy world ...")
        seed(legacy, scale=args.scale, seed=42, media_root=PG_DIR / "media")
        bootstrap(dest)
        full: dict[str, float] = {}
        for entity in ENTITIES:
            started = time.perf_counter()
            pipeline.run_entity(pipeline.Conns(legacy, dest), entity, "bench-deletes-full", mode="full",
                                validate_with_gx=False, reconcile_after=False, quarantine_threshold_pct=100)
            full[entity] = round(time.perf_counter() - started, 3)
        say("  full runs: " + ", ".join(f"{e} {s:.2f} s" for e, s in full.items()))
        result = measure(legacy, dest, full)
    finally:
        local_pg.stop(PG_DIR)
    for line in table(result):
        say(line)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-deletes-{args.scale}.json"
    path.write_text(json.dumps({"scale": args.scale, **result}, indent=2))
    say(f"written: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
