"""Whole DAG runs with ``dag.test()`` against the session's PostgreSQL.

The Airflow metadata database is migrated once per session; each test gets
its own legacy and destination databases, named to the DAGs through
``AIRFLOW_CONN_LEGACY_DB`` / ``AIRFLOW_CONN_SUPABASE_DB`` as in production.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
