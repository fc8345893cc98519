"""What the generator reports: rows per table, planted defects, and the changes it applied.

This module owns the tables and defect kinds the pipeline's accounting is
checked against (``QUARANTINE_KINDS``, the 0.1 % budget) and the two reports:
:class:`WorldReport` (``seed``) and :class:`ChangeReport` (``apply_changes``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
    horizon: str = ""  # naive UTC; every generated timestamp is before it (older reports: "")

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
