"""Whole DAG runs with ``dag.test()`` against the session's PostgreSQL.

The Airflow metadata database is migrated once per session; each test gets
its own legacy and destination databases, named to the DAGs through
``AIRFLOW_CONN_LEGACY_DB`` / ``AIRFLOW_CONN_SUPABASE_DB`` as in production.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def airflow_db() -> None:
    out = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]


@pytest.fixture
def airflow_world(world, airflow_db, monkeypatch, tmp_path):
    """A world whose databases the DAGs reach by conn_id, with a media folder."""
    monkeypatch.setenv("AIRFLOW_CONN_LEGACY_DB", world.legacy)
    monkeypatch.setenv("AIRFLOW_CONN_SUPABASE_DB", world.dest)
    monkeypatch.setenv("MIGRATION_STATE_DIR", str(tmp_path / "reports"))
    return world


@pytest.fixture
def local_airflow_in(fresh_db, tmp_path) -> Callable[..., Any]:
    """Factory of a local Airflow (``local_runtime.airflow_stack``) on a fresh metadata database
    named ``prefix``, serving the DAGs in ``tmp_path / "dags"`` (created empty), on a free port."""
    from local_runtime import airflow_stack as local_airflow

    def make(prefix: str, plugins_folder: Path, **kwargs: Any) -> local_airflow.LocalAirflow:
        metadata = fresh_db(prefix)
        dags = tmp_path / "dags"
        dags.mkdir()
        return local_airflow.LocalAirflow(
            state_dir=tmp_path / "state",
            sql_alchemy_conn="postgresql+psycopg2://" + metadata.split("://", 1)[1],
            dags_folder=dags,
            plugins_folder=plugins_folder,
            port=free_port(),
            **kwargs,
        )

    return make


def load_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / f"{dag_id}.py"), safe_mode=False)
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id)


def run_dag(dag_id: str, **conf):
    """Run a DAG to completion in this process; returns {task_id: state} and the run's state."""
    dag = load_dag(dag_id)
    dr = dag.test(run_conf=conf or None)
    states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
    return dr.state, states
