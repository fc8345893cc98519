"""The local Airflow the demo runs: it starts for real, serves the API, runs a DAG, and stops completely."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest

from local_runtime import airflow_stack as local_airflow

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(330)]

PROBE_DAG = '''
"""A one-task DAG: proves the scheduler, the LocalExecutor and the Execution API work together."""
import pendulum
from airflow.sdk import dag, task


@dag(schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False, tags=["probe"])
def runtime_probe():
    @task
    def echo(params=None, dag_run=None):
        print("conf is", dag_run.conf)
        return dag_run.conf["mode"]

    echo()


runtime_probe()
'''


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_for_dag(client: local_airflow.AirflowClient, dag_id: str, seconds: float = 90) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for dag in client.dags():
            if dag["dag_id"] == dag_id:
                return dag
        time.sleep(2)
    raise AssertionError(f"{dag_id} was not served within {seconds}s")


def test_local_airflow_serves_runs_and_stops(pg_uri: str, local_airflow_in, tmp_path: Path) -> None:
    af = local_airflow_in("airflow_runtime", tmp_path / "plugins")
    (af.dags_folder / "runtime_probe.py").write_text(textwrap.dedent(PROBE_DAG))
    seen: set[int] = set()
    try:
        client = local_airflow.start(af, timeout=200)
        seen = {p.pid for p in local_airflow.our_processes(af.state_dir)}
        assert set(local_airflow.running(af.state_dir)) == set(local_airflow.COMPONENTS)

        assert client.version()["version"] == "3.3.2"
        assert client.token().count(".") == 2  # a JWT
        wrong = httpx.post(f"{af.api_url}/auth/token", json={"username": "admin", "password": "wrong"})
        assert wrong.status_code == 401
        unauthenticated = httpx.get(f"{af.api_url}/api/v2/dags")
        assert unauthenticated.status_code == 401

        dag = _wait_for_dag(client, "runtime_probe")
        assert dag["is_paused"] is True
        client.unpause("runtime_probe")
        run = client.trigger("runtime_probe", {"mode": "full"})
        finished = client.wait_for_run("runtime_probe", run["dag_run_id"], timeout=120)
        assert finished["state"] == "success"
        assert finished["conf"] == {"mode": "full"}
        [ti] = client.task_instances("runtime_probe", run["dag_run_id"])
        log = client.task_log("runtime_probe", run["dag_run_id"], "echo", ti["try_number"])
        assert any("conf is {'mode': 'full'}" in line for line in log)
    finally:
        seen |= {p.pid for p in local_airflow.our_processes(af.state_dir)}
        local_airflow.stop(af.state_dir)
        local_airflow.sweep(af.state_dir)

    assert local_airflow.running(af.state_dir) == {}
    assert local_airflow.our_processes(af.state_dir) == []
    assert [pid for pid in seen if _alive(pid)] == []
    assert local_airflow.port_is_free(af.port)
