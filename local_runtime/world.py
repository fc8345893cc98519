"""The legacy world: a deterministic legacy database and media folder to migrate.

This module owns the *source side* of every test, demo and benchmark: it
builds the legacy chatbot database (schema in ``include/sql/legacy/schema.sql``)
with realistic volume and the defects production data really has, writes the
media files the rows point at, and reports exactly which rows carry which
defect, so the pipeline's accounting can be checked row by row. It also plays
"the app kept running" (``apply_changes``) for incremental syncs.

Same seed and scale give the same database, byte for byte: rows are generated
server-side (``INSERT ... SELECT FROM generate_series``) from hashes of the row
number and the seed (``local_runtime/world_sql/*.sql``), never row by row from
Python, and every id is a pure function of (seed, kind, row number).

Command line::

    python -m local_runtime.world seed --dsn DSN [--scale small] [--seed 42] --media-root DIR
    python -m local_runtime.world changes --dsn DSN [--seed 7] [--fraction 0.01] [--media-root DIR]

Scales (rows per legacy table; media files are a few KB, plus one > 6 MB):

========  ======  ======  =============  =========  =====
scale     users   agents  conversations  messages   media
========  ======  ======  =============  =========  =====
small      5,000   2,000         15,000    ~60,000  5,000
medium    50,000  20,000        150,000   ~600,000  5,000
large    200,000  20,000        600,000  ~3,000,000 5,000
========  ======  ======  =============  =========  =====

Agents and media are above the brief's first guess (1,000 and 2,000) at small
scale because of the 0.1 % rule: each quarantine kind must occur at least once,
agents have two such kinds and media up to five, so 2,000 agents and 5,000
media are the smallest sizes whose 0.1 % budget holds them.

Planted defect kinds (``WorldReport.planted``; keys are str(uuid), or
str(message id) for messages). Planned ones are placed on purpose; derived
ones are read back from the data after generation.

users
    ``invalid_email`` (no @, two @, a space inside, empty, no domain; they own
    nothing) · ``duplicate_survivor`` / ``duplicate_loser`` (pairs and triples
    colliding after lower(btrim()); distinct updated_at, the survivor latest;
    ``duplicate_of`` maps loser -> survivor) · ``soft_deleted`` · ``blank_name``
    ('' and '   ') · ``null_name`` · ``updated_null`` ·
    ``updated_before_created`` · ``known_password`` (live users with a real
    bcrypt hash of ``known_passwords[id]``, email at login-test.example.com) ·
    derived: ``oauth_only`` (NULL hash), ``hash_2y``, ``non_ascii_name``,
    ``duplicate_loser_with_children`` (losers owning an agent, a live
    conversation and media: at least the first pair's)
agents
    ``builtin`` (owner NULL) · ``orphan_owner`` · ``malformed_tools`` ·
    ``owner_soft_deleted`` · derived: ``non_ascii_name``,
    ``owner_duplicate_loser``
conversations
    ``orphan_user`` (user never existed; only the first has messages) ·
    ``soft_deleted`` · ``dangling_agent`` · ``blank_title`` · derived:
    ``non_ascii_title``, ``user_soft_deleted``, ``user_duplicate_loser``
messages
    ``orphan_conversation`` (conversation never existed) ·
    ``of_orphan_conversation`` (its conversation's user never existed) ·
    ``unknown_role`` ('moderator', 'USER', 'narrator', 'Assistant') ·
    ``malformed_metadata`` · ``long_content`` (1 MiB) · derived: ``bot_role``,
    ``non_ascii_content``, ``conversation_soft_deleted``,
    ``user_soft_deleted`` (the conversation's user)
media
    ``missing_file`` · ``sha_mismatch`` (file bytes changed after hashing) ·
    ``orphan_owner`` · ``dangling_conversation`` · ``dangling_message`` ·
    ``large_file`` (> 6 MiB) · ``null_mime`` · ``no_extension`` (NULL mime and
    no extension in name or key: sniff the bytes) · ``null_sha`` · derived:
    ``owner_soft_deleted``, ``conversation_soft_deleted``,
    ``owner_duplicate_loser``

The 0.1 % rule: ``QUARANTINE_KINDS`` lists, per table, every kind a pipeline
may quarantine (conservatively: also dangling references and malformed
metadata, which a pipeline may instead repair). Their total stays within
floor(rows / 1000) at every scale. Every planted defect sits on a row whose
parents are live, so it is really quarantined, not excluded with its parent.

Timestamps are naive UTC between 2023-01-01 and 2026-06-30; ``apply_changes``
uses the current time (never earlier than the newest row).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import random
import shutil
import struct
import sys
import time
import uuid
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, LiteralString

import bcrypt
import psycopg
from psycopg import sql

HERE = Path(__file__).resolve().parent
LEGACY_SCHEMA = HERE.parent / "include" / "sql" / "legacy" / "schema.sql"
WORLD_SQL = HERE / "world_sql"
TABLES = ("users", "agents", "conversations", "messages", "media_assets")
KIND_TABLE = {
    "users": "users",
    "agents": "agents",
    "conversations": "conversations",
    "messages": "messages",
    "media": "media_assets",
}

# Every kind a pipeline may quarantine, per table. Deliberately wide: a
# pipeline that repairs some of these instead still stays within budget.
QUARANTINE_KINDS: dict[str, tuple[str, ...]] = {
    "users": ("users.invalid_email",),
    "agents": ("agents.orphan_owner", "agents.malformed_tools"),
    "conversations": ("conversations.orphan_user", "conversations.dangling_agent"),
    "messages": (
        "messages.orphan_conversation",
        "messages.of_orphan_conversation",
        "messages.unknown_role",
        "messages.malformed_metadata",
    ),
    "media_assets": (
        "media.missing_file",
        "media.sha_mismatch",
        "media.orphan_owner",
        "media.dangling_conversation",
        "media.dangling_message",
    ),
}

LONG_CONTENT_CHARS = 1024 * 1024
LARGE_FILE_BYTES = 7 * 1024 * 1024 + 4321
KNOWN_PASSWORD_DOMAIN = "login-test.example.com"
# Offsets that put planted references out of reach of any generated row.
NEVER_EXISTED = 1_000_000_000
MISSING_MESSAGE_ID = 1_000_000_000_000
MEDIA_MARKER = ".legacy-world"


# --------------------------------------------------------------------------
# Vocabulary. ASCII twins of the display names keep generated emails valid.

# fmt: off
FIRST_NAMES = (
    ("Alice", "alice"), ("José", "jose"), ("Zoë", "zoe"), ("Søren", "soren"), ("Mária", "maria"),
    ("Chloé", "chloe"), ("Björn", "bjorn"), ("Łukasz", "lukasz"), ("Ana", "ana"),
    ("Mohammed", "mohammed"), ("Wei", "wei"), ("Yuki", "yuki"), ("李", "li"), ("Олена", "olena"),
    ("Priya", "priya"), ("Liam", "liam"), ("Emma", "emma"), ("Noah", "noah"), ("Olivia", "olivia"),
    ("Mateo", "mateo"), ("Sofia", "sofia"), ("Lucas", "lucas"), ("Mia", "mia"), ("Ethan", "ethan"),
    ("Aisha", "aisha"), ("Kenji", "kenji"), ("Fatima", "fatima"), ("Diego", "diego"),
    ("Hannah", "hannah"), ("Omar", "omar"), ("Ingrid", "ingrid"), ("Tomás", "tomas"),
)
LAST_NAMES = (
    ("Smith", "smith"), ("Müller", "muller"), ("García", "garcia"), ("Nguyen", "nguyen"),
    ("Kowalski", "kowalski"), ("O'Brien", "obrien"), ("Dubois", "dubois"), ("Rossi", "rossi"),
    ("Silva", "silva"), ("Kim", "kim"), ("Tanaka", "tanaka"), ("Ivanova", "ivanova"),
    ("Patel", "patel"), ("Johansson", "johansson"), ("Novák", "novak"), ("Yılmaz", "yilmaz"),
    ("Haddad", "haddad"), ("Cohen", "cohen"), ("Chen", "chen"), ("Brown", "brown"),
    ("Wilson", "wilson"), ("Jones", "jones"), ("Martin", "martin"), ("Lee", "lee"),
    ("Walker", "walker"), ("Hall", "hall"), ("Young", "young"), ("King", "king"), ("Wright", "wright"),
    ("López", "lopez"), ("Hill", "hill"), ("Scott", "scott"),
)
DOMAINS = (
    "gmail.com", "outlook.com", "yahoo.co.jp", "proton.me", "example.com", "icloud.com", "web.de",
    "mail.ru",
)
EMOJI = ("🚀", "🌸", "🎧", "🐍", "☕", "✨", "🦊", "🌍")
TITLES = (
    "Help with Python list comprehensions", "Fix my SQL query", "Trip to Lisbon 🇵🇹", "Résumé feedback",
    "Recette de crêpes", "日本語の文法について", "Birthday gift ideas 🎂",
    "Explain transformers simply", "Weekly meal plan", "Cover letter draft",
    "Debug React useEffect loop", "Marathon training plan 🏃", "Tax questions 2024",
    "Learn Spanish verbs", "Kubernetes CrashLoopBackOff", "Wedding speech ideas 💍",
    "Budget spreadsheet formulas", "Why is the sky blue?", "Пример письма", "Summarize this article",
    "Interview prep: system design", "Garden planning 🌱", "Bash script to rename files",
    "Sleep schedule tips", "Translate to German", "Regex for emails", "Book recommendations 📚",
    "Unit tests for parser", "Negotiating salary", "Dockerfile optimisation", "Plan a D&D campaign 🐉",
    "Café business plan", "Understanding inflation", "Write a haiku", "Git rebase vs merge",
    "Physics homework help", "中文学习计划", "Email to landlord", "Data cleaning in pandas",
    "Meditation for beginners 🧘",
)
AGENT_PREFIXES = (
    "Friendly", "Expert", "Quick", "Patient", "Senior", "Creative", "Strict", "Pocket", "Daily",
    "Night-owl", "Tiny", "Pro", "Gentle", "Caffeinated ☕", "Zen 🧘", "Le petit",
)
AGENT_ROLES = (
    "Code Reviewer", "Travel Planner", "Writing Coach", "Math Tutor", "SQL Helper", "Recipe Assistant",
    "Fitness Coach", "Language Partner", "Research Assistant", "Career Advisor", "Translator",
    "Therapist-lite", "Data Analyst", "Poet", "Legal Explainer", "日本語の先生",
)
BUILTIN_AGENTS = (
    "General Assistant", "Code Helper", "Writing Assistant", "Translator 🌐", "Study Buddy",
    "Image Describer", "Summarizer", "Brainstormer 💡", "Email Drafter", "Math Solver", "Travel Guide",
    "Customer Support",
)
STYLES = (
    "Answer concisely.", "Explain step by step.", "Use bullet points where helpful.",
    "Ask a clarifying question when the request is ambiguous.", "Be warm and encouraging.",
    "Cite sources when you can.", "Keep answers under 200 words.", "Prefer code examples.",
)
MODELS = (
    "gpt-4o", "gpt-4o-mini", "gpt-4-turbo", "gpt-3.5-turbo", "claude-3-5-sonnet-20241022",
    "claude-3-haiku-20240307", "llama-3.1-70b-instruct", "mistral-large-latest",
)
TOOL_SETS = (
    '["web_search"]', '["code_interpreter"]', '["web_search", "code_interpreter"]',
    '["image_generation"]', '["calculator", "web_search"]', '["file_search"]',
    '["weather", "calendar"]', '["web_search", "file_search", "code_interpreter"]',
)
BAD_TOOLS = (
    '["web_search", "code_interpreter"', "[web_search, calculator]", "['web_search']",
    '{"tools": ["web_search"]', "web_search,calculator", '["calculator",]',
)
BAD_METADATA = (
    '{"finish_reason": "stop", "latency_ms": 1', "{'client': 'web'}", '{"client": "web",}', "undefined",
    '{"latency_ms": 12}}', '{"text": "unterminated}',
)
CLIENTS = ("web", "ios", "android", "desktop", "api")
SYSTEM_PROMPTS = (
    "You are a helpful assistant.", "You are a concise assistant. Answer briefly.",
    "You are a friendly tutor for beginners.", "You are an expert software engineer.",
    "Respond in the language of the user.", "You are a careful assistant; never guess facts.",
    "You summarize documents faithfully.", "You are a creative writing partner.",
)
SNIPPETS = (
    "Café au lait ☕", "naïve résumé", "Привет, как дела?", "こんにちは世界", "你好，世界", "😀🎉🚀",
    "Grüße aus München", "¿Qué tal? ¡Muy bien!", "مرحبا بالعالم", "שלום עולם", "🙂 thanks!",
    "Zürich → Genève", "pair programming 👩\u200d💻", "∑ x² ≤ ∞", "Ελληνικά", "नमस्ते",
)
UNKNOWN_ROLES = ("moderator", "USER", "narrator", "Assistant")
# fmt: on


# --------------------------------------------------------------------------
# Sizes and layout


@dataclass(frozen=True)
class Sizes:
    users: int
    agents: int
    conversations: int
    messages: int  # a target: the exact count follows from per-conversation draws
    media: int


SCALES: dict[str, Sizes] = {
    "small": Sizes(users=5_000, agents=2_000, conversations=15_000, messages=60_000, media=5_000),
    "medium": Sizes(users=50_000, agents=20_000, conversations=150_000, messages=600_000, media=5_000),
    "large": Sizes(users=200_000, agents=20_000, conversations=600_000, messages=3_000_000, media=5_000),
}


@dataclass(frozen=True)
class Layout:
    """Row-number ranges and planted counts of one scale.

    Generated rows are laid out by row number (special rows after the regular
    ones); ids and timestamps are hashes, so the layout is invisible in the
    data but lets both SQL and Python name any row without a lookup.
    """

    sizes: Sizes
    invalid_users: int
    soft_users: int
    known_users: int
    duplicate_pairs: int
    duplicate_triples: int
    blank_names: int
    null_names: int
    updated_null: int
    updated_before: int
    builtin_agents: int
    orphan_agents: int
    malformed_agents: int
    soft_owner_agents: int
    orphan_conversations: int
    dangling_conversations: int
    soft_conversations: int
    blank_titles: int
    phantom_conversations: int
    unknown_roles: int
    malformed_metadata: int
    long_messages: int
    media_each: int

    @classmethod
    def for_sizes(cls, s: Sizes) -> Layout:
        return cls(
            sizes=s,
            invalid_users=max(4, s.users // 2000),
            soft_users=s.users * 15 // 1000,
            known_users=20,
            duplicate_pairs=max(10, s.users // 250),
            duplicate_triples=max(3, s.users // 2500),
            blank_names=s.users // 100,
            null_names=s.users * 3 // 100,
            updated_null=s.users * 3 // 100,
            updated_before=s.users // 200,
            builtin_agents=12,
            orphan_agents=max(1, s.agents // 2500),
            malformed_agents=max(1, s.agents // 2500),
            soft_owner_agents=s.agents // 100,
            orphan_conversations=max(1, s.conversations // 3000),
            dangling_conversations=max(1, s.conversations // 3000),
            soft_conversations=s.conversations * 15 // 1000,
            blank_titles=s.conversations // 200,
            phantom_conversations=max(2, s.messages // 15000),
            unknown_roles=max(4, s.messages // 10000),
            malformed_metadata=max(1, s.messages // 5000),
            long_messages=2 if s.messages < 500_000 else (3 if s.messages < 2_000_000 else 4),
            media_each=max(1, s.media // 5000),
        )

    # users: [0, active) active | [active, valid_end) soft-deleted | rest invalid
    @property
    def active_users(self) -> int:
        return self.sizes.users - self.invalid_users - self.soft_users

    @property
    def valid_users_end(self) -> int:
        return self.active_users + self.soft_users

    # agents: builtin | regular | orphan owner | malformed tools | soft-deleted owner
    @property
    def agents_regular_end(self) -> int:
        return self.sizes.agents - self.orphan_agents - self.malformed_agents - self.soft_owner_agents

    @property
    def agents_orphan_end(self) -> int:
        return self.agents_regular_end + self.orphan_agents

    @property
    def agents_malformed_end(self) -> int:
        return self.agents_orphan_end + self.malformed_agents

    # conversations: regular | soft-deleted | orphan user | dangling agent | phantom
    @property
    def conversations_regular_end(self) -> int:
        return (
            self.sizes.conversations
            - self.soft_conversations
            - self.orphan_conversations
            - self.dangling_conversations
        )

    @property
    def conversations_soft_end(self) -> int:
        return self.conversations_regular_end + self.soft_conversations

    @property
    def conversations_orphan_end(self) -> int:
        return self.conversations_soft_end + self.orphan_conversations

    @property
    def messages_per_conversation_mod(self) -> int:
        # k is uniform in [0, mod), so its mean is (mod - 1) / 2.
        return round(2 * self.sizes.messages / self.sizes.conversations) + 1


# --------------------------------------------------------------------------
# Reports


@dataclass
class WorldReport:
    """What ``seed`` built: rows per table and the keys of every planted defect."""

    scale: str
    seed: int
    counts: dict[str, int]
    planted: dict[str, list[str]]
    known_passwords: dict[str, str]
    media_root: str
    duplicate_of: dict[str, str] = field(default_factory=dict)  # loser id -> survivor id

    def defect_rates(self) -> dict[str, float]:
        """Kind -> keys / rows of the kind's table."""
        return {
            kind: len(keys) / max(1, self.counts[KIND_TABLE[kind.split(".", 1)[0]]])
            for kind, keys in self.planted.items()
        }

    def quarantine_candidates(self, table: str) -> set[str]:
        """Keys of ``table`` that a pipeline may quarantine (see QUARANTINE_KINDS)."""
        return {key for kind in QUARANTINE_KINDS[table] for key in self.planted.get(kind, ())}

    def quarantine_budget(self, table: str) -> int:
        """Most rows of ``table`` a run may quarantine without failing: 0.1 %, rounded down."""
        return self.counts[table] // 1000

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True, ensure_ascii=False)

    @classmethod
    def load(cls, path: str | Path) -> WorldReport:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


