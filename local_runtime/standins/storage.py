"""A local stand-in for Supabase Storage, as the gateway exposes it under ``/storage/v1``.

This module owns the fake: a threaded HTTP server that answers the routes the
``supabase`` Python client (storage3) and a TUS client call, with the status
codes and error bodies of the real server (supabase/storage), so the media
migration can be developed and tested without a Supabase project.

What it reproduces, and where it comes from (supabase/storage source):

* Errors are rendered as ``{"statusCode": "409", "code": ..., "error": ...,
  "message": ...}`` and sent with HTTP **400** (HTTP 500 only when
  ``statusCode`` is ``"500"``); the real status lives in the body
  (``src/http/error-handler.ts``, ``StorageBackendError``: ``userStatusCode``).
  storage3 reads ``statusCode`` from the body into ``StorageApiError.status``.
* The gateway (Kong) answers 401 ``{"message": "No API key found in request"}``
  / ``{"message": "Invalid API key"}`` when ``apikey`` is missing or unknown.
* ``Authorization: Bearer <JWT>`` is verified with HS256 against the project
  secret; a bad token is ``AccessDenied`` (403 in the body, message from
  jsonwebtoken: ``invalid signature``, ``jwt malformed``, ``jwt expired``).
  The deprecated ``GET /object/{bucket}/{key}`` and ``/object/info/...``
  routes tolerate a bad token (``allowInvalidJwt``) and treat the caller as
  unauthenticated.
* Row-level security as a fresh project has it: no policies on
  ``storage.objects`` / ``storage.buckets``, so only ``service_role`` can
  write, list or read private objects. Anything else gets 403
  ``new row violates row-level security policy`` on writes, an empty list on
  listings, and 404 ``Object not found`` (``error: not_found``) on reads.
* Upload order (``src/storage/uploader.ts``): bucket exists -> MIME type
  allowed (415 ``mime type X is not supported``, wildcards ``image/*``) ->
  key valid (400 ``Invalid key``) -> permission and duplicate (409
  ``The resource already exists``, error ``Duplicate``, unless
  ``x-upsert: true``; PUT always upserts) -> size (413 ``The object exceeded
  the maximum allowed size``, error ``Payload too large``). The size limit is
  ``min(bucket.file_size_limit, global limit)``; the "6 MB standard upload"
  is advice, not a server limit.
* Object keys are checked with the long-standing ASCII regex of
  ``src/storage/limits.ts`` (``key_rules="strict"``, the default: anything
  accepted here is accepted by every deployed version) or the newer UTF-8
  rules (``key_rules="utf8"``).
* TUS resumable uploads at ``/upload/resumable`` follow @tus/server plus
  Supabase's hooks (``src/http/routes/tus``): plain-text error bodies with the
  real HTTP status (412 without ``Tus-Resumable``, 409 ``Upload-Offset
  conflict``, 413 ``Maximum size exceeded``, 404 for an unknown upload, and
  the storage errors above mapped to their own status), ``Location`` holding
  the base64url of ``bucket/object/version``.
* Objects carry ``metadata`` ``{eTag, size, mimetype, cacheControl,
  lastModified, contentLength, httpStatusCode}``. The eTag is S3's: the quoted
  MD5 for a standard upload, and ``"<md5 of part md5s>-<parts>"`` (6 MB parts)
  for a resumable one, so callers cannot treat it as a content hash.

State lives on disk under a data folder (``buckets.json``, one JSON record and
one blob per object, TUS uploads in progress), so a restart keeps everything.

For tests, :meth:`StorageStandIn.inject_fault` makes the next N requests whose
path matches a pattern fail with a given status or wait before being handled;
it is a Python method, never an HTTP route, so no client can trigger it.

Command line (runs until SIGTERM)::

    python -m local_runtime.standins.storage --host 127.0.0.1 --port 54330 \
        --data .local/storage --jwt-secret SECRET
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import parse_qs, unquote

log = logging.getLogger(__name__)

API_PREFIX = "/storage/v1"
DEFAULT_GLOBAL_FILE_SIZE_LIMIT = 50 * 1024 * 1024  # the Free plan's global limit
TUS_VERSION = "1.0.0"
S3_PART_SIZE = 6 * 1024 * 1024  # Supabase's TUS part size; shapes the multipart eTag
EMPTY_FOLDER = ".emptyFolderPlaceholder"
RLS_MESSAGE = "new row violates row-level security policy"

KeyRules = Literal["strict", "utf8"]

# ----------------------------------------------------------------------------
# JWT (HS256 only, stdlib)


class JwtError(Exception):
    """A token that jsonwebtoken would refuse; the message is jsonwebtoken's."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_jwt(
    secret: str,
    role: str,
    *,
    expires_in: int = 10 * 365 * 24 * 3600,
    sub: str | None = None,
    issuer: str = "supabase-standin",
) -> str:
    """Mint an HS256 API key like Supabase's ``anon`` / ``service_role`` keys."""
    now = int(time.time())
    payload: dict[str, Any] = {"iss": issuer, "role": role, "iat": now, "exp": now + expires_in}
    if sub is not None:
        payload["sub"] = sub
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64url(json.dumps(payload, separators=(",", ":")).encode())
    signature = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64url(signature)}"


