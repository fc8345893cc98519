"""Uploading many media files to one Storage bucket, safely and idempotently.

:class:`StorageUploader` keeps at most ``concurrency`` files in flight,
retries only what Storage calls transient, sends files above 6 MB through the
resumable (TUS) endpoint chunk by chunk, checks the source bytes against the
item's size and SHA-256 while they are read, and never overwrites an object
that holds other bytes (see :mod:`include.supabase.storage` for why an
existing object is confirmed by its SHA-256, not its metadata).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from itertools import islice
from typing import Any, BinaryIO
from urllib.parse import urljoin

import httpx
from storage3.exceptions import StorageApiError

from include.supabase.retry import Backoff, call_with_retry
from include.supabase.storage import (
    RESUMABLE_THRESHOLD,
    AlreadyExists,
    OffsetConflict,
    Outcome,
    Rejected,
    Transient,
    classify,
    classify_status,
    mime_allowed,
    remote_sha256,
    response_message,
    status_of,
)

log = logging.getLogger(__name__)

# Supabase's TUS endpoint expects 6 MB chunks (its S3 part size); the last one may be shorter.
TUS_CHUNK_SIZE = 6 * 1024 * 1024


@dataclass(frozen=True)
class UploadItem:
    """One file to put at ``object_path``; ``size`` and ``sha256`` describe the source bytes."""

    object_path: str
    content_type: str
    size: int
    sha256: str
    opener: Callable[[], BinaryIO]
    # True: ask Storage what is at the path before sending (an object may well be there). False: the
    # caller knows of no object there, so the upload goes first, without upsert, and only a 409 asks.
    probe_first: bool = True


@dataclass(frozen=True)
class UploadResult:
    """What happened to one item; ``attempts`` counts upload requests sent (0 when none were)."""

    object_path: str
    outcome: Outcome
    detail: str
    attempts: int = 0


class _SourceMismatch(Exception):
    """The bytes read from the source are not the ones the item declared."""


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
        # Jitter above the nominal wait: parallel uploads that failed together do not retry together.
        self._backoff = Backoff(backoff, jitter=(1.0, 1.5))
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
        except Rejected as err:
            return UploadResult(item.object_path, err.outcome, err.detail, tries.count)
        except Transient as err:
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
        existing = None
        if item.probe_first:
            existing = self._retrying(f"info {item.object_path}", lambda: self._remote_size(item.object_path))
            if existing is not None:
                verdict = self._compare_existing(item, existing, tries)
                if verdict.outcome != "conflict" or not self.overwrite:
                    return verdict
        # Without upsert Storage answers 409 when the path holds an object: an object expected to be new
        # costs one request, and only a 409 asks what is there.
        try:
            self._send(item, tries, upsert=existing is not None)
        except AlreadyExists:
            # Someone (or our own retried request) wrote it first.
            now = self._retrying(f"info {item.object_path}", lambda: self._remote_size(item.object_path))
            if now is None:
                raise Transient("409 from Storage, yet the object is not there") from None
            verdict = self._compare_existing(item, now, tries)
            if verdict.outcome != "conflict" or not self.overwrite:
                return verdict
            self._send(item, tries, upsert=True)
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
            f"download {path}",
            lambda: remote_sha256(
                self.client,
                self.bucket,
                path,
                size=size,
                http=self._http,
                url=self._url,
                stream_above=self.resumable_threshold,
            ),
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
                bucket = self._retrying(
                    f"get bucket {self.bucket}", lambda: self.client.storage.get_bucket(self.bucket)
                )
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
            if status_of(err) == 404:
                return None
            raise
        return int(info.get("size") or 0)

    def _retrying(self, what: str, action: Callable[[], Any], tries: _Attempts | None = None) -> Any:
        """Run ``action``; after a transient failure wait and run it again, ``retries`` times at most.
        Storage's errors come out classified (:func:`~include.supabase.storage.classify`)."""

        def attempt() -> Any:
            if tries is not None:
                tries.count += 1
            try:
                return action()
            except Exception as err:
                classified = classify(err)
                if classified is err:
                    raise
                raise classified from err

        return call_with_retry(
            attempt,
            attempts=self.retries + 1,
            retryable=lambda err: isinstance(err, Transient),
            backoff=self._backoff,
            what=f"Storage {what}",
        )

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
        self._retrying(
            f"upload {item.object_path}", lambda: self._files.upload(item.object_path, data, options), tries
        )

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
            raise classify_status(response.status_code, response_message(response))
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
        location = self._retrying(
            f"create resumable upload {item.object_path}",
            lambda: self._tus_create(item, upsert=upsert),
            tries,
        )
        digest = hashlib.sha256()
        with item.opener() as stream:
            offset = 0
            while offset < item.size:
                chunk = _read_exactly(stream, min(TUS_CHUNK_SIZE, item.size - offset))
                if not chunk:
                    raise _SourceMismatch(f"source ended after {offset} bytes, the item says {item.size}")
                digest.update(chunk)
                offset = self._retrying(
                    f"resumable chunk at {offset} of {item.object_path}",
                    lambda c=chunk, o=offset: self._tus_patch(location, o, c),
                    tries,
                )
            extra = stream.read(1)
        if extra or digest.hexdigest() != item.sha256:
            # Already stored: take it back so a later run does not take it for the real file.
            self._retrying(f"remove {item.object_path}", lambda: self._files.remove([item.object_path]))
            raise _SourceMismatch("source bytes do not match the item's size/sha256; the upload was removed")

    def _tus_patch(self, location: str, offset: int, chunk: bytes) -> int:
        """Send ``chunk`` at ``offset``; if an earlier try landed unseen, move on."""
        headers = {"Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
        try:
            response = self._tus_request("PATCH", location, headers, chunk)
        except OffsetConflict:
            server_offset = int(self._tus_request("HEAD", location, {}).headers["Upload-Offset"])
            if server_offset == offset + len(chunk):
                return server_offset
            raise Rejected("failed", f"server is at offset {server_offset}, chunk was for {offset}") from None
        return int(response.headers["Upload-Offset"])
