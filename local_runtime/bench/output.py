"""The benchmark's output: the printed report, the JSON and chart files, the history line.

This module owns what a run leaves behind: the text report on stdout
(figures, breakdown, targets, profile), ``bench-results/<stamp>-<scale>.json``
and ``.png``, and the line appended to ``bench-results/history.jsonl``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from local_runtime.bench.measure import say
from local_runtime.bench.report import (
    CHANGED,
    ENTITY_ORDER,
    FULL,
    INCREMENTAL,
    LIMIT,
    RECONCILE,
    STEP_LABELS,
    UNCHANGED,
    _fmt_num,
    breakdown_lines,
    by_part,
    find,
    history_record,
    step_table,
    target_table,
)


def write_outputs(report: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / f"{report['stamp']}-{report['scale']}"
    json_path, png_path = base.with_suffix(".json"), base.with_suffix(".png")
    json_path.write_text(json.dumps(report, indent=1, default=str))
    try:
        plot(report, png_path)
    except Exception as err:  # a chart is not worth losing the figures for
        say(f"chart not written: {err}")
    with (out_dir / "history.jsonl").open("a") as history:
        history.write(json.dumps(history_record(report), default=str) + "\n")
    return json_path, png_path


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = report["steps"]
    kinds = [k for k in (LIMIT, FULL, UNCHANGED, CHANGED, INCREMENTAL, RECONCILE)
             if any(r["step"] == k for r in steps)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 5.5))
    width = 0.8 / max(1, len(kinds))
    for i, kind in enumerate(kinds):
        values = [(find(steps, kind, e) or {}).get("seconds") or 0 for e in ENTITY_ORDER]
        left.bar([x + i * width for x in range(len(ENTITY_ORDER))], values, width, label=STEP_LABELS[kind])
    left.set_xticks([x + width * (len(kinds) - 1) / 2 for x in range(len(ENTITY_ORDER))], ENTITY_ORDER)
    left.set_ylabel("wall seconds")
    left.set_title(f"scale={report['scale']}: seconds per step and entity")
    left.legend(fontsize=8)
    ratios = [(t["label"], t["value"], t["threshold"], t["verdict"]) for t in report["targets"]
              if t["unit"] == "x" and t["value"] is not None]
    labels = [r[0] for r in ratios]
    right.barh(labels, [r[1] for r in ratios], label="measured (green PASS, orange MISS)",
               color=["tab:green" if r[3] == "PASS" else "tab:orange" for r in ratios])
    right.scatter([r[2] for r in ratios], labels, color="tab:red", marker="|", s=400, label="target")
    right.set_title("messages: ratios (limit = 1) and targets")
    right.invert_yaxis()
    right.tick_params(axis="y", labelsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_report(report: dict) -> None:
    counts = report["counts"]
    say("")
    say(f"benchmark scale={report['scale']} at {report['timestamp']}")
    say("legacy rows: " + ", ".join(f"{counts.get(e, 0):,} {e}" for e in ENTITY_ORDER)
        + f"; seeded in {report['seed_seconds']:.1f} s")
    code = report.get("code") or {}
    say(f"code: commit {code.get('commit')}" + (f", with uncommitted changes to {', '.join(code['modified'])}"
                                                 if code.get("modified") else ""))
    s = report["server"]
    say(f"server: PostgreSQL {s.get('server_version')} ({report['server_kind']}), fsync={s.get('fsync')}, "
        f"synchronous_commit={s.get('synchronous_commit')}, shared_buffers={s.get('shared_buffers')}, "
        f"max_wal_size={s.get('max_wal_size')}; legacy and destination databases on this one server")
    say("MB/s = the legacy table's pg_total_relation_size (heap, TOAST, indexes; taken after seeding) / wall "
        "time; RSS MB = peak RSS of the child process doing the step; srv MB = peak private memory "
        "(sum of USS) of the server's processes; x limit = seconds / that entity's limit seconds")
    say(f"machine: {os.cpu_count()} CPUs; load = the 1-minute load average around each step"
        + ("; WARNING: other work shared the CPUs during this run, times are inflated and noisy"
           if max((r.get("load_1m") or 0 for r in report["steps"]), default=0) > (os.cpu_count() or 1)
           else ""))
    say("")
    for line in step_table(report["steps"], report["totals"]):
        say(line)
    say("")
    say("where the messages runs spend their time (migration.runs: extract_seconds, load.load_seconds):")
    for line in breakdown_lines(report["steps"]):
        say(line)
    say("(3) edits 10% of the legacy messages (content || ' (edited)' where id % 10 = 0), then VACUUM: "
        "messages are append-only in the app, so this is a synthetic stress; (3) runs messages only "
        "(nothing else changed).")
    say(f"(4) apply_changes(fraction=0.01): {fmt_changes(report.get('changes'))}")
    say("(5) runs right after (3), on the state a full run leaves: a clean comparison of every row")
    for r in report["steps"]:
        if r["step"] == RECONCILE and not r.get("error"):
            say(f"(5) {(r.get('detail') or {}).get('verdict', '')[:160]}")
    for note in report.get("notes") or []:  # one line per phase that has its own section
        say(note)
    say("")
    for line in target_table(report["targets"] + report["scale_targets"]):
        say(line)
    if report.get("scale_note"):
        say(report["scale_note"])
    print_profile(report.get("profile") or {})


def fmt_changes(changes: dict | None) -> str:
    if not changes:
        return "-"
    return ", ".join(f"{k} {v:,}" for k, v in changes.items() if v)


def print_profile(profile: dict) -> None:
    if not profile:
        return
    say("")
    say(f"profile: messages full run into an emptied messages table, "
        f"{_fmt_num(profile.get('seconds'), '.2f')} s "
        f"with cProfile on and one chunk explained, load {_fmt_num(profile.get('load_1m'), '.1f')}, "
        f"{profile.get('chunks')} merge chunks")
    if profile.get("error"):
        say(f"  the profiled run FAILED: {profile['error'][:200]} (figures below cover what ran)")
    for name, secs in (profile.get("timings") or {}).items():
        say(f"  {name:<40} {secs:8.2f} s")
    statements = profile.get("statements")
    if isinstance(statements, list) and statements:
        say("  SQL by total execution time (pg_stat_statements; the extract's two COPYs overlap in time):")
        for database, part, secs, calls in by_part(statements):
            say(f"    {secs:8.2f} s {calls:>5} calls  {database:<14} {part}")
    plan = profile.get("transform_plan") or []
    say("  transform query on legacy, EXPLAIN (ANALYZE, BUFFERS, SERIALIZE BINARY): "
        + "; ".join(line.strip() for line in plan if "Time:" in line or line.strip().startswith("Serializ")))
    chunk = profile.get("chunk_plan") or []
    say(f"  first load chunk ({(chunk[0] if chunk else '').split('  ')[0]}), EXPLAIN (ANALYZE, BUFFERS): "
        + "; ".join(line.strip() for line in chunk if "Time:" in line or line.startswith("Trigger")))
    say("  Python self time (cProfile, top 6 by tottime):")
    for line in (profile.get("python") or [])[:7]:
        say("    " + line)
