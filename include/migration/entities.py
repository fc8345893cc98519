"""The migration's entities, described as data.

Each entity names its legacy source table, its destination table, its key,
how an incremental run finds changed rows, its transform SQL
(``include/sql/entities/<name>.sql``, run inside the legacy database), the
columns it writes, and its parents in the destination. Adding an entity is a
new ``Entity`` here plus its SQL file; the DAG factory, the loader, the
reconciliation and the schema gate all read from this module.

The transform is a pure function of the legacy database: every row in scope
comes out with the destination's columns and a disposition (``loaded``,
``excluded`` or ``quarantined``) with a reason, so the same SQL serves the
extract, the dry run and the reconciliation.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

# The control columns every transform query returns after the entity's columns.
CONTROL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("_disposition", "text"),
    ("_reason", "text"),
    ("_repairs", "text[]"),
    ("_maps_to", "text"),
    ("_change_ts", "timestamp"),
    ("_source", "jsonb"),
)

# Legacy tables the transform SQL may read, by placeholder name.
SOURCE_TABLES = ("users", "agents", "conversations", "messages", "media_assets")


@dataclass(frozen=True)
class ParentRef:
    """A foreign key of the destination table that the load must respect."""

    column: str
    parent: str  # entity name
    nullable: bool


@dataclass(frozen=True)
class Entity:
    name: str
    source_table: str
    target_table: str
    key: str
    key_type: str  # 'uuid' or 'bigint'
    # Destination columns, in COPY order, with their destination types.
    columns: tuple[tuple[str, str], ...]
    # Columns the stage carries beyond the destination's (e.g. the password hash).
    extra_columns: tuple[tuple[str, str], ...] = ()
    # Legacy columns the transform reads, with the types it expects (schema gate).
    source_columns: dict[str, str] = field(default_factory=dict)
    parents: tuple[ParentRef, ...] = ()
    # Incremental scope: rows whose change timestamp moved since the watermark.
    # Append-only entities also take every key above the last one loaded.
    append_only: bool = False
    # Rows per reconciliation bucket (key ranges; see reconcile.py).
    bucket_rows: int = 2000
    schema_name: str = "public"
    # The alias of the source row in the transform SQL, and the incremental
    # scope over it: {since} is the watermark minus the lookback, {last_key}
    # the highest key loaded (append-only), {retry} the quarantined keys.
    alias: str = "s"
    incremental_scope: str = "FALSE"
    # Whose fates an incremental run computes (_fates.sql): a condition per fate
    # (IN (subquery), not = ANY(ARRAY(...)): the planner then knows how many rows
    # pass, where it guesses ten for an array and nests loops over the fates)
    # ('user_fates' on u, 'conversation_fates' on c, 'agent_fates' on a) naming
    # the rows the scope needs; {scope} is the run's scope condition, and the
    # legacy tables are {src_<table>}. A fate not named here: every row's.
    fate_scope: dict[str, str] = field(default_factory=dict)
    # The columns the row reconciliation compares (default: every column).
    # Columns computed outside SQL (media: from the files) are checked by the
    # entity's own reconcile hook instead.
    reconcile_columns: tuple[str, ...] | None = None
    # A module with the entity's extra steps, called by pipeline.py around the
    # generic ones (see ``pipeline.entity_hooks``) and by load.py inside them
    # (``check_stage``, ``before_remove``, ``delete_rows``, ``image_updates``,
    # ``before_write``, ``record_ledgers``: see ``users.py``); None for plain entities.
    hooks: str | None = None
    # The table a delete of the entity's rows starts from, when not its own
    # (users: auth.users, whose delete cascades to public.users).
    delete_from: tuple[str, str] | None = None
    # False when the destination table has foreign keys its parents do not
    # describe (public.users.id -> auth.users), so the load keeps the per-row
    # foreign-key triggers instead of one set-based check of the parents.
    set_based_fk_checks: bool = True
    # Quarantine reasons decided after the transform SQL (by the hooks): rows
    # the SQL loads but the destination will not hold (validation's count).
    hook_reasons: tuple[str, ...] = ()

    def hook(self, name: str) -> Callable[..., Any] | None:
        """The function ``name`` of the entity's hooks module, or None."""
        if self.hooks is None:
            return None
        return getattr(importlib.import_module(self.hooks), name, None)

    @property
    def column_names(self) -> list[str]:
        return [c for c, _ in self.columns]

    @property
    def plain(self) -> bool:
        """Rows that are only their destination columns: no Auth accounts (users), no files
        (media). Only these may load directly (direct.py)."""
        return not self.extra_columns and self.hooks is None

    @property
    def reconcile_column_names(self) -> list[str]:
        return list(self.reconcile_columns) if self.reconcile_columns else self.column_names

    @property
    def stage_columns(self) -> tuple[tuple[str, str], ...]:
        return self.columns + self.extra_columns + CONTROL_COLUMNS

    @property
    def upstream(self) -> tuple[str, ...]:
        return tuple(p.parent for p in self.parents)


