"""The legacy world: a deterministic legacy database and media folder to migrate.

This package owns the *source side* of every test, demo and benchmark: it
builds the legacy chatbot database (schema in ``include/sql/legacy/schema.sql``)
with realistic volume and the defects production data really has, writes the
media files the rows point at, and reports exactly which rows carry which
defect, so the pipeline's accounting can be checked row by row. It also plays
"the app kept running" (``apply_changes``) for incremental syncs.

Same seed and scale give the same database, byte for byte: rows are generated
server-side (``INSERT ... SELECT FROM generate_series``) from hashes of the row
number and the seed (``local_runtime/world/sql/*.sql``), never row by row from
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

Timestamps are naive UTC in the three and a half years before the world's
*horizon*, midnight (UTC) of the day it is generated for (``seed(now=...)``,
default today), so a machine clock earlier than the generator's first fixed
dates no longer puts rows in the future; ``apply_changes`` uses the current
time (or its ``now``; never earlier than the newest row).

Modules: ``builder`` (``seed``: bulk rows, then the hostile rows planted per
entity), ``media`` (attachments and their files), ``changes``
(``apply_changes``, between runs), ``report`` (``WorldReport``,
``ChangeReport``, the quarantine kinds), ``layout`` (scales, row ranges, the
time window), ``vocabulary`` (words, prose, hashes), ``queries`` (the SQL in
``sql/`` and database helpers), ``__main__`` (the command line).
"""

from __future__ import annotations

from local_runtime.world.builder import seed
from local_runtime.world.changes import apply_changes
from local_runtime.world.layout import (
    KNOWN_PASSWORD_DOMAIN,
    LARGE_FILE_BYTES,
    LONG_CONTENT_CHARS,
    MISSING_MESSAGE_ID,
    NEVER_EXISTED,
    SCALES,
    WORLD_SPAN,
    Layout,
    Sizes,
    horizon,
)
from local_runtime.world.queries import LEGACY_SCHEMA, MEDIA_MARKER, WORLD_SQL, uid
from local_runtime.world.report import KIND_TABLE, QUARANTINE_KINDS, TABLES, ChangeReport, WorldReport

__all__ = [
    "KIND_TABLE",
    "KNOWN_PASSWORD_DOMAIN",
    "LARGE_FILE_BYTES",
    "LEGACY_SCHEMA",
    "LONG_CONTENT_CHARS",
    "MEDIA_MARKER",
    "MISSING_MESSAGE_ID",
    "NEVER_EXISTED",
    "QUARANTINE_KINDS",
    "SCALES",
    "TABLES",
    "WORLD_SPAN",
    "WORLD_SQL",
    "ChangeReport",
    "Layout",
    "Sizes",
    "WorldReport",
    "apply_changes",
    "horizon",
    "seed",
    "uid",
]
