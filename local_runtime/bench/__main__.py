"""``python -m local_runtime.bench --scale small|medium|large``: run the benchmark, print and keep its report.

This module owns the run from end to end: start the server, seed the legacy
world, run the phases (:mod:`local_runtime.bench.phases`), assemble the
report (figures, targets, scale comparison) and write it out.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from local_runtime.bench.measure import Bench, ServerMemory, say
from local_runtime.bench.output import print_report, write_outputs
from local_runtime.bench.phases import PHASES, Run, run_phases
from local_runtime.bench.report import (
    ENTITY_ORDER,
    NAIVE_BATCH,
    NAIVE_ROWS,
    SCALE_TARGETS,
    TARGETS,
    baseline_ratios,
    baselines_note,
    enrich,
    history_record,
    judge,
    last_other_scale,
    scale_values,
    target_values,
    totals,
)
from local_runtime.bench.server import (
    RESULTS,
    ROOT,
    Server,
    code_version,
    fresh_databases,
    server_settings,
    settle,
    start_server,
    table_bytes,
)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


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
    report["baselines"] = baseline_ratios(steps)
    report["notes"] = [*report.get("notes", []), baselines_note(steps)]
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
    parser = argparse.ArgumentParser(
        prog="python -m local_runtime.bench",
        description="The pipeline measured against raw binary COPY in the same run.")
    parser.add_argument("--scale", choices=("small", "medium", "large"), default="small")
    parser.add_argument("--naive-rows", type=int, default=NAIVE_ROWS,
                        help="messages the naive approach writes (its rate is stable well before 100k)")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled extra run")
    parser.add_argument("--phases", help="comma-separated phase names to run, in the registry's order "
                        f"(default: all of {', '.join(name for name, _ in PHASES)}); a phase needs the ones "
                        "it builds on (the pipeline's need bootstrap and full)")
    parser.add_argument("--no-detect-changes", action="store_true",
                        help="full reruns stage every row (the pipeline's detect_changes=False), for comparison")
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
    skip_profile = args.no_profile or os.environ.get("BENCH_PROFILE") == "0"
    phases = PHASES
    if args.phases:
        wanted = {name.strip() for name in args.phases.split(",")}
        unknown = wanted - {name for name, _ in PHASES}
        if unknown:
            raise SystemExit(f"unknown phases: {', '.join(sorted(unknown))}")
        phases = tuple((name, phase) for name, phase in PHASES if name in wanted)
    extra["phases"] = [name for name, _ in phases] if args.phases else "all"
    done = run_phases(Run(b, server, min(args.naive_rows, counts.get("messages", args.naive_rows)),
                          profile=not skip_profile, detect_changes=not args.no_detect_changes), phases)
    extra.update(done.sections, notes=done.notes)
    return assemble(b, server, done.steps, extra)


if __name__ == "__main__":
    sys.exit(main())