def transform_sql_text(entity: Entity) -> str:
    """The entity's transform query with the shared fates CTEs and SQL snippets inlined."""
    text = _read_sql(f"entities/{entity.name}.sql").replace(
        "{fates}", _read_sql("entities/_fates.sql").strip()
    )
    return _SNIPPET.sub(lambda m: _snippet(m[1]).replace("{arg}", m[2]), text)


# An expression more than one transform uses, written once: ``{name(arg)}`` in an entity's
# SQL becomes ``entities/_<name>.sql`` (less its leading comment) with its ``{arg}``
# replaced by ``arg`` (an alias or a column), before the query's own placeholders are filled.
_SNIPPET = re.compile(r"\{(\w+)\((\w+(?:\.\w+)?)\)\}")


def _snippet(name: str) -> str:
    lines = _read_sql(f"entities/_{name}.sql").strip().splitlines()
    return "\n".join(line for line in lines if not line.startswith("--"))


@cache
def _read_sql(relative: str) -> str:
    return (SQL_DIR / relative).read_text()


def _changed_since(alias: str, *columns: str) -> str:
    """A legacy row's own timestamps moved since the watermark: the same test as its
    ``change_ts >= {since}`` in _fates.sql (a timestamp more than a day ahead never
    counts), read from the row alone, so finding what changed needs no fate."""
    return "(" + " OR ".join(f"{alias}.{c} BETWEEN {{since}} AND (SELECT latest FROM clock)"
                             for c in columns) + ")"


_USER_TS = ("created_at", "updated_at", "deleted_at")
_CHANGED_USERS = f"SELECT cu.id FROM {{src_users}} cu WHERE {_changed_since('cu', *_USER_TS)}"
# conversation_fate.change_ts >= {since}, from the rows themselves: the conversation's or its
# user's timestamps (the user's conversations through their index).
_CHANGED_CONVERSATIONS = (
    f"SELECT cc.id FROM {{src_conversations}} cc WHERE {_changed_since('cc', *_USER_TS)} "
    f"UNION ALL SELECT cc.id FROM {{src_conversations}} cc WHERE cc.user_id IN ({_CHANGED_USERS})")
_MESSAGE_CONVERSATIONS = (
    "SELECT nm.conversation_id FROM {src_messages} nm WHERE nm.id > {last_key} OR nm.id = ANY({retry}) "
    f"UNION ALL {_CHANGED_CONVERSATIONS}")


def _email_groups_of(ids: str) -> str:
    """Users sharing an email with any of ``ids``: whole groups, so a survivor is the same
    as among every user."""
    return (f"lower(btrim(u.email)) IN (SELECT lower(btrim(n.email)) FROM {{src_users}} n "
            f"WHERE n.id IN ({ids}))")