@dataclass
class ChangeReport:
    """What ``apply_changes`` did, per change kind (e.g. "users.updated")."""

    seed: int
    fraction: float
    changed_at: str  # the naive-UTC instant written to updated_at / created_at / deleted_at
    changes: dict[str, list[str]]

    @property
    def counts(self) -> dict[str, int]:
        """Kind -> number of rows changed."""
        return {kind: len(keys) for kind, keys in self.changes.items()}


# --------------------------------------------------------------------------
# Small helpers


@cache
def _sql_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _sql(text: str) -> sql.SQL:
    # Statements come from this repository's .sql files, never from input.
    return sql.SQL(text)  # type: ignore[arg-type]


def _query(name: str) -> sql.SQL:
    """A statement of local_runtime/world_sql/<name>.sql."""
    return _sql(_sql_text(WORLD_SQL / f"{name}.sql"))


def _named_queries(name: str) -> dict[str, sql.SQL]:
    """Sections of a .sql file, each headed by a '-- kind: NAME' line."""
    sections: dict[str, str] = {}
    current: str | None = None
    for line in _sql_text(WORLD_SQL / f"{name}.sql").splitlines():
        if line.startswith("-- kind: "):
            current = line.removeprefix("-- kind: ").strip()
            sections[current] = ""
        elif current is not None and not line.startswith("--"):
            sections[current] += line + "\n"
    return {kind: _sql(text.strip().rstrip(";")) for kind, text in sections.items()}


