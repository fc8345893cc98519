"""The schema gate through real DAG runs: a breaking difference stops the load before it
writes, the log names the cause; an operator override lets exactly one run through."""

from __future__ import annotations

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


def test_breaking_legacy_change_blocks_the_load_and_says_why(tiny, capfd):
    with psycopg.connect(tiny.legacy, autocommit=True) as conn:
        conn.execute("ALTER TABLE users DROP COLUMN display_name")
    state, tasks = run_dag("schema_diff")
    assert tasks["compare"] == "success" and tasks["verdict"] == "failed"
    capfd.readouterr()  # task logs of dag.test() go to stdout / stderr
    state, tasks = run_dag("migrate_users", mode="full")
    assert state == "failed"
    # The transform reads the dropped column, so the extract already stops, naming it.
    assert tasks["extract"] == "failed" and tasks["load"] != "success"
    assert users_in_destination(tiny) == 0
    out, err = capfd.readouterr()
    assert "the legacy schema no longer fits the users mapping" in out + err
    assert "display_name" in out + err


def test_no_recent_check_blocks_the_load(tiny, capfd):
    capfd.readouterr()
    state, tasks = run_dag("migrate_users", mode="full")
    assert tasks["load"] == "failed"
    assert users_in_destination(tiny) == 0
    out, err = capfd.readouterr()
    assert "users: load blocked" in out + err and "schema_diff" in out + err


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
