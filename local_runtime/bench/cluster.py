"""The benchmark's cluster step: the messages backfill with 1, 2 and 4 partitions on CeleryExecutor.

Each partition is an ``extract`` task of the real ``migrate_messages`` DAG,
run by real Celery workers (``local_runtime.cluster``: Redis, two workers of
concurrency 2, so four partitions have four slots), with the Airflow
components as separate processes, against the benchmark's PostgreSQL. Before
each run the destination's messages table is emptied, so every run is the
same backfill. Per run it reports:

- ``seconds``: the data path, from ``plan`` starting to ``load`` ending (what
  partitions change; validation and reconciliation come after and do not
  depend on them), and ``run_seconds``, the whole DAG run;
- the ratio of the data path to the limit (raw binary ``COPY`` of the table,
  measured by the benchmark in the same run);
- ``cpu``: CPU-seconds per kind of process during the run, sampled from the
  processes themselves (``psutil``): the PostgreSQL backends per database
  (their process titles name it), the Celery workers' task processes, and the
  Airflow components.

``make bench`` runs it after its partitions step (the ``cluster`` phase of
``local_runtime.bench.phases``; ``BENCH_CLUSTER=0`` skips it); ``python -m local_runtime.bench.cluster --scale small`` runs it alone,
on a world it seeds and whose parents it loads first.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql

from local_runtime import airflow_stack
from local_runtime import cluster as local_cluster

ROOT = Path(__file__).resolve().parents[2]  # the project: dags/, plugins/, .local/
DAG_ID = "migrate_messages"
PARTITIONS = (1, 2, 4)
METADATA_DB = "bench_airflow"
PARALLEL_WORKER = re.compile(r"parallel worker for PID (\d+)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- CPU per process


def process_kind(proc: psutil.Process, databases: dict[str, str]) -> str | None:
    """What a process is, for the CPU breakdown; None for processes that are not ours."""
    try:
        cmd = " ".join(proc.cmdline())
        name = proc.name()
    except psutil.Error:
        return None
    if cmd.startswith("postgres:") or name == "postgres":
        for db_name, label in databases.items():
            if f" {db_name} " in f" {cmd} ":
                return f"postgres {label}"
        return "postgres other"
    if "redis-server" in cmd or name == "redis-server":
        return "redis"
    if "celery" in cmd or "airflow task" in cmd or "supervisor" in cmd or "worker" in cmd:
        return "celery workers and task processes"
    if "airflow" in cmd:
        return "airflow components"
    return "airflow components" if "python" in name else None


class CpuSampler:
    """Polls the CPU time of the PostgreSQL server's and the cluster's processes.

    A process's CPU time only grows, so the last sample of each pid (less its
    first, for processes alive at the start) is what it spent during the window.
    """

    def __init__(self, postmaster_pid: int | None, state_dir: Path, databases: dict[str, str],
                 interval: float = 0.25) -> None:
        self.postmaster_pid, self.state_dir, self.databases = postmaster_pid, state_dir, databases
        self.interval = interval
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.kinds: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _procs(self) -> list[psutil.Process]:
        procs = airflow_stack.our_processes(self.state_dir)
        if self.postmaster_pid:
            try:
                root = psutil.Process(self.postmaster_pid)
                procs += [root, *root.children()]
            except psutil.Error:
                pass
        return procs

    def _sample(self) -> None:
        for p in self._procs():
            try:
                t = p.cpu_times()
                spent = t.user + t.system
                if p.pid not in self.kinds:
                    kind = self._leader_kind(p) or process_kind(p, self.databases)
                    if kind is None:
                        continue
                    self.kinds[p.pid] = kind
                    self.first[p.pid] = spent if not self._thread.is_alive() else 0.0
                self.last[p.pid] = spent
            except psutil.Error:
                continue

    def _leader_kind(self, proc: psutil.Process) -> str | None:
        """A parallel worker's CPU counts for its leader's database (its title names the
        leader's pid, not the database): else the legacy transform's parallel scans would
        land under "postgres other"."""
        try:
            title = " ".join(proc.cmdline())
        except psutil.Error:
            return None
        found = PARALLEL_WORKER.search(title)
        if not found:
            return None
        leader = int(found.group(1))
        if leader not in self.kinds:
            try:
                kind = process_kind(psutil.Process(leader), self.databases)
            except psutil.Error:
                return None
            if kind is None:
                return None
            self.kinds[leader] = kind
        return self.kinds[leader]

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> CpuSampler:
        self._sample()  # processes alive at the start count from here
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def by_kind(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, kind in self.kinds.items():
            out[kind] = out.get(kind, 0.0) + max(0.0, self.last.get(pid, 0.0) - self.first.get(pid, 0.0))
        return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


# --------------------------------------------------------------------------- the cluster


def metadata_database(base_uri: str) -> str:
    with psycopg.connect(f"{base_uri}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(METADATA_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(METADATA_DB)))
    return "postgresql+psycopg2://" + f"{base_uri}/{METADATA_DB}".split("://", 1)[1]


@contextmanager
def running_cluster(
    legacy: str, dest: str, base_uri: str, state_dir: Path, concurrency: int = 2
) -> Iterator[tuple[airflow_stack.AirflowClient, local_cluster.Cluster]]:
    """Redis, the Airflow components and two workers on the benchmark's server; all stopped after."""
    metadata = metadata_database(base_uri)
    cl = local_cluster.Cluster(state_dir=state_dir, redis_port=_free_port(), concurrency=concurrency)
    af = airflow_stack.LocalAirflow(
        state_dir=state_dir, sql_alchemy_conn=metadata, dags_folder=ROOT / "dags",
        plugins_folder=ROOT / "plugins", port=_free_port(),
        extra_env={**cl.airflow_env(metadata), "AIRFLOW_CONN_LEGACY_DB": legacy,
                   "AIRFLOW_CONN_SUPABASE_DB": dest, "PYTHONPATH": str(ROOT),
                   "MIGRATION_STATE_DIR": str(state_dir / "reports")},
    )
    try:
        local_cluster.start_redis(cl)
        client = airflow_stack.start(af, timeout=300)
        local_cluster.start_workers(cl, af)
        yield client, cl
    finally:
        local_cluster.stop(state_dir)
        airflow_stack.stop(state_dir)
        airflow_stack.sweep(state_dir)


def _wait_for_dag(client: airflow_stack.AirflowClient, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(d["dag_id"] == DAG_ID for d in client.dags()):
            client.unpause(DAG_ID)
            return
        time.sleep(2)
    raise RuntimeError(f"{DAG_ID} was not served within {seconds:.0f}s")


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _span(tis: list[dict], first: str, last: str) -> float | None:
    starts = [_when(t.get("start_date")) for t in tis if t["task_id"] == first]
    ends = [_when(t.get("end_date")) for t in tis if t["task_id"] == last]
    if not starts or not ends or None in starts or None in ends:
        return None
    return (max(ends) - min(starts)).total_seconds()  # type: ignore[operator,type-var]


def empty_messages(dest: str) -> None:
    with psycopg.connect(dest, autocommit=True) as conn:
        conn.execute("TRUNCATE public.messages CASCADE")


def measure(client: airflow_stack.AirflowClient, cl: local_cluster.Cluster, dest: str, n: int,
            postmaster_pid: int | None, databases: dict[str, str], metadata: str) -> dict[str, Any]:
    empty_messages(dest)
    with CpuSampler(postmaster_pid, cl.state_dir, databases) as cpu:
        started = time.perf_counter()
        run = client.trigger(DAG_ID, {"mode": "full", "partitions": n, "quarantine_threshold_pct": 100})
        finished = client.wait_for_run(DAG_ID, run["dag_run_id"], timeout=3600)
        wall = time.perf_counter() - started
    tis = client.task_instances(DAG_ID, run["dag_run_id"])
    attempts = [a for a in local_cluster.task_attempts(metadata, dag_ids=[DAG_ID])
                if a["run_id"] == run["dag_run_id"]]
    extract_hosts = sorted({a["hostname"] for a in attempts if a["task_id"] == "extract"})
    return {"state": finished["state"], "seconds": _span(tis, "plan", "load"),
            "extract_seconds": _span(tis, "extract", "extract"), "load_seconds": _span(tis, "load", "load"),
            "run_seconds": round(wall, 2), "extract_workers": extract_hosts,
            "extracts": sum(1 for t in tis if t["task_id"] == "extract"), "cpu": cpu.by_kind()}


def run_cluster_partitions(legacy: str, dest: str, base_uri: str, *, limit_seconds: float | None,
                           postmaster_pid: int | None, state_dir: Path,
                           partitions: tuple[int, ...] = PARTITIONS) -> dict[str, Any]:
    """Measure the messages backfill through the cluster with each partition count."""
    from include.migration.schema_diff import run_schema_diff

    run_schema_diff(legacy, dest, dag_run_id="bench-cluster")  # the load gate wants a fresh check
    databases = {legacy.rsplit("/", 1)[1]: "legacy", dest.rsplit("/", 1)[1]: "destination",
                 METADATA_DB: "airflow metadata"}
    out: dict[str, Any] = {"limit_seconds": limit_seconds, "workers": list(local_cluster.WORKERS),
                           "concurrency": 2}
    with running_cluster(legacy, dest, base_uri, state_dir) as (client, cl):
        _wait_for_dag(client)
        metadata = "postgresql://" + f"{base_uri}/{METADATA_DB}".split("://", 1)[1]
        for n in partitions:
            try:
                out[str(n)] = measure(client, cl, dest, n, postmaster_pid, databases, metadata)
            except Exception as err:  # one failed count must not lose the others' figures
                out[str(n)] = {"error": f"{type(err).__name__}: {err}"}
            print(f"  cluster, {n} partition(s): {json.dumps(out[str(n)])}", flush=True)
    out["note"] = note(out)
    return out


def note(out: dict[str, Any]) -> str:
    parts = []
    for key in sorted((k for k in out if k.isdigit()), key=int):
        r = out[key]
        if r.get("error") or r.get("seconds") is None or r.get("state") != "success":
            parts.append(f"{key}: FAILED {r.get('error') or r.get('state')}")
            continue
        ratio = f" ({r['seconds'] / out['limit_seconds']:.2f}x limit)" if out.get("limit_seconds") else ""
        parts.append(f"{key}: {r['seconds']:.1f} s{ratio}, extract {r['extract_seconds']:.1f} s on "
                     f"{'+'.join(r['extract_workers'])}, load {r['load_seconds']:.1f} s")
    return ("cluster (CeleryExecutor, 2 workers x concurrency 2; messages backfill, plan start to load end): "
            + "; ".join(parts))


def cpu_lines(out: dict[str, Any]) -> list[str]:
    lines = []
    for key in sorted((k for k in out if k.isdigit()), key=int):
        cpu = (out[key] or {}).get("cpu") or {}
        if cpu:
            spent = ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
            lines.append(f"  {key} partition(s), CPU-seconds: {spent}")
    return lines


def cluster_step(b: Any, server: Any, steps: list[dict]) -> dict[str, Any]:
    """``make bench``'s hook: the cluster step on the benchmark's world, after its own partitions step."""
    from local_runtime.bench.report import LIMIT

    if os.environ.get("BENCH_CLUSTER") == "0":
        return {"skipped": True, "lines": ["cluster: skipped (BENCH_CLUSTER=0)"]}
    limit = next((r["seconds"] for r in steps if r["step"] == LIMIT and r["entity"] == "messages"
                  and not r.get("error")), None)
    print("the messages backfill on the CeleryExecutor cluster, partitions " + "/".join(map(str, PARTITIONS)),
          flush=True)
    try:
        out = run_cluster_partitions(b.legacy, b.dest, server.base_uri, limit_seconds=limit,
                                     postmaster_pid=server.postmaster_pid,
                                     state_dir=ROOT / ".local" / "bench-cluster")
    except Exception as err:  # the cluster could not start: the rest of the report stands
        out = {"error": f"{type(err).__name__}: {err}", "note": f"cluster: FAILED to run: {err}"}
    out["lines"] = [out["note"], *cpu_lines(out)]
    return out


def measure_limit(legacy: str, dest: str) -> float:
    """The limit alone (``make bench`` measures it in its own step): seconds of a raw binary
    ``COPY`` of the legacy messages table into an empty scratch table."""
    from local_runtime.bench.server import drop_scratch, scratch_table
    from local_runtime.bench.steps import step_limit

    scratch_table(legacy, dest, "bench_limit", "messages")
    started = time.perf_counter()
    step_limit(legacy, dest, "messages")
    seconds = time.perf_counter() - started
    drop_scratch(dest, "bench_limit")
    return seconds


def _main(argv: list[str]) -> int:
    """Alone: seed a world, load the parents of messages in-process, then the cluster step."""
    from include.migration import pipeline
    from include.migration.bootstrap import bootstrap
    from local_runtime.bench import server as bench_server
    from local_runtime.world import seed

    parser = argparse.ArgumentParser(prog="python -m local_runtime.bench.cluster")
    parser.add_argument("--scale", choices=("small", "medium", "large"), default="small")
    args = parser.parse_args(argv)
    server = bench_server.start_server()
    try:
        legacy, dest = bench_server.fresh_databases(server.base_uri)
        counts = dict(seed(legacy, scale=args.scale, seed=42,
                           media_root=(server.data_dir or ROOT / ".local") / "media").counts)
        bootstrap(dest)
        for entity in ("users", "agents", "conversations"):
            pipeline.run_entity(pipeline.Conns(legacy, dest), entity, f"bench-cluster-{entity}", mode="full",
                                validate_with_gx=False, reconcile_after=False, quarantine_threshold_pct=100)
        out = run_cluster_partitions(legacy, dest, server.base_uri, limit_seconds=measure_limit(legacy, dest),
                                     postmaster_pid=server.postmaster_pid,
                                     state_dir=ROOT / ".local" / "bench-cluster")
    finally:
        if server.data_dir and os.environ.get("BENCH_KEEP") != "1":
            from local_runtime import postgres as local_pg

            local_pg.stop(server.data_dir)
    print(f"scale={args.scale}: {counts.get('messages', 0):,} messages")
    print(out["note"])
    for line in cpu_lines(out):
        print(line)
    return 0 if all((out[k] or {}).get("state") == "success" for k in out if k.isdigit()) else 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