def uid(seed: int, kind: str, n: int) -> uuid.UUID:
    """The id of row n of a kind; equals pg_temp.uid() in functions.sql."""
    return uuid.UUID(hashlib.md5(f"{seed}:{kind}:{n}".encode()).hexdigest())


def _ids(seed: int, kind: str, rows: Iterable[int]) -> list[uuid.UUID]:
    return [uid(seed, kind, n) for n in rows]


def _keys(values: Iterable[Any]) -> list[str]:
    """Report keys: message ids sort as numbers, uuids as text."""
    keys = [str(v) for v in values]
    return sorted(keys, key=lambda k: (len(k), k) if k.isdigit() else (0, k))


_BCRYPT_ALPHABET = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
    b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
)


def _bcrypt_hash(password: str, rng: random.Random, prefix: str = "2b", cost: int = 4) -> str:
    """A real bcrypt hash with a salt drawn from rng, so reruns are identical."""
    salt22 = base64.b64encode(rng.randbytes(16)).rstrip(b"=").translate(_BCRYPT_ALPHABET)
    salt = f"${prefix}${cost:02d}$".encode() + salt22
    return bcrypt.hashpw(password.encode(), salt).decode()


@cache
def _hash_pool(seed: int, size: int = 32) -> tuple[str, ...]:
    # Hashing per user would take minutes at large scale; users share a pool.
    rng = random.Random(f"bcrypt-pool:{seed}")
    return tuple(_bcrypt_hash(f"pool-{seed}-{i}-{rng.getrandbits(32):08x}", rng) for i in range(size))


