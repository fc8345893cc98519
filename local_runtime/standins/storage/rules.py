"""Storage's validation rules, copied from the server: keys, bucket names, MIME types, sizes, eTags.

This module owns the pure checks the uploader and the bucket routes apply
(``src/storage/limits.ts``, ``src/storage/uploader.ts``), and S3's eTag
arithmetic, so a rule can be read and tested without a server.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal

from local_runtime.standins.storage.errors import StorageError, _validation

API_PREFIX = "/storage/v1"
DEFAULT_GLOBAL_FILE_SIZE_LIMIT = 50 * 1024 * 1024  # the Free plan's global limit
TUS_VERSION = "1.0.0"
S3_PART_SIZE = 6 * 1024 * 1024  # Supabase's TUS part size; shapes the multipart eTag
EMPTY_FOLDER = ".emptyFolderPlaceholder"
RLS_MESSAGE = "new row violates row-level security policy"

KeyRules = Literal["strict", "utf8"]


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
