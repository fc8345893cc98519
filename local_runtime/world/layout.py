"""How big a legacy world is, where its special rows sit, and when it happened.

This module owns the scales (rows per table), the :class:`Layout` that turns
a scale into row-number ranges and planted counts, and the world's window in
time. The window ends at the *horizon*, midnight (UTC) of the day the world
is generated for, so every generated timestamp is earlier than the machine's
clock whatever the date, and the same seed and day give the same world.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

LONG_CONTENT_CHARS = 1024 * 1024
LARGE_FILE_BYTES = 7 * 1024 * 1024 + 4321
KNOWN_PASSWORD_DOMAIN = "login-test.example.com"
# Offsets that put planted references out of reach of any generated row.
NEVER_EXISTED = 1_000_000_000
MISSING_MESSAGE_ID = 1_000_000_000_000

# The world covers three and a half years of app history up to its horizon
# (it was 2023-01-01 to 2026-06-30 when the dates were fixed). Only this span
# and offsets from its ends appear in world/sql, so moving the horizon moves
# every timestamp by the same amount and changes no count.
WORLD_SPAN = timedelta(days=1276)


def naive_utc(now: datetime | None = None) -> datetime:
    """``now`` (default: the machine's clock) as a naive UTC instant, like the legacy columns."""
    now = datetime.now(UTC) if now is None else now
    return now.astimezone(UTC).replace(tzinfo=None) if now.tzinfo is not None else now


def horizon(now: datetime | None = None) -> datetime:
    """The end of the world's window: midnight (UTC) of ``now``'s day."""
    now = naive_utc(now)
    return datetime(now.year, now.month, now.day)


def time_params(end: datetime) -> dict[str, Any]:
    """The ``%(epoch)s`` / ``%(horizon)s`` parameters the world's SQL places rows with."""
    return {"epoch": end - WORLD_SPAN, "horizon": end}


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