@cache
def _corpus() -> bytes:
    """About 64 KB of ASCII chat prose that message content is cut from."""
    rng = random.Random(0)
    nouns = (
        "query",
        "function",
        "recipe",
        "budget",
        "itinerary",
        "essay",
        "dataset",
        "index",
        "migration",
        "playlist",
        "contract",
        "invoice",
        "garden",
        "workout",
        "deadline",
        "paragraph",
        "spreadsheet",
        "pipeline",
        "container",
        "outline",
        "schedule",
        "summary",
    )
    verbs = (
        "check",
        "rewrite",
        "simplify",
        "test",
        "compare",
        "explain",
        "optimize",
        "review",
        "split",
        "merge",
        "translate",
        "measure",
        "document",
        "refactor",
        "plan",
        "debug",
    )
    adjs = ("faster", "cleaner", "safer", "shorter", "clearer", "cheaper", "simpler", "stricter")
    templates = (
        "First, {v} the {n} before you {v2} the {n2}.",
        "If the {n} fails, check whether the {n2} is {a}.",
        "Here is a {a} way to {v} your {n}:",
        "Step {i}: {v} the {n} and then {v2} the {n2}.",
        "I think the {n} is {a}, but the {n2} might be {a2}.",
        "Could you {v} the {n} for me?",
        "The {n} returned {i} rows in {j} ms, which is {a} than before.",
        "Sure! Let's {v} the {n} together.",
        "Thanks, that made the {n} much {a}.",
        "Why does the {n} change when I {v} the {n2}?",
        "In short: {v} less, {v2} more, and keep the {n} {a}.",
        "You can also {v} the {n} with a {a} {n2}.",
    )
    out: list[str] = []
    size = 0
    while size < 65536:
        text = rng.choice(templates).format(
            n=rng.choice(nouns),
            n2=rng.choice(nouns),
            v=rng.choice(verbs),
            v2=rng.choice(verbs),
            a=rng.choice(adjs),
            a2=rng.choice(adjs),
            i=rng.randint(1, 9),
            j=rng.randint(2, 900),
        )
        out.append(text)
        size += len(text) + 1
    return " ".join(out).encode("ascii")


