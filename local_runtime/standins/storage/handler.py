"""The Storage stand-in's request handler: buckets, object reads and listings, uploads.

This module owns what each Storage route does once a request is parsed
(``src/http/routes``, ``src/storage``): the gateway and JWT checks, row-level
security as a fresh project has it (only ``service_role`` writes, lists or
reads private objects), the uploader's order of checks, and the error bodies.
The TUS routes come from :mod:`local_runtime.standins.storage.tus`.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import parse_qs, unquote

from local_runtime.standins.base import GatewayError, StandInHandler, check_api_key
from local_runtime.standins.storage.errors import (
    StorageError,
    TusError,
    _access_denied,
    _bucket_not_empty,
    _duplicate,
    _entity_too_large,
    _invalid_bucket_name,
    _invalid_key,
    _invalid_mime,
    _no_content,
    _no_such_bucket,
    _no_such_key,
    _validation,
)
from local_runtime.standins.storage.parsing import (
    Access,
    Auth,
    _loads_or_none,
    _match_route,
    _parse_multipart,
    _Request,
)
from local_runtime.standins.storage.rules import (
    _BUCKET_MIME,
    API_PREFIX,
    EMPTY_FOLDER,
    RLS_MESSAGE,
    TUS_VERSION,
    _parse_size_limit,
    _s3_etag,
    is_valid_bucket_name,
    is_valid_key,
    mime_allowed,
)
from local_runtime.standins.storage.store import _http_date, _now_iso, _Store
from local_runtime.standins.storage.tus import TusRoutes
from local_runtime.standins.tokens import JwtError, verify_jwt

if TYPE_CHECKING:
    from local_runtime.standins.storage.server import StorageStandIn

log = logging.getLogger(__name__)


class _Handler(TusRoutes, StandInHandler):
    """One connection; routes each request to the matching ``r_*`` method."""

    methods = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    server_version = "storage-standin"

    @property
    def standin(self) -> StorageStandIn:
        return self.server.standin  # type: ignore[attr-defined,no-any-return]

    @property
    def store(self) -> _Store:  # type: ignore[override]
        return self.standin.store

    def _dispatch(self, method: str) -> None:
        self._status = 0
        self._is_tus = False
        request = self._read_request(method)
        self.expect_answer(method, request.path)
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
            self.log_request_answered(method, request.path, self._status)

    def _route(self, request: _Request) -> None:
        if not request.raw_path.startswith(API_PREFIX + "/"):
            raise GatewayError(404, {"message": "no Route matched with those values"})
        fault = self.take_fault(request.method, request.path)
        if fault is not None:
            self._send_bytes(fault.status or 0, fault.body, "application/json")
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
            check_api_key(apikey, secret)
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


def _sort_entries(entries: list[dict[str, Any]], column: str, order: str) -> list[dict[str, Any]]:
    """ORDER BY <column> COLLATE "C"; NULLs last ascending, first descending, as PostgreSQL."""
    descending = order == "desc"
    if column == "name":
        return sorted(entries, key=lambda e: e["name"].encode("utf-8", "surrogatepass"), reverse=descending)
    present = sorted((e for e in entries if e.get(column)), key=lambda e: e[column], reverse=descending)
    missing = sorted((e for e in entries if not e.get(column)), key=lambda e: e["name"])
    return missing + present if descending else present + missing
