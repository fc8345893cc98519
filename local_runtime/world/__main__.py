"""``python -m local_runtime.world seed|changes``: build a legacy world, or apply the app's changes."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from local_runtime.world.builder import seed
from local_runtime.world.changes import apply_changes
from local_runtime.world.layout import SCALES


def _print_counts(title: str, counts: dict[str, int]) -> None:
    print(title)
    for name, count in counts.items():
        print(f"  {name:<40} {count:>10,}")


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local_runtime.world",
        description="Build the legacy world, or apply the app's changes to one.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    seeding = commands.add_parser("seed", help="drop and rebuild the legacy world")
    seeding.add_argument("--dsn", required=True)
    seeding.add_argument("--scale", choices=sorted(SCALES), default="small")
    seeding.add_argument("--seed", type=int, default=42)
    seeding.add_argument("--media-root", required=True)
    seeding.add_argument("--now", type=datetime.fromisoformat,
                         help="the day the world is generated for (ISO date; default: today, UTC)")
    changing = commands.add_parser("changes", help="apply the app's changes since the last sync")
    changing.add_argument("--dsn", required=True)
    changing.add_argument("--seed", type=int, default=7)
    changing.add_argument("--fraction", type=float, default=0.01)
    changing.add_argument("--media-root")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.command == "seed":
        report = seed(args.dsn, scale=args.scale, seed=args.seed, media_root=args.media_root, now=args.now)
        _print_counts("rows per table:", report.counts)
        _print_counts("planted defects:", {k: len(v) for k, v in report.planted.items()})
        print(
            f"known passwords: {len(report.known_passwords)}; report: "
            f"{Path(report.media_root).parent / 'world-report.json'}"
        )
    else:
        changes = apply_changes(args.dsn, seed=args.seed, fraction=args.fraction, media_root=args.media_root)
        _print_counts(f"changes at {changes.changed_at}:", changes.counts)
    print(f"done in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
