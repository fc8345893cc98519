"""The file side of the media migration: read media bytes, put them in Supabase Storage, check them.

This module owns everything about media *files* (not rows): where source bytes
come from (:class:`MediaSource`), what an object is called in Storage
(:func:`object_path`), what MIME type it gets (:func:`sniff_mime`), the bucket
it lives in (:func:`ensure_bucket`), uploading many files safely and
idempotently (:class:`StorageUploader`), and the checks a reconciliation needs
(:func:`verify_object`, :func:`list_objects`, :func:`remove_objects`).

Everything goes through the ``supabase`` client's ``client.storage`` API
except resumable (TUS) uploads and streamed downloads of large objects: the
Python client (storage3 2.34) has no resumable upload and its ``download``
returns the whole body in memory, so those two use ``httpx`` against
``{url}/storage/v1`` with the same keys.

Idempotence: an object is only skipped when Storage holds exactly the source
bytes. Storage's metadata cannot prove that: it has a size and an S3 eTag,
and the eTag is an MD5 only for single-part uploads (a resumable upload's is
``"<md5 of part md5s>-<n>"``, and encrypted S3 backends are not MD5 at all).
So the size from ``info`` is used only to *rule out* a match cheaply; a
match is confirmed by downloading the object and comparing its SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import mimetypes
import random
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol
from urllib.parse import quote, urljoin

import httpx
from storage3.exceptions import StorageApiError

log = logging.getLogger(__name__)

DEFAULT_BUCKET = "media"
RESUMABLE_THRESHOLD = 6 * 1024 * 1024
# Supabase's TUS endpoint expects 6 MB chunks (its S3 part size); the last one may be shorter.
TUS_CHUNK_SIZE = 6 * 1024 * 1024
LIST_PAGE_SIZE = 1000
REMOVE_BATCH_SIZE = 1000  # the server's per-request cap on bulk deletes
EMPTY_FOLDER = ".emptyFolderPlaceholder"

Outcome = Literal["uploaded", "skipped_identical", "conflict", "rejected_size", "rejected_mime", "failed"]


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
# Buckets


class BucketSettingsMismatch(RuntimeError):
    """The bucket exists with settings other than the ones the migration needs."""


def _status(err: StorageApiError) -> int:
    try:
        return int(err.status)
    except (TypeError, ValueError):
        return 0


def _bucket_differences(
    bucket: Any, public: bool, limit: int | None, mimes: Sequence[str] | None
) -> list[str]:
    diffs = []
    if bool(bucket.public) != public:
        diffs.append(f"public is {bucket.public}, expected {public}")
    if bucket.file_size_limit != limit:
        diffs.append(f"file_size_limit is {bucket.file_size_limit}, expected {limit}")
    if sorted(bucket.allowed_mime_types or []) != sorted(mimes or []):
        diffs.append(f"allowed_mime_types is {bucket.allowed_mime_types}, expected {list(mimes or [])}")
    return diffs


def ensure_bucket(
    client: Any,
    name: str = DEFAULT_BUCKET,
    *,
    file_size_limit: int | None,
    allowed_mime_types: Sequence[str] | None,
    public: bool = False,
    fix: bool = False,
) -> Literal["created", "verified", "updated"]:
    """Create the (private) bucket if missing; if present, check its settings.

    A bucket whose settings differ raises :class:`BucketSettingsMismatch`
    listing the differences, unless ``fix`` is true, in which case it is
    updated: changing a live bucket's limits is a decision, not a side effect.
    """
    options: dict[str, Any] = {
        "public": public,
        "file_size_limit": file_size_limit,
        "allowed_mime_types": list(allowed_mime_types) if allowed_mime_types is not None else None,
    }
    try:
        bucket = client.storage.get_bucket(name)
    except StorageApiError as err:
        if _status(err) != 404:
            raise
        try:
            client.storage.create_bucket(name, options=options)
            return "created"
        except StorageApiError as create_err:
            if _status(create_err) != 409:  # created meanwhile by another run: verify it
                raise
            bucket = client.storage.get_bucket(name)
    diffs = _bucket_differences(bucket, public, file_size_limit, allowed_mime_types)
    if not diffs:
        return "verified"
    if not fix:
        raise BucketSettingsMismatch(f"bucket {name!r}: " + "; ".join(diffs))
    client.storage.update_bucket(name, options)
    return "updated"


def mime_allowed(mime: str, allowed: Sequence[str] | None) -> bool:
    """Storage's own rule: exact ``type/subtype`` or ``type/*``; no list means anything."""
    if not allowed:
        return True
    kind, _, sub = mime.partition("/")
    if not sub:
        return False
    return any(a.partition("/")[0] == kind and a.partition("/")[2] in ("*", sub) for a in allowed)