def verify_jwt(token: str, secret: str) -> dict[str, Any]:
    """Check signature and time claims; return the payload or raise :class:`JwtError`."""
    if not token:
        raise JwtError("jwt must be provided")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError("jwt malformed")
    try:
        header = json.loads(_b64url_decode(parts[0]))
        payload = json.loads(_b64url_decode(parts[1]))
        signature = _b64url_decode(parts[2])
    except (ValueError, UnicodeDecodeError) as err:
        raise JwtError("invalid token") from err
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise JwtError("invalid token")
    if header.get("alg") != "HS256":
        raise JwtError("invalid algorithm")
    expected = hmac.new(secret.encode(), f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        raise JwtError("invalid signature")
    now = time.time()
    if isinstance(payload.get("exp"), int | float) and now >= payload["exp"]:
        raise JwtError("jwt expired")
    if isinstance(payload.get("nbf"), int | float) and now < payload["nbf"]:
        raise JwtError("jwt not active")
    return payload


# ----------------------------------------------------------------------------
# Errors, in the shapes the real services send


class StorageError(Exception):
    """A storage-server error: ``statusCode`` in the body, HTTP 400 unless 500."""

    def __init__(self, status: int, code: str, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.error = error or code

    @property
    def http_status(self) -> int:
        return 500 if self.status == 500 else 400

    def body(self) -> dict[str, str]:
        return {
            "statusCode": str(self.status),
            "code": self.code,
            "error": self.error,
            "message": self.message,
        }


class TusError(Exception):
    """A TUS protocol error: real HTTP status, plain-text body."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(body)
        self.status = status
        self.text = body


class GatewayError(Exception):
    """What the API gateway answers before the request reaches Storage."""

    def __init__(self, status: int, body: dict[str, str]) -> None:
        super().__init__(body.get("message", ""))
        self.status = status
        self.payload = body


def _no_such_bucket() -> StorageError:
    return StorageError(404, "NoSuchBucket", "Bucket not found", "Bucket not found")


def _no_such_key() -> StorageError:
    return StorageError(404, "NoSuchKey", "Object not found", "not_found")


def _duplicate(code: str = "KeyAlreadyExists") -> StorageError:
    return StorageError(409, code, "The resource already exists", "Duplicate")


def _entity_too_large() -> StorageError:
    return StorageError(
        413, "EntityTooLarge", "The object exceeded the maximum allowed size", "Payload too large"
    )


def _invalid_mime(mime: str) -> StorageError:
    return StorageError(415, "InvalidMimeType", f"mime type {mime} is not supported", "invalid_mime_type")


def _access_denied(message: str) -> StorageError:
    return StorageError(403, "AccessDenied", message or "Access denied", "Unauthorized")


def _invalid_key(key: str) -> StorageError:
    return StorageError(400, "InvalidKey", f"Invalid key: {key}")


def _invalid_bucket_name(name: str) -> StorageError:
    return StorageError(400, "InvalidBucketName", "Bucket name invalid", "Invalid Input")


def _bucket_not_empty() -> StorageError:
    return StorageError(409, "ResourceNotEmpty", "The bucket you tried to delete is not empty")


def _no_content() -> StorageError:
    return StorageError(400, "InvalidRequest", "No content provided")


def _validation(message: str) -> StorageError:
    # Fastify's JSON-schema rejection, which happens before any storage logic.
    return StorageError(400, "FST_ERR_VALIDATION", message, "Bad Request")


# ----------------------------------------------------------------------------
# Rules copied from the server: keys, bucket names, MIME types, sizes

# src/storage/limits.ts, the ASCII rule every deployed version accepts.
_STRICT_KEY = re.compile(r"^(\w|/|!|-|\.|\*|'|\(|\)| |&|\$|@|=|;|:|\+|,|\?)*$", re.ASCII)
# Newer limits.ts: any UTF-8 except controls, S3 "characters to avoid" and invisible glyphs.
_UTF8_KEY = re.compile(
    '^[^\u0000-\u001f\u007f\u0080-\u009f#\\[\\]{}^`"<>\\\\|%~'
    "\u034f\u061c\u200b\u200e\u200f\u2028\u2029\u202a-\u202e\u2060\u2066-\u2069\ufeff]+$"
)
_TRAVERSAL = re.compile(r"(^|/)\.{1,2}(/|$)")
_BUCKET_NAME = re.compile(r"^[A-Za-z0-9_!.*'() &$=@;:+,?-]*$")
_BUCKET_MIME = re.compile(r"^([a-zA-Z0-9\-+.]+)/([a-zA-Z0-9\-+.]+)(;\s*charset=[a-zA-Z0-9\-]+)?$|\*$")
_SIZE_WITH_UNIT = re.compile(r"(^[0-9]+(?:\.[0-9]+)?)(gb|mb|kb|b)$", re.IGNORECASE)
_MAX_KEY_BYTES = 1024


def is_valid_key(key: str, rules: KeyRules = "strict") -> bool:
    """Whether Storage accepts ``key`` as an object name under the given rules."""
    if not key:
        return False
    if rules == "strict":
        return bool(_STRICT_KEY.match(key))
    if not _UTF8_KEY.match(key) or _TRAVERSAL.search(key):
        return False
    return len(key.encode("utf-8", "surrogatepass")) <= _MAX_KEY_BYTES


def is_valid_bucket_name(name: str) -> bool:
    return 0 < len(name) < 101 and bool(_BUCKET_NAME.match(name))


def mime_allowed(mime: str, allowed: list[str]) -> bool:
    """The server's check: same type and subtype, or ``type/*``; no normalisation."""
    requested = mime.split("/")
    if len(requested) < 2:
        return False
    kind, sub = requested[0], requested[1]
    for entry in allowed:
        allowed_parts = entry.split("/")
        if len(allowed_parts) < 2:
            continue
        if allowed_parts[0] == kind and allowed_parts[1] in ("*", sub):
            return True
    return False


def _parse_size_limit(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise _validation("body/file_size_limit must be integer or string")
    if isinstance(value, int):
        if value < 0:
            raise _validation("body/file_size_limit must be >= 0")
        return value
    match = _SIZE_WITH_UNIT.match(str(value))
    if not match:
        raise StorageError(
            400, "InvalidRequest", "Invalid file size format, hint: use 20GB / 20MB / 30KB / 3B"
        )
    factor = {"GB": 10**9, "MB": 10**6, "KB": 10**3, "B": 1}[match.group(2).upper()]
    return round(float(match.group(1)) * factor)


def _s3_etag(md5_hex: str) -> str:
    return f'"{md5_hex}"'


def _multipart_etag(path: Path) -> str:
    """S3's eTag for a multipart upload: md5 of the parts' md5s, then ``-<parts>``."""
    digests = []
    with path.open("rb") as fh:
        while chunk := fh.read(S3_PART_SIZE):
            digests.append(hashlib.md5(chunk).digest())
    if not digests:
        digests.append(hashlib.md5(b"").digest())
    return f'"{hashlib.md5(b"".join(digests)).hexdigest()}-{len(digests)}"'


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _http_date(iso: str) -> str:
    parsed = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return formatdate(parsed.timestamp(), usegmt=True)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# ----------------------------------------------------------------------------
# On-disk state


@dataclass
class _Blob:
    """Bytes received for an object, already on disk, with their digests."""

    path: Path
    size: int
    md5: str
    sha256: str


class _Store:
    """Buckets, objects and TUS uploads, kept on disk and indexed in memory.

    Each object is a JSON record plus a blob named after its version; the
    record is replaced atomically, so a crash leaves the old or the new object,
    never a mix. One lock guards every read-modify-write of the index.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.RLock()
        (root / "objects").mkdir(parents=True, exist_ok=True)
        (root / "tus").mkdir(parents=True, exist_ok=True)
        (root / "incoming").mkdir(parents=True, exist_ok=True)
        self.buckets: dict[str, dict[str, Any]] = {}
        self.objects: dict[str, dict[str, dict[str, Any]]] = {}
        self.uploads: dict[str, dict[str, Any]] = {}
        self._load()

    # -- loading ----------------------------------------------------------------
    def _load(self) -> None:
        buckets_file = self.root / "buckets.json"
        if buckets_file.exists():
            self.buckets = json.loads(buckets_file.read_text())
        for bucket_id in self.buckets:
            self.objects[bucket_id] = {}
        for record_file in (self.root / "objects").glob("*/*.json"):
            record = json.loads(record_file.read_text())
            blob = self.blob_path(record["bucket_id"], record["name"], record["version"])
            if record["bucket_id"] in self.objects and blob.exists():
                self.objects[record["bucket_id"]][record["name"]] = record
        for upload_file in (self.root / "tus").glob("*.json"):
            upload = json.loads(upload_file.read_text())
            self.uploads[upload["id"]] = upload
        for stale in (self.root / "incoming").iterdir():
            stale.unlink(missing_ok=True)

    # -- paths ------------------------------------------------------------------
    def bucket_dir(self, bucket_id: str) -> Path:
        return self.root / "objects" / _digest(bucket_id)[:24]

    def record_path(self, bucket_id: str, key: str) -> Path:
        return self.bucket_dir(bucket_id) / f"{_digest(key)}.json"

    def blob_path(self, bucket_id: str, key: str, version: str) -> Path:
        return self.bucket_dir(bucket_id) / f"{_digest(key)}.{version}.bin"

    def upload_paths(self, upload_id: str) -> tuple[Path, Path]:
        stem = self.root / "tus" / _digest(upload_id)[:40]
        return stem.with_suffix(".json"), stem.with_suffix(".part")

    def incoming_path(self) -> Path:
        return self.root / "incoming" / uuid.uuid4().hex

    # -- writes -------------------------------------------------------------------
    @staticmethod
    def _write_json(path: Path, data: Any) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)

    def save_buckets(self) -> None:
        self._write_json(self.root / "buckets.json", self.buckets)

    def write_blob(self, data: bytes) -> _Blob:
        path = self.incoming_path()
        path.write_bytes(data)
        return _Blob(path, len(data), hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest())

    def commit_object(
        self,
        bucket_id: str,
        key: str,
        blob: _Blob,
        *,
        mimetype: str,
        cache_control: str,
        owner: str | None,
        user_metadata: dict[str, Any] | None,
        etag: str,
    ) -> dict[str, Any]:
        """Make ``blob`` the current content of ``key`` (caller holds the lock)."""
        now = _now_iso()
        old = self.objects[bucket_id].get(key)
        version = uuid.uuid4().hex
        self.bucket_dir(bucket_id).mkdir(parents=True, exist_ok=True)
        os.replace(blob.path, self.blob_path(bucket_id, key, version))
        record = {
            "id": old["id"] if old else str(uuid.uuid4()),
            "bucket_id": bucket_id,
            "name": key,
            "owner": owner,
            "version": version,
            "created_at": old["created_at"] if old else now,
            "updated_at": now,
            "last_accessed_at": now,
            "metadata": {
                "eTag": etag,
                "size": blob.size,
                "mimetype": mimetype,
                "cacheControl": cache_control,
                "lastModified": now,
                "contentLength": blob.size,
                "httpStatusCode": 200,
            },
            "user_metadata": user_metadata,
            # Kept for the stand-in's own bookkeeping; never sent to clients,
            # because the real server has no content hash to offer.
            "standin": {"sha256": blob.sha256},
        }
        self._write_json(self.record_path(bucket_id, key), record)
        self.objects[bucket_id][key] = record
        if old:
            self.blob_path(bucket_id, key, old["version"]).unlink(missing_ok=True)
        return record

    def delete_object(self, bucket_id: str, key: str) -> dict[str, Any] | None:
        record = self.objects.get(bucket_id, {}).pop(key, None)
        if record is None:
            return None
        self.record_path(bucket_id, key).unlink(missing_ok=True)
        self.blob_path(bucket_id, key, record["version"]).unlink(missing_ok=True)
        return record

    def save_upload(self, upload: dict[str, Any]) -> None:
        self._write_json(self.upload_paths(upload["id"])[0], upload)
        self.uploads[upload["id"]] = upload

    def drop_upload(self, upload_id: str) -> None:
        self.uploads.pop(upload_id, None)
        for path in self.upload_paths(upload_id):
            path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------
# Requests, auth, faults


@dataclass
class Auth:
    """Who is calling, as Storage sees it after the JWT check."""

    role: str
    sub: str | None
    authenticated: bool

    @property
    def is_service(self) -> bool:
        return self.role == "service_role"


@dataclass
class Fault:
    """Answer the next ``remaining`` matching requests with ``status`` and/or after ``delay``."""

    pattern: re.Pattern[str]
    method: str | None
    remaining: int
    status: int | None
    delay: float
    body: bytes
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.remaining <= 0:
            return False
        return (self.method is None or self.method == method) and bool(self.pattern.search(path))


@dataclass(frozen=True)
class RequestRecord:
    """One request the stand-in answered: method, path under /storage/v1, HTTP status."""

    method: str
    path: str
    status: int


@dataclass
class _Request:
    method: str
    raw_path: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    truncated: bool

    def json(self) -> Any:
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except ValueError as err:
            raise _validation(f"Body is not valid JSON: {err}") from err


@dataclass
class _Form:
    fields: dict[str, str] = field(default_factory=dict)
    file: bytes | None = None
    file_type: str = "application/octet-stream"


_PARAM = re.compile(r'(\w+)\*?="([^"]*)"|(\w+)=([^;\s]+)')


def _header_params(value: str) -> dict[str, str]:
    params = {}
    for quoted_key, quoted_value, key, plain in _PARAM.findall(value):
        params[(quoted_key or key).lower()] = quoted_value if quoted_key else plain
    return params


def _parse_multipart(body: bytes, content_type: str) -> _Form:
    """Split a multipart/form-data body; the first file part is the object."""
    boundary = _header_params(content_type).get("boundary")
    if not boundary:
        raise _no_content()
    form = _Form()
    for raw in body.split(b"--" + boundary.encode("latin-1"))[1:]:
        if raw.startswith(b"--"):
            break
        head, sep, content = raw.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            continue
        content = content.removesuffix(b"\r\n")
        headers = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        disposition = _header_params(headers.get("content-disposition", ""))
        if "filename" in disposition and form.file is None:
            form.file = content
            form.file_type = headers.get("content-type") or "application/octet-stream"
        elif "name" in disposition:
            form.fields.setdefault(disposition["name"], content.decode("utf-8", "replace"))
    return form


# ----------------------------------------------------------------------------
# Routing

_SEG = r"(?P<bucket>[^/]+)"
_KEY = r"(?P<key>.+)"
_UPLOAD = r"(?P<upload_id>[^/]+)"

Access = Literal["required", "optional", "none"]

_ROUTES: list[tuple[tuple[str, ...], re.Pattern[str], str, Access]] = [
    (("GET",), re.compile(r"^/bucket/?$"), "list_buckets", "required"),
    (("POST",), re.compile(r"^/bucket/?$"), "create_bucket", "required"),
    (("POST",), re.compile(rf"^/bucket/{_SEG}/empty/?$"), "empty_bucket", "required"),
    (("GET",), re.compile(rf"^/bucket/{_SEG}/?$"), "get_bucket", "required"),
    (("PUT",), re.compile(rf"^/bucket/{_SEG}/?$"), "update_bucket", "required"),
    (("DELETE",), re.compile(rf"^/bucket/{_SEG}/?$"), "delete_bucket", "required"),
    (("POST",), re.compile(rf"^/object/list/{_SEG}/?$"), "list_objects", "required"),
    (("GET",), re.compile(rf"^/object/info/public/{_SEG}/{_KEY}$"), "info_public", "none"),
    (("GET",), re.compile(rf"^/object/info/authenticated/{_SEG}/{_KEY}$"), "info", "required"),
    (("GET",), re.compile(rf"^/object/info/{_SEG}/{_KEY}$"), "info", "optional"),
    (("GET", "HEAD"), re.compile(rf"^/object/public/{_SEG}/{_KEY}$"), "get_public", "none"),
    (("GET", "HEAD"), re.compile(rf"^/object/authenticated/{_SEG}/{_KEY}$"), "get_object", "required"),
    (("GET", "HEAD"), re.compile(rf"^/object/{_SEG}/{_KEY}$"), "get_object", "optional"),
    (("POST",), re.compile(rf"^/object/{_SEG}/{_KEY}$"), "create_object", "required"),
    (("PUT",), re.compile(rf"^/object/{_SEG}/{_KEY}$"), "update_object", "required"),
    (("DELETE",), re.compile(rf"^/object/{_SEG}/?$"), "delete_objects", "required"),
    (("DELETE",), re.compile(rf"^/object/{_SEG}/{_KEY}$"), "delete_object", "required"),
    (("OPTIONS",), re.compile(r"^/upload/resumable(/.*)?$"), "tus_options", "none"),
    (("POST",), re.compile(r"^/upload/resumable/?$"), "tus_create", "required"),
    (("PATCH",), re.compile(rf"^/upload/resumable/{_UPLOAD}/?$"), "tus_patch", "required"),
    (("HEAD",), re.compile(rf"^/upload/resumable/{_UPLOAD}/?$"), "tus_head", "required"),
    (("DELETE",), re.compile(rf"^/upload/resumable/{_UPLOAD}/?$"), "tus_delete", "required"),
]


def _match_route(method: str, raw_path: str) -> tuple[str, Access, dict[str, str]] | None:
    for methods, pattern, handler, access in _ROUTES:
        if method not in methods:
            continue
        match = pattern.match(raw_path)
        if match:
            params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
            return handler, access, params
    return None


# ----------------------------------------------------------------------------
# The server


class StorageStandIn:
    """The stand-in server: start it, point ``supabase.create_client`` at :attr:`url`.

    ``global_file_size_limit`` is the project-wide upload limit (Free plan:
    50 MB); ``standard_upload_limit``, when set, caps the non-resumable upload
    only, like the server's ``UPLOAD_FILE_SIZE_LIMIT_STANDARD``.
    """

    def __init__(
        self,
        data_dir: str | Path,
        jwt_secret: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        global_file_size_limit: int = DEFAULT_GLOBAL_FILE_SIZE_LIMIT,
        standard_upload_limit: int | None = None,
        key_rules: KeyRules = "strict",
        verbose: bool = False,
    ) -> None:
        self.jwt_secret = jwt_secret
        self.global_file_size_limit = global_file_size_limit
        self.standard_upload_limit = standard_upload_limit
        self.key_rules: KeyRules = key_rules
        self.verbose = verbose
        self.store = _Store(Path(data_dir))
        self._faults: list[Fault] = []
        self._faults_lock = threading.Lock()
        self.requests: list[RequestRecord] = []
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.standin = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------
    @property
    def url(self) -> str:
        """Project URL as ``create_client`` wants it (Storage lives under /storage/v1)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> StorageStandIn:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="storage-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        # Idle keep-alive connections would otherwise keep being served by
        # their threads after the stop; cut them so a stop is a stop.
        with self._connections_lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> StorageStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- keys ---------------------------------------------------------------------
    def key(self, role: str, **claims: Any) -> str:
        return make_jwt(self.jwt_secret, role, **claims)

    @property
    def service_key(self) -> str:
        return self.key("service_role")

    @property
    def anon_key(self) -> str:
        return self.key("anon")

    # -- faults and the request log ------------------------------------------------
    def inject_fault(
        self,
        path: str,
        *,
        status: int | None = 503,
        times: int = 1,
        delay: float = 0.0,
        method: str | None = None,
        body: str | None = None,
    ) -> Fault:
        """Make the next ``times`` requests whose path matches regex ``path`` misbehave.

        ``path`` is searched in the decoded path under ``/storage/v1`` (for
        example ``^/object/media/``). With ``status`` the request is answered
        with that status after its body has been read, and nothing is stored;
        with ``status=None`` it is only delayed by ``delay`` seconds, then
        handled normally (so a client that timed out may still see its write
        land, as in production).
        """
        if body is None:
            body = json.dumps(
                {
                    "statusCode": str(status),
                    "code": "InternalError",
                    "error": "InternalError",
                    "message": "Injected fault (storage stand-in)",
                }
            )
        fault = Fault(re.compile(path), method, times, status, delay, body.encode())
        with self._faults_lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._faults_lock:
            self._faults.clear()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._faults_lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.remaining -= 1
                    fault.hits += 1
                    return fault
        return None

    def count_requests(self, method: str | None = None, path: str = "") -> int:
        """How many answered requests match ``method`` and regex ``path``."""
        pattern = re.compile(path)
        return sum(
            1
            for r in list(self.requests)
            if (method is None or r.method == method) and pattern.search(r.path)
        )

    def serve_until_signal(self) -> None:
        """Run in the foreground until SIGTERM or SIGINT."""
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        self.start()
        stop.wait()
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    """One connection; routes each request to the matching ``r_*`` method."""

    protocol_version = "HTTP/1.1"
    server_version = "storage-standin"
    # Headers and body go out in separate writes; with Nagle on, the client's
    # delayed ACK adds ~40 ms to every keep-alive request.
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections are dropped after this

    @property
    def standin(self) -> StorageStandIn:
        return self.server.standin  # type: ignore[attr-defined,no-any-return]

    @property
    def store(self) -> _Store:
        return self.standin.store

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if self.standin.verbose:
            super().log_message(format, *args)

    def setup(self) -> None:
        super().setup()
        with self.standin._connections_lock:
            self.standin._connections.add(self.connection)

    def finish(self) -> None:
        with self.standin._connections_lock:
            self.standin._connections.discard(self.connection)
        super().finish()

    # -- entry points -------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def _dispatch(self, method: str) -> None:
        self._status = 0
        self._is_tus = False
        request = self._read_request(method)
        try:
            self._route(request)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except GatewayError as err:
            self._send_json(err.status, err.payload)
        except TusError as err:
            self._send_text(err.status, err.text)
        except StorageError as err:
            self._send_storage_error(err)
        except Exception:  # the real server answers 500 rather than dropping the connection
            log.exception("storage stand-in: unhandled error on %s %s", method, request.path)
            self._send_json(
                500, {"statusCode": "500", "error": "Internal", "message": "Internal Server Error"}
            )
        finally:
            self.standin.requests.append(RequestRecord(method, request.path, self._status))

    def _route(self, request: _Request) -> None:
        if not request.raw_path.startswith(API_PREFIX + "/"):
            raise GatewayError(404, {"message": "no Route matched with those values"})
        fault = self.standin._take_fault(request.method, request.path)
        if fault is not None:
            time.sleep(fault.delay)
            if fault.status is not None:
                self._send_bytes(fault.status, fault.body, "application/json")
                return
        raw = request.raw_path[len(API_PREFIX) :]
        matched = _match_route(request.method, raw)
        if matched is None:
            message = f"Route {request.method}:{raw} not found"
            self._send_json(404, {"statusCode": 404, "error": "Not Found", "message": message})
            return
        handler, access, params = matched
        auth = self._authenticate(request, access)
        # Past the JWT check, TUS hooks render storage errors as status + text;
        # a bad token is still refused by Fastify's JSON error handler.
        self._is_tus = handler.startswith("tus_")
        getattr(self, f"r_{handler}")(request, auth, **params)

    # -- reading ----------------------------------------------------------------
    def _read_request(self, method: str) -> _Request:
        raw_path, _, query = self.path.partition("?")
        headers = {k.lower(): v for k, v in self.headers.items()}
        body, truncated = self._read_body(headers)
        path = unquote(raw_path[len(API_PREFIX) :] if raw_path.startswith(API_PREFIX) else raw_path)
        return _Request(
            method, raw_path, path, parse_qs(query, keep_blank_values=True), headers, body, truncated
        )

    def _read_body(self, headers: dict[str, str]) -> tuple[bytes, bool]:
        """Read the whole body (so the connection stays usable) keeping at most the cap."""
        cap = self.standin.global_file_size_limit + 2 * 1024 * 1024
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._keep_capped(self._chunked_pieces(), cap)
        length = int(headers.get("content-length") or 0)
        return self._keep_capped(self._sized_pieces(length), cap)

    def _sized_pieces(self, length: int) -> Iterator[bytes]:
        while length > 0:
            piece = self.rfile.read(min(length, 1 << 20))
            if not piece:
                return
            length -= len(piece)
            yield piece

    def _chunked_pieces(self) -> Iterator[bytes]:
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return
            yield from self._sized_pieces(size)
            self.rfile.readline()

    @staticmethod
    def _keep_capped(pieces: Iterator[bytes], cap: int) -> tuple[bytes, bool]:
        kept: list[bytes] = []
        total = 0
        truncated = False
        for piece in pieces:
            if total + len(piece) > cap:
                truncated = True
                continue
            kept.append(piece)
            total += len(piece)
        return b"".join(kept), truncated

    # -- auth -----------------------------------------------------------------------
    def _authenticate(self, request: _Request, access: Access) -> Auth:
        secret = self.standin.jwt_secret
        apikey = request.headers.get("apikey", "")
        if access != "none" or apikey:
            if not apikey:
                raise GatewayError(401, {"message": "No API key found in request"})
            try:
                verify_jwt(apikey, secret)
            except JwtError as err:
                raise GatewayError(401, {"message": "Invalid API key"}) from err
        if access == "none":
            return Auth("anon", None, False)
        token = re.sub(r"^Bearer\s+", "", request.headers.get("authorization", ""), flags=re.IGNORECASE)
        try:
            payload = verify_jwt(token, secret)
        except JwtError as err:
            if access == "optional":
                return Auth("anon", None, False)
            raise _access_denied(str(err)) from err
        return Auth(str(payload.get("role", "anon")), payload.get("sub"), True)

    # -- writing ----------------------------------------------------------------------
    def _send_bytes(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if status != 204:
            self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and status != 204:
            self.wfile.write(body)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), "application/json; charset=utf-8", headers)

    def _send_text(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        all_headers = {"Tus-Resumable": TUS_VERSION, **(headers or {})}
        self._send_bytes(status, text.encode(), "text/plain; charset=utf-8", all_headers)

    def _send_storage_error(self, err: StorageError) -> None:
        if self._is_tus:
            self._send_text(err.status, err.message)
            return
        self._send_json(err.http_status, err.body())

    # -- buckets ----------------------------------------------------------------------
    @staticmethod
    def _bucket_view(bucket: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in bucket.items() if not k.startswith("_")}

    def _find_bucket(self, bucket_id: str) -> dict[str, Any]:
        bucket = self.store.buckets.get(bucket_id)
        if bucket is None:
            raise _no_such_bucket()
        return bucket

    def r_list_buckets(self, request: _Request, auth: Auth) -> None:
        with self.store.lock:
            buckets = [self._bucket_view(b) for b in self.store.buckets.values()] if auth.is_service else []
        self._send_json(200, sorted(buckets, key=lambda b: b["name"]))

    def r_get_bucket(self, request: _Request, auth: Auth, bucket: str) -> None:
        with self.store.lock:
            if not auth.is_service:
                raise _no_such_bucket()
            self._send_json(200, self._bucket_view(self._find_bucket(bucket)))

    def _bucket_settings(self, body: dict[str, Any]) -> dict[str, Any]:
        settings: dict[str, Any] = {}
        if "public" in body:
            settings["public"] = bool(body["public"])
        if "file_size_limit" in body:
            limit = _parse_size_limit(body["file_size_limit"])
            if limit is not None and limit > self.standin.global_file_size_limit:
                raise _entity_too_large()
            settings["file_size_limit"] = limit
        if "allowed_mime_types" in body:
            mimes = body["allowed_mime_types"]
            if mimes is not None:
                mimes = [m for m in mimes if m]
                for mime in mimes:
                    if len(mime) > 1000 or not _BUCKET_MIME.search(mime):
                        raise _invalid_mime(mime)
            settings["allowed_mime_types"] = mimes
        return settings

    def r_create_bucket(self, request: _Request, auth: Auth) -> None:
        body = request.json()
        if not isinstance(body, dict) or not body.get("name"):
            raise _validation("body must have required property 'name'")
        bucket_id = str(body.get("id") or body["name"])
        if not is_valid_bucket_name(str(body["name"])) or not is_valid_bucket_name(bucket_id):
            raise _invalid_bucket_name(bucket_id)
        settings = self._bucket_settings(body)
        if not auth.is_service:
            raise _access_denied(RLS_MESSAGE)
        now = _now_iso()
        with self.store.lock:
            if bucket_id in self.store.buckets:
                raise _duplicate("ResourceAlreadyExists")
            self.store.buckets[bucket_id] = {
                "id": bucket_id,
                "name": str(body["name"]),
                "owner": auth.sub or "",
                "public": settings.get("public", False),
                "type": "STANDARD",
                "file_size_limit": settings.get("file_size_limit"),
                "allowed_mime_types": settings.get("allowed_mime_types"),
                "created_at": now,
                "updated_at": now,
            }
            self.store.objects[bucket_id] = {}
            self.store.save_buckets()
        self._send_json(200, {"name": str(body["name"])})

    def r_update_bucket(self, request: _Request, auth: Auth, bucket: str) -> None:
        settings = self._bucket_settings(request.json())
        with self.store.lock:
            if not auth.is_service or bucket not in self.store.buckets:
                raise _no_such_bucket()
            self.store.buckets[bucket].update(settings, updated_at=_now_iso())
            self.store.save_buckets()
        self._send_json(200, {"message": "Successfully updated"})

    def r_delete_bucket(self, request: _Request, auth: Auth, bucket: str) -> None:
        with self.store.lock:
            self._find_bucket(bucket)
            if self.store.objects.get(bucket):
                raise _bucket_not_empty()
            if not auth.is_service:
                raise _no_such_bucket()
            del self.store.buckets[bucket]
            self.store.objects.pop(bucket, None)
            self.store.save_buckets()
        self._send_json(200, {"message": "Successfully deleted"})

    def r_empty_bucket(self, request: _Request, auth: Auth, bucket: str) -> None:
        with self.store.lock:
            if not auth.is_service:
                raise _no_such_bucket()
            self._find_bucket(bucket)
            for key in list(self.store.objects.get(bucket, {})):
                self.store.delete_object(bucket, key)
        self._send_json(200, {"message": "Successfully emptied"})

    # -- object reads -----------------------------------------------------------------
    def _check_key(self, key: str) -> None:
        if not is_valid_key(key, self.standin.key_rules):
            raise _invalid_key(key)

    def _readable_object(
        self, auth: Auth, bucket_id: str, key: str, *, public_route: bool = False
    ) -> dict[str, Any]:
        """getObject's rules: public buckets for anyone, private ones through RLS."""
        bucket = self.store.buckets.get(bucket_id)
        if not auth.authenticated and not (bucket and bucket["public"]):
            raise _access_denied("Access denied to this bucket")
        if bucket is None or (public_route and not bucket["public"]):
            raise _no_such_bucket()
        self._check_key(key)
        record = self.store.objects[bucket_id].get(key)
        if record is None or not (bucket["public"] or auth.is_service):
            raise _no_such_key()
        return record

    def _object_headers(self, record: dict[str, Any]) -> dict[str, str]:
        meta = record["metadata"]
        return {
            "ETag": meta["eTag"],
            "Last-Modified": _http_date(meta["lastModified"]),
            "Cache-Control": meta["cacheControl"],
            "Accept-Ranges": "bytes",
        }

    def _open_blob(self, record: dict[str, Any]) -> BinaryIO:
        # Opened under the lock, read after it: an upsert may replace the blob
        # meanwhile, and the open handle keeps the old bytes readable.
        return self.store.blob_path(record["bucket_id"], record["name"], record["version"]).open("rb")

    def _send_object(self, record: dict[str, Any], blob: BinaryIO) -> None:
        with blob:
            data = blob.read()
        mimetype = record["metadata"]["mimetype"]
        # The server never serves text/html as such (stored XSS); it downgrades it.
        content_type = "text/plain" if "text/html" in mimetype else mimetype
        self._send_bytes(200, data, content_type, self._object_headers(record))

    def r_get_object(self, request: _Request, auth: Auth, bucket: str, key: str) -> None:
        with self.store.lock:
            record = self._readable_object(auth, bucket, key)
            blob = self._open_blob(record)
        self._send_object(record, blob)

    def r_get_public(self, request: _Request, auth: Auth, bucket: str, key: str) -> None:
        with self.store.lock:
            record = self._readable_object(Auth("anon", None, True), bucket, key, public_route=True)
            blob = self._open_blob(record)
        self._send_object(record, blob)

    def _info_body(self, record: dict[str, Any]) -> dict[str, Any]:
        meta = record["metadata"]
        return {
            "id": record["id"],
            "name": record["name"],
            "version": record["version"],
            "bucket_id": record["bucket_id"],
            "size": meta.get("size"),
            "content_type": meta.get("mimetype"),
            "cache_control": meta.get("cacheControl"),
            "etag": meta.get("eTag"),
            "metadata": record.get("user_metadata"),
            "last_modified": record["updated_at"],
            "created_at": record["created_at"],
        }

    def r_info(self, request: _Request, auth: Auth, bucket: str, key: str) -> None:
        with self.store.lock:
            found = self.store.buckets.get(bucket)
            if found is None or (not auth.authenticated and not found["public"]):
                raise _no_such_bucket()
            record = self._readable_object(auth, bucket, key)
            self._send_json(200, self._info_body(record), self._object_headers(record))

    def r_info_public(self, request: _Request, auth: Auth, bucket: str, key: str) -> None:
        with self.store.lock:
            record = self._readable_object(Auth("anon", None, True), bucket, key, public_route=True)
            self._send_json(200, self._info_body(record), self._object_headers(record))

    # -- listing ------------------------------------------------------------------------
    def r_list_objects(self, request: _Request, auth: Auth, bucket: str) -> None:
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("prefix"), str):
            raise _validation("body must have required property 'prefix'")
        limit = int(body.get("limit") or 100)
        offset = int(body.get("offset") or 0)
        if limit < 1 or offset < 0:
            raise _validation("body/limit must be >= 1 and body/offset >= 0")
        sort_by = body.get("sortBy") or {}
        with self.store.lock:
            entries = (
                self._search(bucket, body["prefix"], str(body.get("search") or "")) if auth.is_service else []
            )
        entries = _sort_entries(entries, sort_by.get("column") or "name", sort_by.get("order") or "asc")
        self._send_json(200, entries[offset : offset + limit])

    def _search(self, bucket: str, prefix: str, search: str) -> list[dict[str, Any]]:
        """storage.search(): one level under ``prefix``, folders as rows with null id."""
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        objects = self.store.objects.get(bucket, {})
        names: set[str] = set()
        for key in objects:
            if key.startswith(prefix) and key[len(prefix) :].lower().startswith(search.lower()):
                names.add(key[len(prefix) :].split("/", 1)[0])
        entries = []
        for name in names:
            record = objects.get(prefix + name)
            if record is None:
                entries.append(
                    {
                        "name": name,
                        "id": None,
                        "updated_at": None,
                        "created_at": None,
                        "last_accessed_at": None,
                        "metadata": None,
                    }
                )
            else:
                entries.append(
                    {
                        "name": name,
                        "id": record["id"],
                        "updated_at": record["updated_at"],
                        "created_at": record["created_at"],
                        "last_accessed_at": record["last_accessed_at"],
                        "metadata": record["metadata"],
                    }
                )
        return entries

    # -- object writes -------------------------------------------------------------------
    def r_create_object(self, request: _Request, auth: Auth, bucket: str, key: str) -> None:
        upsert = request.headers.get("x-upsert") == "true"
        self._upload(request, auth, bucket, key, upsert=upsert)

    def r_update_object(self, request: _Request, auth: Auth, bucket: str, key: str) -> None:
        self._upload(request, auth, bucket, key, upsert=True)

    def _incoming_file(self, request: _Request) -> tuple[bytes, str, str, dict[str, Any] | None]:
        """Bytes, MIME type, cache-control and user metadata, as the uploader extracts them."""
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = _parse_multipart(request.body, content_type)
            if form.file is None:
                raise _no_content()
            cache_time = form.fields.get("cacheControl")
            mime = form.fields.get("contentType") or form.file_type
            raw_meta = form.fields.get("metadata") or form.fields.get("userMetadata")
            meta = _loads_or_none(raw_meta) if raw_meta else None
            return form.file, mime, f"max-age={cache_time}" if cache_time else "no-cache", meta
        raw_meta = request.headers.get("x-metadata")
        meta = _loads_or_none(base64.b64decode(raw_meta).decode()) if raw_meta else None
        cache = request.headers.get("cache-control", "no-cache")
        return request.body, content_type or "application/octet-stream", cache, meta

    def _size_limit(self, bucket: dict[str, Any], key: str) -> int:
        if key.endswith(EMPTY_FOLDER):
            return 0
        limit = self.standin.global_file_size_limit
        if isinstance(bucket.get("file_size_limit"), int):
            limit = min(limit, bucket["file_size_limit"])
        if self.standin.standard_upload_limit:
            limit = min(limit, self.standin.standard_upload_limit)
        return limit

    def _check_can_write(self, auth: Auth, bucket_id: str, key: str, *, upsert: bool) -> None:
        """Uploader.canUpload: RLS first, then the unique (bucket, name) constraint."""
        if not auth.is_service:
            raise _access_denied(RLS_MESSAGE)
        if not upsert and key in self.store.objects[bucket_id]:
            raise _duplicate()

    def _upload(self, request: _Request, auth: Auth, bucket_id: str, key: str, *, upsert: bool) -> None:
        with self.store.lock:
            bucket = self._find_bucket(bucket_id)
        data, mime, cache_control, user_meta = self._incoming_file(request)
        allowed = bucket.get("allowed_mime_types")
        if allowed and not key.endswith(EMPTY_FOLDER) and not mime_allowed(mime, allowed):
            raise _invalid_mime(mime)
        self._check_key(key)
        with self.store.lock:
            self._check_can_write(auth, bucket_id, key, upsert=upsert)
        if request.truncated or len(data) > self._size_limit(bucket, key):
            raise _entity_too_large()
        blob = self.store.write_blob(data)
        try:
            with self.store.lock:
                self._find_bucket(bucket_id)
                self._check_can_write(auth, bucket_id, key, upsert=upsert)
                record = self.store.commit_object(
                    bucket_id,
                    key,
                    blob,
                    mimetype=mime,
                    cache_control=cache_control,
                    owner=auth.sub,
                    user_metadata=user_meta,
                    etag=_s3_etag(blob.md5),
                )
        finally:
            blob.path.unlink(missing_ok=True)
        self._send_json(200, {"Id": record["id"], "Key": f"{bucket_id}/{key}"})

    def r_delete_objects(self, request: _Request, auth: Auth, bucket: str) -> None:
        body = request.json()
        prefixes = body.get("prefixes") if isinstance(body, dict) else None
        if not isinstance(prefixes, list) or not prefixes:
            raise _validation("body/prefixes must NOT have fewer than 1 items")
        deleted = []
        with self.store.lock:
            if auth.is_service:
                for name in dict.fromkeys(str(p) for p in prefixes):
                    record = self.store.delete_object(bucket, name)
                    if record is not None:
                        deleted.append({k: v for k, v in record.items() if k != "standin"})
        self._send_json(200, deleted)

    def r_delete_object(self, request: _Request, auth: Auth, bucket: str, key: str) -> None:
        with self.store.lock:
            self._check_key(key)
            if not auth.is_service or self.store.delete_object(bucket, key) is None:
                raise _no_such_key()
        self._send_json(200, {"message": "Successfully deleted"})

    # -- TUS resumable uploads ---------------------------------------------------------
    def _tus_preamble(self, request: _Request) -> None:
        """@tus/server's checks that run before any handler."""
        if "tus-resumable" not in request.headers:
            raise TusError(412, "Tus-Resumable Required\n")
        invalid = [
            name for name, value in request.headers.items() if not _tus_header_ok(request.method, name, value)
        ]
        if invalid:
            raise TusError(400, f"Invalid {' '.join(invalid)}\n")

    def _tus_upload(self, upload_id: str) -> dict[str, Any]:
        upload = self.store.uploads.get(upload_id)
        if upload is None:
            raise TusError(404, "The file for this url was not found\n")
        return upload

    def r_tus_options(self, request: _Request, auth: Auth) -> None:
        self._send_text(
            204,
            "",
            {
                "Tus-Version": TUS_VERSION,
                "Tus-Extension": "creation,creation-with-upload,termination",
                "Tus-Max-Size": str(self.standin.global_file_size_limit),
            },
        )

    def r_tus_create(self, request: _Request, auth: Auth) -> None:
        self._tus_preamble(request)
        if "upload-length" not in request.headers:
            raise TusError(400, "Upload-Length or Upload-Defer-Length header required\n")
        size = int(request.headers["upload-length"])
        metadata = _tus_metadata(request.headers.get("upload-metadata"))
        bucket_id, key = metadata.get("bucketName") or "", metadata.get("objectName") or ""
        if not is_valid_bucket_name(bucket_id):
            raise _invalid_bucket_name(bucket_id)
        self._check_key(key)
        upsert = request.headers.get("x-upsert") == "true"
        with self.store.lock:
            bucket = self._find_bucket(bucket_id)
            limit = min(
                bucket.get("file_size_limit") or self.standin.global_file_size_limit,
                self.standin.global_file_size_limit,
            )
            if size > limit:
                raise TusError(413, "Maximum size exceeded\n")
            self._check_can_write(auth, bucket_id, key, upsert=upsert)
            content_type = metadata.get("contentType")
            allowed = bucket.get("allowed_mime_types")
            if content_type and allowed and not mime_allowed(content_type, allowed):
                raise _invalid_mime(content_type)
            version = str(uuid.uuid4())
            upload_id = _b64url(f"{bucket_id}/{key}/{version}".encode())
            upload = {
                "id": upload_id,
                "bucket": bucket_id,
                "key": key,
                "size": size,
                "offset": 0,
                "metadata": metadata,
                "upsert": upsert,
                "owner": auth.sub,
                "complete": False,
                "created_at": _now_iso(),
            }
            self.store.upload_paths(upload_id)[1].write_bytes(b"")
            self.store.save_upload(upload)
        headers = {
            "Location": f"http://{request.headers.get('host', '')}{API_PREFIX}/upload/resumable/{upload_id}"
        }
        if request.headers.get("content-type") == "application/offset+octet-stream" and request.body:
            headers["Upload-Offset"] = str(self._tus_append(upload, 0, request.body, auth))
        elif size == 0:
            self._tus_append(upload, 0, b"", auth)
        self._send_text(201, "", headers)

    def r_tus_patch(self, request: _Request, auth: Auth, upload_id: str) -> None:
        self._tus_preamble(request)
        if "upload-offset" not in request.headers:
            raise TusError(403, "Upload-Offset header required\n")
        if "content-type" not in request.headers:
            raise TusError(403, "Content-Type header required\n")
        if request.truncated:
            raise TusError(413, "upload's size exceeded\n")
        with self.store.lock:
            upload = self._tus_upload(upload_id)
            self._check_can_write(auth, upload["bucket"], upload["key"], upsert=upload["upsert"])
        offset = self._tus_append(upload, int(request.headers["upload-offset"]), request.body, auth)
        headers = {"Upload-Offset": str(offset)}
        if offset == upload["size"]:
            headers["Tus-Complete"] = "1"
        self._send_text(204, "", headers)

    def _tus_append(self, upload: dict[str, Any], offset: int, data: bytes, auth: Auth) -> int:
        """Write a chunk at ``offset``; when the upload is whole, make it the object."""
        with self.store.lock:
            if upload["offset"] != offset:
                raise TusError(409, "Upload-Offset conflict\n")
            if offset + len(data) > upload["size"]:
                raise TusError(413, "upload's size exceeded\n")
            part = self.store.upload_paths(upload["id"])[1]
            with part.open("ab") as fh:
                fh.write(data)
            upload["offset"] = offset + len(data)
            self.store.save_upload(upload)
            if upload["offset"] == upload["size"] and not upload["complete"]:
                self._tus_finish(upload, part)
            return int(upload["offset"])

    def _tus_finish(self, upload: dict[str, Any], part: Path) -> None:
        bucket_id, key = upload["bucket"], upload["key"]
        self._find_bucket(bucket_id)
        if not upload["upsert"] and key in self.store.objects[bucket_id]:
            raise _duplicate()
        data_md5, data_sha = hashlib.md5(), hashlib.sha256()
        with part.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                data_md5.update(chunk)
                data_sha.update(chunk)
        etag = _multipart_etag(part)
        staged = self.store.incoming_path()
        os.replace(part, staged)
        part.write_bytes(b"")  # keep the upload's HEAD answering with its final offset
        blob = _Blob(staged, upload["size"], data_md5.hexdigest(), data_sha.hexdigest())
        cache = upload["metadata"].get("cacheControl") or ""
        self.store.commit_object(
            bucket_id,
            key,
            blob,
            mimetype=upload["metadata"].get("contentType") or "application/octet-stream",
            cache_control=f"max-age={cache}" if re.fullmatch(r"-?\d+", cache) else "no-cache",
            owner=upload["owner"],
            user_metadata=_loads_or_none(upload["metadata"].get("metadata")),
            etag=etag,
        )
        upload["complete"] = True
        self.store.save_upload(upload)

    def r_tus_head(self, request: _Request, auth: Auth, upload_id: str) -> None:
        self._tus_preamble(request)
        with self.store.lock:
            upload = self._tus_upload(upload_id)
            headers = {
                "Cache-Control": "no-store",
                "Upload-Offset": str(upload["offset"]),
                "Upload-Length": str(upload["size"]),
                "Upload-Metadata": _tus_metadata_header(upload["metadata"]),
            }
        self._send_text(200, "", headers)

    def r_tus_delete(self, request: _Request, auth: Auth, upload_id: str) -> None:
        self._tus_preamble(request)
        with self.store.lock:
            upload = self._tus_upload(upload_id)
            if upload["complete"]:
                raise TusError(400, "Cannot terminate an already completed upload")
            self.store.drop_upload(upload_id)
        self._send_text(204, "")


def _sort_entries(entries: list[dict[str, Any]], column: str, order: str) -> list[dict[str, Any]]:
    """ORDER BY <column> COLLATE "C"; NULLs last ascending, first descending, as PostgreSQL."""
    descending = order == "desc"
    if column == "name":
        return sorted(entries, key=lambda e: e["name"].encode("utf-8", "surrogatepass"), reverse=descending)
    present = sorted((e for e in entries if e.get(column)), key=lambda e: e[column], reverse=descending)
    missing = sorted((e for e in entries if not e.get(column)), key=lambda e: e["name"])
    return missing + present if descending else present + missing


def _loads_or_none(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _tus_metadata(header: str | None) -> dict[str, str]:
    if not header:
        raise StorageError(400, "InvalidRequest", "Metadata header is required")
    metadata = {}
    for pair in header.split(","):
        name, _, value = pair.strip().partition(" ")
        metadata[name] = base64.b64decode(value).decode("utf-8") if value else ""
    return metadata


def _tus_metadata_header(metadata: dict[str, str]) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" if v else k for k, v in metadata.items())


def _tus_header_ok(method: str, name: str, value: str) -> bool:
    """@tus/server's HeaderValidator (Content-Type only matters on PATCH)."""
    checks: dict[str, Callable[[str], bool]] = {
        "upload-offset": lambda v: v.isdigit(),
        "upload-length": lambda v: v.isdigit(),
        "upload-defer-length": lambda v: v == "1",
        "tus-resumable": lambda v: v == TUS_VERSION,
        "upload-metadata": _metadata_ok,
    }
    if name == "content-type":
        return method != "PATCH" or value == "application/offset+octet-stream"
    check = checks.get(name)
    return check is None or check(value)


def _metadata_ok(value: str) -> bool:
    seen = set()
    for pair in value.split(","):
        name, _, encoded = pair.strip().partition(" ")
        if not name or name in seen or " " in encoded:
            return False
        seen.add(name)
        try:
            base64.b64decode(encoded, validate=True)
        except ValueError:
            return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local stand-in for Supabase Storage (/storage/v1).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=54330)
    parser.add_argument("--data", required=True, help="folder that keeps buckets and objects")
    parser.add_argument("--jwt-secret", required=True, help="HS256 secret the API keys are signed with")
    parser.add_argument(
        "--global-limit",
        type=int,
        default=DEFAULT_GLOBAL_FILE_SIZE_LIMIT,
        help="largest object accepted, in bytes (default: 50 MB)",
    )
    parser.add_argument("--key-rules", choices=["strict", "utf8"], default="strict")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    standin = StorageStandIn(
        args.data,
        args.jwt_secret,
        host=args.host,
        port=args.port,
        global_file_size_limit=args.global_limit,
        key_rules=args.key_rules,
        verbose=args.verbose,
    )
    log.info("storage stand-in listening on %s%s (data in %s)", standin.url, API_PREFIX, args.data)
    standin.serve_until_signal()


if __name__ == "__main__":
    main()
