"""The validation step against a real PostgreSQL: clean tables pass, each planted defect fails
exactly the expectation written for it, with its count and the planted keys in the sample."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql

from include.migration.validation import load_suite, validate_table
from tests.conftest import run_python

pytestmark = pytest.mark.integration

ENTITIES = ("users", "agents", "conversations", "messages", "media")

# The destination tables' columns and constraints. Each defect drops the one constraint that
# would refuse it, as a load into a table without that constraint would.
DESTINATION_DDL = """
CREATE TABLE users (
    id uuid CONSTRAINT users_pkey PRIMARY KEY,
    email text NOT NULL CONSTRAINT users_email_key UNIQUE,
    name text NOT NULL,
    avatar_url text,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE TABLE agents (
    id uuid CONSTRAINT agents_pkey PRIMARY KEY,
    owner_id uuid CONSTRAINT agents_owner_fkey REFERENCES users (id),
    name text NOT NULL,
    description text,
    system_prompt text,
    model text,
    temperature real,
    tools jsonb NOT NULL DEFAULT '[]',
    is_public boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE TABLE conversations (
    id uuid CONSTRAINT conversations_pkey PRIMARY KEY,
    user_id uuid NOT NULL CONSTRAINT conversations_user_fkey REFERENCES users (id),
    agent_id uuid CONSTRAINT conversations_agent_fkey REFERENCES agents (id),
    title text NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE TABLE messages (
    id bigint CONSTRAINT messages_pkey PRIMARY KEY,
    conversation_id uuid NOT NULL
        CONSTRAINT messages_conversation_fkey REFERENCES conversations (id),
    role text NOT NULL
        CONSTRAINT messages_role_check CHECK (role IN ('user', 'assistant', 'system', 'tool')),
    content text NOT NULL,
    token_count integer,
    model text,
    metadata jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL
);
CREATE TABLE media (
    id uuid CONSTRAINT media_pkey PRIMARY KEY,
    owner_id uuid NOT NULL CONSTRAINT media_owner_fkey REFERENCES users (id),
    conversation_id uuid CONSTRAINT media_conversation_fkey REFERENCES conversations (id),
    message_id bigint CONSTRAINT media_message_fkey REFERENCES messages (id),
    bucket text NOT NULL,
    object_path text NOT NULL CONSTRAINT media_object_path_key UNIQUE,
    file_name text,
    mime_type text NOT NULL,
    size_bytes bigint,
    sha256 text NOT NULL,
    created_at timestamptz NOT NULL
);
"""

# Clean rows with predictable ids: user n is 00000000-0000-0000-0000-<n as 12 hex digits>,
# agents use prefix a..., conversations c..., media f...; message ids are 1..N.
# The INSERTs are alike on purpose: test data, one per table (not copied logic).
CLEAN_ROWS = """
INSERT INTO users
SELECT ('00000000-0000-0000-0000-' || lpad(to_hex(g), 12, '0'))::uuid,
       'user' || g || '@example.com', 'User ' || g, NULL,
       now() - interval '300 days' + g * interval '1 hour', now() - interval '1 day'
FROM generate_series(1, 40) AS g;

INSERT INTO agents (id, owner_id, name, model, temperature, tools, is_public, created_at, updated_at)
SELECT ('a0000000-0000-0000-0000-' || lpad(to_hex(g), 12, '0'))::uuid,
       CASE WHEN g % 5 = 0 THEN NULL
            ELSE ('00000000-0000-0000-0000-' || lpad(to_hex(g), 12, '0'))::uuid END,
       'Agent ' || g, 'gpt-4o', CASE WHEN g % 3 = 0 THEN NULL ELSE 0.7 END,
       '[]', g % 2 = 0, now() - interval '200 days', now() - interval '2 days'
FROM generate_series(1, 10) AS g;

INSERT INTO conversations
SELECT ('c0000000-0000-0000-0000-' || lpad(to_hex(g), 12, '0'))::uuid,
       ('00000000-0000-0000-0000-' || lpad(to_hex(1 + g % 40), 12, '0'))::uuid,
       CASE WHEN g % 4 = 0 THEN NULL
            ELSE ('a0000000-0000-0000-0000-' || lpad(to_hex(1 + g % 10), 12, '0'))::uuid END,
       'Conversation ' || g, now() - interval '100 days', now() - interval '3 hours'
FROM generate_series(1, 60) AS g;

INSERT INTO messages
SELECT g,
       ('c0000000-0000-0000-0000-' || lpad(to_hex(1 + g % 60), 12, '0'))::uuid,
       (ARRAY['user', 'assistant', 'system', 'tool'])[1 + g % 4],
       'message ' || g, CASE WHEN g % 7 = 0 THEN NULL ELSE g % 500 END, 'gpt-4o', '{}',
       now() - interval '50 days' + g * interval '1 minute'
FROM generate_series(1, 300) AS g;

INSERT INTO media
SELECT ('f0000000-0000-0000-0000-' || lpad(to_hex(g), 12, '0'))::uuid,
       ('00000000-0000-0000-0000-' || lpad(to_hex(1 + g % 40), 12, '0'))::uuid,
       CASE WHEN g % 3 = 0 THEN NULL
            ELSE ('c0000000-0000-0000-0000-' || lpad(to_hex(1 + g % 60), 12, '0'))::uuid END,
       CASE WHEN g % 2 = 0 THEN g ELSE NULL END,
       'attachments', 'u/' || g || '/file.png', 'file ' || g || '.png', 'image/png', 1000 * g,
       encode(sha256(('file ' || g)::bytea), 'hex'), now() - interval '10 days'
FROM generate_series(1, 25) AS g;
"""
CLEAN_COUNTS = {"users": 40, "agents": 10, "conversations": 60, "messages": 300, "media": 25}


def _uuid(prefix: str, n: int) -> str:
    return f"{prefix}0000000-0000-0000-0000-{n:012x}"


def _user(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012x}"


@pytest.fixture
def destination(fresh_db) -> str:
    """A database holding the five destination tables with clean rows; returns its URI."""
    uri = fresh_db("validation")
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(DESTINATION_DDL)
        conn.execute(CLEAN_ROWS)
    return uri


def _sqlalchemy_url(uri: str) -> str:
    return "postgresql+psycopg2://" + uri.split("://", 1)[1]


def _execute(uri: str, statements: str) -> None:
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(statements)


def test_every_suite_passes_on_clean_tables(destination: str) -> None:
    for entity in ENTITIES:
        report = validate_table(
            _sqlalchemy_url(destination),
            table=entity,
            suite=load_suite(entity),
            expected_row_count=CLEAN_COUNTS[entity],
        )
        assert report.success, report.failure_message()
        assert report.evaluated_rows == CLEAN_COUNTS[entity]
        # The suite plus the run-time row count, every one passing and counting nothing.
        assert len(report.outcomes) == len(load_suite(entity)) + 1
        assert [o for o in report.outcomes if not o.success or o.unexpected_count] == []
        assert report.failure_message() == ""
        assert all(line.startswith("passed ") for line in report.summary_lines())


def test_suites_cover_keys_foreign_keys_and_timestamps() -> None:
    def checks(entity: str) -> set[tuple[str, str | None]]:
        return {(s["type"], s["kwargs"].get("column") or s.get("column")) for s in load_suite(entity)}

    for entity, foreign_keys in {
        "users": [],
        "agents": ["owner_id"],
        "conversations": ["user_id", "agent_id"],
        "messages": ["conversation_id"],
        "media": ["owner_id", "conversation_id", "message_id"],
    }.items():
        found = checks(entity)
        assert ("expect_column_values_to_not_be_null", "id") in found
        assert ("expect_column_values_to_be_unique", "id") in found
        assert ("unexpected_rows", "created_at") in found
        for column in foreign_keys:
            assert ("unexpected_rows", column) in found, (entity, column)
        for spec in load_suite(entity):
            assert spec["notes"], spec


@dataclass
class Defect:
    """One planted defect and the single expectation that must catch it."""

    table: str
    plant: str
    expectation: str
    column: str | None
    unexpected_count: int
    planted_keys: list[str]
    row_count: int | None = None  # the count the load "reported"; defaults to the real one


DUP_USER = _user(7)
# Test data: one planted defect per entry, alike in shape on purpose (not copied logic).
DEFECTS = {
    "duplicate key": Defect(
        "users",
        f"""ALTER TABLE agents DROP CONSTRAINT agents_owner_fkey;
            ALTER TABLE conversations DROP CONSTRAINT conversations_user_fkey;
            ALTER TABLE media DROP CONSTRAINT media_owner_fkey;
            ALTER TABLE users DROP CONSTRAINT users_pkey;
            INSERT INTO users VALUES ('{DUP_USER}', 'again7@example.com', 'Again', NULL,
                                      now() - interval '9 days', now() - interval '8 days');""",
        expectation="expect_column_values_to_be_unique",
        column="id",
        unexpected_count=2,
        planted_keys=[DUP_USER, DUP_USER],
    ),
    "null key": Defect(
        "media",
        """ALTER TABLE media DROP CONSTRAINT media_pkey;
           ALTER TABLE media ALTER COLUMN id DROP NOT NULL;
           INSERT INTO media VALUES (NULL, '00000000-0000-0000-0000-000000000001', NULL, NULL,
               'attachments', 'u/null/file.png', 'x.png', 'image/png', 10,
               repeat('ab', 32), now() - interval '1 day');""",
        expectation="expect_column_values_to_not_be_null",
        column="id",
        unexpected_count=1,
        planted_keys=["NULL"],
    ),
    "bad email": Defect(
        "users",
        f"""INSERT INTO users VALUES ('{_user(901)}', 'not-an-email', 'Bad', NULL,
                                      now() - interval '2 days', now() - interval '1 day');""",
        expectation="expect_column_values_to_match_regex",
        column="email",
        unexpected_count=1,
        planted_keys=[_user(901)],
    ),
    "mixed-case email": Defect(
        "users",
        f"""INSERT INTO users VALUES ('{_user(902)}', 'Mixed.Case@Example.com', 'Mixed', NULL,
                                      now() - interval '2 days', now() - interval '1 day');""",
        expectation="unexpected_rows",
        column="email",
        unexpected_count=1,
        planted_keys=[_user(902)],
    ),
    "unmapped role": Defect(
        "messages",
        """ALTER TABLE messages DROP CONSTRAINT messages_role_check;
           INSERT INTO messages VALUES (9001, 'c0000000-0000-0000-0000-000000000001', 'bot', 'hi',
                                        3, NULL, '{}', now() - interval '1 day');""",
        expectation="expect_column_values_to_be_in_set",
        column="role",
        unexpected_count=1,
        planted_keys=["9001"],
    ),
    "orphan conversation_id": Defect(
        "messages",
        """ALTER TABLE messages DROP CONSTRAINT messages_conversation_fkey;
           INSERT INTO messages VALUES (9002, 'c0000000-0000-0000-0000-00000000dead', 'user', 'hi',
                                        3, NULL, '{}', now() - interval '1 day');""",
        expectation="unexpected_rows",
        column="conversation_id",
        unexpected_count=1,
        planted_keys=["9002"],
    ),
    "future created_at": Defect(
        "media",
        f"""INSERT INTO media VALUES ('{_uuid("f", 0xFFF)}', '{_user(1)}', NULL, NULL, 'attachments',
               'u/future/file.png', 'future.png', 'image/png', 10, repeat('ab', 32),
               now() + interval '2 hours');""",
        expectation="unexpected_rows",
        column="created_at",
        unexpected_count=1,
        planted_keys=[_uuid("f", 0xFFF)],
    ),
    "updated before created": Defect(
        "conversations",
        f"""INSERT INTO conversations VALUES ('{_uuid("c", 0xBAD)}', '{_user(3)}', NULL, 'Odd',
               now() - interval '1 day', now() - interval '2 days');""",
        expectation="expect_column_pair_values_a_to_be_greater_than_b",
        column="updated_at, created_at",
        unexpected_count=1,
        planted_keys=[_uuid("c", 0xBAD)],
    ),
    "wrong row count": Defect(
        "agents",
        "",
        expectation="expect_table_row_count_to_equal",
        column=None,
        unexpected_count=1,
        planted_keys=[],
        row_count=CLEAN_COUNTS["agents"] + 1,
    ),
    "bad sha256": Defect(
        "media",
        f"""INSERT INTO media VALUES ('{_uuid("f", 0xBEE)}', '{_user(2)}', NULL, NULL, 'attachments',
               'u/bad/file.png', 'bad.png', 'image/png', 10, 'sha256:abc', now() - interval '1 day');""",
        expectation="expect_column_values_to_match_regex",
        column="sha256",
        unexpected_count=1,
        planted_keys=[_uuid("f", 0xBEE)],
    ),
}


@pytest.mark.parametrize("name", list(DEFECTS))
def test_each_defect_fails_exactly_its_expectation(destination: str, name: str) -> None:
    defect = DEFECTS[name]
    if defect.plant:
        _execute(destination, defect.plant)
    with psycopg.connect(destination) as conn:
        count = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(defect.table))
        actual_rows = conn.execute(count).fetchone()[0]

    report = validate_table(
        _sqlalchemy_url(destination),
        table=defect.table,
        suite=load_suite(defect.table),
        expected_row_count=defect.row_count if defect.row_count is not None else actual_rows,
    )

    assert not report.success
    assert report.evaluated_rows == actual_rows
    failed = [(o.expectation, o.column) for o in report.outcomes if not o.success]
    assert failed == [(defect.expectation, defect.column)], report.failure_message()
    outcome = report.failed[0]
    assert outcome.unexpected_count == defect.unexpected_count
    assert sorted(outcome.sample_keys) == sorted(defect.planted_keys)
    # The first line an on-call engineer reads names the check, the count and the keys.
    first = report.summary_lines()[0]
    assert first.startswith(f"FAILED {defect.expectation}")
    message = report.failure_message()
    assert defect.expectation in message
    if defect.row_count is None:
        assert f": {defect.unexpected_count} row" in first
    for key in defect.planted_keys:
        assert f"id={key}" in message
    assert outcome.notes in message


def test_an_empty_table_passes_when_nothing_was_expected(destination: str) -> None:
    # A first run can load zero rows of an entity (no media yet); that is not a failure.
    _execute(destination, "DELETE FROM media")
    report = validate_table(
        _sqlalchemy_url(destination), table="media", suite=load_suite("media"), expected_row_count=0
    )
    assert report.success, report.failure_message()
    assert report.evaluated_rows == 0


def test_row_count_failure_says_observed_and_expected(destination: str) -> None:
    report = validate_table(
        _sqlalchemy_url(destination), table="agents", suite=load_suite("agents"), expected_row_count=12
    )
    assert report.summary_lines()[0] == (
        "FAILED expect_table_row_count_to_equal: table has 10 rows, expected 12 (2 missing)"
    )
    assert report.failed[0].unexpected_count == 2


def test_samples_are_capped_and_failures_listed_first(destination: str) -> None:
    _execute(
        destination,
        """ALTER TABLE messages DROP CONSTRAINT messages_conversation_fkey;
           ALTER TABLE messages DROP CONSTRAINT messages_role_check;
           UPDATE messages SET conversation_id = gen_random_uuid() WHERE id BETWEEN 101 AND 120;
           UPDATE messages SET role = 'human' WHERE id BETWEEN 201 AND 212;""",
    )
    report = validate_table(
        _sqlalchemy_url(destination), table="messages", suite=load_suite("messages"), sample_size=3
    )
    by_check = {(o.expectation, o.column): o for o in report.failed}
    assert set(by_check) == {
        ("unexpected_rows", "conversation_id"),
        ("expect_column_values_to_be_in_set", "role"),
    }
    orphans = by_check[("unexpected_rows", "conversation_id")]
    roles = by_check[("expect_column_values_to_be_in_set", "role")]
    assert (orphans.unexpected_count, roles.unexpected_count) == (20, 12)
    assert len(orphans.sample_keys) == len(roles.sample_keys) == 3
    assert {int(k) for k in orphans.sample_keys} <= set(range(101, 121))
    assert {int(k) for k in roles.sample_keys} <= set(range(201, 213))
    lines = report.summary_lines()
    assert [line.split(" ")[0] for line in lines[:2]] == ["FAILED", "FAILED"]
    assert all(line.startswith("passed ") for line in lines[2:])
    assert len(lines) == len(report.outcomes)


def test_schema_other_than_public(fresh_db) -> None:
    uri = fresh_db("validation_schema")
    _execute(uri, "CREATE SCHEMA staging; SET search_path = staging;" + DESTINATION_DDL + CLEAN_ROWS)
    # An orphan only in staging: the FK checks must join staging.users, not public.users.
    _execute(
        uri,
        f"""ALTER TABLE staging.conversations DROP CONSTRAINT conversations_user_fkey;
            INSERT INTO staging.conversations VALUES ('{_uuid("c", 0xABC)}', '{_user(999)}', NULL,
                'Orphan', now() - interval '1 day', now());""",
    )
    report = validate_table(
        _sqlalchemy_url(uri), table="conversations", schema="staging", suite=load_suite("conversations")
    )
    assert [(o.expectation, o.column) for o in report.failed] == [("unexpected_rows", "user_id")]
    assert report.failed[0].sample_keys == [_uuid("c", 0xABC)]


def test_no_connection_is_left_open(destination: str) -> None:
    # Supabase limits connections per project; GX's engines would keep theirs until collected.
    validate_table(_sqlalchemy_url(destination), table="media", suite=load_suite("media"))
    assert _connections_to(destination) == 0


def _connections_to(uri: str) -> int:
    server, name = uri.rsplit("/", 1)
    with psycopg.connect(f"{server}/postgres") as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
        return conn.execute(query, (name,)).fetchone()[0]


def test_rows_are_counted_when_the_suite_has_only_sql_checks(destination: str) -> None:
    suite = [s for s in load_suite("messages") if s["type"] == "unexpected_rows"]
    report = validate_table(_sqlalchemy_url(destination), table="messages", suite=suite)
    assert report.success
    assert report.evaluated_rows == CLEAN_COUNTS["messages"]


def test_a_check_that_errors_is_a_failure_with_its_message(destination: str) -> None:
    suite = [
        {
            "type": "expect_column_values_to_not_be_null",
            "kwargs": {"column": "no_such_column"},
            "notes": "a suite out of step with the table",
        }
    ]
    report = validate_table(_sqlalchemy_url(destination), table="users", suite=suite)
    assert not report.success
    assert report.failed[0].error
    assert report.summary_lines()[0].startswith("ERROR expect_column_values_to_not_be_null(no_such_column)")


def test_a_missing_table_raises_and_leaves_no_connection(fresh_db) -> None:
    uri = fresh_db("validation_empty")
    with pytest.raises(ConnectionError, match="public.users"):
        validate_table(_sqlalchemy_url(uri), table="users", suite=load_suite("users"))
    assert _connections_to(uri) == 0


def test_unknown_expectation_type_is_refused(destination: str) -> None:
    suite = [{"type": "expect_column_values_to_be_lovely", "kwargs": {"column": "id"}, "notes": ""}]
    with pytest.raises(ValueError, match="expect_column_values_to_be_lovely"):
        validate_table(_sqlalchemy_url(destination), table="users", suite=suite)


def test_importing_the_module_does_not_import_great_expectations() -> None:
    code = (
        "import sys\n"
        "import include.migration.validation as v\n"
        "suites = [v.load_suite(e) for e in ('users', 'agents', 'conversations', 'messages', 'media')]\n"
        "print('great_expectations' in sys.modules, len(suites))\n"
    )
    done = run_python("-c", code, check=True)
    assert done.stdout.split() == ["False", "5"]


def test_gx_logging_and_progress_bars_stay_out_of_the_task_log(destination: str) -> None:
    # Airflow's task log captures the root logger at INFO and the process's stderr. In a fresh
    # process, so GX's import-time logging is included.
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)\n"
        "from include.migration.validation import load_suite, validate_table\n"
        f"r = validate_table({_sqlalchemy_url(destination)!r}, table='users', suite=load_suite('users'))\n"
        "print(r.success)\n"
    )
    done = run_python("-c", code, check=True)
    assert done.stdout.split() == ["True"]
    gx_lines = [line for line in done.stderr.splitlines() if "great_expectations" in line]
    assert gx_lines == []
    assert "Calculating Metrics" not in done.stderr
