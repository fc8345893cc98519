"""Connection passwords never reach a task log: an e2e run with secrets in every connection,
then every log line it produced is searched for them."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.e2e.conftest import run_dag

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DB_SECRET = "Db-s3cret-7f1c9e"
API_SECRET = "service-role-9d2b4a-secret"


def with_password(dsn: str, password: str) -> str:
    # The test server trusts local connections, so the password is carried but not needed:
    # exactly what a leak test wants (a real secret in the connection, the run still works).
    p = urlsplit(dsn)
    return urlunsplit((p.scheme, f"{p.username}:{password}@{p.hostname}:{p.port}", p.path, p.query, ""))


def test_no_secret_in_any_task_log(airflow_world, monkeypatch, caplog, capfd):
    world = airflow_world
    with psycopg.connect(world.legacy, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, email, display_name, created_at) VALUES "
                     "('50000000-0000-4000-8000-000000000001', 'x@example.com', 'X', '2024-01-01')")
    monkeypatch.setenv("AIRFLOW_CONN_LEGACY_DB", with_password(world.legacy, DB_SECRET))
    monkeypatch.setenv("AIRFLOW_CONN_SUPABASE_DB", with_password(world.dest, DB_SECRET))
    monkeypatch.setenv("AIRFLOW_CONN_SUPABASE_API",
                       f'{{"conn_type": "http", "host": "http://127.0.0.1:9", "password": "{API_SECRET}"}}')
    from include.migration import db

    assert DB_SECRET in db.dsn_for("supabase_db")  # the secret is really in play
    with caplog.at_level(logging.DEBUG):
        for dag_id in ("schema_diff", "migrate_users"):
            run_dag(dag_id, mode="full")
    out, err = capfd.readouterr()  # task logs of dag.test() go to the process's stdout / stderr
    texts = [caplog.text, out, err]
    assert any("users: accounting balanced" in t for t in texts)  # the logs were captured, and the run worked
    for path in Path(os.environ["AIRFLOW_HOME"]).rglob("*.log"):
        texts.append(path.read_text(errors="replace"))
    for text in texts:
        assert DB_SECRET not in text
        assert API_SECRET not in text
