"""Seeding: the legacy tables built in bulk, then the hostile rows planted and recorded.

This module owns ``seed``: the schema, the bulk rows of every entity
(``INSERT ... SELECT FROM generate_series`` in world/sql), then the defects
planted per entity (messages, users, conversations; media in
:mod:`local_runtime.world.media`) and the kinds derived from the data, each
recorded by key in the :class:`~local_runtime.world.report.WorldReport`.
"""

from __future__ import annotations

import random
import shutil
import uuid
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from local_runtime.world.layout import (
    KNOWN_PASSWORD_DOMAIN,
    LONG_CONTENT_CHARS,
    NEVER_EXISTED,
    SCALES,
    Layout,
    horizon,
    time_params,
)
from local_runtime.world.media import MediaBuilder
from local_runtime.world.queries import (
    LEGACY_SCHEMA,
    MEDIA_MARKER,
    _fetch_column,
    _ids,
    _keys,
    _named_queries,
    _query,
    _set_column,
    _sql,
    _sql_text,
    uid,
)
from local_runtime.world.report import TABLES, WorldReport
from local_runtime.world.vocabulary import (
    BAD_METADATA,
    SNIPPETS,
    UNKNOWN_ROLES,
    _bcrypt_hash,
    _corpus,
    _hash_pool,
    _vocabulary,
)

# --------------------------------------------------------------------------
# seed


