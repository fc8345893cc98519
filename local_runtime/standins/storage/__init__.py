"""A local stand-in for Supabase Storage, as the gateway exposes it under ``/storage/v1``.

This package owns the fake: a threaded HTTP server that answers the routes the
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
Modules: ``server`` (the stand-in and its command line), ``handler`` (what
each route does), ``tus`` (resumable uploads), ``parsing`` (requests, multipart
bodies, the route table), ``rules`` (keys, bucket names, MIME types, sizes,
eTags), ``errors`` (the server's error bodies), ``store`` (the data folder).
"""

from __future__ import annotations

from local_runtime.standins.base import Fault, GatewayError, RequestRecord
from local_runtime.standins.storage.errors import StorageError, TusError
from local_runtime.standins.storage.parsing import Auth
from local_runtime.standins.storage.rules import (
    API_PREFIX,
    DEFAULT_GLOBAL_FILE_SIZE_LIMIT,
    KeyRules,
    is_valid_bucket_name,
    is_valid_key,
    mime_allowed,
)
from local_runtime.standins.storage.server import StorageStandIn, main
from local_runtime.standins.tokens import JwtError, make_jwt, verify_jwt

__all__ = [
    "API_PREFIX",
    "DEFAULT_GLOBAL_FILE_SIZE_LIMIT",
    "Auth",
    "Fault",
    "GatewayError",
    "JwtError",
    "KeyRules",
    "RequestRecord",
    "StorageError",
    "StorageStandIn",
    "TusError",
    "is_valid_bucket_name",
    "is_valid_key",
    "main",
    "make_jwt",
    "mime_allowed",
    "verify_jwt",
]
