"""The legacy side of the media files: where their bytes are read, what they are, what they are called.

This module owns everything about a media file before it reaches Storage:
where the legacy application's bytes come from (:class:`MediaSource`, the
legacy media root of connection ``legacy_media``), what MIME type a file gets
(the row's, else :func:`sniff_mime` from its bytes and name), the Storage key
it will have (:func:`object_path`), and the media transform's per-file
decision (:func:`check_file`: loadable with its size, SHA-256 and MIME type,
or quarantined and why), run over the stage in a bounded pool by
:func:`check_all`. Nothing here writes to Storage (``include/supabase/``).
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import time
import unicodedata
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from psycopg import sql

from include.migration import db
from include.supabase.storage import mime_allowed

if TYPE_CHECKING:
    import psycopg

    from include.migration.media.hooks import MediaSettings
    from include.migration.pipeline import Conns

log = logging.getLogger(__name__)

MEDIA_CONN_ID = "legacy_media"
HEAD_BYTES = 512  # enough for every signature sniff_mime knows
READ_BLOCK = 1 << 20
CHECK_BATCH = 1000  # staged rows read and checked per round
PROGRESS_SECONDS = 15.0

_MIME_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "audio/mp3": "audio/mpeg",
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/x-m4a": "audio/mp4",
}
_GENERIC_MIME = {"", "application/octet-stream", "binary/octet-stream"}


class MediaSetupError(RuntimeError):
    """A connection or folder the media migration needs is missing or wrong."""


# ----------------------------------------------------------------------------
# Sources of media bytes


class MediaPathError(ValueError):
    """A media key that would read outside the source's root."""


class MediaSource(Protocol):
    """Where the legacy application's media bytes are read from.

    ``key`` is the location the legacy row stores (a relative path for a
    folder, an object key for a bucket). An S3 implementation fits the same
    three methods: ``size`` is ``head_object(...)["ContentLength"]`` (``None``
    on 404), ``open`` returns ``get_object(...)["Body"]`` (a stream, read in
    chunks, so large files are never held whole), ``read_bytes`` reads that
    body; keys are joined to a fixed prefix and must not contain ``..``.
    """

    def size(self, key: str) -> int | None:
        """Size in bytes, or ``None`` when there is no such file."""
        ...

    def open(self, key: str) -> BinaryIO:
        """A binary stream of the file; the caller closes it."""
        ...

    def read_bytes(self, key: str) -> bytes:
        """The whole file."""
        ...


