"""TUS resumable uploads of the Storage stand-in, at ``/upload/resumable``.

This module owns the TUS routes as a mixin of the Storage request handler:
@tus/server's protocol checks plus Supabase's hooks (``src/http/routes/tus``):
plain-text error bodies with the real HTTP status (412 without
``Tus-Resumable``, 409 ``Upload-Offset conflict``, 413 ``Maximum size
exceeded``, 404 for an unknown upload, storage errors mapped to their own
status), ``Location`` holding the base64url of ``bucket/object/version``, and
the multipart eTag of the object a finished upload becomes.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from local_runtime.standins.storage.errors import (
    StorageError,
    TusError,
    _duplicate,
    _invalid_bucket_name,
    _invalid_mime,
)
from local_runtime.standins.storage.parsing import Auth, _loads_or_none, _Request
from local_runtime.standins.storage.rules import (
    API_PREFIX,
    TUS_VERSION,
    _multipart_etag,
    is_valid_bucket_name,
    mime_allowed,
)
from local_runtime.standins.storage.store import _Blob, _now_iso, _Store
from local_runtime.standins.tokens import b64url


class TusRoutes:
    """The ``r_tus_*`` routes; the handler provides the shared checks and the senders."""

    store: _Store
    standin: Any
    _check_key: Callable[[str], None]
    _find_bucket: Callable[[str], dict[str, Any]]
    _check_can_write: Callable[..., None]
    _send_text: Callable[..., Any]

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
            upload_id = b64url(f"{bucket_id}/{key}/{version}".encode())
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