def seed(dsn: str, *, scale: str = "small", seed: int = 42, media_root: str | Path,
         now: datetime | None = None) -> WorldReport:
    """Drop and rebuild the legacy tables, write the media files, report.

    ``media_root`` is emptied first (it must be empty, missing, or a media root
    this module wrote). The report is also written, as JSON, to
    ``<media_root>/../world-report.json``. Every timestamp is before midnight
    (UTC) of ``now``'s day (default: the machine's clock), so a validation
    that refuses future timestamps passes whatever the date; the same seed,
    scale and day give the same world.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {sorted(SCALES)}")
    layout = Layout.for_sizes(SCALES[scale])
    root = _prepare_media_root(Path(media_root))
    builder = WorldBuilder(layout, seed, root, horizon(now))
    with psycopg.connect(dsn) as conn:
        builder.build(conn)
        counts = {
            t: _fetch_column(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t)))[0]
            for t in TABLES
        }
        conn.commit()
    report = WorldReport(
        scale=scale,
        seed=seed,
        counts=counts,
        planted={k: builder.planted[k] for k in sorted(builder.planted)},
        known_passwords=builder.known_passwords,
        media_root=str(root),
        duplicate_of=builder.duplicate_of,
        horizon=builder.horizon.isoformat(sep=" "),
    )
    (root.parent / "world-report.json").write_text(report.to_json(), encoding="utf-8")
    return report


def _prepare_media_root(root: Path) -> Path:
    root = root.resolve()
    if root.exists() and any(root.iterdir()) and not (root / MEDIA_MARKER).exists():
        # Refuse to wipe a folder this module did not write.
        raise ValueError(f"{root} is not empty and is not a legacy media root; refusing to clear it")
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / MEDIA_MARKER).write_text("written by local_runtime.world\n", encoding="utf-8")
    return root


class WorldBuilder:
    """One seeding run: generates the rows, plants defects, records their keys."""

    def __init__(self, layout: Layout, seed: int, media_root: Path, end: datetime) -> None:
        self.layout = layout
        self.seed = seed
        self.media_root = media_root
        self.horizon = end
        self.rng = random.Random(f"legacy-world:{seed}")
        self.planted: dict[str, list[str]] = {}
        self.known_passwords: dict[str, str] = {}
        self.duplicate_of: dict[str, str] = {}
        self.vocab = _vocabulary()

    def plant(self, kind: str, keys: Iterable[Any]) -> None:
        self.planted[kind] = _keys(keys)

    def build(self, conn: psycopg.Connection) -> None:
        conn.execute("SET LOCAL work_mem = '256MB'")
        # Memoize only adds hashing to the per-row LATERAL steps of the bulk inserts.
        conn.execute("SET LOCAL enable_memoize = off")
        conn.execute("SET LOCAL maintenance_work_mem = '512MB'")
        conn.execute(_sql(_sql_text(LEGACY_SCHEMA)))
        conn.execute(_query("functions"))
        indexes = _drop_secondary_indexes(conn)
        self._generate(conn)
        # Indexes are cheaper built once than maintained row by row, and the
        # planting queries below need them and fresh statistics.
        for statement in indexes:
            conn.execute(statement)
        conn.execute("ANALYZE users, agents, conversations, messages, conversation_plan")
        self._plant_messages(conn)
        MediaBuilder(self).build(conn)
        conn.execute("ANALYZE media_assets")
        self._plant_users(conn)
        self._plant_conversations(conn)
        conn.execute("DROP TABLE conversation_plan")
        self._derive(conn)

    # -- bulk rows ---------------------------------------------------------

    def _params(self) -> dict[str, Any]:
        lay = self.layout
        return {
            **self.vocab,
            **time_params(self.horizon),
            "seed": self.seed,
            "hash_pool": list(_hash_pool(self.seed)),
            "n_users": lay.sizes.users,
            "active": lay.active_users,
            "soft": lay.soft_users,
            "valid_end": lay.valid_users_end,
            "owners": lay.valid_users_end,
            "n_agents": lay.sizes.agents,
            "builtin_end": lay.builtin_agents,
            "regular_end": lay.agents_regular_end,
            "orphan_end": lay.agents_orphan_end,
            "malformed_end": lay.agents_malformed_end,
            "agents_in_use": lay.agents_regular_end,
            "n_conversations": lay.sizes.conversations,
            "n_phantoms": lay.phantom_conversations,
            "k_mod": lay.messages_per_conversation_mod,
            "never_existed": NEVER_EXISTED,
        }

    def _generate(self, conn: psycopg.Connection) -> None:
        lay = self.layout
        params = self._params()
        conn.execute(_query("users"), params)
        conn.execute(_query("agents"), params)
        conversation_params = {
            **params,
            "regular_end": lay.conversations_regular_end,
            "soft_end": lay.conversations_soft_end,
            "orphan_end": lay.conversations_orphan_end,
        }
        conn.execute(_query("conversation_plan"), conversation_params)
        conn.execute(_query("conversations"), conversation_params)
        conn.execute(_query("messages"), params)
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('messages', 'id'), (SELECT max(id) FROM messages))"
        )

        seed = self.seed
        a_reg, a_orph, a_mal = lay.agents_regular_end, lay.agents_orphan_end, lay.agents_malformed_end
        self.plant("agents.builtin", _ids(seed, "agents", range(lay.builtin_agents)))
        self.plant("agents.orphan_owner", _ids(seed, "agents", range(a_reg, a_orph)))
        self.plant("agents.malformed_tools", _ids(seed, "agents", range(a_orph, a_mal)))
        self.plant("agents.owner_soft_deleted", _ids(seed, "agents", range(a_mal, lay.sizes.agents)))
        c_reg, c_soft, c_orph = (
            lay.conversations_regular_end,
            lay.conversations_soft_end,
            lay.conversations_orphan_end,
        )
        self.plant("conversations.soft_deleted", _ids(seed, "conversations", range(c_reg, c_soft)))
        self.plant("conversations.orphan_user", _ids(seed, "conversations", range(c_soft, c_orph)))
        self.plant(
            "conversations.dangling_agent",
            _ids(seed, "conversations", range(c_orph, lay.sizes.conversations)),
        )
        self.plant("users.soft_deleted", _ids(seed, "users", range(lay.active_users, lay.valid_users_end)))
        self.plant("users.invalid_email", _ids(seed, "users", range(lay.valid_users_end, lay.sizes.users)))

    # -- messages ----------------------------------------------------------

    def _plant_messages(self, conn: psycopg.Connection) -> None:
        lay = self.layout
        orphans = conn.execute(_query("orphan_messages")).fetchall()
        self.plant("messages.orphan_conversation", [i for kind, i in orphans if kind == "phantom"])
        self.plant("messages.of_orphan_conversation", [i for kind, i in orphans if kind == "orphan_user"])

        wanted = lay.unknown_roles + lay.malformed_metadata + lay.long_messages
        hosts = conn.execute(
            _query("message_hosts"), {"seed": self.seed, "active": lay.active_users, "limit": wanted}
        ).fetchall()
        if len(hosts) < wanted:
            raise RuntimeError(f"only {len(hosts)} live conversations with messages; need {wanted}")
        # One planted message per host conversation, so kinds never overlap.
        ids = [offset + 1 + self.rng.randrange(k) for offset, k in hosts]
        unknown = ids[: lay.unknown_roles]
        malformed = ids[lay.unknown_roles : lay.unknown_roles + lay.malformed_metadata]
        long_ids = ids[lay.unknown_roles + lay.malformed_metadata :]
        _set_column(
            conn,
            "messages",
            "role",
            unknown,
            [UNKNOWN_ROLES[i % len(UNKNOWN_ROLES)] for i in range(len(unknown))],
            "bigint",
        )
        _set_column(
            conn,
            "messages",
            "metadata",
            malformed,
            [BAD_METADATA[i % len(BAD_METADATA)] for i in range(len(malformed))],
            "bigint",
        )
        text = _corpus().decode("ascii")
        pasted = (text + " ") * (LONG_CONTENT_CHARS // len(text) + 1)
        _set_column(
            conn,
            "messages",
            "content",
            long_ids,
            [pasted[: LONG_CONTENT_CHARS + 997 * i] + " " + SNIPPETS[i] for i in range(len(long_ids))],
            "bigint",
        )
        conn.execute("UPDATE messages SET token_count = length(content) / 4 WHERE id = ANY(%s)", [long_ids])
        self.plant("messages.unknown_role", unknown)
        self.plant("messages.malformed_metadata", malformed)
        self.plant("messages.long_content", long_ids)

    # -- users -------------------------------------------------------------

    def _plant_users(self, conn: psycopg.Connection) -> None:
        lay = self.layout
        seed = self.seed
        loser0 = self._first_duplicate_loser(conn)
        pool = [n for n in range(lay.active_users) if uid(seed, "users", n) != loser0]
        sizes = [
            lay.known_users,
            2 * lay.duplicate_pairs - 1 + 3 * lay.duplicate_triples,
            lay.blank_names,
            lay.null_names,
            lay.updated_null,
            lay.updated_before,
        ]
        picked = self.rng.sample(pool, sum(sizes))
        groups: list[list[uuid.UUID]] = []
        for size in sizes:
            groups.append(_ids(seed, "users", picked[:size]))
            picked = picked[size:]
        known, duplicates, blank, null_name, updated_null, updated_before = groups

        self._plant_known_passwords(conn, known)
        self._plant_duplicates(conn, [loser0, *duplicates])
        _set_column(conn, "users", "display_name", blank, ["" if i % 2 else "   " for i in range(len(blank))])
        _set_column(conn, "users", "display_name", null_name, None)
        _set_column(conn, "users", "updated_at", updated_null, None)
        conn.execute(
            "UPDATE users SET updated_at = created_at - least(interval '3 days',"
            " (created_at - %s) / 2) WHERE id = ANY(%s)",
            [time_params(self.horizon)["epoch"], updated_before],
        )
        self.plant("users.blank_name", blank)
        self.plant("users.null_name", null_name)
        self.plant("users.updated_null", updated_null)
        self.plant("users.updated_before_created", updated_before)

    def _first_duplicate_loser(self, conn: psycopg.Connection) -> uuid.UUID:
        candidates = _fetch_column(conn, _query("duplicate_loser_candidates"), {"seed": self.seed})
        if not candidates:
            raise RuntimeError("no active user owns an agent, a conversation and media")
        return candidates[0]

    def _plant_known_passwords(self, conn: psycopg.Connection, users: list[uuid.UUID]) -> None:
        rng = random.Random(f"known-passwords:{self.seed}")
        emails, hashes = [], []
        for i, user in enumerate(users):
            password = f"Known-{self.seed}-{i:02d}-{rng.getrandbits(40):010x}"
            hashes.append(_bcrypt_hash(password, rng, prefix=("2a", "2b", "2y")[i % 3]))
            emails.append(f"qa.tester.{i:02d}@{KNOWN_PASSWORD_DOMAIN}")
            self.known_passwords[str(user)] = password
        _set_column(conn, "users", "email", users, emails)
        _set_column(conn, "users", "password_hash", users, hashes)
        self.plant("users.known_password", users)

    def _plant_duplicates(self, conn: psycopg.Connection, members: list[uuid.UUID]) -> None:
        """members: the first pair's loser, then the rest of the pairs, then the triples."""
        lay = self.layout
        rows: list[tuple[uuid.UUID, uuid.UUID, int, int, int]] = []  # member, base, code, group, rank
        sizes = [2] * lay.duplicate_pairs + [3] * lay.duplicate_triples
        start = 0
        for group, size in enumerate(sizes):
            group_members = members[start : start + size]
            start += size
            ranks = list(range(size))
            if group == 0:
                ranks = [1, 0]  # the owner of agents, conversations and media loses
            else:
                self.rng.shuffle(ranks)
            base = self.rng.choice(group_members)
            codes = iter(self.rng.sample(range(1, 6), size))
            for member, rank in zip(group_members, ranks, strict=True):
                rows.append((member, base, 0 if member == base else next(codes), group, rank))
        conn.execute(
            _query("duplicate_groups"),
            {
                "seed": self.seed,
                "member": [r[0] for r in rows],
                "base": [r[1] for r in rows],
                "code": [r[2] for r in rows],
                "grp": [r[3] for r in rows],
                "rank": [r[4] for r in rows],
            },
        )
        survivors = {r[3]: r[0] for r in rows if r[4] == 0}
        losers = [r for r in rows if r[4] != 0]
        self.duplicate_of = {str(r[0]): str(survivors[r[3]]) for r in losers}
        self.plant("users.duplicate_survivor", survivors.values())
        self.plant("users.duplicate_loser", [r[0] for r in losers])

    # -- conversations -----------------------------------------------------

    def _plant_conversations(self, conn: psycopg.Connection) -> None:
        picked = self.rng.sample(range(self.layout.conversations_regular_end), self.layout.blank_titles)
        blank = _ids(self.seed, "conversations", picked)
        _set_column(conn, "conversations", "title", blank, ["" if i % 2 else "  " for i in range(len(blank))])
        self.plant("conversations.blank_title", blank)

    # -- derived kinds -----------------------------------------------------

    def _derive(self, conn: psycopg.Connection) -> None:
        params = {"losers": [uuid.UUID(k) for k in self.duplicate_of]}
        for kind, query in _named_queries("derived_kinds").items():
            self.plant(kind, _fetch_column(conn, query, params))


def _drop_secondary_indexes(conn: psycopg.Connection) -> list[str]:
    """Drop the non-key indexes before bulk loading; return the statements that rebuild them."""
    rows = conn.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index AS i"
        " WHERE i.indrelid = ANY(%s::regclass[]) AND NOT i.indisprimary",
        [list(TABLES)],
    ).fetchall()
    for name, _ in rows:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    return [definition for _, definition in rows]