class LocalMediaSource:
    """Media files under one folder; keys are paths relative to it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def path(self, key: str) -> Path:
        """The file for ``key``; refuses anything that would leave the root."""
        if not key or "\x00" in key:
            raise MediaPathError(f"media key {key!r} is empty or contains NUL")
        candidate = Path(key)
        if candidate.is_absolute() or key.startswith(("/", "\\")):
            raise MediaPathError(f"media key {key!r} is absolute; keys are relative to {self.root}")
        if ".." in candidate.parts or ".." in key.replace("\\", "/").split("/"):
            raise MediaPathError(f"media key {key!r} contains '..' and could escape {self.root}")
        resolved = (self.root / candidate).resolve()
        # A symlink inside the root can still point outside it.
        if not resolved.is_relative_to(self.root):
            raise MediaPathError(f"media key {key!r} resolves to {resolved}, outside {self.root}")
        return resolved

    def size(self, key: str) -> int | None:
        path = self.path(key)
        return path.stat().st_size if path.is_file() else None

    def open(self, key: str) -> BinaryIO:
        return self.path(key).open("rb")

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()


# ----------------------------------------------------------------------------
# MIME types and object names

# Python's built-in table only (no /etc/mime.types), so every machine agrees,
# plus the names browsers and Supabase use where Python's differ or are missing.
_MIME_TABLE = mimetypes.MimeTypes()
_MIME_OVERRIDES = {
    ".wav": "audio/wav",
    ".m4a": "audio/mp4",
    ".opus": "audio/ogg",
    ".oga": "audio/ogg",
    ".ogg": "audio/ogg",
    ".webm": "video/webm",
    ".webp": "image/webp",
    ".heic": "image/heic",
    ".avif": "image/avif",
    ".mp3": "audio/mpeg",
    ".md": "text/markdown",
}
_FTYP_BRANDS = {
    b"M4A ": "audio/mp4",
    b"M4B ": "audio/mp4",
    b"qt  ": "video/quicktime",
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"mif1": "image/heic",
    b"avif": "image/avif",
    b"3gp4": "video/3gpp",
    b"3gp5": "video/3gpp",
}


def _is_mpeg_audio_frame(head: bytes) -> bool:
    # 11 sync bits, then a version other than "reserved" and a layer other than
    # "reserved" (layer 0 is AAC's ADTS, not MP3).
    if len(head) < 2 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return False
    return (head[1] >> 3) & 0x03 != 0x01 and (head[1] >> 1) & 0x03 != 0x00


def _sniff_container(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head[:4] == b"OggS":
        return "video/ogg" if b"theora" in head[:128] else "audio/ogg"
    if head[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(head[8:12], "video/mp4")
    return None


def sniff_mime(head: bytes, file_name: str) -> str:
    """The MIME type of a file from its first bytes, else its extension.

    Magic bytes win over the extension (a ``.png`` that is a JPEG is a JPEG);
    ``head`` should be at least the first 16 bytes (more helps Ogg).
    """
    signatures = (
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"GIF87a", "image/gif"),
        (b"GIF89a", "image/gif"),
        (b"%PDF-", "application/pdf"),
        (b"ID3", "audio/mpeg"),
    )
    for magic, mime in signatures:
        if head.startswith(magic):
            return mime
    container = _sniff_container(head)
    if container:
        return container
    if _is_mpeg_audio_frame(head):
        return "audio/mpeg"
    suffix = Path(file_name).suffix.lower()
    if suffix in _MIME_OVERRIDES:
        return _MIME_OVERRIDES[suffix]
    guessed, _ = _MIME_TABLE.guess_type(f"x{suffix}", strict=False) if suffix else (None, None)
    return guessed or "application/octet-stream"


_SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_MAX_NAME_CHARS = 120


def _name_bytes(file_name: str | bytes) -> bytes:
    """The name's exact bytes: lone surrogates (from ``os.fsdecode``) included."""
    if isinstance(file_name, bytes):
        return file_name
    try:
        return file_name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return file_name.encode("utf-8", "surrogatepass")