def _vocabulary() -> dict[str, Any]:
    return {
        "first_display": [d for d, _ in FIRST_NAMES],
        "first_ascii": [a for _, a in FIRST_NAMES],
        "last_display": [d for d, _ in LAST_NAMES],
        "last_ascii": [a for _, a in LAST_NAMES],
        "domains": list(DOMAINS),
        "emoji": list(EMOJI),
        "titles": list(TITLES),
        "prefixes": list(AGENT_PREFIXES),
        "roles": list(AGENT_ROLES),
        "builtin_names": list(BUILTIN_AGENTS),
        "styles": list(STYLES),
        "models": list(MODELS),
        "tool_sets": list(TOOL_SETS),
        "bad_tools": list(BAD_TOOLS),
        "clients": list(CLIENTS),
        "system_prompts": list(SYSTEM_PROMPTS),
        "snippets": list(SNIPPETS),
        "corpus": _corpus(),
    }


def _set_column(
    conn: psycopg.Connection,
    table: str,
    column: str,
    keys: Sequence[Any],
    values: Sequence[Any] | None,
    key_type: str = "uuid",
) -> None:
    """Set one column of the rows with these ids (to NULL when values is None)."""
    if not keys:
        return
    target = {"table": sql.Identifier(table), "column": sql.Identifier(column)}
    if values is None:
        conn.execute(
            sql.SQL("UPDATE {table} SET {column} = NULL WHERE id = ANY(%s)").format(**target), [list(keys)]
        )
        return
    conn.execute(
        sql.SQL(
            "UPDATE {table} SET {column} = v.val FROM unnest(%s::{key_type}[], %s::text[]) AS v(key, val)"
            " WHERE {table}.id = v.key"
        ).format(key_type=sql.SQL(key_type), **target),
        [list(keys), list(values)],
    )


