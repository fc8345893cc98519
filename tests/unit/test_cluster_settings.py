"""The local CeleryExecutor cluster and docker-compose.yaml run on the same settings.

Also the small pure parts of ``local_runtime.cluster``: the worker command line,
the host name a worker's tasks report, and the per-worker counts the demo prints.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from local_runtime import cluster

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose_env() -> dict[str, str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    return compose["x-airflow-common"]["environment"]


@pytest.fixture
def local(tmp_path: Path) -> cluster.Cluster:
    return cluster.Cluster(state_dir=tmp_path, redis_port=6390, concurrency=3)


def test_compose_sets_every_shared_setting_the_same_way(compose_env, local) -> None:
    shared = local.airflow_env("postgresql+psycopg2://airflow:pw@127.0.0.1:5432/airflow")
    for key in cluster.shared_settings("redis://x:1/0", "db+postgresql://x/y"):
        assert key in compose_env, key
    assert compose_env["AIRFLOW__CORE__EXECUTOR"] == shared["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert compose_env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] == shared["AIRFLOW__OPERATORS__DEFAULT_QUEUE"]
    ours = urlsplit(shared["AIRFLOW__CELERY__BROKER_URL"])
    theirs = urlsplit(compose_env["AIRFLOW__CELERY__BROKER_URL"])
    assert (ours.scheme, ours.path) == (theirs.scheme, theirs.path) == ("redis", "/0")
    assert ours.hostname == "127.0.0.1" and ours.port == 6390
    backends = (shared["AIRFLOW__CELERY__RESULT_BACKEND"], compose_env["AIRFLOW__CELERY__RESULT_BACKEND"])
    for backend in backends:
        assert backend.startswith("db+postgresql"), backend


def test_a_worker_is_named_has_its_concurrency_and_queue_and_serves_no_logs(local) -> None:
    args = cluster.worker_command(local, "worker-2")
    assert args[args.index("-H") + 1] == "worker-2"
    assert args[args.index("-c") + 1] == "3"
    assert args[args.index("-q") + 1] == cluster.DEFAULT_QUEUE
    assert "--skip-serve-logs" in args
    # Two workers in one AIRFLOW_HOME must not share Airflow's default pid file.
    assert args[args.index("--pid") + 1].endswith("celery-worker-2.airflow.pid")


def test_tasks_report_their_worker_name_as_host(monkeypatch) -> None:
    monkeypatch.setenv(cluster.WORKER_NAME_ENV, "worker-1")
    assert cluster.worker_hostname() == "worker-1"
    monkeypatch.delenv(cluster.WORKER_NAME_ENV)
    assert cluster.worker_hostname() not in ("", "worker-1")


def test_counts_per_worker_and_runs_whose_partitions_ran_on_two_workers() -> None:
    def attempt(run: str, task: str, index: int, host: str, state: str = "success") -> dict:
        return {"dag_id": "migrate_messages", "run_id": run, "task_id": task, "map_index": index,
                "state": state, "hostname": host}

    attempts = [attempt("a", "plan", -1, "worker-1"), attempt("a", "extract", 0, "worker-1"),
                attempt("a", "extract", 1, "worker-2"), attempt("b", "extract", 0, "worker-2"),
                attempt("b", "extract", 1, "worker-2"), attempt("b", "extract", 0, "worker-1", "failed")]
    assert cluster.tasks_per_worker(attempts) == {"worker-1": 3, "worker-2": 3}
    assert cluster.runs_across_workers(attempts) == [("migrate_messages", "a", ["worker-1", "worker-2"])]
