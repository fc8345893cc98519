"""How the Storage stand-in reads a request: the caller, the body, multipart forms, the route.

This module owns request parsing and routing, and nothing of what a route
does: :class:`Auth` (who is calling after the JWT check), the parsed request,
``multipart/form-data`` bodies as storage3 sends them, and the route table
(method, path pattern, handler, whether a JWT is required).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote

from local_runtime.standins.storage.errors import _no_content, _validation


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


def _loads_or_none(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
