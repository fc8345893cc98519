"""The schema gate through real DAG runs: a breaking difference stops the load before it
writes, the log names the cause; an operator override lets exactly one run through."""

from __future__ import annotations

import logging

import psycopg
import pytest

from tests.e2e.conftest import run_dag

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

U1 = "40000000-0000-4000-8000-000000000001"


@pytest.fixture
def tiny(airflow_world):
    with psycopg.connect(airflow_world.legacy, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, email, display_name, created_at) VALUES (%s, 'a@example.com', 'A', "
                     "'2024-01-01')", (U1,))
    return airflow_world


def users_in_destination(world) -> int:
    with psycopg.connect(world.dest) as conn:
        return conn.execute("SELECT count(*) FROM public.users").fetchone()[0]


def test_breaking_legacy_change_blocks_the_load_and_says_why(tiny, caplog):
    with psycopg.connect(tiny.legacy, autocommit=True) as conn:
        conn.execute("ALTER TABLE users DROP COLUMN display_name")
    state, tasks = run_dag("schema_diff")
    assert tasks["compare"] == "success" and tasks["verdict"] == "failed"
    caplog.clear()
    with caplog.at_level(logging.INFO):
        state, tasks = run_dag("migrate_users", mode="full")
    assert state == "failed"
    assert tasks["extract"] == "failed" or tasks["load"] == "failed"
    assert users_in_destination(tiny) == 0
    assert "legacy.users.display_name:missing_column" in caplog.text


def test_no_recent_check_blocks_the_load(tiny, caplog):
    with caplog.at_level(logging.INFO):
        state, tasks = run_dag("migrate_users", mode="full")
    assert tasks["load"] == "failed"
    assert users_in_destination(tiny) == 0
    assert "schema_diff" in caplog.text


def test_override_lets_exactly_one_run_through_and_is_recorded(tiny):
    with psycopg.connect(tiny.dest, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.users DROP CONSTRAINT users_email_lowercase")
    run_dag("schema_diff")
    diff_id = "supabase.public.users.users_email_lowercase:check_missing"
    state, tasks = run_dag("migrate_users", mode="full", accept_schema_differences=[diff_id],
                           override_reason="constraint re-added after cutover")
    assert state == "success", tasks
    assert users_in_destination(tiny) == 1
    with psycopg.connect(tiny.dest) as conn:
        rows = conn.execute("SELECT entity, difference_id, reason FROM migration.schema_overrides").fetchall()
    assert rows == [("users", diff_id, "constraint re-added after cutover")]
    state, tasks = run_dag("migrate_users", mode="full")
    assert tasks["load"] == "failed"


def test_compatible_difference_does_not_block(tiny):
    with psycopg.connect(tiny.legacy, autocommit=True) as conn:
        conn.execute("ALTER TABLE users ADD COLUMN nickname text")
    state, tasks = run_dag("schema_diff")
    assert state == "success", tasks
    state, tasks = run_dag("migrate_users", mode="full")
    assert state == "success", tasks
    assert users_in_destination(tiny) == 1