# The entities below are data: one description each, alike in shape by design
# (what differs between entities is the values and their SQL, not logic).
USERS = Entity(
    name="users",
    source_table="users",
    target_table="users",
    key="id",
    key_type="uuid",
    columns=(
        ("id", "uuid"),
        ("email", "text"),
        ("name", "text"),
        ("avatar_url", "text"),
        ("created_at", "timestamptz"),
        ("updated_at", "timestamptz"),
    ),
    extra_columns=(("password_hash", "text"),),
    hooks="include.migration.users",
    delete_from=("auth", "users"),
    set_based_fk_checks=False,
    alias="f",
    # A changed user also re-decides every account sharing its email.
    incremental_scope=(
        "f.change_ts >= {since} OR f.id = ANY({retry}) OR f.email_norm IN "
        "(SELECT email_norm FROM user_base WHERE change_ts >= {since})"
    ),
    fate_scope={"user_fates": (
        "lower(btrim(u.email)) IN (SELECT lower(btrim(n.email)) FROM {src_users} n WHERE "
        + _changed_since("n", *_USER_TS) + " OR n.id = ANY({retry}))")},
    source_columns={
        "id": "uuid",
        "email": "text",
        "display_name": "text",
        "avatar_url": "text",
        "password_hash": "text",
        "created_at": "timestamp without time zone",
        "updated_at": "timestamp without time zone",
        "deleted_at": "timestamp without time zone",
    },
)

AGENTS = Entity(
    name="agents",
    source_table="agents",
    target_table="agents",
    key="id",
    key_type="uuid",
    columns=(
        ("id", "uuid"),
        ("owner_id", "uuid"),
        ("name", "text"),
        ("description", "text"),
        ("system_prompt", "text"),
        ("model", "text"),
        ("temperature", "real"),
        ("tools", "jsonb"),
        ("is_public", "boolean"),
        ("created_at", "timestamptz"),
        ("updated_at", "timestamptz"),
    ),
    source_columns={
        "id": "uuid",
        "owner_id": "uuid",
        "name": "text",
        "description": "text",
        "system_prompt": "text",
        "model": "text",
        "temperature": "double precision",
        "tools": "text",
        "is_public": "boolean",
        "created_at": "timestamp without time zone",
        "updated_at": "timestamp without time zone",
    },
    parents=(ParentRef("owner_id", "users", nullable=True),),
    alias="a",
    # af.change_ts >= {since}, from the rows themselves: the agent's or its owner's timestamps.
    incremental_scope=(
        "a.id = ANY({retry}) OR " + _changed_since("a", "created_at", "updated_at")
        + f" OR a.owner_id IN ({_CHANGED_USERS})"
    ),
    fate_scope={
        "agent_fates": "{scope}",
        "user_fates": _email_groups_of("SELECT a.owner_id FROM {src_agents} a WHERE {scope}"),
    },
)

CONVERSATIONS = Entity(
    name="conversations",
    source_table="conversations",
    target_table="conversations",
    key="id",
    key_type="uuid",
    columns=(
        ("id", "uuid"),
        ("user_id", "uuid"),
        ("agent_id", "uuid"),
        ("title", "text"),
        ("created_at", "timestamptz"),
        ("updated_at", "timestamptz"),
    ),
    source_columns={
        "id": "uuid",
        "user_id": "uuid",
        "agent_id": "uuid",
        "title": "text",
        "created_at": "timestamp without time zone",
        "updated_at": "timestamp without time zone",
        "deleted_at": "timestamp without time zone",
    },
    parents=(
        ParentRef("user_id", "users", nullable=False),
        ParentRef("agent_id", "agents", nullable=True),
    ),
    alias="c",
    # cf.change_ts >= {since} OR af.change_ts >= {since}, from the rows themselves: the
    # conversation's, its user's, its agent's or its agent's owner's timestamps.
    incremental_scope=(
        "c.id = ANY({retry}) OR " + _changed_since("c", *_USER_TS)
        + f" OR c.user_id IN ({_CHANGED_USERS}) OR c.agent_id IN (SELECT ca.id FROM {{src_agents}} ca WHERE "
        + _changed_since("ca", "created_at", "updated_at") + f" OR ca.owner_id IN ({_CHANGED_USERS}))"
    ),
    fate_scope={
        "conversation_fates": "{scope}",
        "agent_fates": "a.id IN (SELECT c.agent_id FROM {src_conversations} c WHERE {scope})",
        # the conversations' users and their agents' owners
        "user_fates": _email_groups_of(
            "SELECT c.user_id FROM {src_conversations} c WHERE {scope} UNION ALL "
            "SELECT na.owner_id FROM {src_agents} na WHERE na.id IN ("
            "SELECT c.agent_id FROM {src_conversations} c WHERE {scope})"),
    },
)

