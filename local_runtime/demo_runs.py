"""The demo's DAG runs, driven through Airflow's REST API as an operator's clicks would.

Waits until the DAG processor serves every DAG file, unpauses them, triggers the
chain (``schema_diff`` first; each migration DAG follows its parent's Asset),
follows each run in the terminal and prints the failed tasks' log tails; runs the
legacy assessment first and the cutover verdict last.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from local_runtime import airflow_stack as local_airflow
from local_runtime.airflow_stack import AirflowClient, ApiError

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".local"
REPORTS = STATE / "reports"

# The pipeline in trigger order: each DAG after the first runs when its parent's Asset is updated.
CHAIN = (
    "schema_diff",
    "migrate_users",
    "migrate_agents",
    "migrate_conversations",
    "migrate_messages",
    "migrate_media",
)

ASSESSMENT = "assess_legacy"


class DemoError(RuntimeError):
    """A failure the demo reports as one line."""


def say(message: str = "") -> None:
    print(message, flush=True)


def wait_for_dags(
    client: AirflowClient, dags_folder: Path, wanted: tuple[str, ...], timeout: float = 120
) -> set[str]:
    """Wait until the DAG processor has parsed every DAG file; returns the DAG ids served.

    Done when every wanted DAG is served, or when each file that looks like a
    DAG file (Airflow's own test: it names both "airflow" and "dag") has
    produced a DAG or an import error.
    """
    files = [p for p in dags_folder.rglob("*.py") if not p.name.startswith("_")]
    candidates = {str(p.relative_to(dags_folder)) for p in files if _looks_like_dag_file(p)}
    for path in files:
        if str(path.relative_to(dags_folder)) not in candidates:
            say(f"  note: Airflow does not parse {path.relative_to(dags_folder.parent)}: it never says both "
                "'airflow' and 'dag' (DAG discovery safe mode)")
    deadline = time.monotonic() + timeout
    while True:
        dags = client.dags()
        errors = client.import_errors()
        served = {d["dag_id"] for d in dags}
        covered = {d.get("relative_fileloc") or "" for d in dags}
        covered |= {_relative(e["filename"], dags_folder) for e in errors}
        if set(wanted) <= served or candidates <= covered or time.monotonic() > deadline:
            for error in errors:
                first = (error.get("stack_trace") or "").strip().splitlines()[-1:] or [""]
                say(f"  import error in {error['filename']}: {first[0]}")
            return served
        time.sleep(2)

def _looks_like_dag_file(path: Path) -> bool:
    text = path.read_text(errors="replace").lower()
    return "airflow" in text and "dag" in text

def _relative(filename: str, folder: Path) -> str:
    path = Path(filename)
    try:
        return str(path.relative_to(folder)) if path.is_absolute() else filename
    except ValueError:
        return filename

def _task_summary(tis: list[dict[str, Any]]) -> dict[str, str]:
    """Task id -> its state, or counts of states for a mapped task."""
    by_task: dict[str, Counter[str]] = {}
    for ti in tis:
        by_task.setdefault(ti["task_id"], Counter())[ti.get("state") or "waiting"] += 1
    return {
        task: next(iter(c)) if len(c) == 1 and sum(c.values()) == 1
        else ", ".join(f"{state} {n}" for state, n in sorted(c.items()))
        for task, c in by_task.items()
    }

class RunFollower:
    """Prints a run's state and its tasks' states as they change."""

    def __init__(self, client: AirflowClient, dag_id: str, run_id: str) -> None:
        self.client, self.dag_id, self.run_id = client, dag_id, run_id
        self.state: str | None = None
        self.tasks: dict[str, str] = {}

    def __call__(self, run: dict[str, Any]) -> None:
        missing = set(local_airflow.COMPONENTS) - set(local_airflow.running(STATE))
        if missing:
            name = sorted(missing)[0]
            raise DemoError(f"airflow {name} stopped; see {STATE / 'logs' / f'airflow-{name}.log'}")
        if run["state"] != self.state:
            self.state = run["state"]
            say(f"  [{self.dag_id}] {self.state}")
        summary = _task_summary(self.client.task_instances(self.dag_id, self.run_id))
        for task, state in summary.items():
            if self.tasks.get(task) != state:
                say(f"  [{self.dag_id}]   {task}: {state}")
        self.tasks = summary

def print_failures(client: AirflowClient, dag_id: str, run_id: str, lines: int = 30) -> None:
    for ti in client.task_instances(dag_id, run_id):
        if ti.get("state") != "failed":
            continue
        where = ti["task_id"] + (f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else "")
        say(f"  --- log tail of {dag_id}.{where}, try {ti['try_number']} ---")
        try:
            log = client.task_log(dag_id, run_id, ti["task_id"], ti["try_number"], ti.get("map_index", -1))
        except ApiError as err:
            log = [f"(log not available: {err})"]
        for line in log[-lines:]:
            say(f"    {line}")

def follow(client: AirflowClient, dag_id: str, run_id: str, timeout: float) -> str:
    say(f"  [{dag_id}] run {run_id}")
    started = time.monotonic()
    run = client.wait_for_run(dag_id, run_id, timeout=timeout, on_poll=RunFollower(client, dag_id, run_id))
    say(f"  [{dag_id}] {run['state']} after {time.monotonic() - started:.0f}s")
    if run["state"] != "success":
        print_failures(client, dag_id, run_id)
    return run["state"]

def _child_run(
    client: AirflowClient, dag_id: str, parent: tuple[str, str], since: datetime, wait: float
) -> dict[str, Any] | None:
    """The run of ``dag_id`` that an asset event of the ``parent`` (dag id, run id) started."""
    deadline = time.monotonic() + wait
    while True:
        for run in client.dag_runs(dag_id, since=since):
            events = client.upstream_asset_events(dag_id, run["dag_run_id"])
            if any((e.get("source_dag_id"), e.get("source_run_id")) == parent for e in events):
                return run
        if time.monotonic() > deadline:
            return None
        time.sleep(2)

def trigger_top(client: AirflowClient, conf: dict[str, Any]) -> dict[str, Any]:
    """Trigger the first DAG of the chain the way the UI's Trigger button does, then unpause it.

    Unpausing a scheduled DAG whose last interval is past (``catchup=False``)
    makes the scheduler start that interval's run at once, which would run
    the chain in its default mode ahead of this one. A run that already
    holds that logical date takes its place: the scheduler skips it.
    """
    dag_id = CHAIN[0]
    dag = client.dag(dag_id)
    due = dag.get("next_dagrun_logical_date")
    logical_date = None
    if dag.get("is_paused") and due and datetime.fromisoformat(due) <= datetime.now(UTC):
        logical_date = datetime.fromisoformat(due)
    try:
        run = client.trigger(dag_id, conf, logical_date=logical_date)
    except ApiError as err:
        if err.status != 409 or logical_date is None:
            raise
        run = client.trigger(dag_id, conf)
    if dag.get("is_paused"):
        client.unpause(dag_id)
    return run

def run_chain(client: AirflowClient, served: set[str], mode: str, timeout: float,
              extra: dict[str, Any] | None = None) -> dict[str, str]:
    """Trigger the first DAG with ``{"mode": mode}`` and follow the asset-triggered chain it starts.

    Returns each DAG's outcome: a run state, "not there" or "not triggered".
    """
    outcome = dict.fromkeys(CHAIN, "not there")
    if CHAIN[0] not in served:
        say(f"  [{CHAIN[0]}] not there yet: nothing to trigger")
        return outcome
    since = datetime.now(UTC) - timedelta(seconds=1)
    run = trigger_top(client, {"mode": mode, **(extra or {})})
    outcome[CHAIN[0]] = follow(client, CHAIN[0], run["dag_run_id"], timeout)
    parent: tuple[str, str] | None = (CHAIN[0], run["dag_run_id"])
    for dag_id in CHAIN[1:]:
        if dag_id not in served:
            say(f"  [{dag_id}] not there yet (skipped)")
            parent = None
            continue
        # An Asset is updated when its producing task succeeds, even in a run that fails later
        # (schema_diff's verdict task): the scheduler then makes the child's run within seconds.
        wait = 90 if parent and outcome[parent[0]] == "success" else 20
        child = _child_run(client, dag_id, parent, since, wait) if parent else None
        if child is None:
            say(f"  [{dag_id}] was not triggered (its upstream Asset was not updated)")
            outcome[dag_id], parent = "not triggered", None
            continue
        outcome[dag_id] = follow(client, dag_id, child["dag_run_id"], timeout)
        parent = (dag_id, child["dag_run_id"])
    say("  " + ", ".join(f"{dag_id}: {state}" for dag_id, state in outcome.items()))
    return outcome

def assess_first(client: AirflowClient, served: set[str], timeout: float) -> str:
    """The pre-migration assessment, as an operator runs it before the first backfill."""
    say(f"== 5b. assessment of the legacy database ({ASSESSMENT})")
    if ASSESSMENT not in served:
        say(f"  [{ASSESSMENT}] not there: no assessment")
        return "not there"
    state = follow(client, ASSESSMENT, client.trigger(ASSESSMENT, {})["dag_run_id"], timeout)
    latest = REPORTS / "assessment" / "latest.md"
    if latest.exists():
        for line in latest.read_text().splitlines():
            if line.startswith(("Peak hours", "Expected quarantine", "Entities over", "Backfill estimate")):
                say(f"  {line}")
        say(f"  report: {latest}")
    return state

def cutover_verdict(client: AirflowClient, served: set[str], timeout: float) -> str:
    """cutover_check, so the console shows a verdict: a NO-GO is an answer, not a failed demo."""
    say("== 9. cutover verdict (cutover_check)")
    if "cutover_check" not in served:
        say("  [cutover_check] not there: no verdict")
        return "not there"
    started = time.time()
    state = follow(client, "cutover_check", client.trigger("cutover_check", {})["dag_run_id"], timeout)
    latest = REPORTS / "cutover" / "latest.json"
    if not latest.exists() or latest.stat().st_mtime < started:
        return state
    verdict = json.loads(latest.read_text())
    say(f"  verdict {verdict['verdict']}: "
        + "; ".join(f"{'PASS' if c['ok'] else 'FAIL'} {c['name']}" for c in verdict["criteria"]))
    return "success"

def unpause(client: AirflowClient, served: set[str]) -> None:
    """Unpause every DAG but the chain's first, which ``trigger_top`` unpauses after triggering it."""
    names = sorted(served)
    for dag in client.dags():
        if dag["dag_id"] in served and dag["dag_id"] != CHAIN[0] and dag.get("is_paused"):
            client.unpause(dag["dag_id"])
    say(f"  DAGs: {', '.join(names) or 'none parsed yet'} (all unpaused; {CHAIN[0]} once triggered)")
