"""Supabase Storage for the media migration: the bucket, Storage's answers, and the object checks.

This module owns the Storage client side that is not the upload itself: the
bucket the files live in (:func:`ensure_bucket`, :func:`mime_allowed`), what
Storage's refusals mean (transient, final, "already exists"), and the checks
a reconciliation needs (:func:`verify_object`, :func:`remote_sha256`,
:func:`list_objects`, :func:`remove_objects`). Uploading many files is
:mod:`include.supabase.storage_upload`; the legacy side of the files (source,
MIME sniffing, object names) is :mod:`include.migration.media.source`.

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

import hashlib
import logging
from collections.abc import Iterable, Sequence
from typing import Any, Literal
from urllib.parse import quote

import httpx
from storage3.exceptions import StorageApiError

log = logging.getLogger(__name__)

DEFAULT_BUCKET = "media"
RESUMABLE_THRESHOLD = 6 * 1024 * 1024
LIST_PAGE_SIZE = 1000
REMOVE_BATCH_SIZE = 1000  # the server's per-request cap on bulk deletes
EMPTY_FOLDER = ".emptyFolderPlaceholder"

Outcome = Literal["uploaded", "skipped_identical", "conflict", "rejected_size", "rejected_mime", "failed"]


# ----------------------------------------------------------------------------
# Buckets


class BucketSettingsMismatch(RuntimeError):
    """The bucket exists with settings other than the ones the migration needs."""


def status_of(err: StorageApiError) -> int:
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
        if status_of(err) != 404:
            raise
        try:
            client.storage.create_bucket(name, options=options)
            return "created"
        except StorageApiError as create_err:
            if status_of(create_err) != 409:  # created meanwhile by another run: verify it
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
# What Storage's answers mean


class Transient(Exception):
    """A failure worth retrying (5xx, 429, timeout, connection error)."""


class Rejected(Exception):
    """Storage refused the request for good; ``outcome`` says how."""

    def __init__(self, outcome: Outcome, detail: str) -> None:
        super().__init__(detail)
        self.outcome: Outcome = outcome
        self.detail = detail


class AlreadyExists(Exception):
    """Storage answered 409 "The resource already exists"."""


class OffsetConflict(Exception):
    """TUS answered 409 "Upload-Offset conflict"."""


def _is_transient_status(status: int) -> bool:
    # 429 is the server's "too many connections to the database" and 544 its
    # database timeout: both pass, like a 5xx.
    return status >= 500 or status == 429


def classify_status(status: int, message: str) -> Exception:
    message = message.strip()
    if status == 409:
        return OffsetConflict(message) if "Upload-Offset" in message else AlreadyExists(message)
    if status == 413:
        return Rejected("rejected_size", f"Storage refused the size: {message}")
    if status == 415:
        return Rejected("rejected_mime", f"Storage refused the MIME type: {message}")
    if _is_transient_status(status):
        return Transient(f"HTTP {status}: {message}")
    return Rejected("failed", f"Storage refused the request (status {status}): {message}")


def classify(err: Exception) -> Exception:
    if isinstance(err, StorageApiError):
        return classify_status(status_of(err), err.message)
    if isinstance(err, httpx.TransportError):  # timeouts, refused/reset connections, protocol errors
        return Transient(f"{type(err).__name__}: {err}")
    return err


def response_message(response: httpx.Response) -> str:
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
                raise classify_status(response.status_code, response_message(response))
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
        if status_of(err) == 404:
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