MESSAGES = Entity(
    name="messages",
    source_table="messages",
    target_table="messages",
    key="id",
    key_type="bigint",
    columns=(
        ("id", "bigint"),
        ("conversation_id", "uuid"),
        ("role", "text"),
        ("content", "text"),
        ("token_count", "integer"),
        ("model", "text"),
        ("metadata", "jsonb"),
        ("created_at", "timestamptz"),
    ),
    source_columns={
        "id": "bigint",
        "conversation_id": "uuid",
        "role": "text",
        "content": "text",
        "token_count": "integer",
        "model": "text",
        "metadata": "text",
        "created_at": "timestamp without time zone",
    },
    parents=(ParentRef("conversation_id", "conversations", nullable=False),),
    append_only=True,
    bucket_rows=5000,
    alias="m",
    # New messages by id (append-only); old ones again when their conversation changed.
    # Each branch can use an index (= ANY(ARRAY(...)) is one; IN (subquery) is a
    # hashed filter over a scan of the whole table), so the planner can combine them.
    incremental_scope=(
        f"m.id > {{last_key}} OR m.id = ANY({{retry}}) "
        f"OR m.conversation_id = ANY(ARRAY({_CHANGED_CONVERSATIONS}))"
    ),
    # The conversations of the messages in scope (the new and retried messages' and the changed
    # ones: found without reading the changed conversations' messages again), and their users.
    fate_scope={
        "conversation_fates": f"c.id IN ({_MESSAGE_CONVERSATIONS})",
        "user_fates": f"u.id IN (SELECT c.user_id FROM {{src_conversations}} c "
                      f"WHERE c.id IN ({_MESSAGE_CONVERSATIONS}))",
    },
)

MEDIA = Entity(
    name="media",
    source_table="media_assets",
    target_table="media",
    key="id",
    key_type="uuid",
    columns=(
        ("id", "uuid"),
        ("owner_id", "uuid"),
        ("conversation_id", "uuid"),
        ("message_id", "bigint"),
        ("bucket", "text"),
        ("object_path", "text"),
        ("file_name", "text"),
        ("mime_type", "text"),
        ("size_bytes", "bigint"),
        ("sha256", "text"),
        ("created_at", "timestamptz"),
    ),
    # Where the file is under the legacy media root.
    extra_columns=(("storage_key", "text"),),
    source_columns={
        "id": "uuid",
        "owner_id": "uuid",
        "conversation_id": "uuid",
        "message_id": "bigint",
        "file_name": "text",
        "mime_type": "text",
        "size_bytes": "bigint",
        "storage_key": "text",
        "sha256": "text",
        "created_at": "timestamp without time zone",
    },
    parents=(
        ParentRef("owner_id", "users", nullable=False),
        ParentRef("conversation_id", "conversations", nullable=True),
        ParentRef("message_id", "messages", nullable=True),
    ),
    alias="ma",
    # A changed owner (or any account sharing its email: the merge may pick
    # another survivor), conversation or message re-decides the file's row.
    incremental_scope=(
        "greatest(ma.created_at, uf.change_ts, cf.change_ts, mcf.change_ts) >= {since} "
        "OR ma.id = ANY({retry}) OR uf.email_norm IN "
        "(SELECT email_norm FROM user_base WHERE change_ts >= {since})"
    ),
    # bucket, object_path, mime_type, size_bytes and sha256 come from the files
    # (include/migration/media/hooks.py); its reconcile hook checks them against Storage.
    reconcile_columns=("id", "owner_id", "conversation_id", "message_id", "file_name", "created_at"),
    hooks="include.migration.media.hooks",
    hook_reasons=(
        "file_missing", "file_path_invalid", "file_unreadable", "sha256_mismatch", "size_mismatch",
        "file_too_large", "mime_type_not_allowed", "object_path_invalid", "storage_conflict", "upload_failed",
    ),
)

ENTITIES: dict[str, Entity] = {e.name: e for e in (USERS, AGENTS, CONVERSATIONS, MESSAGES, MEDIA)}

# The order a full backfill runs in: parents before children.
ORDER: tuple[str, ...] = ("users", "agents", "conversations", "messages", "media")


def get(name: str) -> Entity:
    try:
        return ENTITIES[name]
    except KeyError:
        raise ValueError(f"unknown entity {name!r}; known: {', '.join(ENTITIES)}") from None
