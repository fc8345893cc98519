"""Every DAG parses with no connection, variable or database reachable, and has
the shape an operator relies on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTITY_DAGS = ["migrate_users", "migrate_agents", "migrate_conversations", "migrate_messages"]


def parse(folder: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           # A metadata DB that cannot be reached: parsing must not need it.
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://nobody@127.0.0.1:1/none"}
    out = subprocess.run([sys.executable, str(ROOT / "tests/dags/parse_dags.py"), str(folder)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def parsed() -> dict:
    return parse(ROOT / "dags")


def test_every_dag_imports_without_touching_a_database(parsed):
    assert parsed["import_errors"] == {}
    assert parsed["attempts"] == []
    assert set(ENTITY_DAGS) <= set(parsed["dag_ids"])


def test_the_check_catches_a_dag_that_connects_at_parse_time(tmp_path):
    (tmp_path / "bad_dag.py").write_text(
        "import psycopg\n"
        "from airflow.sdk import dag\n"
        "conn = psycopg.connect('postgresql://x@127.0.0.1:5432/legacy')\n"
        "@dag(schedule=None)\n"
        "def bad():\n    pass\n"
        "bad()\n"
    )
    result = parse(tmp_path)
    assert result["attempts"] == ["psycopg.connect"]
    assert "bad_dag.py" in result["import_errors"]


def test_entity_dags_chain_the_steps_in_order():
    from airflow.sdk.definitions.dag import DAG  # noqa: F401  (Airflow must import)

    from include.orchestration.dag_factory import entity_dag

    for name in ("users", "messages"):
        dag = entity_dag(name, "doc")
        assert dag.max_active_runs == 1
        order = ["plan", "extract", "transform", "load", "validate", "reconcile"]
        for up, down in zip(order, order[1:]):
            assert dag.get_task(down).upstream_task_ids == {up}
        for key, param in dag.params.items():
            assert param.description, f"param {key} has no description"
        assert dag.params["mode"] == "incremental"
        # One extract task per key-range partition, mapped over the plan's output at run time.
        assert dag.get_task("extract").is_mapped and not dag.get_task("plan").is_mapped
        assert dag.params["partitions"] == 1
        assert dag.doc_md == "doc"