def _ascii_only(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(c if c in _SAFE_CHARS else "_" for c in decomposed if not unicodedata.combining(c))
    while "__" in kept:
        kept = kept.replace("__", "_")
    return kept


def safe_file_name(file_name: str | bytes) -> str:
    """A file name every Storage version accepts, derived deterministically.

    Storage's long-standing key rule (``src/storage/limits.ts``) allows only
    ``[A-Za-z0-9_/!-.*'() &$@=;:+,?]``; newer servers allow most UTF-8 but
    refuse ``%``, ``#``, ``\\`` and friends, and storage3 unquotes ``%XX`` in
    paths. A name made of ``[A-Za-z0-9._-]`` that starts with a letter or
    digit is kept as is; any other name is transliterated to ASCII, unsafe
    characters become ``_``, and the first 8 hex digits of the SHA-256 of the
    original bytes are appended to the stem, so two different names never
    collapse into one. Invalid UTF-8 and surrogate escapes are hashed as the
    bytes they stand for.
    """
    raw = _name_bytes(file_name)
    text = raw.decode("utf-8", "replace")
    if text and text[0].isalnum() and set(text) <= _SAFE_CHARS and len(text) <= _MAX_NAME_CHARS:
        return text
    stem, dot, suffix = text.rpartition(".")
    if not dot or not stem.strip(" ._"):
        stem, suffix = text, ""
    clean_suffix = _ascii_only(suffix).strip("._")[:16]
    clean_stem = _ascii_only(stem).strip(" ._-")[: _MAX_NAME_CHARS - 26] or "file"
    tag = hashlib.sha256(raw).hexdigest()[:8]
    return f"{clean_stem}-{tag}" + (f".{clean_suffix}" if clean_suffix else "")


def _id_segment(value: object, what: str) -> str:
    text = str(value)
    if not text or text in (".", "..") or not set(text) <= _SAFE_CHARS:
        raise ValueError(f"{what} {text!r} is not a safe path segment ([A-Za-z0-9._-] only)")
    return text


def object_path(owner_id: object, media_id: object, file_name: str | bytes) -> str:
    """The Storage key of one media file: ``{owner_id}/{media_id}/{safe file name}``.

    The owner comes first so per-user RLS policies can use
    ``(storage.foldername(name))[1] = auth.uid()::text``; the media id keeps
    two uploads of ``photo.jpg`` by the same user apart.
    """
    return (
        f"{_id_segment(owner_id, 'owner_id')}/{_id_segment(media_id, 'media_id')}/{safe_file_name(file_name)}"
    )


# ----------------------------------------------------------------------------
# The legacy media root


def media_source() -> LocalMediaSource:
    """The legacy media root of the ``legacy_media`` connection (extra ``path``)."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(MEDIA_CONN_ID)
    root = (conn.extra_dejson or {}).get("path")
    if not root:
        raise MediaSetupError(
            f'connection {MEDIA_CONN_ID} has no extra {{"path": ...}} (the legacy media root)'
        )
    if not Path(root).is_dir():
        raise MediaSetupError(
            f"the legacy media root {root} (connection {MEDIA_CONN_ID}) is not a folder this "
            "worker can read; is the volume mounted?"
        )
    return LocalMediaSource(root)


# ----------------------------------------------------------------------------
# Files: check each staged row's file (transform)


@dataclass(frozen=True)
class FileCheck:
    """What one staged row's file says: loadable (reason None) with its facts, or why not."""

    id: str
    reason: str | None
    detail: str = ""
    object_path: str | None = None
    mime_type: str | None = None
    size: int | None = None
    sha256: str | None = None
    repairs: tuple[str, ...] = ()

    def row(self) -> tuple:
        return (
            self.id,
            self.reason,
            self.detail,
            self.object_path,
            self.mime_type,
            self.size,
            self.sha256,
            list(self.repairs),
        )


def read_file(source: Any, key: str) -> tuple[int, str, bytes] | None:
    """(bytes read, SHA-256, first bytes) of a file, streamed; None when there is no file."""
    if source.size(key) is None:
        return None
    digest, head, read = hashlib.sha256(), b"", 0
    with source.open(key) as stream:
        while block := stream.read(READ_BLOCK):
            if len(head) < HEAD_BYTES:
                head += block[: HEAD_BYTES - len(head)]
            digest.update(block)
            read += len(block)
    return read, digest.hexdigest(), head


def resolve_mime(legacy: str | None, head: bytes, file_name: str, storage_key: str) -> tuple[str, str | None]:
    """The MIME type to store, and the repair it took (None: the row's own, unchanged)."""
    declared = (legacy or "").split(";", 1)[0].strip().lower()
    if declared not in _GENERIC_MIME and "/" in declared:
        canonical = _MIME_ALIASES.get(declared, declared)
        return canonical, (None if canonical == legacy else "mime_type_normalized")
    sniffed = sniff_mime(head, file_name)
    if sniffed == "application/octet-stream":
        sniffed = sniff_mime(head, storage_key)
    return sniffed, "mime_type_sniffed"


def check_file(source: Any, settings: MediaSettings, row: Sequence[Any]) -> FileCheck:
    """Read one staged row's file and decide: loadable with its facts, or quarantined and why."""
    media_id, owner_id, file_name, key, legacy_mime, legacy_size, legacy_sha = row
    try:
        found = read_file(source, key)
    except MediaPathError as err:
        return FileCheck(media_id, "file_path_invalid", str(err))
    except FileNotFoundError:
        found = None  # removed between the size and the read
    except OSError as err:
        return FileCheck(media_id, "file_unreadable", f"{key}: {type(err).__name__}: {err}")
    if found is None:
        return FileCheck(media_id, "file_missing", f"no file at {key!r} under the legacy media root")
    size, digest, head = found
    integrity = _integrity(media_id, key, size, digest, legacy_size, legacy_sha)
    if isinstance(integrity, FileCheck):
        return integrity
    mime, mime_repair = resolve_mime(legacy_mime, head, file_name or "", key)
    repairs = integrity + ([mime_repair] if mime_repair else [])
    return _admit(settings, media_id, owner_id, file_name, mime, size, digest, tuple(repairs))


def _integrity(
    media_id: str, key: str, size: int, digest: str, legacy_size: int | None, legacy_sha: str | None
) -> FileCheck | list[str]:
    """The file against what the legacy row recorded: a quarantine, or the repairs it needs."""
    recorded = (legacy_sha or "").strip().lower()
    if recorded and recorded != digest:
        return FileCheck(
            media_id,
            "sha256_mismatch",
            f"the row records sha256 {recorded}, the file {key!r} ({size} bytes) has {digest}",
        )
    if recorded:
        return [] if legacy_size == size else ["size_bytes_from_file"]
    if legacy_size is not None and legacy_size != size:
        return FileCheck(
            media_id,
            "size_mismatch",
            f"the row records {legacy_size} bytes and no sha256; the file {key!r} has {size} bytes",
        )
    return ["sha256_from_file"]


def _admit(
    settings: MediaSettings,
    media_id: str,
    owner_id: str,
    file_name: str,
    mime: str,
    size: int,
    digest: str,
    repairs: tuple[str, ...],
) -> FileCheck:
    """The bucket's rules (size, MIME type) and the object's name."""
    if size > settings.file_size_limit:
        return FileCheck(
            media_id,
            "file_too_large",
            f"{size} bytes, over the bucket's limit of {settings.file_size_limit} bytes",
        )
    if not mime_allowed(mime, settings.allowed_mime_types):
        return FileCheck(
            media_id,
            "mime_type_not_allowed",
            f"{mime} is not among the bucket's types ({', '.join(settings.allowed_mime_types)})",
        )
    try:
        path = object_path(owner_id, media_id, file_name)
    except ValueError as err:
        return FileCheck(media_id, "object_path_invalid", str(err))
    return FileCheck(media_id, None, "", path, mime, size, digest, repairs)


def rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / 1e6 / seconds:.1f} MB/s" if seconds > 0 else "- MB/s"