# ----------------------------------------------------------------------------
# Uploads


@dataclass(frozen=True)
class UploadItem:
    """One file to put at ``object_path``; ``size`` and ``sha256`` describe the source bytes."""

    object_path: str
    content_type: str
    size: int
    sha256: str
    opener: Callable[[], BinaryIO]


@dataclass(frozen=True)
class UploadResult:
    """What happened to one item; ``attempts`` counts upload requests sent (0 when none were)."""

    object_path: str
    outcome: Outcome
    detail: str
    attempts: int = 0


class _Transient(Exception):
    """A failure worth retrying (5xx, 429, timeout, connection error)."""


class _Rejected(Exception):
    """Storage refused the request for good; ``outcome`` says how."""

    def __init__(self, outcome: Outcome, detail: str) -> None:
        super().__init__(detail)
        self.outcome: Outcome = outcome
        self.detail = detail


class _Exists(Exception):
    """Storage answered 409 "The resource already exists"."""


class _OffsetConflict(Exception):
    """TUS answered 409 "Upload-Offset conflict"."""


class _SourceMismatch(Exception):
    """The bytes read from the source are not the ones the item declared."""


def _is_transient_status(status: int) -> bool:
    # 429 is the server's "too many connections to the database" and 544 its
    # database timeout: both pass, like a 5xx.
    return status >= 500 or status == 429


def _classify_status(status: int, message: str) -> Exception:
    message = message.strip()
    if status == 409:
        return _OffsetConflict(message) if "Upload-Offset" in message else _Exists(message)
    if status == 413:
        return _Rejected("rejected_size", f"Storage refused the size: {message}")
    if status == 415:
        return _Rejected("rejected_mime", f"Storage refused the MIME type: {message}")
    if _is_transient_status(status):
        return _Transient(f"HTTP {status}: {message}")
    return _Rejected("failed", f"Storage refused the request (status {status}): {message}")


