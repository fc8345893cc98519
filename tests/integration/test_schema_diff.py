"""The schema check and the load gate against real databases: a legacy world built from
``include/sql/legacy/schema.sql`` and a bootstrapped destination, each test changing one thing
and asserting the verdict, the difference id, the entities it blocks and what the gate says."""

from __future__ import annotations

import json
import logging

import psycopg
import pytest

from include.migration.entities import ENTITIES
from include.migration.gate import SchemaGateClosed, UnknownSchemaDifference, check_load_allowed
from include.migration.pipeline import Conns as World
from include.migration.schema_diff import (
    BREAKING,
    COMPATIBLE,
    INFORMATIONAL,
    SchemaReport,
    classify_type_change,
    run_schema_diff,
)

pytestmark = pytest.mark.integration

USER = "00000000-0000-4000-8000-000000000001"
AGENT = "00000000-0000-4000-9000-000000000001"


# Every test takes `world` (tests/conftest.py): the legacy schema, empty, and a bootstrapped destination.


def execute(dsn: str, statement: str, params: tuple = ()) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement, params)


def rows(dsn: str, query: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def check(world: World, dag_run_id: str = "manual__test") -> SchemaReport:
    return run_schema_diff(world.legacy, world.dest, dag_run_id=dag_run_id)


def gate(world: World, entity: str, run_id: str = "run-1", **kwargs) -> list[str]:
    with psycopg.connect(world.dest) as conn:
        return check_load_allowed(conn, entity, run_id=run_id, **kwargs)


def closed(world: World, entity: str, **kwargs) -> str:
    with pytest.raises(SchemaGateClosed) as info:
        gate(world, entity, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def difference(report: SchemaReport, difference_id: str):
    found = {d.id: d for d in report.differences}
    assert difference_id in found, f"{difference_id} not in {sorted(found)}"
    return found[difference_id]


def overrides(world: World) -> list[tuple]:
    return rows(world.dest, "SELECT entity, difference_id, accepted_by, reason, run_id "
                            "FROM migration.schema_overrides ORDER BY override_id")


# --------------------------------------------------------------------------- clean state


def test_clean_world_is_compatible_recorded_three_ways_and_every_gate_is_open(world, caplog):
    with caplog.at_level(logging.INFO, logger="include.migration.schema_diff"):
        report = check(world, "scheduled__2026-01-01T02:00:00+00:00")

    assert report.verdict == "compatible"
    assert report.blocked == {}
    # Only tables no mapping uses (legacy media_assets, public.media while media has no entity).
    assert {d.severity for d in report.differences} <= {INFORMATIONAL}
    assert {d.kind for d in report.differences} <= {"unused_table"}

    stored = rows(world.dest, "SELECT check_id, dag_run_id, verdict, blocked, report -> 'comparison' "
                              "FROM migration.schema_checks")
    assert stored == [(report.check_id, "scheduled__2026-01-01T02:00:00+00:00", "compatible", {},
                       report.comparison())]
    assert stored[0][4]["legacy"]["missing_tables"] == []
    assert stored[0][4]["supabase"]["tables"] == {}

    written = json.loads(report.json_path.read_text())
    latest = json.loads(report.json_path.with_name("latest.json").read_text())
    assert written == latest
    assert written["check_id"] == report.check_id and written["verdict"] == "compatible"
    assert report.json_path.parent.name == "schema"

    assert f"schema check #{report.check_id}" in caplog.text and "verdict COMPATIBLE" in caplog.text

    for entity in ENTITIES:
        assert gate(world, entity) == []


# --------------------------------------------------------------------------- legacy side


def test_dropped_legacy_users_column_blocks_every_entity(world):
    execute(world.legacy, "ALTER TABLE users DROP COLUMN display_name")
    report = check(world)

    d = difference(report, "legacy.users.display_name:missing_column")
    assert report.verdict == BREAKING and d.severity == BREAKING
    assert d.entities == tuple(ENTITIES)  # every transform reads the user fate
    assert set(report.blocked) == set(ENTITIES)
    assert difference(report, "transform.users:query_failed").severity == BREAKING

    message = closed(world, "messages")
    assert "legacy.users.display_name:missing_column" in message
    assert "rerun the schema_diff DAG" in message
    assert "accept_schema_differences=" in message and "override_reason=" in message


def test_dropped_legacy_agents_column_blocks_agents_and_conversations_only(world):
    execute(world.legacy, "ALTER TABLE agents DROP COLUMN description")
    report = check(world)

    d = difference(report, "legacy.agents.description:missing_column")
    assert d.entities == ("agents", "conversations")
    assert set(report.blocked) == {"agents", "conversations"}
    assert "legacy.agents.description:missing_column" in closed(world, "conversations")
    assert "transform.agents:query_failed" in closed(world, "agents")
    assert gate(world, "users") == []
    assert gate(world, "messages") == []


def test_legacy_widening_the_transform_passes_through_breaks_the_stage_copy(world):
    # The column itself widened (compatible), but the messages transform passes it through
    # and the binary COPY into the integer stage column would refuse a bigint.
    execute(world.legacy, "ALTER TABLE messages ALTER COLUMN token_count TYPE bigint")
    report = check(world)

    assert difference(report, "legacy.messages.token_count:type_widened").severity == COMPATIBLE
    probe = difference(report, "transform.messages.token_count:output_type_changed")
    assert probe.severity == BREAKING and (probe.expected, probe.actual) == ("integer", "bigint")
    assert set(report.blocked) == {"messages"}
    assert "transform.messages.token_count:output_type_changed" in closed(world, "messages")


def test_legacy_timestamp_to_timestamptz_is_not_a_widening(world):
    execute(world.legacy, "ALTER TABLE conversations ALTER COLUMN created_at TYPE timestamptz")
    report = check(world)

    d = difference(report, "legacy.conversations.created_at:type_changed")
    assert d.severity == BREAKING
    assert {"conversations", "messages"} <= set(report.blocked)
    assert "users" not in report.blocked


def test_extra_legacy_table_is_informational(world):
    execute(world.legacy, "CREATE TABLE audit_log (id bigint PRIMARY KEY, happened_at timestamp)")
    report = check(world)

    d = difference(report, "legacy.audit_log:unused_table")
    assert d.severity == INFORMATIONAL and d.entities == ()
    assert report.verdict == "compatible"
    assert "audit_log" in report.comparison()["legacy"]["new_tables"]
    assert gate(world, "users") == []


# --------------------------------------------------------------------------- destination side


# Test data: one destination change per case, alike in shape on purpose (not copied logic).
BREAKING_DESTINATION_CHANGES = [
    pytest.param(
        "ALTER TABLE public.users ALTER COLUMN email TYPE varchar(10)",
        "supabase.public.users.email:type_changed", {"users", "agents", "conversations", "messages"}, set(),
        id="users.email narrowed to varchar(10)"),
    pytest.param(
        "ALTER TABLE public.messages DROP CONSTRAINT messages_role_check, "
        "ALTER COLUMN role TYPE integer USING 0",
        "supabase.public.messages.role:type_changed", {"messages"}, {"users", "agents", "conversations"},
        id="messages.role to integer"),
    pytest.param(
        "ALTER TABLE public.messages ALTER COLUMN created_at TYPE timestamp",
        "supabase.public.messages.created_at:type_changed", {"messages"}, {"users", "conversations"},
        id="timestamptz to timestamp"),
    pytest.param(
        "ALTER TABLE public.agents ALTER COLUMN temperature TYPE double precision",
        "supabase.public.agents.temperature:type_changed", {"agents", "conversations"}, {"users"},
        id="real to double precision breaks the reconciliation"),
    pytest.param(
        "ALTER TABLE public.messages DISABLE ROW LEVEL SECURITY",
        "supabase.public.messages:rls_disabled", {"messages"}, {"users", "agents", "conversations"},
        id="RLS disabled"),
    pytest.param(
        "ALTER TABLE public.conversations DROP CONSTRAINT conversations_user_id_fkey",
        "supabase.public.conversations.user_id:foreign_key_missing", {"conversations", "messages"},
        {"users", "agents"}, id="parent foreign key dropped"),
    pytest.param(
        "ALTER TABLE public.users DROP CONSTRAINT users_email_key",
        "supabase.public.users.email:unique_missing", {"users", "messages"}, set(),
        id="unique email dropped"),
    pytest.param(
        "ALTER TABLE public.messages DROP CONSTRAINT messages_pkey CASCADE",
        "supabase.public.messages:primary_key_missing", {"messages"}, {"conversations"},
        id="primary key dropped"),
    pytest.param(
        "ALTER TABLE public.conversations ADD COLUMN folder text NOT NULL",
        "supabase.public.conversations.folder:new_required_column", {"conversations"}, {"users", "agents"},
        id="new NOT NULL column without default"),
    pytest.param(
        "ALTER TABLE public.conversations "
        "ADD CONSTRAINT conversations_title_length CHECK (length(title) < 80)",
        "supabase.public.conversations.conversations_title_length:constraint_added", {"conversations"},
        {"users", "agents"}, id="unknown check constraint added"),
    pytest.param(
        "DROP TABLE public.messages CASCADE",
        "supabase.public.messages:missing_table", {"messages"}, {"users", "agents", "conversations"},
        id="destination table dropped"),
    pytest.param(
        "ALTER TABLE auth.users DROP COLUMN is_anonymous",
        "supabase.auth.users.is_anonymous:missing_column", {"users", "agents"}, set(),
        id="auth column the users load writes"),
]


@pytest.mark.parametrize(("statement", "difference_id", "blocks", "spares"), BREAKING_DESTINATION_CHANGES)
def test_breaking_destination_change_blocks_its_entity_and_children(world, statement, difference_id, blocks,
                                                                     spares):
    execute(world.dest, statement)
    report = check(world)

    assert report.verdict == BREAKING
    assert difference(report, difference_id).severity == BREAKING
    blocked_by_it = {e for e, ids in report.blocked.items() if difference_id in ids}
    assert blocks <= blocked_by_it
    assert not spares & set(report.blocked)
    stored = rows(world.dest, "SELECT verdict, blocked FROM migration.schema_checks WHERE check_id = %s",
                  (report.check_id,))
    assert stored == [(BREAKING, report.blocked)]

    entity = sorted(blocks)[0]
    message = closed(world, entity)
    assert message.startswith(f"{entity}: load blocked by schema check #{report.check_id}")
    assert difference_id in message and "schema_diff" in message and "accept_schema_differences" in message
    for spared in spares:
        assert gate(world, spared) == []


@pytest.mark.parametrize(("statement", "difference_id"), [
    pytest.param("ALTER TABLE public.agents ADD COLUMN color text",
                 "supabase.public.agents.color:new_column", id="new nullable column"),
    pytest.param("ALTER TABLE public.agents ADD COLUMN archived boolean NOT NULL DEFAULT false",
                 "supabase.public.agents.archived:new_column", id="new NOT NULL column with default"),
    pytest.param("ALTER TABLE public.messages ALTER COLUMN token_count TYPE bigint",
                 "supabase.public.messages.token_count:type_widened", id="integer widened to bigint"),
    pytest.param("CREATE INDEX messages_created_at_idx ON public.messages (created_at)",
                 "supabase.public.messages.messages_created_at_idx:index_added", id="index added"),
])
def test_compatible_destination_change_keeps_every_gate_open(world, statement, difference_id):
    execute(world.dest, statement)
    report = check(world)

    assert report.verdict == "compatible" and report.blocked == {}
    assert difference(report, difference_id).severity == COMPATIBLE
    for entity in ENTITIES:
        assert gate(world, entity) == []


@pytest.mark.parametrize("legacy_description", [None, "writes Python"])
def test_not_null_on_a_column_the_mapping_fills_with_nulls_breaks_only_when_the_data_has_nulls(
        world, legacy_description):
    execute(world.legacy, "INSERT INTO users (id, email, created_at) VALUES (%s, 'a@example.com', now())",
            (USER,))
    execute(world.legacy,
            "INSERT INTO agents (id, owner_id, name, description, system_prompt, model, is_public, "
            "created_at) VALUES (%s, %s, 'Helper', %s, 'Be kind', 'gpt', true, now())",
            (AGENT, USER, legacy_description))
    execute(world.dest, "ALTER TABLE public.agents ALTER COLUMN description SET NOT NULL")
    report = check(world)

    d = difference(report, "supabase.public.agents.description:nullability_tightened")
    if legacy_description is None:
        assert d.severity == BREAKING and "1 legacy rows have NULL" in d.detail
        assert "supabase.public.agents.description:nullability_tightened" in closed(world, "agents")
    else:
        assert d.severity == COMPATIBLE
        assert gate(world, "agents") == []
    # Counted only where it matters: the one column that tightened.
    expected_nulls = 1 if legacy_description is None else 0
    assert report.catalogs["legacy"]["null_counts"] == {"agents.description": expected_nulls}


# --------------------------------------------------------------------------- the gate


def test_gate_is_closed_when_no_check_exists(world):
    message = closed(world, "users")
    assert "no schema check is recorded" in message and "schema_diff" in message


def test_gate_is_closed_when_the_newest_check_is_stale(world):
    report = check(world)
    execute(world.dest, "UPDATE migration.schema_checks SET checked_at = now() - interval '27 hours' "
                        "WHERE check_id = %s", (report.check_id,))

    message = closed(world, "users")
    assert f"schema check #{report.check_id} ran 27.0 h ago" in message
    assert "more than the 26 h allowed" in message and "Rerun the schema_diff DAG" in message
    assert gate(world, "users", max_age_hours=30) == []

    # A newer check reopens it.
    check(world)
    assert gate(world, "users") == []


def test_override_opens_the_gate_for_one_run_and_is_recorded(world):
    execute(world.dest, "ALTER TABLE public.conversations DROP CONSTRAINT conversations_user_id_fkey")
    check(world)
    blocking = "supabase.public.conversations.user_id:foreign_key_missing"

    accepted = gate(world, "conversations", run_id="conversations:run-1", accept=[blocking, " "],
                    accepted_by="alice", reason="the FK is re-added by tonight's app release")
    assert accepted == [blocking]
    assert overrides(world) == [("conversations", blocking, "alice",
                                 "the FK is re-added by tonight's app release", "conversations:run-1")]

    # A retry of the same run with the same params records it once.
    gate(world, "conversations", run_id="conversations:run-1", accept=[blocking], accepted_by="alice",
         reason="the FK is re-added by tonight's app release")
    assert len(overrides(world)) == 1

    # The next run is blocked again, and so is any call that does not accept it.
    assert blocking in closed(world, "conversations", run_id="conversations:run-2")
    assert blocking in closed(world, "conversations", run_id="conversations:run-1")

    # The same list handed to an entity it does not block is ignored there, not recorded.
    assert gate(world, "users", run_id="users:run-1", accept=[blocking], accepted_by="alice",
                reason="x") == []
    assert len(overrides(world)) == 1


def test_accepting_part_of_what_blocks_keeps_the_gate_closed_and_records_nothing(world):
    execute(world.dest, "ALTER TABLE public.messages DISABLE ROW LEVEL SECURITY")
    execute(world.dest, "ALTER TABLE public.messages DROP CONSTRAINT messages_role_check")
    check(world)

    message = closed(world, "messages", accept=["supabase.public.messages:rls_disabled"], accepted_by="bob",
                     reason="testing")
    assert "supabase.public.messages.messages_role_check:check_missing" in message
    assert "accepted for this run: supabase.public.messages:rls_disabled" in message
    assert overrides(world) == []


# The refusals below share their setup's shape; each test is a different refusal (not copied logic).
def test_accepting_an_unknown_or_compatible_id_is_refused(world):
    execute(world.dest, "ALTER TABLE public.messages DISABLE ROW LEVEL SECURITY")
    execute(world.dest, "ALTER TABLE public.agents ADD COLUMN color text")
    check(world)

    with pytest.raises(UnknownSchemaDifference) as info:
        gate(world, "messages", accept=["supabase.public.messages:rls_disable"], accepted_by="bob",
             reason="typo")
    assert "supabase.public.messages:rls_disable is unknown" in str(info.value)
    assert "What blocks messages: supabase.public.messages:rls_disabled" in str(info.value)

    with pytest.raises(UnknownSchemaDifference, match="color:new_column is compatible, nothing to accept"):
        gate(world, "agents", accept=["supabase.public.agents.color:new_column"], accepted_by="bob",
             reason="x")
    assert overrides(world) == []


def test_accepting_needs_who_and_why(world):
    execute(world.dest, "ALTER TABLE public.messages DISABLE ROW LEVEL SECURITY")
    check(world)
    with pytest.raises(ValueError, match="needs who accepts it and why"):
        gate(world, "messages", accept=["supabase.public.messages:rls_disabled"], accepted_by="bob",
             reason=" ")
    assert overrides(world) == []


def test_gate_commits_its_override_rows_and_nothing_of_the_callers(world):
    execute(world.dest, "ALTER TABLE public.messages DISABLE ROW LEVEL SECURITY")
    check(world)
    accept = {"accept": ["supabase.public.messages:rls_disabled"], "accepted_by": "carol", "reason": "window"}

    # Inside the caller's open transaction: a savepoint, so the caller's rollback undoes both.
    with psycopg.connect(world.dest) as conn:
        conn.execute("INSERT INTO migration.locks (entity, run_id, holder) VALUES ('messages', 'r', 'test')")
        assert check_load_allowed(conn, "messages", run_id="messages:r1", **accept) == [
            "supabase.public.messages:rls_disabled"]
        conn.rollback()
    assert overrides(world) == []
    assert rows(world.dest, "SELECT count(*) FROM migration.locks") == [(0,)]

    # On an idle connection: the override is committed at once, before the caller commits anything.
    with psycopg.connect(world.dest) as conn:
        check_load_allowed(conn, "messages", run_id="messages:r2", **accept)
        assert [r[4] for r in overrides(world)] == ["messages:r2"]
        conn.execute("INSERT INTO migration.locks (entity, run_id, holder) VALUES ('messages', 'r', 'test')")
        conn.rollback()
    assert rows(world.dest, "SELECT count(*) FROM migration.locks") == [(0,)]


# --------------------------------------------------------------------------- type rules


@pytest.mark.parametrize(("expected", "actual", "side", "kind"), [
    ("integer", "bigint", "supabase", "type_widened"),
    ("smallint", "numeric", "supabase", "type_widened"),
    ("character varying(50)", "text", "supabase", "type_widened"),
    ("character varying(50)", "character varying(80)", "legacy", "type_widened"),
    ("numeric(10,2)", "numeric(12,2)", "supabase", "type_widened"),
    ("timestamp(3) with time zone", "timestamptz", "supabase", "type_widened"),
    ("real", "double precision", "legacy", "type_widened"),
    ("real", "double precision", "supabase", "type_changed"),
    ("text", "character varying(10)", "supabase", "type_changed"),
    ("bigint", "integer", "legacy", "type_changed"),
    ("numeric(10,2)", "numeric(12,3)", "supabase", "type_changed"),
    ("timestamp without time zone", "timestamp with time zone", "legacy", "type_changed"),
    ("timestamptz", "timestamp", "supabase", "type_changed"),
    ("timestamptz", "timestamp(3) with time zone", "supabase", "type_changed"),
    ("uuid", "text", "supabase", "type_changed"),
    ("text[]", "text", "supabase", "type_changed"),
    ("jsonb", "json", "supabase", "type_changed"),
])
def test_type_change_rules(expected, actual, side, kind):
    change = classify_type_change(expected, actual, side)
    assert change is not None and change[1] == kind
    assert change[0] == (COMPATIBLE if kind == "type_widened" else BREAKING)


def test_same_type_spelled_differently_is_no_change():
    assert classify_type_change("timestamptz", "timestamp with time zone", "supabase") is None
    assert classify_type_change("int", "integer", "supabase") is None
    assert classify_type_change("varchar(20)", "character varying(20)", "legacy") is None