def check_all(
    conns: Conns,
    dest: psycopg.Connection,
    stage: sql.Identifier,
    source: Any,
    settings: MediaSettings,
    todo: int,
) -> tuple[Counter[str], int, float]:
    """Read the rows to check in batches, check their files in a pool, COPY the verdicts."""
    tally: Counter[str] = Counter()
    read_bytes, started, last = 0, time.perf_counter(), time.perf_counter()
    check = partial(check_file, source, settings)
    with (
        db.connection(conns.dest, application="migration-media-files") as reader,
        reader.cursor(name="media_files_to_check") as cur,
        ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="media-check") as pool,
        dest.cursor() as wcur,
        wcur.copy(
            "COPY media_file_checks "
            "(id, reason, detail, object_path, mime_type, size_bytes, sha256, repairs) FROM STDIN"
        ) as copy,
    ):
        cur.execute(
            sql.SQL(
                "SELECT id::text, owner_id::text, file_name, storage_key, mime_type, size_bytes, sha256 "
                "FROM {} WHERE _disposition = 'loaded' AND object_path IS NULL ORDER BY id"
            ).format(stage)
        )
        while rows := cur.fetchmany(CHECK_BATCH):
            for verdict in pool.map(check, rows):
                copy.write_row(verdict.row())
                tally[verdict.reason or "loadable"] += 1
                read_bytes += verdict.size or 0
            if time.perf_counter() - last >= PROGRESS_SECONDS:
                last = time.perf_counter()
                done = sum(tally.values())
                log.info(
                    "media: checked %s of %s files, %.1f MB, %s",
                    f"{done:,}",
                    f"{todo:,}",
                    read_bytes / 1e6,
                    rate(read_bytes, last - started),
                )
    return tally, read_bytes, started
