"""The legacy world generator: what it reports is what the data holds.

Every planted defect kind is recomputed here from the data alone (SQL, JSON
parsing, the media files on disk) and must equal the reported keys exactly;
the quarantine kinds stay within the pipeline's 0.1 % budget; the same seed
rebuilds the same world; apply_changes changes exactly what it reports;
the world's timestamps follow the day it is generated for, so the suites'
"not in the future" checks pass under an earlier clock.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, LiteralString

import bcrypt
import psycopg
import pytest
from psycopg import sql

from local_runtime.world import (
    QUARANTINE_KINDS,
    TABLES,
    WORLD_SPAN,
    ChangeReport,
    WorldReport,
    apply_changes,
    seed,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Every timestamp column of the legacy tables.
TIMESTAMPS = (
    ("users", ("created_at", "updated_at", "deleted_at")),
    ("agents", ("created_at", "updated_at")),
    ("conversations", ("created_at", "updated_at", "deleted_at")),
    ("messages", ("created_at",)),
    ("media_assets", ("created_at",)),
)

# The pipeline's rule: one @, no spaces, a dotted domain, after lower(trim()).
VALID_EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")
KNOWN_ROLES = {"user", "assistant", "system", "tool", "bot"}
SIX_MB = 6 * 1024 * 1024


@contextmanager
def _databases(pg_uri: str, count: int) -> Iterator[list[str]]:
    """Names for `count` databases (the first one created empty); all dropped afterwards."""
    names = [f"legacy_{uuid.uuid4().hex[:10]}" for _ in range(count)]
    with psycopg.connect(f"{pg_uri}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(names[0])))
    try:
        yield names
    finally:
        with psycopg.connect(f"{pg_uri}/postgres", autocommit=True) as conn:
            for name in names:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def world(pg_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, WorldReport]]:
    """One small world (seed 42) shared by the read-only checks."""
    with _databases(pg_uri, 1) as (name,):
        dsn = f"{pg_uri}/{name}"
        yield dsn, seed(dsn, scale="small", seed=42, media_root=tmp_path_factory.mktemp("world") / "media")


Query = LiteralString | sql.Composed


def _rows(dsn: str, query: Query, params: Any = None) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def _select(template: LiteralString, **identifiers: str) -> sql.Composed:
    """A query with its table and column names quoted as identifiers."""
    return sql.SQL(template).format(**{k: sql.Identifier(v) for k, v in identifiers.items()})


def _keys(dsn: str, query: Query, params: Any = None) -> set[str]:
    return {str(row[0]) for row in _rows(dsn, query, params)}


def _is_json(text: str, kind: type) -> bool:
    try:
        return isinstance(json.loads(text), kind)
    except ValueError:
        return False


def _duplicates(dsn: str) -> tuple[set[str], set[str]]:
    """(survivors, losers) recomputed from the emails: valid ones colliding after lower(strip())."""
    groups: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    for user_id, email, updated_at in _rows(dsn, "SELECT id, email, updated_at FROM users"):
        norm = email.strip().lower()
        if VALID_EMAIL.match(norm):
            groups[norm].append((updated_at, str(user_id)))
    survivors: set[str] = set()
    losers: set[str] = set()
    for members in groups.values():
        if len(members) > 1:
            members.sort(reverse=True)
            survivors.add(members[0][1])
            losers.update(m[1] for m in members[1:])
    return survivors, losers


def _duplicate_losers_owning_everything(dsn: str) -> set[str]:
    losers = _duplicates(dsn)[1]
    for table, column in (("agents", "owner_id"), ("media_assets", "owner_id")):
        losers &= _keys(dsn, _select("SELECT {c} FROM {t}", c=column, t=table))
    return losers & _keys(dsn, "SELECT user_id FROM conversations WHERE deleted_at IS NULL")


def _media_files(dsn: str, report: WorldReport) -> dict[str, tuple[Path, str | None]]:
    root = Path(report.media_root)
    return {
        str(i): (root / key, sha)
        for i, key, sha in _rows(dsn, "SELECT id, storage_key, sha256 FROM media_assets")
    }


def _sha_mismatch(dsn: str, report: WorldReport) -> set[str]:
    return {
        k
        for k, (path, sha) in _media_files(dsn, report).items()
        if path.exists() and sha is not None and hashlib.sha256(path.read_bytes()).hexdigest() != sha
    }


def _losers_param(dsn: str) -> dict[str, list[uuid.UUID]]:
    return {"losers": [uuid.UUID(k) for k in _duplicates(dsn)[1]]}


Check = Callable[[str, WorldReport], set[str]]

# Each planted kind, recomputed from the data without looking at the report.
# A data table: its entries share a shape (a query per kind), not logic.
CHECKS: dict[str, Check] = {
    "users.invalid_email": lambda dsn, r: {
        str(i)
        for i, e in _rows(dsn, "SELECT id, email FROM users")
        if not VALID_EMAIL.match(e.strip().lower())
    },
    "users.duplicate_survivor": lambda dsn, r: _duplicates(dsn)[0],
    "users.duplicate_loser": lambda dsn, r: _duplicates(dsn)[1],
    "users.duplicate_loser_with_children": lambda dsn, r: _duplicate_losers_owning_everything(dsn),
    "users.soft_deleted": lambda dsn, r: _keys(dsn, "SELECT id FROM users WHERE deleted_at IS NOT NULL"),
    "users.blank_name": lambda dsn, r: _keys(dsn, "SELECT id FROM users WHERE btrim(display_name) = ''"),
    "users.null_name": lambda dsn, r: _keys(dsn, "SELECT id FROM users WHERE display_name IS NULL"),
    "users.updated_null": lambda dsn, r: _keys(dsn, "SELECT id FROM users WHERE updated_at IS NULL"),
    "users.updated_before_created": lambda dsn, r: _keys(
        dsn, "SELECT id FROM users WHERE updated_at < created_at"
    ),
    "users.known_password": lambda dsn, r: _keys(
        dsn, "SELECT id FROM users WHERE email LIKE %s", ["%@login-test.example.com"]
    ),
    "users.oauth_only": lambda dsn, r: _keys(dsn, "SELECT id FROM users WHERE password_hash IS NULL"),
    "users.hash_2y": lambda dsn, r: _keys(dsn, "SELECT id FROM users WHERE password_hash LIKE %s", ["$2y$%"]),
    "users.non_ascii_name": lambda dsn, r: {
        str(i) for i, n in _rows(dsn, "SELECT id, display_name FROM users") if n and not n.isascii()
    },
    "agents.builtin": lambda dsn, r: _keys(dsn, "SELECT id FROM agents WHERE owner_id IS NULL"),
    "agents.orphan_owner": lambda dsn, r: _keys(
        dsn,
        "SELECT a.id FROM agents a LEFT JOIN users u ON u.id = a.owner_id"
        " WHERE a.owner_id IS NOT NULL AND u.id IS NULL",
    ),
    "agents.malformed_tools": lambda dsn, r: {
        str(i)
        for i, t in _rows(dsn, "SELECT id, tools FROM agents WHERE tools IS NOT NULL")
        if not _is_json(t, list)
    },
    "agents.owner_soft_deleted": lambda dsn, r: _keys(
        dsn, "SELECT a.id FROM agents a JOIN users u ON u.id = a.owner_id WHERE u.deleted_at IS NOT NULL"
    ),
    "agents.non_ascii_name": lambda dsn, r: {
        str(i) for i, n in _rows(dsn, "SELECT id, name FROM agents") if not n.isascii()
    },
    "agents.owner_duplicate_loser": lambda dsn, r: _keys(
        dsn, "SELECT id FROM agents WHERE owner_id = ANY(%(losers)s)", _losers_param(dsn)
    ),
    "conversations.orphan_user": lambda dsn, r: _keys(
        dsn, "SELECT c.id FROM conversations c LEFT JOIN users u ON u.id = c.user_id WHERE u.id IS NULL"
    ),
    "conversations.soft_deleted": lambda dsn, r: _keys(
        dsn, "SELECT id FROM conversations WHERE deleted_at IS NOT NULL"
    ),
    "conversations.dangling_agent": lambda dsn, r: _keys(
        dsn,
        "SELECT c.id FROM conversations c LEFT JOIN agents a ON a.id = c.agent_id"
        " WHERE c.agent_id IS NOT NULL AND a.id IS NULL",
    ),
    "conversations.blank_title": lambda dsn, r: _keys(
        dsn, "SELECT id FROM conversations WHERE btrim(title) = ''"
    ),
    "conversations.non_ascii_title": lambda dsn, r: {
        str(i) for i, t in _rows(dsn, "SELECT id, title FROM conversations") if t and not t.isascii()
    },
    "conversations.user_soft_deleted": lambda dsn, r: _keys(
        dsn,
        "SELECT c.id FROM conversations c JOIN users u ON u.id = c.user_id"
        " WHERE u.deleted_at IS NOT NULL AND c.deleted_at IS NULL",
    ),
    "conversations.user_duplicate_loser": lambda dsn, r: _keys(
        dsn, "SELECT id FROM conversations WHERE user_id = ANY(%(losers)s)", _losers_param(dsn)
    ),
    "messages.orphan_conversation": lambda dsn, r: _keys(
        dsn,
        "SELECT m.id FROM messages m LEFT JOIN conversations c ON c.id = m.conversation_id"
        " WHERE c.id IS NULL",
    ),
    "messages.of_orphan_conversation": lambda dsn, r: _keys(
        dsn,
        "SELECT m.id FROM messages m JOIN conversations c ON c.id = m.conversation_id"
        " LEFT JOIN users u ON u.id = c.user_id WHERE u.id IS NULL",
    ),
    "messages.unknown_role": lambda dsn, r: _keys(
        dsn, "SELECT id FROM messages WHERE NOT role = ANY(%s)", [sorted(KNOWN_ROLES)]
    ),
    "messages.malformed_metadata": lambda dsn, r: {
        str(i)
        for i, m in _rows(dsn, "SELECT id, metadata FROM messages WHERE metadata IS NOT NULL")
        if not _is_json(m, dict)
    },
    "messages.long_content": lambda dsn, r: _keys(
        dsn, "SELECT id FROM messages WHERE length(content) >= 1000000"
    ),
    "messages.bot_role": lambda dsn, r: _keys(dsn, "SELECT id FROM messages WHERE role = 'bot'"),
    "messages.non_ascii_content": lambda dsn, r: {
        str(i) for i, c in _rows(dsn, "SELECT id, content FROM messages") if not c.isascii()
    },
    "messages.conversation_soft_deleted": lambda dsn, r: _keys(
        dsn,
        "SELECT m.id FROM messages m JOIN conversations c ON c.id = m.conversation_id"
        " WHERE c.deleted_at IS NOT NULL",
    ),
    "messages.user_soft_deleted": lambda dsn, r: _keys(
        dsn,
        "SELECT m.id FROM messages m JOIN conversations c ON c.id = m.conversation_id"
        " JOIN users u ON u.id = c.user_id WHERE u.deleted_at IS NOT NULL AND c.deleted_at IS NULL",
    ),
    "media.missing_file": lambda dsn, r: {k for k, (p, _) in _media_files(dsn, r).items() if not p.is_file()},
    "media.sha_mismatch": _sha_mismatch,
    "media.orphan_owner": lambda dsn, r: _keys(
        dsn, "SELECT m.id FROM media_assets m LEFT JOIN users u ON u.id = m.owner_id WHERE u.id IS NULL"
    ),
    "media.dangling_conversation": lambda dsn, r: _keys(
        dsn,
        "SELECT m.id FROM media_assets m LEFT JOIN conversations c ON c.id = m.conversation_id"
        " WHERE m.conversation_id IS NOT NULL AND c.id IS NULL",
    ),
    "media.dangling_message": lambda dsn, r: _keys(
        dsn,
        "SELECT x.id FROM media_assets x LEFT JOIN messages m ON m.id = x.message_id"
        " WHERE x.message_id IS NOT NULL AND m.id IS NULL",
    ),
    "media.large_file": lambda dsn, r: {
        k for k, (p, _) in _media_files(dsn, r).items() if p.is_file() and p.stat().st_size > SIX_MB
    },
    "media.null_mime": lambda dsn, r: _keys(dsn, "SELECT id FROM media_assets WHERE mime_type IS NULL"),
    "media.no_extension": lambda dsn, r: {
        str(i)
        for i, name, key in _rows(
            dsn, "SELECT id, file_name, storage_key FROM media_assets WHERE mime_type IS NULL"
        )
        if "." not in name and "." not in key.rsplit("/", 1)[-1]
    },
    "media.null_sha": lambda dsn, r: _keys(dsn, "SELECT id FROM media_assets WHERE sha256 IS NULL"),
    "media.owner_soft_deleted": lambda dsn, r: _keys(
        dsn,
        "SELECT m.id FROM media_assets m JOIN users u ON u.id = m.owner_id WHERE u.deleted_at IS NOT NULL",
    ),
    "media.conversation_soft_deleted": lambda dsn, r: _keys(
        dsn,
        "SELECT m.id FROM media_assets m JOIN conversations c ON c.id = m.conversation_id"
        " WHERE c.deleted_at IS NOT NULL",
    ),
    "media.owner_duplicate_loser": lambda dsn, r: _keys(
        dsn, "SELECT id FROM media_assets WHERE owner_id = ANY(%(losers)s)", _losers_param(dsn)
    ),
}


# --------------------------------------------------------------------------
# The seeded world


def test_counts_match_the_tables_and_the_scale(world: tuple[str, WorldReport]) -> None:
    dsn, report = world
    for table in TABLES:
        assert _rows(dsn, _select("SELECT count(*) FROM {t}", t=table))[0][0] == report.counts[table], table
    assert report.counts["users"] == 5_000
    assert report.counts["agents"] == 2_000
    assert report.counts["conversations"] == 15_000
    assert 57_000 <= report.counts["messages"] <= 63_000
    assert report.counts["media_assets"] == 5_000


def test_every_reported_kind_is_checked(world: tuple[str, WorldReport]) -> None:
    assert set(world[1].planted) == set(CHECKS)


@pytest.mark.parametrize("kind", sorted(CHECKS))
def test_planted_defect_is_exactly_what_the_data_holds(world: tuple[str, WorldReport], kind: str) -> None:
    dsn, report = world
    reported = report.planted[kind]
    assert reported, f"{kind} was never planted"
    assert len(reported) == len(set(reported)), f"{kind} reports a key twice"
    assert set(reported) == CHECKS[kind](dsn, report)


@pytest.mark.parametrize("table", sorted(QUARANTINE_KINDS))
def test_quarantine_kinds_fit_the_budget(world: tuple[str, WorldReport], table: str) -> None:
    _, report = world
    for kind in QUARANTINE_KINDS[table]:
        assert report.planted[kind], f"{kind} needs at least one row"
    quarantined = report.quarantine_candidates(table)
    assert len(quarantined) <= report.counts[table] // 1000 == report.quarantine_budget(table)


def test_exclusions_are_one_to_two_percent(world: tuple[str, WorldReport]) -> None:
    rates = world[1].defect_rates()
    for kind in ("users.soft_deleted", "conversations.soft_deleted"):
        assert 0.01 <= rates[kind] <= 0.02, (kind, rates[kind])


def test_planted_defects_sit_under_live_parents(world: tuple[str, WorldReport]) -> None:
    """A defect hidden under a soft-deleted parent would be excluded, not quarantined."""
    dsn, report = world
    live_messages = _keys(
        dsn,
        "SELECT m.id FROM messages m JOIN conversations c ON c.id = m.conversation_id"
        " JOIN users u ON u.id = c.user_id WHERE c.deleted_at IS NULL AND u.deleted_at IS NULL",
    )
    for kind in ("messages.unknown_role", "messages.malformed_metadata", "messages.long_content"):
        assert set(report.planted[kind]) <= live_messages, kind
    live_users = _keys(dsn, "SELECT id FROM users WHERE deleted_at IS NULL")
    owned = dict(_rows(dsn, "SELECT id::text, owner_id::text FROM agents"))
    assert {owned[a] for a in report.planted["agents.malformed_tools"]} <= live_users
    users_of = dict(_rows(dsn, "SELECT id::text, user_id::text FROM conversations"))
    assert {users_of[c] for c in report.planted["conversations.dangling_agent"]} <= live_users
    invalid = set(report.planted["users.invalid_email"])
    for table, column in (("agents", "owner_id"), ("conversations", "user_id"), ("media_assets", "owner_id")):
        assert not invalid & _keys(dsn, _select("SELECT {c} FROM {t}", c=column, t=table)), (
            f"an invalid-email user owns {table}"
        )


def test_duplicate_groups_collide_and_have_one_latest(world: tuple[str, WorldReport]) -> None:
    dsn, report = world
    rows = {str(i): (e, u) for i, e, u in _rows(dsn, "SELECT id, email, updated_at FROM users")}
    groups: dict[str, list[str]] = defaultdict(list)
    for loser, survivor in report.duplicate_of.items():
        groups[survivor].append(loser)
    assert any(len(losers) == 2 for losers in groups.values()), "no triple"
    for survivor, losers in groups.items():
        emails = {rows[m][0] for m in [survivor, *losers]}
        assert len(emails) == len(losers) + 1, "members differ only by case or spaces, but do differ"
        assert len({e.strip().lower() for e in emails}) == 1
        assert all(rows[survivor][1] > rows[loser][1] for loser in losers)
    assert set(report.planted["users.duplicate_loser_with_children"]) <= set(report.duplicate_of)


def test_known_passwords_verify_against_the_stored_hash(world: tuple[str, WorldReport]) -> None:
    dsn, report = world
    assert len(report.known_passwords) == 20
    stored = {
        str(i): (e, h, d)
        for i, e, h, d in _rows(
            dsn,
            "SELECT id, email, password_hash, deleted_at FROM users WHERE id = ANY(%s)",
            [[uuid.UUID(k) for k in report.known_passwords]],
        )
    }
    all_emails = [e.strip().lower() for (e,) in _rows(dsn, "SELECT email FROM users")]
    for user_id, password in report.known_passwords.items():
        email, hashed, deleted_at = stored[user_id]
        assert deleted_at is None and VALID_EMAIL.match(email) and all_emails.count(email) == 1
        assert bcrypt.checkpw(password.encode(), hashed.encode()), user_id
        assert not bcrypt.checkpw(b"not the password", hashed.encode())
    assert {h[:4] for _, h, _ in stored.values()} == {"$2a$", "$2b$", "$2y$"}


def test_password_hashes_are_bcrypt_with_mixed_prefixes(world: tuple[str, WorldReport]) -> None:
    dsn, report = world
    prefixes: dict[str | None, int] = defaultdict(int)
    for (hashed,) in _rows(dsn, "SELECT password_hash FROM users"):
        assert hashed is None or re.fullmatch(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}", hashed), hashed
        prefixes[hashed[:4] if hashed else None] += 1
    assert set(prefixes) == {"$2a$", "$2b$", "$2y$", None}
    assert 0.03 <= prefixes[None] / report.counts["users"] <= 0.07


def _time_range(dsn: str, table: str, columns: tuple[str, ...]) -> tuple[datetime, datetime]:
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    query = sql.SQL("SELECT min(least({c})), max(greatest({c})) FROM {t}").format(
        c=names, t=sql.Identifier(table)
    )
    low, high = _rows(dsn, query)[0]
    return low, high


def test_timestamps_stay_in_the_timeline(world: tuple[str, WorldReport]) -> None:
    dsn, report = world
    end = datetime.fromisoformat(report.horizon)
    assert end <= datetime.now(UTC).replace(tzinfo=None)  # midnight of the day it was seeded
    for table, columns in TIMESTAMPS:
        low, high = _time_range(dsn, table, columns)
        assert end - WORLD_SPAN <= low and high < end, table


def test_text_is_realistic_and_international(world: tuple[str, WorldReport]) -> None:
    dsn, report = world
    short, typical, total = _rows(
        dsn,
        "SELECT count(*) FILTER (WHERE length(content) < 20),"
        " count(*) FILTER (WHERE length(content) BETWEEN 20 AND 800), count(*) FROM messages",
    )[0]
    assert typical / total >= 0.85 and short / total < 0.1
    emoji = re.compile("[\U0001f300-\U0001faff]")
    for query in (
        "SELECT display_name FROM users",
        "SELECT name FROM agents",
        "SELECT title FROM conversations",
        "SELECT content FROM messages WHERE length(content) < 10000",
    ):
        assert any(v and emoji.search(v) for (v,) in _rows(dsn, query)), query
    assert len(report.planted["messages.long_content"]) >= 2


def test_media_files_match_their_rows(world: tuple[str, WorldReport]) -> None:
    dsn, report = world
    root = Path(report.media_root)
    magic = {
        "image/png": b"\x89PNG\r\n\x1a\n",
        "image/jpeg": b"\xff\xd8\xff",
        "application/pdf": b"%PDF-",
        "audio/mpeg": b"ID3",
    }
    missing = set(report.planted["media.missing_file"])
    rows = _rows(dsn, "SELECT id::text, storage_key, size_bytes, mime_type FROM media_assets")
    kinds: dict[str, int] = defaultdict(int)
    for media_id, key, size, mime in rows:
        path = root / key
        assert path.resolve().is_relative_to(root)
        if media_id in missing:
            continue
        data = path.read_bytes()
        assert len(data) == size, media_id
        if mime:
            assert data.startswith(magic[mime]), (media_id, mime)
            kinds[mime] += 1
    assert set(kinds) == set(magic)
    assert (root.parent / "world-report.json").is_file()
    assert WorldReport.load(root.parent / "world-report.json") == report


def test_legacy_database_holds_only_the_app_schema(world: tuple[str, WorldReport]) -> None:
    dsn, _ = world
    tables = _keys(
        dsn,
        "SELECT table_name FROM information_schema.tables WHERE table_schema NOT IN"
        " ('pg_catalog', 'information_schema')",
    )
    assert tables == set(TABLES)
    assert (
        _rows(
            dsn,
            "SELECT count(*) FROM information_schema.table_constraints"
            " WHERE table_schema = 'public' AND constraint_type IN ('FOREIGN KEY', 'UNIQUE')",
        )[0][0]
        == 0
    )
    indexed = {
        (t, d.split("(")[-1].rstrip(")"))
        for t, d in _rows(
            dsn,
            "SELECT tablename, indexdef FROM pg_indexes"
            " WHERE schemaname = 'public' AND indexname NOT LIKE %s",
            ["%pkey"],
        )
    }
    assert indexed == {
        ("messages", "conversation_id"),
        ("conversations", "user_id"),
        ("agents", "owner_id"),
        ("media_assets", "owner_id"),
    }
    next_id = _rows(dsn, "SELECT nextval(pg_get_serial_sequence('messages', 'id'))")[0][0]
    assert next_id == _rows(dsn, "SELECT max(id) FROM messages")[0][0] + 1


# --------------------------------------------------------------------------
# Determinism


def _fingerprint(dsn: str, media_root: str) -> dict[str, str]:
    prints = {}
    for table in TABLES:
        query = _select("SELECT md5(string_agg(t::text, '|' ORDER BY t.id)) FROM {t} AS t", t=table)
        prints[table] = _rows(dsn, query)[0][0]
    root = Path(media_root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    prints["files"] = hashlib.sha256(
        b"".join(str(p.relative_to(root)).encode() + hashlib.sha256(p.read_bytes()).digest() for p in files)
    ).hexdigest()
    return prints


def test_same_seed_rebuilds_the_same_world(
    world: tuple[str, WorldReport], changed_world: ChangedWorld, fresh_db, tmp_path: Path
) -> None:
    dsn, report = world
    same_dsn = fresh_db("legacy")
    # The same day as the shared world, even if the clock passed midnight meanwhile.
    same = seed(same_dsn, scale="small", seed=42, media_root=tmp_path / "media",
                now=datetime.fromisoformat(report.horizon))
    assert (same.counts, same.planted, same.known_passwords, same.duplicate_of) == (
        report.counts,
        report.planted,
        report.known_passwords,
        report.duplicate_of,
    )
    expected = _fingerprint(dsn, report.media_root)
    assert _fingerprint(same_dsn, same.media_root) == expected
    different = changed_world.fingerprint  # seed 5, before its changes
    assert all(different[k] != expected[k] for k in expected)


def _future_rows(dsn: str, clock: datetime) -> dict[str, int]:
    """Rows each suite's "not in the future" expectation flags, on a machine whose clock reads ``clock``.

    The expectations' own queries (include/expectations/*.json) run on the
    legacy tables, with the database's ``now()`` replaced by ``clock``.
    """
    found: dict[str, int] = {}
    for path in sorted((ROOT / "include" / "expectations").glob("*.json")):
        table = {"media": "media_assets"}.get(path.stem, path.stem)
        for expectation in json.loads(path.read_text()):
            query = (expectation.get("kwargs") or {}).get("unexpected_rows_query") or ""
            if "now()" not in query:
                continue
            check = query.replace("{batch}", table).replace("now()", "%(clock)s::timestamp")
            found[f"{path.stem}: {expectation['kwargs']['description']}"] = len(
                _rows(dsn, check, {"clock": clock})  # type: ignore[arg-type]
            )
    return found


def test_a_clock_earlier_than_the_old_fixed_dates_still_validates(
    world: tuple[str, WorldReport], fresh_db, tmp_path: Path
) -> None:
    """A machine whose clock reads a day before 2026-06-30 (the generator's last fixed date
    once) gets a world entirely before that day, the same world but for its dates."""
    dsn, report = world
    clock = datetime(2025, 3, 14, 9, 30)
    early_dsn = fresh_db("legacy")
    early = seed(early_dsn, scale="small", seed=42, media_root=tmp_path / "media", now=clock)
    assert early.horizon == "2025-03-14 00:00:00"
    assert (early.counts, early.planted, early.known_passwords, early.duplicate_of) == (
        report.counts, report.planted, report.known_passwords, report.duplicate_of)
    for table, columns in TIMESTAMPS:
        assert _time_range(early_dsn, table, columns)[1] < clock, table
    checks = _future_rows(early_dsn, clock)
    assert len(checks) >= 5 and set(checks.values()) == {0}, checks
    # The check can fail: today's world, read by that earlier clock, is in its future.
    assert sum(_future_rows(dsn, clock).values()) > 0


def test_refuses_to_clear_a_folder_it_did_not_write(pg_uri: str, tmp_path: Path) -> None:
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(ValueError, match="refusing"):
        seed(f"{pg_uri}/postgres", scale="small", media_root=precious)
    assert (precious / "holiday.jpg").read_bytes() == b"not ours"


# --------------------------------------------------------------------------
# apply_changes


def _snapshot(dsn: str) -> dict[str, dict[str, tuple]]:
    """Every row of every table, by key."""
    return {
        table: {str(row[0]): row for row in _rows(dsn, _select("SELECT * FROM {t}", t=table))}
        for table in TABLES
    }


def _changed(report: ChangeReport, table: str) -> set[str]:
    prefix = "media" if table == "media_assets" else table
    return {k for kind, keys in report.changes.items() if kind.split(".")[0] == prefix for k in keys}


@dataclass
class ChangedWorld:
    dsn: str
    fingerprint: dict[str, str]  # of the seeded world (seed 5), before the changes
    before: dict[str, dict[str, tuple]]
    after: dict[str, dict[str, tuple]]
    changes: ChangeReport
    changes_on_copy: ChangeReport  # the same round, applied to a copy of the seeded world
    media_root: Path


@pytest.fixture(scope="module")
def changed_world(pg_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChangedWorld]:
    root = tmp_path_factory.mktemp("changes")
    with _databases(pg_uri, 2) as (name, copy_name):
        dsn = f"{pg_uri}/{name}"
        seeded = seed(dsn, scale="small", seed=5, media_root=root / "media")
        with psycopg.connect(f"{pg_uri}/postgres", autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(copy_name), sql.Identifier(name)
                )
            )
        before, fingerprint = _snapshot(dsn), _fingerprint(dsn, seeded.media_root)
        changes = apply_changes(dsn, seed=7, fraction=0.01, media_root=root / "media")
        # apply_changes only writes new files, so the copy's media root can start empty.
        on_copy = apply_changes(
            f"{pg_uri}/{copy_name}", seed=7, fraction=0.01, media_root=root / "copy-media"
        )
        yield ChangedWorld(dsn, fingerprint, before, _snapshot(dsn), changes, on_copy, root / "media")


def test_changes_are_deterministic_given_the_world(changed_world: ChangedWorld) -> None:
    assert changed_world.changes.changes == changed_world.changes_on_copy.changes


def test_changes_touch_only_what_they_report(changed_world: ChangedWorld) -> None:
    before, after, report = changed_world.before, changed_world.after, changed_world.changes
    for table in TABLES:
        untouched = (set(before[table]) | set(after[table])) - _changed(report, table)
        assert all(before[table][k] == after[table][k] for k in untouched), table
        prefix = "media" if table == "media_assets" else table
        inserted = report.changes.get(f"{prefix}.inserted", [])
        deleted = report.changes.get(f"{prefix}.hard_deleted", [])
        assert len(after[table]) == len(before[table]) + len(inserted) - len(deleted), table
    expected_kinds = {
        f"{t}.{c}" for t in ("users", "agents", "conversations") for c in ("updated", "inserted")
    }
    expected_kinds |= {"users.soft_deleted", "conversations.soft_deleted", "agents.hard_deleted"}
    expected_kinds |= {"conversations.hard_deleted", "messages.inserted", "media.inserted"}
    for kind in expected_kinds:
        assert report.changes[kind], kind
    assert report.counts == {kind: len(keys) for kind, keys in report.changes.items()}


def test_updates_soft_and_hard_deletes_are_real(changed_world: ChangedWorld) -> None:
    before, after, report = changed_world.before, changed_world.after, changed_world.changes
    at = datetime.fromisoformat(report.changed_at)
    newest = max(
        v for rows in before.values() for row in rows.values() for v in row if isinstance(v, datetime)
    )
    assert at > newest, "changes must look newer than every existing row, or watermarks would miss them"
    visible = {"users": 2, "agents": 2, "conversations": 3}  # display_name, name, title
    updated_at = {"users": 6, "agents": 10, "conversations": 5}
    for table, column in visible.items():
        for key in report.changes[f"{table}.updated"]:
            assert after[table][key][column] != before[table][key][column], (table, key)
            assert after[table][key][updated_at[table]] == at
    for table, column in (("users", 7), ("conversations", 6)):  # deleted_at
        for key in report.changes[f"{table}.soft_deleted"]:
            assert before[table][key][column] is None and after[table][key][column] == at
    for table in ("agents", "conversations"):
        for key in report.changes[f"{table}.hard_deleted"]:
            assert key in before[table] and key not in after[table]
    gone = set(report.changes["conversations.hard_deleted"])
    assert set(report.changes["messages.hard_deleted"]) == {
        k for k, row in before["messages"].items() if str(row[1]) in gone
    }
    deleted_agents = set(report.changes["agents.hard_deleted"])
    assert {k for k, row in after["conversations"].items() if str(row[2]) in deleted_agents} == set(
        report.changes["conversations.dangling_agent"]
    )


def test_inserts_are_loadable_and_append_only(changed_world: ChangedWorld) -> None:
    before, after, report = changed_world.before, changed_world.after, changed_world.changes
    at = datetime.fromisoformat(report.changed_at)
    top = max(int(k) for k in before["messages"])
    new_messages = sorted(int(k) for k in report.changes["messages.inserted"])
    assert new_messages == list(range(top + 1, top + 1 + len(new_messages)))
    live_conversations = {k for k, row in after["conversations"].items() if row[6] is None}
    assert all(str(after["messages"][str(i)][1]) in live_conversations for i in new_messages)
    assert {after["messages"][str(i)][2] for i in new_messages} == {"user", "assistant"}
    emails = [row[1].strip().lower() for row in after["users"].values()]
    for key in report.changes["users.inserted"]:
        email = after["users"][key][1]
        assert VALID_EMAIL.match(email) and emails.count(email) == 1 and after["users"][key][5] == at
    for key in report.changes["agents.inserted"]:
        assert str(after["agents"][key][1]) in after["users"] and _is_json(after["agents"][key][7], list)
    for key in report.changes["media.inserted"]:
        row = after["media_assets"][key]
        data = (changed_world.media_root / row[7]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row[8] and len(data) == row[6]
    next_id = _rows(changed_world.dsn, "SELECT nextval(pg_get_serial_sequence('messages', 'id'))")[0][0]
    assert next_id == new_messages[-1] + 1
