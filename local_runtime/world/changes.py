"""Between runs: "the app kept running" on an existing legacy world (``apply_changes``).

This module owns the changes an incremental sync must pick up: updates,
inserts (messages above the current maximum id, media with their files),
soft deletes and hard deletes, on loadable rows only, recorded per kind in a
:class:`~local_runtime.world.report.ChangeReport`.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from local_runtime.world.layout import naive_utc
from local_runtime.world.media import Media, copy_media, write_files
from local_runtime.world.queries import _fetch_column, _keys, _query, uid
from local_runtime.world.report import TABLES, ChangeReport
from local_runtime.world.vocabulary import _hash_pool, _vocabulary

# --------------------------------------------------------------------------
# apply_changes


def apply_changes(
    dsn: str, *, seed: int = 7, fraction: float = 0.01, media_root: str | Path | None = None,
    now: datetime | None = None,
) -> ChangeReport:
    """Play "the app kept running" on an existing legacy world.

    Updates ``fraction`` of the users, agents and conversations (new name or
    title, updated_at = now), inserts ``fraction`` more of every table
    (messages get ids above the current maximum; media only with
    ``media_root``, where their files are written), soft-deletes a few users
    and conversations (deleted_at = updated_at = now) and hard-deletes a few
    agents and conversations (a conversation with its messages, as the app
    does). Only loadable, non-duplicate rows are touched, and the login-test
    accounts never are, so the planted defects keep their meaning.
    Deterministic given the seed, the world it starts from and ``now``
    (default: the database server's clock); the changes happen at ``now``, or
    just after the newest row if that is later.
    """
    with psycopg.connect(dsn) as conn:
        conn.execute(_query("functions"))
        at = naive_utc(now) if now is not None else None
        changes = _Changes(conn, seed, fraction, Path(media_root).resolve() if media_root else None, at)
        changes.run()
        conn.commit()
    return ChangeReport(
        seed=seed,
        fraction=fraction,
        changed_at=changes.at.isoformat(sep=" "),
        changes={k: _keys(v) for k, v in sorted(changes.changes.items())},
    )


class _Changes:
    """One round of application activity, applied in the caller's transaction."""

    def __init__(self, conn: psycopg.Connection, seed: int, fraction: float, media_root: Path | None,
                 now: datetime | None) -> None:
        self.conn = conn
        self.seed = seed
        self.fraction = fraction
        self.media_root = media_root
        row = conn.execute(_query("change_clock"), {"now": now}).fetchone()
        assert row is not None
        self.at: datetime = row[0]
        self.max_message_id: int = row[1]
        self.counts = dict(zip(TABLES, row[2:], strict=True))
        # The world's current state salts every pick, so two rounds differ.
        self.salt = f"{seed}:{self.max_message_id}:{self.counts['users']}"
        self.rng = random.Random(f"changes:{self.salt}")
        self.changes: dict[str, list[Any]] = {}
        self.params = {**_vocabulary(), "seed": seed, "at": self.at, "hash_pool": list(_hash_pool(seed, 8))}

    def share(self, table: str) -> int:
        return max(1, round(self.counts[table] * self.fraction))

    def few(self, table: str) -> int:
        return max(2, round(self.counts[table] * self.fraction / 20))

    def run(self) -> None:
        users = _fetch_column(
            self.conn,
            _query("change_user_pool"),
            {"salt": self.salt, "limit": self.share("users") + self.few("users") + 500},
        )
        updated_users = users[: self.share("users")]
        soft_users = users[self.share("users") : self.share("users") + self.few("users")]
        updated_agents, hard_agents, live_agents = self._pick_agents()
        updated_conversations, soft_conversations, hard_conversations = self._pick_conversations()

        self._record("users.updated", self._update("users", updated_users))
        self._record("agents.updated", self._update("agents", updated_agents))
        self._record("conversations.updated", self._update("conversations", updated_conversations))
        owners = [u for u in users if u not in set(soft_users)] + self._insert("users", {})
        new_agents = self._insert("agents", {"owners": owners})
        new_conversations = self._insert(
            "conversations", {"owners": owners, "agents": live_agents + new_agents}
        )
        self._insert_messages(new_conversations, updated_conversations)
        if self.media_root is not None:
            self._insert_media()
        self._soft_delete("users", soft_users)
        self._soft_delete("conversations", soft_conversations)
        self._hard_delete(hard_agents, hard_conversations)

    def _record(self, kind: str, keys: Iterable[Any]) -> list[Any]:
        self.changes[kind] = list(keys)
        return self.changes[kind]

    def _pick_agents(self) -> tuple[list[uuid.UUID], list[uuid.UUID], list[uuid.UUID]]:
        """Agents to update, to hard-delete, and those still there afterwards."""
        rows = self.conn.execute(_query("change_agent_pool"), {"salt": self.salt}).fetchall()
        updated = [r[0] for r in rows[: self.share("agents")]]
        owned = [r for r in rows[self.share("agents") :] if not r[1]]
        # The least referenced go, so few conversations are left with a dangling agent_id.
        hard = [r[0] for r in sorted(owned, key=lambda r: r[2])[: self.few("agents")]]
        return updated, hard, [r[0] for r in rows if r[0] not in set(hard)]

    def _pick_conversations(self) -> tuple[list[uuid.UUID], list[uuid.UUID], list[uuid.UUID]]:
        """Conversations to update, to soft-delete and to hard-delete."""
        n_update, n_few = self.share("conversations"), self.few("conversations")
        rows = self.conn.execute(
            _query("change_conversation_pool"), {"salt": self.salt, "limit": n_update + 40 * n_few}
        ).fetchall()
        clean = [r for r in rows[n_update:] if r[1]]
        soft = [r[0] for r in clean[:n_few]]
        hard = [r[0] for r in clean[n_few:] if not r[2]][:n_few]
        return [r[0] for r in rows[:n_update]], soft, hard

    def _update(self, table: str, ids: list[uuid.UUID]) -> list[uuid.UUID]:
        return _fetch_column(self.conn, _query(f"change_update_{table}"), {**self.params, "ids": ids})

    def _insert(self, table: str, params: dict[str, Any]) -> list[uuid.UUID]:
        params = {
            **self.params,
            **params,
            "kind": f"{table}@{self.salt}",
            "n": self.share(table),
            "tag": f"c{self.seed}x{self.max_message_id}",
        }
        return self._record(
            f"{table}.inserted", _fetch_column(self.conn, _query(f"change_insert_{table}"), params)
        )

    def _insert_messages(self, new_conversations: list[uuid.UUID], updated: list[uuid.UUID]) -> None:
        total = self.share("messages")
        # Each new conversation opens with a question and an answer; the rest
        # continue conversations that were just updated, in turns.
        threads = [c for c in new_conversations for _ in range(2)][:total]
        remaining = total - len(threads)
        targets = updated or new_conversations
        threads += [targets[i % len(targets)] for i in range(remaining)]
        turn: dict[uuid.UUID, int] = {}
        roles = []
        for c in threads:
            roles.append("user" if turn.get(c, 0) % 2 == 0 else "assistant")
            turn[c] = turn.get(c, 0) + 1
        params = {**self.params, "max_id": self.max_message_id, "conversations": threads, "roles": roles}
        ids = self._record(
            "messages.inserted", _fetch_column(self.conn, _query("change_insert_messages"), params)
        )
        self.conn.execute(
            "SELECT setval(pg_get_serial_sequence('messages', 'id'), %s)", [max([self.max_message_id, *ids])]
        )

    def _insert_media(self) -> None:
        assert self.media_root is not None
        rows = self.conn.execute(
            "SELECT m.id, m.conversation_id, c.user_id FROM messages AS m"
            " JOIN conversations AS c ON c.id = m.conversation_id"
            " WHERE m.id = ANY(%s) AND m.role = 'user' ORDER BY m.id",
            [self.changes["messages.inserted"]],
        ).fetchall()
        count = min(len(rows), self.share("media_assets"))
        media = [
            Media(
                id=uid(self.seed, f"media@{self.salt}", j),
                owner_id=owner,
                conversation_id=conv,
                message_id=msg,
                created_at=self.at,
                active=True,
                attach="message",
            )
            for j, (msg, conv, owner) in enumerate(rows[:count])
        ]
        for m in media:
            m.draw_file(self.rng)
            m.sha256 = hashlib.sha256(m.content).hexdigest()
        write_files({self.media_root / m.storage_key: m.content for m in media})
        copy_media(self.conn, media)
        self._record("media.inserted", [m.id for m in media])

    def _soft_delete(self, table: str, ids: list[uuid.UUID]) -> None:
        query = sql.SQL(
            "UPDATE {} SET deleted_at = %s, updated_at = %s WHERE id = ANY(%s) RETURNING id"
        ).format(sql.Identifier(table))
        self._record(f"{table}.soft_deleted", _fetch_column(self.conn, query, [self.at, self.at, ids]))

    def _hard_delete(self, agents: list[uuid.UUID], conversations: list[uuid.UUID]) -> None:
        # No foreign keys: conversations keep pointing at a deleted agent, as
        # in production; they are reported so a test can follow them.
        self._record(
            "conversations.dangling_agent",
            _fetch_column(self.conn, "SELECT id FROM conversations WHERE agent_id = ANY(%s)", [agents]),
        )
        self._record(
            "agents.hard_deleted",
            _fetch_column(self.conn, "DELETE FROM agents WHERE id = ANY(%s) RETURNING id", [agents]),
        )
        self._record(
            "messages.hard_deleted",
            _fetch_column(
                self.conn,
                "DELETE FROM messages WHERE conversation_id = ANY(%s) RETURNING id",
                [conversations],
            ),
        )
        self._record(
            "conversations.hard_deleted",
            _fetch_column(
                self.conn, "DELETE FROM conversations WHERE id = ANY(%s) RETURNING id", [conversations]
            ),
        )