def _classify(err: Exception) -> Exception:
    if isinstance(err, StorageApiError):
        return _classify_status(_status(err), err.message)
    if isinstance(err, httpx.TransportError):  # timeouts, refused/reset connections, protocol errors
        return _Transient(f"{type(err).__name__}: {err}")
    return err


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes, fewer only at end of stream (raw and network streams read short)."""
    parts: list[bytes] = []
    remaining = n
    while remaining > 0:
        piece = stream.read(remaining)
        if not piece:
            break
        parts.append(piece)
        remaining -= len(piece)
    return b"".join(parts)


@dataclass
class _Attempts:
    """Upload requests sent for one item (creation and chunks count for TUS)."""

    count: int = 0


class StorageUploader:
    """Uploads many media files to one bucket, safely and idempotently.

    * At most ``concurrency`` files are in flight, so at most that many are
      in memory: a standard upload holds one file of at most
      ``resumable_threshold`` bytes, a resumable one holds one 6 MB chunk.
    * Files larger than ``resumable_threshold`` go through TUS
      (``{url}/storage/v1/upload/resumable``), chunk by chunk; a failed chunk
      is resent from the server's offset, without re-reading the source.
    * Retries (``retries`` extra attempts per request, exponential backoff
      from ``backoff`` seconds plus jitter) happen only on 5xx/429, timeouts
      and connection errors; any other refusal is final.
    * Before uploading, an existing object is checked (see the module
      docstring): same bytes -> ``skipped_identical``; other bytes ->
      ``conflict``, reported and left alone, or replaced when ``overwrite``.
    * Source bytes are checked against the item's ``size`` and ``sha256``
      while they are read; a mismatch is ``failed`` and nothing stays stored.
    * With ``precheck`` the bucket's ``file_size_limit`` and
      ``allowed_mime_types`` are read once and applied locally, so a file
      Storage would refuse is not sent; Storage's own answers (413, 415) map
      to the same outcomes either way.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        concurrency: int = 4,
        retries: int = 4,
        backoff: float = 0.2,
        resumable_threshold: int = RESUMABLE_THRESHOLD,
        url: str | None = None,
        service_key: str | None = None,
        overwrite: bool = False,
        precheck: bool = True,
        cache_control: str = "3600",
        timeout: float = 60.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.client = client
        self.bucket = bucket
        self.concurrency = concurrency
        self.retries = retries
        self.backoff = backoff
        self.resumable_threshold = resumable_threshold
        self.overwrite = overwrite
        self.precheck = precheck
        self.cache_control = cache_control
        # One proxy for all threads: storage3's methods keep no state and the
        # httpx.Client under them is thread-safe.
        self._files = client.storage.from_(bucket)
        self._url = (url or str(getattr(client, "supabase_url", ""))).rstrip("/")
        key = service_key or getattr(client, "supabase_key", "")
        self._http = httpx.Client(timeout=timeout, headers={"apikey": key, "Authorization": f"Bearer {key}"})
        self._limits: tuple[int | None, list[str] | None] | None = None
        self._limits_lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> StorageUploader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the batch ----------------------------------------------------------------
    def upload_many(self, items: Iterable[UploadItem]) -> Iterator[UploadResult]:
        """Upload ``items`` (read lazily), yielding one result per item as each finishes.

        Stopping early (closing the iterator) lets the files already in flight
        finish and starts no new ones; a later run skips what landed.
        """
        source = iter(items)
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="media-upload") as pool:
            pending: set[Future[UploadResult]] = {
                pool.submit(self.upload_one, item) for item in islice(source, self.concurrency)
            }
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        for item in islice(source, 1):
                            pending.add(pool.submit(self.upload_one, item))
                        yield future.result()
            finally:
                for future in pending:
                    future.cancel()

    def upload_one(self, item: UploadItem) -> UploadResult:
        """Upload one item; a per-file problem becomes a result, never an exception."""
        tries = _Attempts()
        try:
            return self._upload_one(item, tries)
        except _Rejected as err:
            return UploadResult(item.object_path, err.outcome, err.detail, tries.count)
        except _Transient as err:
            return UploadResult(item.object_path, "failed", f"gave up after retries: {err}", tries.count)
        except _SourceMismatch as err:
            return UploadResult(item.object_path, "failed", str(err), tries.count)
        except Exception as err:  # one bad file must not stop the batch
            log.exception("upload of %s failed", item.object_path)
            return UploadResult(item.object_path, "failed", f"{type(err).__name__}: {err}", tries.count)

    def _upload_one(self, item: UploadItem, tries: _Attempts) -> UploadResult:
        refused = self._precheck(item)
        if refused is not None:
            return refused
        existing = self._retrying(lambda: self._remote_size(item.object_path))
        if existing is not None:
            verdict = self._compare_existing(item, existing, tries)
            if verdict.outcome != "conflict" or not self.overwrite:
                return verdict
        try:
            self._send(item, tries, upsert=existing is not None)
        except _Exists:
            # Someone (or our own retried request) wrote it first.
            now = self._retrying(lambda: self._remote_size(item.object_path))
            if now is None:
                raise _Transient("409 from Storage, yet the object is not there") from None
            return self._compare_existing(item, now, tries)
        mode = "resumable" if item.size > self.resumable_threshold else "standard"
        return UploadResult(item.object_path, "uploaded", f"{item.size} bytes, {mode} upload", tries.count)

    def _compare_existing(self, item: UploadItem, size: int, tries: _Attempts) -> UploadResult:
        """An object is already there: the same bytes, or a conflict to report."""
        path = item.object_path
        if size != item.size:
            return UploadResult(
                path, "conflict", f"exists with {size} bytes, source has {item.size}", tries.count
            )
        digest = self._retrying(
            lambda: remote_sha256(
                self.client,
                self.bucket,
                path,
                size=size,
                http=self._http,
                url=self._url,
                stream_above=self.resumable_threshold,
            )
        )
        if digest != item.sha256:
            detail = f"exists with other content (sha256 {digest[:12]}..., source {item.sha256[:12]}...)"
            return UploadResult(path, "conflict", detail, tries.count)
        if tries.count > 1:
            # A retried write whose first try landed before its answer was lost.
            return UploadResult(path, "uploaded", "confirmed identical after a retried upload", tries.count)
        return UploadResult(path, "skipped_identical", "already in Storage with the same sha256", tries.count)

    # -- checks -------------------------------------------------------------------
    def _bucket_limits(self) -> tuple[int | None, list[str] | None]:
        with self._limits_lock:
            if self._limits is None:
                bucket = self._retrying(lambda: self.client.storage.get_bucket(self.bucket))
                self._limits = (bucket.file_size_limit, bucket.allowed_mime_types)
            return self._limits

    def _precheck(self, item: UploadItem) -> UploadResult | None:
        if not self.precheck:
            return None
        limit, allowed = self._bucket_limits()
        path = item.object_path
        if limit is not None and item.size > limit:
            return UploadResult(
                path, "rejected_size", f"{item.size} bytes is over the bucket's limit of {limit}"
            )
        if not mime_allowed(item.content_type, allowed):
            return UploadResult(
                path, "rejected_mime", f"{item.content_type} is not in the bucket's {allowed}"
            )
        return None

    def _remote_size(self, path: str) -> int | None:
        try:
            info = self._files.info(path)
        except StorageApiError as err:
            if _status(err) == 404:
                return None
            raise
        return int(info.get("size") or 0)

    def _retrying(self, action: Callable[[], Any], tries: _Attempts | None = None) -> Any:
        """Run ``action``; after a transient failure wait and run it again, ``retries`` times at most."""
        for attempt in range(self.retries + 1):
            if tries is not None:
                tries.count += 1
            try:
                return action()
            except Exception as err:
                classified = _classify(err)
                if not isinstance(classified, _Transient) or attempt == self.retries:
                    if classified is err:
                        raise
                    raise classified from err
                log.info("retrying after %s", classified)
                delay = self.backoff * 2**attempt
                time.sleep(delay + random.uniform(0, delay / 2))
        raise AssertionError("unreachable")

    # -- sending -------------------------------------------------------------------
    def _send(self, item: UploadItem, tries: _Attempts, *, upsert: bool) -> None:
        if item.size > self.resumable_threshold:
            self._upload_resumable(item, tries, upsert=upsert)
            return
        data = self._read_verified(item)
        options = {
            "content-type": item.content_type,  # storage3 would store text/plain otherwise
            "cache-control": self.cache_control,
            "upsert": "true" if upsert else "false",
        }
        self._retrying(lambda: self._files.upload(item.object_path, data, options), tries)

    def _read_verified(self, item: UploadItem) -> bytes:
        with item.opener() as stream:
            data = _read_exactly(stream, item.size + 1)
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != item.size or digest != item.sha256:
            raise _SourceMismatch(
                f"source bytes ({len(data)} bytes, sha256 {digest[:12]}...) do not match "
                f"the item ({item.size} bytes, sha256 {item.sha256[:12]}...)"
            )
        return data

    # -- resumable (TUS) upload -----------------------------------------------------------
    def _tus_request(
        self, method: str, url: str, headers: dict[str, str], body: bytes = b""
    ) -> httpx.Response:
        response = self._http.request(
            method, url, headers={"Tus-Resumable": "1.0.0", **headers}, content=body
        )
        if response.status_code >= 400:
            raise _classify_status(response.status_code, _response_message(response))
        return response

    def _tus_create(self, item: UploadItem, *, upsert: bool) -> str:
        metadata = {
            "bucketName": self.bucket,
            "objectName": item.object_path,
            "contentType": item.content_type,
            "cacheControl": self.cache_control,
        }
        encoded = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in metadata.items())
        endpoint = f"{self._url}/storage/v1/upload/resumable"
        headers = {
            "Upload-Length": str(item.size),
            "Upload-Metadata": encoded,
            "x-upsert": str(upsert).lower(),
        }
        response = self._tus_request("POST", endpoint, headers)
        return urljoin(endpoint + "/", response.headers["Location"])

    def _upload_resumable(self, item: UploadItem, tries: _Attempts, *, upsert: bool) -> None:
        """Create a TUS upload and send it in 6 MB chunks.

        The chunk in flight stays in memory until the server acknowledges it,
        so a retry resends it without re-reading the source; the source is
        read once, in order, and hashed on the way.
        """
        location = self._retrying(lambda: self._tus_create(item, upsert=upsert), tries)
        digest = hashlib.sha256()
        with item.opener() as stream:
            offset = 0
            while offset < item.size:
                chunk = _read_exactly(stream, min(TUS_CHUNK_SIZE, item.size - offset))
                if not chunk:
                    raise _SourceMismatch(f"source ended after {offset} bytes, the item says {item.size}")
                digest.update(chunk)
                offset = self._retrying(lambda c=chunk, o=offset: self._tus_patch(location, o, c), tries)
            extra = stream.read(1)
        if extra or digest.hexdigest() != item.sha256:
            # Already stored: take it back so a later run does not take it for the real file.
            self._retrying(lambda: self._files.remove([item.object_path]))
            raise _SourceMismatch("source bytes do not match the item's size/sha256; the upload was removed")

    def _tus_patch(self, location: str, offset: int, chunk: bytes) -> int:
        """Send ``chunk`` at ``offset``; if an earlier try landed unseen, move on."""
        headers = {"Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
        try:
            response = self._tus_request("PATCH", location, headers, chunk)
        except _OffsetConflict:
            server_offset = int(self._tus_request("HEAD", location, {}).headers["Upload-Offset"])
            if server_offset == offset + len(chunk):
                return server_offset
            raise _Rejected(
                "failed", f"server is at offset {server_offset}, chunk was for {offset}"
            ) from None
        return int(response.headers["Upload-Offset"])


def _response_message(response: httpx.Response) -> str:
    text = response.text.strip()
    if text.startswith("{"):
        try:
            return str(response.json().get("message", text))
        except ValueError:
            return text
    return text or response.reason_phrase


# ----------------------------------------------------------------------------
# Reconciliation helpers


def _object_url(url: str, bucket: str, path: str) -> str:
    return f"{url.rstrip('/')}/storage/v1/object/{quote(bucket, safe='')}/{quote(path, safe='/')}"


def remote_sha256(
    client: Any,
    bucket: str,
    path: str,
    *,
    size: int,
    http: httpx.Client | None = None,
    url: str | None = None,
    stream_above: int = RESUMABLE_THRESHOLD,
) -> str:
    """SHA-256 of an object's bytes, downloaded.

    Objects up to ``stream_above`` bytes use the client's
    ``storage.from_(bucket).download`` (which returns the whole body); larger
    ones are streamed with ``http`` (an httpx client carrying the keys) or,
    without one, with a client made from ``client.supabase_url`` and
    ``client.supabase_key``, so they are never held whole in memory.
    """
    if size <= stream_above:
        return hashlib.sha256(client.storage.from_(bucket).download(path)).hexdigest()
    base = url or str(client.supabase_url)
    own = http is None
    if http is None:
        key = client.supabase_key
        http = httpx.Client(timeout=60.0, headers={"apikey": key, "Authorization": f"Bearer {key}"})
    try:
        digest = hashlib.sha256()
        with http.stream("GET", _object_url(base, bucket, path)) as response:
            if response.status_code >= 400:
                response.read()
                raise _classify_status(response.status_code, _response_message(response))
            for piece in response.iter_bytes(1 << 20):
                digest.update(piece)
        return digest.hexdigest()
    finally:
        if own:
            http.close()


def verify_object(client: Any, bucket: str, path: str, size: int, sha256: str) -> str | None:
    """``None`` if Storage holds exactly these bytes at ``path``, else the reason.

    The stored size (from ``info``) is compared first, so a wrong object is
    reported without a download; an equal size is confirmed by hashing the
    downloaded bytes (streamed above 6 MB).
    """
    try:
        info = client.storage.from_(bucket).info(path)
    except StorageApiError as err:
        if _status(err) == 404:
            return "missing"
        raise
    stored = int(info.get("size") or 0)
    if stored != size:
        return f"size {stored} != expected {size}"
    digest = remote_sha256(client, bucket, path, size=stored)
    if digest != sha256:
        return f"sha256 {digest} != expected {sha256}"
    return None


def list_objects(client: Any, bucket: str, prefix: str = "") -> dict[str, int]:
    """Every object under ``prefix`` as ``{path: size}``, walking folders.

    Storage lists one level at a time (folders come back with ``id`` null),
    ``limit``/``offset`` paged. Dashboard folder placeholders
    (``.emptyFolderPlaceholder``) are not media and are left out.
    """
    files = client.storage.from_(bucket)
    found: dict[str, int] = {}
    folders = [prefix.strip("/")]
    while folders:
        folder = folders.pop()
        offset = 0
        while True:
            page = files.list(
                folder or None,
                {"limit": LIST_PAGE_SIZE, "offset": offset, "sortBy": {"column": "name", "order": "asc"}},
            )
            for entry in page:
                path = f"{folder}/{entry['name']}" if folder else entry["name"]
                if entry.get("id") is None:
                    folders.append(path)
                elif not entry["name"].endswith(EMPTY_FOLDER):
                    found[path] = int((entry.get("metadata") or {}).get("size") or 0)
            if len(page) < LIST_PAGE_SIZE:
                break
            offset += LIST_PAGE_SIZE
    return found


def remove_objects(client: Any, bucket: str, paths: Iterable[str]) -> list[str]:
    """Delete ``paths`` (in batches of 1000); returns the paths Storage actually removed."""
    files = client.storage.from_(bucket)
    removed: list[str] = []
    todo = list(dict.fromkeys(paths))
    for start in range(0, len(todo), REMOVE_BATCH_SIZE):
        batch = todo[start : start + REMOVE_BATCH_SIZE]
        removed.extend(row["name"] for row in files.remove(batch))
    return removed
