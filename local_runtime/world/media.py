"""The legacy media: attachment rows hung off real messages, conversations and users, and their files.

This module owns the media side of the world: where attachments go, the
files' bytes (real magic numbers; PNGs are valid images), the names users
give them, the media defects (missing file, changed bytes, dangling
references, no MIME type, no extension, no checksum, one file over 6 MiB),
and the ``COPY`` that writes the rows. ``apply_changes`` reuses it for new
uploads.
"""

from __future__ import annotations

import hashlib
import random
import struct
import uuid
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from local_runtime.world.layout import LARGE_FILE_BYTES, MISSING_MESSAGE_ID, NEVER_EXISTED, time_params
from local_runtime.world.queries import _query, uid

if TYPE_CHECKING:
    from local_runtime.world.builder import WorldBuilder

# --------------------------------------------------------------------------
# media


@dataclass
class Media:
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


def copy_media(conn: psycopg.Connection, media: list[Media]) -> None:
    with conn.cursor().copy(_COPY_MEDIA) as copy:
        for m in media:
            row = (m.id, m.owner_id, m.conversation_id, m.message_id, m.file_name, m.mime_type)
            copy.write_row((*row, len(m.content), m.storage_key, m.sha256, m.created_at))


class MediaBuilder:
    """Media rows hung off real messages, conversations and users, plus their files."""

    def __init__(self, world: WorldBuilder) -> None:
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
        copy_media(conn, media)

    def _candidates(self, conn: psycopg.Connection) -> list[Media]:
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
                **time_params(self.world.horizon),
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
            Media(
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

    def _pick(self, media: list[Media], attach: str, count: int, taken: set[int]) -> list[Media]:
        """count live rows attached to `attach`, not yet used by another defect."""
        choices = [i for i, m in enumerate(media) if m.attach == attach and m.active and i not in taken]
        picked = self.rng.sample(choices, count)
        taken.update(picked)
        return [media[i] for i in picked]

    def _plant(self, media: list[Media]) -> None:
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

    def _write(self, media: list[Media]) -> None:
        files = {}
        for m in media:
            if m.write:
                data = m.content if not m.corrupt else m.content[:-1] + bytes([m.content[-1] ^ 0xFF])
                files[self.world.media_root / m.storage_key] = data
        write_files(files)


def write_files(files: dict[Path, bytes]) -> None:
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
