"""`airflow plugins` lists the Migration console, and loading the plugin touches no database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_airflow_lists_the_console_plugin(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AIRFLOW_HOME": str(tmp_path),
           "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           # Neither the metadata DB nor the destination can be reached: loading the plugin must not need them.
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://nobody@127.0.0.1:1/none",
           "AIRFLOW_CONN_SUPABASE_DB": "postgresql://nobody@127.0.0.1:1/none"}
    out = subprocess.run([sys.executable, "-m", "airflow", "plugins", "--output", "json"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    plugins = json.loads(out.stdout[out.stdout.index("["):])
    console = next(p for p in plugins if p["name"] == "migration_console")
    assert console["fastapi_apps"][0]["url_prefix"] == "/migration"
    assert console["external_views"][0]["name"] == "Migration"
    assert console["external_views"][0]["destination"] == "nav"
