# ruff: noqa: E501
# (one case per line, however long it gets)
"""Hostile legacy rows, kept as data: one case per line.

Each case puts one row into a small legacy world (``BASE``: one valid user,
agent and conversation, referred to as %(user)s, %(agent)s, %(conversation)s)
and says what must come out of the pipeline for it:

    Case(name, entity, key, insert, outcome, detail, check)

``insert``  SQL run in the legacy database, or ``build:<name>:<arg>`` for a row
            too big to write inline (see ``BUILDERS``).
``outcome`` ``loaded`` (``detail``: the repair recorded, or ''), ``quarantined``
            or ``excluded`` (``detail``: the reason / rule in the ledger).
``check``   optional SQL on the destination, true when the loaded value is right.

Every case must end in exactly one place (the destination table, the
quarantine or the exclusions), with every task of every entity succeeding,
Great Expectations validation included. Rules decided here, not by the
legacy application, are marked (rule) in the README's transform rules.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import NamedTuple

import psycopg

U = "10000000-0000-4000-8000-{:012d}".format
A = "20000000-0000-4000-8000-{:012d}".format
C = "30000000-0000-4000-8000-{:012d}".format

IDS = {"user": U(1), "agent": A(1), "conversation": C(1)}

BASE = (
    "INSERT INTO users (id, email, display_name, password_hash, created_at, updated_at) VALUES (%(user)s, "
    "'base@example.com', 'Base', '$2b$04$abcdefghijklmnopqrstuu5V1b7VxXw5lSx3Zr1o6nH9b7tL2s6yW', '2024-01-01', "
    "'2024-01-02')",
    "INSERT INTO agents (id, owner_id, name, system_prompt, model, temperature, tools, is_public, created_at) "
    "VALUES (%(agent)s, %(user)s, 'Base agent', 'Be kind', 'gpt', 0.5, '[]', true, '2024-01-01')",
    "INSERT INTO conversations (id, user_id, agent_id, title, created_at) "
    "VALUES (%(conversation)s, %(user)s, %(agent)s, 'Base', '2024-01-02')",
    "INSERT INTO messages (id, conversation_id, role, content, created_at) "
    "VALUES (1, %(conversation)s, 'user', 'base', '2024-01-02 00:00:01')",
)

FIFTY_MB = 50 * 1024 * 1024
RTL_NAME = "\u202eevil\u202c 👩\u200d💻 مرحبا שלום"
RTL_TITLE = "مرحبا 👋 \u200f(שלום)"
RTL_CONTENT = "e\u0301 👨\u200d👩\u200d👧\u200d👦 🏳️\u200d🌈 مرحبا بالعالم \u202bשלום\u202c 1/2 \U0001f9d1\U0001f3ff"


class Case(NamedTuple):
    name: str
    entity: str
    key: str
    insert: str
    outcome: str
    detail: str = ""
    check: str | None = None


_MSG = "INSERT INTO messages (id, conversation_id, role, content, metadata, created_at) VALUES "
_USER = "INSERT INTO users (id, email, display_name, created_at, updated_at) VALUES "
_AGENT = "INSERT INTO agents (id, owner_id, name, system_prompt, model, tools, is_public, created_at, updated_at) VALUES "
_AGENT_T = "INSERT INTO agents (id, owner_id, name, system_prompt, model, temperature, tools, is_public, created_at, updated_at) VALUES "
_CONV = "INSERT INTO conversations (id, user_id, title, created_at, updated_at) VALUES "

# fmt: off
CASES: tuple[Case, ...] = (
    Case("json_10k_deep_metadata", "messages", "101", "build:deep_metadata:10000", "loaded", "metadata_kept_as_legacy_raw", "SELECT metadata->>'legacy_raw' = '{\"a\": ' || repeat('[', 9999) || repeat(']', 9999) || '}' FROM public.messages WHERE id = 101"),
    Case("json_100k_deep_metadata", "messages", "102", "build:deep_metadata:100000", "loaded", "metadata_kept_as_legacy_raw", "SELECT metadata->>'legacy_raw' = '{\"a\": ' || repeat('[', 99999) || repeat(']', 99999) || '}' FROM public.messages WHERE id = 102"),
    Case("json_10k_deep_tools", "agents", A(2), "build:deep_tools:10000", "quarantined", "tools_malformed"),
    Case("json_shallow_with_brackets_in_strings", "messages", "103", _MSG + "(103, %(conversation)s, 'user', 'x', '{\"t\": \"' || repeat('[', 500) || '\"}', '2024-01-02')", "loaded", "", "SELECT metadata->>'t' = repeat('[', 500) FROM public.messages WHERE id = 103"),
    Case("json_nul_escape_metadata", "messages", "104", _MSG + "(104, %(conversation)s, 'user', 'x', '{\"a\":\"\\u0000\"}', '2024-01-02')", "loaded", "metadata_kept_as_legacy_raw", "SELECT metadata->>'legacy_raw' = '{\"a\":\"\\u0000\"}' FROM public.messages WHERE id = 104"),
    Case("json_nul_escape_tools", "agents", A(3), _AGENT + "('" + A(3) + "', %(user)s, 'n', 'p', 'gpt', '[{\"a\":\"\\u0000\"}]', true, '2024-01-01', NULL)", "quarantined", "tools_malformed"),
    Case("content_50_mb", "messages", "105", "build:big_content:105", "loaded", "", f"SELECT octet_length(content) = {FIFTY_MB} AND md5(content) = '{hashlib.md5(b'0123456789abcdef' * (FIFTY_MB // 16)).hexdigest()}' FROM public.messages WHERE id = 105"),
    Case("user_created_year_0001", "users", U(2), _USER + "('" + U(2) + "', 'y0001@example.com', 'Y', '0001-01-01', NULL)", "quarantined", "implausible_timestamp"),
    Case("user_created_year_9999", "users", U(3), _USER + "('" + U(3) + "', 'y9999@example.com', 'Y', '9999-12-31 23:59:59', NULL)", "quarantined", "implausible_timestamp"),
    Case("user_updated_year_9999", "users", U(4), _USER + "('" + U(4) + "', 'u9999@example.com', 'Y', '2024-01-01', '9999-01-01')", "quarantined", "implausible_timestamp"),
    Case("agent_updated_year_9999", "agents", A(4), _AGENT + "('" + A(4) + "', %(user)s, 'n', 'p', 'gpt', '[]', true, '2024-01-01', '9999-01-01')", "quarantined", "implausible_timestamp"),
    Case("conversation_created_year_9999", "conversations", C(2), _CONV + "('" + C(2) + "', %(user)s, 't', '9999-12-31', NULL)", "quarantined", "implausible_timestamp"),
    Case("message_created_year_0001", "messages", "106", _MSG + "(106, %(conversation)s, 'user', 'x', NULL, '0001-01-01')", "quarantined", "implausible_timestamp"),
    Case("message_created_year_9999", "messages", "107", _MSG + "(107, %(conversation)s, 'user', 'x', NULL, '9999-12-31 23:59:59')", "quarantined", "implausible_timestamp"),
    Case("email_apostrophe", "users", U(5), _USER + "('" + U(5) + "', 'o''brien@example.com', 'O''Brien', '2024-01-01', '2024-01-01')", "loaded", "", "SELECT (SELECT email FROM public.users WHERE id = '" + U(5) + "') = 'o''brien@example.com' AND (SELECT email FROM auth.users WHERE id = '" + U(5) + "') = 'o''brien@example.com'"),
    Case("email_sql_injection", "users", U(6), _USER + "('" + U(6) + "', 'x\";drop table users;--@example.com', 'X', '2024-01-01', NULL)", "quarantined", "invalid_email", "SELECT to_regclass('public.users') IS NOT NULL"),
    Case("email_sql_metacharacters", "users", U(7), _USER + "('" + U(7) + "', 'x\";drop_table_users;--@example.com', 'X', '2024-01-01', '2024-01-01')", "loaded", "", "SELECT email = 'x\";drop_table_users;--@example.com' FROM public.users WHERE id = '" + U(7) + "'"),
    Case("twins_same_timestamps_survivor", "users", U(8), _USER + "('" + U(8) + "', ' Twin@Example.COM', 'Twin A', '2024-03-01 10:00', '2024-03-02 10:00')", "loaded", "", "SELECT email = 'twin@example.com' FROM public.users WHERE id = '" + U(8) + "'"),
    Case("twins_same_timestamps_loser", "users", U(9), _USER + "('" + U(9) + "', 'twin@example.com', 'Twin B', '2024-03-01 10:00', '2024-03-02 10:00')", "excluded", "merged_duplicate", "SELECT survivor_id = '" + U(8) + "' FROM migration.user_id_map WHERE loser_id = '" + U(9) + "'"),
    Case("twins_loser_conversation", "conversations", C(3), _CONV + "('" + C(3) + "', '" + U(9) + "', 'of the loser', '2024-03-03', NULL)", "loaded", "user_repointed_to_survivor", "SELECT user_id = '" + U(8) + "' FROM public.conversations WHERE id = '" + C(3) + "'"),
    Case("email_300_chars", "users", U(10), _USER + "('" + U(10) + "', repeat('a', 288) || '@example.com', 'L', '2024-01-01', NULL)", "quarantined", "invalid_email"),
    Case("emoji_rtl_name", "users", U(11), _USER + "('" + U(11) + "', 'rtl@example.com', %(rtl_name)s, '2024-01-01', '2024-01-01')", "loaded", "", "SELECT name = %(rtl_name)s FROM public.users WHERE id = '" + U(11) + "'"),
    Case("emoji_rtl_title", "conversations", C(4), _CONV + "('" + C(4) + "', %(user)s, %(rtl_title)s, '2024-01-02', NULL)", "loaded", "", "SELECT title = %(rtl_title)s FROM public.conversations WHERE id = '" + C(4) + "'"),
    Case("agent_temperature_nan", "agents", A(5), _AGENT_T + "('" + A(5) + "', %(user)s, 'n', 'p', 'gpt', 'NaN', '[]', true, '2024-01-01', '2024-01-01')", "loaded", "temperature_invalid_set_null", "SELECT temperature IS NULL FROM public.agents WHERE id = '" + A(5) + "'"),
    Case("agent_temperature_minus_infinity", "agents", A(6), _AGENT_T + "('" + A(6) + "', %(user)s, 'n', 'p', 'gpt', '-Infinity', '[]', true, '2024-01-01', '2024-01-01')", "loaded", "temperature_invalid_set_null", "SELECT temperature IS NULL FROM public.agents WHERE id = '" + A(6) + "'"),
    Case("agent_temperature_above_2", "agents", A(7), _AGENT_T + "('" + A(7) + "', %(user)s, 'n', 'p', 'gpt', 2.5, '[]', true, '2024-01-01', '2024-01-01')", "loaded", "temperature_invalid_set_null", "SELECT temperature IS NULL FROM public.agents WHERE id = '" + A(7) + "'"),
    Case("agent_temperature_beyond_real", "agents", A(8), _AGENT_T + "('" + A(8) + "', %(user)s, 'n', 'p', 'gpt', 1e300, '[]', true, '2024-01-01', '2024-01-01')", "loaded", "temperature_invalid_set_null", "SELECT temperature IS NULL FROM public.agents WHERE id = '" + A(8) + "'"),
    Case("agent_temperature_below_real", "agents", A(9), _AGENT_T + "('" + A(9) + "', %(user)s, 'n', 'p', 'gpt', 1e-300, '[]', true, '2024-01-01', '2024-01-01')", "loaded", "temperature_invalid_set_null", "SELECT temperature IS NULL FROM public.agents WHERE id = '" + A(9) + "'"),
    Case("agent_temperature_negative", "agents", A(10), _AGENT_T + "('" + A(10) + "', %(user)s, 'n', 'p', 'gpt', -0.1, '[]', true, '2024-01-01', '2024-01-01')", "loaded", "temperature_invalid_set_null", "SELECT temperature IS NULL FROM public.agents WHERE id = '" + A(10) + "'"),
    Case("agent_temperature_2_is_fine", "agents", A(11), _AGENT_T + "('" + A(11) + "', %(user)s, 'n', 'p', 'gpt', 2, '[]', true, '2024-01-01', '2024-01-01')", "loaded", "", "SELECT temperature = 2 FROM public.agents WHERE id = '" + A(11) + "'"),
    Case("message_negative_token_count", "messages", "109", "INSERT INTO messages (id, conversation_id, role, content, token_count, created_at) VALUES (109, %(conversation)s, 'assistant', 'x', -7, '2024-01-02')", "loaded", "token_count_negative_set_null", "SELECT token_count IS NULL FROM public.messages WHERE id = 109"),
    Case("emoji_rtl_content", "messages", "108", _MSG + "(108, %(conversation)s, 'assistant', %(rtl_content)s, NULL, '2024-01-02')", "loaded", "", "SELECT content = %(rtl_content)s FROM public.messages WHERE id = 108"),
)
# fmt: on

PARAMS = {**IDS, "rtl_name": RTL_NAME, "rtl_title": RTL_TITLE, "rtl_content": RTL_CONTENT}


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def _deep_metadata(conn: psycopg.Connection, case: Case, arg: str) -> None:
    conn.execute("INSERT INTO messages (id, conversation_id, role, content, metadata, created_at) "
                 "VALUES (%s, %s, 'user', 'deep', %s, '2024-01-02')",
                 (int(case.key), IDS["conversation"], '{"a": ' + _deep(int(arg) - 1) + "}"))


def _deep_tools(conn: psycopg.Connection, case: Case, arg: str) -> None:
    conn.execute("INSERT INTO agents (id, owner_id, name, system_prompt, model, tools, is_public, created_at) "
                 "VALUES (%s, %s, 'deep', 'p', 'gpt', %s, true, '2024-01-01')",
                 (case.key, IDS["user"], _deep(int(arg))))


def _big_content(conn: psycopg.Connection, case: Case, arg: str) -> None:
    conn.execute("INSERT INTO messages (id, conversation_id, role, content, created_at) "
                 "VALUES (%s, %s, 'user', repeat('0123456789abcdef', %s), '2024-01-02')",
                 (int(case.key), IDS["conversation"], FIFTY_MB // 16))


BUILDERS: dict[str, Callable[[psycopg.Connection, Case, str], None]] = {
    "deep_metadata": _deep_metadata,
    "deep_tools": _deep_tools,
    "big_content": _big_content,
}


def plant_base(conn: psycopg.Connection) -> None:
    for statement in BASE:
        conn.execute(statement, IDS)


def plant(conn: psycopg.Connection, case: Case) -> None:
    """Put the case's row into the legacy database."""
    if case.insert.startswith("build:"):
        _, name, arg = case.insert.split(":", 2)
        BUILDERS[name](conn, case, arg)
    else:
        conn.execute(case.insert, PARAMS)