def _fetch_column(
    conn: psycopg.Connection, query: sql.SQL | sql.Composed | LiteralString, params: Any = None
) -> list[Any]:
    return [row[0] for row in conn.execute(query, params).fetchall()]


# --------------------------------------------------------------------------
# seed


def seed(dsn: str, *, scale: str = "small", seed: int = 42, media_root: str | Path) -> WorldReport:
    """Drop and rebuild the legacy tables, write the media files, report.

    ``media_root`` is emptied first (it must be empty, missing, or a media root
    this module wrote). The report is also written, as JSON, to
    ``<media_root>/../world-report.json``.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {sorted(SCALES)}")
    layout = Layout.for_sizes(SCALES[scale])
    root = _prepare_media_root(Path(media_root))
    builder = _WorldBuilder(layout, seed, root)
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


class _WorldBuilder:
    """One seeding run: generates the rows, plants defects, records their keys."""

    def __init__(self, layout: Layout, seed: int, media_root: Path) -> None:
        self.layout = layout
        self.seed = seed
        self.media_root = media_root
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
        _MediaBuilder(self).build(conn)
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
            " (created_at - timestamp '2023-01-01') / 2) WHERE id = ANY(%s)",
            [updated_before],
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


# --------------------------------------------------------------------------
# media


@dataclass
class _Media:
    id: uuid.UUID
    owner_id: uuid.UUID
    conversation_id: uuid.UUID | None
    message_id: int | None
    created_at: datetime
    active: bool
    attach: str
    file_name: str = ""
    mime_type: str | None = None
    true_mime: str | None = None
    extension: str = ""
    content: bytes = b""
    sha256: str | None = None
    keep_sha_null: bool = False  # the app did not record a checksum
    write: bool = True  # False: the file went missing
    corrupt: bool = False  # the file changed after its checksum was recorded

    @property
    def storage_key(self) -> str:
        # The legacy app filed uploads by month.
        return f"uploads/{self.created_at.year}/{self.created_at.month:02d}/{self.id}{self.extension}"

    def draw_file(self, rng: random.Random) -> None:
        """A small file of a random type, with a name a user would give it."""
        mime, ext, _ = rng.choices(_MEDIA_TYPES, weights=[w for *_, w in _MEDIA_TYPES])[0]
        self.mime_type = self.true_mime = mime
        self.extension = ext
        self.content = _file_bytes(mime, rng, rng.randint(1024, 6144))
        self.file_name = _file_name(mime, rng)


_MEDIA_TYPES = (
    ("image/png", ".png", 35),
    ("image/jpeg", ".jpg", 35),
    ("application/pdf", ".pdf", 15),
    ("audio/mpeg", ".mp3", 15),
)
# What a clipboard paste or a phone's share sheet uploads: no extension anywhere.
_PASTED_NAMES = {
    "image/png": "image",
    "image/jpeg": "photo",
    "application/pdf": "document",
    "audio/mpeg": "voice message",
}


_COPY_MEDIA = (
    "COPY media_assets (id, owner_id, conversation_id, message_id, file_name, mime_type, size_bytes,"
    " storage_key, sha256, created_at) FROM STDIN"
)


def _copy_media(conn: psycopg.Connection, media: list[_Media]) -> None:
    with conn.cursor().copy(_COPY_MEDIA) as copy:
        for m in media:
            row = (m.id, m.owner_id, m.conversation_id, m.message_id, m.file_name, m.mime_type)
            copy.write_row((*row, len(m.content), m.storage_key, m.sha256, m.created_at))


class _MediaBuilder:
    """Media rows hung off real messages, conversations and users, plus their files."""

    def __init__(self, world: _WorldBuilder) -> None:
        self.world = world
        self.seed = world.seed
        self.rng = random.Random(f"legacy-media:{world.seed}")

    def build(self, conn: psycopg.Connection) -> None:
        media = self._candidates(conn)
        for item in media:
            item.draw_file(self.rng)
        self._plant(media)
        for item in media:
            if not item.keep_sha_null:
                item.sha256 = hashlib.sha256(item.content).hexdigest()
        self._write(media)
        _copy_media(conn, media)

    def _candidates(self, conn: psycopg.Connection) -> list[_Media]:
        lay = self.world.layout
        n = lay.sizes.media
        n_message, n_conversation = n * 7 // 10, n * 15 // 100
        planted = self.world.planted
        skip_messages = [
            int(k)
            for kind in ("messages.unknown_role", "messages.malformed_metadata", "messages.long_content")
            for k in planted[kind]
        ]
        rows = conn.execute(
            _query("media_candidates"),
            {
                "seed": self.seed,
                "n_message": n_message,
                "n_conversation": n_conversation,
                "n_owner": n - n_message - n_conversation,
                "message_sample": max(1, lay.sizes.messages // (4 * n_message)),
                "skip_messages": skip_messages,
                "skip_users": [uuid.UUID(k) for k in planted["users.invalid_email"]],
            },
        ).fetchall()
        if len(rows) != n:
            raise RuntimeError(f"found {len(rows)} places to attach media; need {n}")
        return [
            _Media(
                id=uid(self.seed, "media", j),
                owner_id=owner,
                conversation_id=conv,
                message_id=msg,
                created_at=created,
                active=active,
                attach=attach,
            )
            for j, (attach, owner, conv, msg, created, active) in enumerate(rows)
        ]

    def _pick(self, media: list[_Media], attach: str, count: int, taken: set[int]) -> list[_Media]:
        """count live rows attached to `attach`, not yet used by another defect."""
        choices = [i for i, m in enumerate(media) if m.attach == attach and m.active and i not in taken]
        picked = self.rng.sample(choices, count)
        taken.update(picked)
        return [media[i] for i in picked]

    def _plant(self, media: list[_Media]) -> None:
        each = self.world.layout.media_each
        taken: set[int] = set()
        large = self._pick(media, "message", 1, taken)
        missing = self._pick(media, "message", each, taken)
        mismatch = self._pick(media, "message", each, taken)
        dangling_message = self._pick(media, "conversation", each, taken)
        dangling_conversation = self._pick(media, "owner", each, taken)
        orphan_owner = self._pick(media, "owner", each, taken)
        for i, m in enumerate(large):
            m.mime_type, m.extension, m.file_name = "audio/mpeg", ".mp3", f"podcast-episode-{i + 1}.mp3"
            m.content = _file_bytes("audio/mpeg", self.rng, LARGE_FILE_BYTES)
        for m in missing:
            m.write = False
        for m in mismatch:
            m.corrupt = True
        for i, m in enumerate(dangling_message):
            m.message_id = MISSING_MESSAGE_ID + i
        for i, m in enumerate(dangling_conversation):
            m.conversation_id = uid(self.seed, "conversations", 2 * NEVER_EXISTED + i)
        for i, m in enumerate(orphan_owner):
            m.owner_id = uid(self.seed, "users", 2 * NEVER_EXISTED + i)
        rest = [i for i in range(len(media)) if i not in taken]
        null_mime = self.rng.sample(rest, len(media) // 20)
        null_sha = self.rng.sample(sorted(set(rest) - set(null_mime)), len(media) // 50)
        no_extension = null_mime[: len(null_mime) // 2]
        for i in null_mime:
            media[i].mime_type = None
        for i in no_extension:
            media[i].file_name = _PASTED_NAMES[media[i].true_mime or ""]
            media[i].extension = ""
        for i in null_sha:
            media[i].keep_sha_null = True
        plant = self.world.plant
        plant("media.large_file", [m.id for m in large])
        plant("media.missing_file", [m.id for m in missing])
        plant("media.sha_mismatch", [m.id for m in mismatch])
        plant("media.dangling_message", [m.id for m in dangling_message])
        plant("media.dangling_conversation", [m.id for m in dangling_conversation])
        plant("media.orphan_owner", [m.id for m in orphan_owner])
        plant("media.null_mime", [media[i].id for i in null_mime])
        plant("media.no_extension", [media[i].id for i in no_extension])
        plant("media.null_sha", [media[i].id for i in null_sha])

    def _write(self, media: list[_Media]) -> None:
        files = {}
        for m in media:
            if m.write:
                data = m.content if not m.corrupt else m.content[:-1] + bytes([m.content[-1] ^ 0xFF])
                files[self.world.media_root / m.storage_key] = data
        _write_files(files)


def _write_files(files: dict[Path, bytes]) -> None:
    for folder in {path.parent for path in files}:
        folder.mkdir(parents=True, exist_ok=True)
    for path, data in files.items():
        path.write_bytes(data)


def _file_name(mime: str, rng: random.Random) -> str:
    n = rng.randint(1, 9999)
    names = {
        "image/png": (
            f"Screenshot 2024-0{rng.randint(1, 9)}-1{rng.randint(0, 9)} at 10.{n % 60:02d}.png",
            "image.png",
            f"diagram final ({rng.randint(2, 5)}).png",
            f"スクリーンショット {n}.png",
        ),
        "image/jpeg": (f"IMG_{n:04d}.JPG", "photo.jpeg", "Café menu.jpg", f"DSC{n:05d}.jpg"),
        "application/pdf": (
            f"Résumé {n}.pdf",
            f"invoice-{n}.pdf",
            f"report 📊 Q{n % 4 + 1}.pdf",
            "contract.PDF",
        ),
        "audio/mpeg": (f"voice-memo-{n}.mp3", "recording.mp3", f"Audio {n}.MP3", "lecture notes.mp3"),
    }
    return rng.choice(names[mime])


def _file_bytes(mime: str, rng: random.Random, size: int) -> bytes:
    """Bytes with the real magic numbers of the type (PNGs are valid images)."""
    if mime == "image/png":
        return _png(rng, max(4, int((size / 3) ** 0.5)))
    body = rng.randbytes(size)
    if mime == "image/jpeg":
        return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + body + b"\xff\xd9"
    if mime == "application/pdf":
        stream = body  # PDF streams hold binary data
        return (
            b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n2 0 obj << /Length "
            + str(len(stream)).encode()
            + b" >>\nstream\n"
            + stream
            + b"\nendstream endobj\n%%EOF\n"
        )
    # MP3: an ID3v2 tag, then MPEG-1 layer III frame headers.
    return b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64" + body


def _png(rng: random.Random, side: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + rng.randbytes(side * 3) for _ in range(side))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 6))
        + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------
# apply_changes


def apply_changes(
    dsn: str, *, seed: int = 7, fraction: float = 0.01, media_root: str | Path | None = None
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
    Deterministic given the seed and the world it starts from; "now" is the
    wall clock, or just after the newest row if that is later.
    """
    with psycopg.connect(dsn) as conn:
        conn.execute(_query("functions"))
        changes = _Changes(conn, seed, fraction, Path(media_root).resolve() if media_root else None)
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

    def __init__(self, conn: psycopg.Connection, seed: int, fraction: float, media_root: Path | None) -> None:
        self.conn = conn
        self.seed = seed
        self.fraction = fraction
        self.media_root = media_root
        row = conn.execute(_query("change_clock")).fetchone()
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
            _Media(
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
        _write_files({self.media_root / m.storage_key: m.content for m in media})
        _copy_media(self.conn, media)
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


# --------------------------------------------------------------------------
# command line


def _print_counts(title: str, counts: dict[str, int]) -> None:
    print(title)
    for name, count in counts.items():
        print(f"  {name:<40} {count:>10,}")


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local_runtime.world", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    seeding = commands.add_parser("seed", help="drop and rebuild the legacy world")
    seeding.add_argument("--dsn", required=True)
    seeding.add_argument("--scale", choices=sorted(SCALES), default="small")
    seeding.add_argument("--seed", type=int, default=42)
    seeding.add_argument("--media-root", required=True)
    changing = commands.add_parser("changes", help="apply the app's changes since the last sync")
    changing.add_argument("--dsn", required=True)
    changing.add_argument("--seed", type=int, default=7)
    changing.add_argument("--fraction", type=float, default=0.01)
    changing.add_argument("--media-root")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.command == "seed":
        report = seed(args.dsn, scale=args.scale, seed=args.seed, media_root=args.media_root)
        _print_counts("rows per table:", report.counts)
        _print_counts("planted defects:", {k: len(v) for k, v in report.planted.items()})
        print(
            f"known passwords: {len(report.known_passwords)}; report: "
            f"{Path(report.media_root).parent / 'world-report.json'}"
        )
    else:
        changes = apply_changes(args.dsn, seed=args.seed, fraction=args.fraction, media_root=args.media_root)
        _print_counts(f"changes at {changes.changed_at}:", changes.counts)
    print(f"done in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
