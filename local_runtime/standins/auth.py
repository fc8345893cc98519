"""A local stand-in for Supabase Auth's admin API (GoTrue), as the gateway exposes it under ``/auth/v1``.

This module owns the fake: a threaded HTTP server answering the admin routes
the ``supabase`` Python client (``supabase_auth``) calls, writing the rows
GoTrue writes into a PostgreSQL database that has the destination
bootstrap's ``auth`` schema, so the admin-API path of the users migration can
be developed and tested without a Supabase project.

Routes (``supabase_auth/_sync/gotrue_admin_api.py``): ``POST /admin/users``
(create_user), ``GET /admin/users?page=&per_page=`` (list_users),
``GET|PUT|DELETE /admin/users/{id}`` (get_user_by_id, update_user_by_id,
delete_user).

What it reproduces, and where it comes from (supabase/auth source):

* The gateway (Kong) answers 401 ``{"message": "No API key found in
  request"}`` / ``{"message": "Invalid API key"}`` when ``apikey`` is missing
  or not signed with the project secret.
* ``requireAdminCredentials`` (``internal/api/middleware.go``, ``auth.go``):
  no ``Authorization: Bearer`` -> 401 ``no_authorization``; a token that does
  not verify (HS256, the project secret, ``exp``) -> 403 ``bad_jwt``; a role
  outside ``service_role`` / ``supabase_admin`` (the anon key) -> 403
  ``not_admin`` "User not allowed".
* Errors (``internal/api/errors.go``): with ``X-Supabase-Api-Version:
  2024-01-01`` (supabase-py always sends it) the body is ``{"code": <error
  code>, "message": ...}`` and the version is echoed; without it the legacy
  ``{"code": <status>, "error_code": ..., "msg": ...}``, where a database
  constraint error is rendered as ``{"code": "23505", "message", "detail"}``.
  ``x-sb-error-code`` carries the code either way.
* ``adminUserCreate`` (``internal/api/admin.go``), in GoTrue's order: body
  must decode into ``AdminUserParams`` (Go ``encoding/json``: unknown keys
  ignored, keys matched case-insensitively, a wrong JSON type is 400
  ``bad_json``); no email and no phone -> 400; the email format
  (``checkmail``'s regex, at most 255 bytes, lower-cased) -> 400
  ``validation_failed``; an email already held by an identity or user of the
  audience -> 422 ``email_exists`` "A user with this email address has
  already been registered"; ``password`` and ``password_hash`` together ->
  400; a plaintext password shorter than 6 -> 422 ``weak_password``; no
  password at all -> a random 64-character one, bcrypt cost 10.
  ``password_hash`` goes through ``models.NewUserWithPasswordHash``:
  ``$argon2...`` must parse as argon2i/argon2id v=19 PHC,
  ``$fbscrypt$...`` as Firebase scrypt, anything else must pass Go's
  ``bcrypt.Cost`` (``$2a$``/``$2b$``/``$2y$``, cost 4..31, 59+ bytes).
  A hash that fails is **HTTP 500 ``unexpected_failure`` "Error creating
  user"** -- GoTrue maps only ``ErrPasswordTooLong`` to 400, so an unsupported
  prefix is a 500, not a 4xx. ``id`` must parse as a UUID and not be nil
  (400). A custom ``id`` that already exists passes every check and fails on
  ``users_pkey`` inside the transaction: 500 "Database error creating new
  user".
* The rows (``internal/models/user.go``, ``identity.go``): every column of
  ``auth.users`` is written: ``instance_id`` the nil UUID, ``aud`` and
  ``role`` ``authenticated``, the email lower-cased, ``encrypted_password``
  the hash unchanged, every token column ``''``, ``is_super_admin`` /
  ``is_sso_user`` / ``is_anonymous`` false, ``raw_app_meta_data``
  ``{"provider": "email", "providers": ["email"]}`` merged with
  ``app_metadata``; ``email_confirm`` sets ``email_confirmed_at`` and adds
  ``"email_verified": true`` to ``raw_user_meta_data`` (``User.Confirm``).
  The email identity has ``provider_id`` = the user id and ``identity_data``
  ``{"sub", "email", "email_verified": false, "phone_verified": false}``
  (``provider.Claims`` through ``structs.Map``: the two flags have no
  ``omitempty``; create does not pass ``email_confirm`` to it). With
  ``password_hash`` and no ``user_metadata``, ``raw_user_meta_data`` is JSON
  ``null`` (``NewUserWithPasswordHash``, unlike ``NewUser``, does not default
  it), which supabase-py's ``User`` model cannot parse: send
  ``user_metadata``.
* ``adminUserUpdate``: ``password_hash`` and ``id`` are read and ignored
  (only a plaintext ``password`` can change the password); ``email`` is not
  checked for duplicates, so another account's email fails on the unique
  index: 500 "Error updating user"; ``user_metadata`` / ``app_metadata`` are
  merged key by key, a ``null`` value deletes the key; a new email updates
  the email identity (``email_verified`` = ``email_confirm``) or creates it.
* ``loadUser``: a malformed id is 404 ``validation_failed`` "user_id must be
  an UUID", an unknown one 404 ``user_not_found`` "User not found".
* ``adminUserDelete``: hard delete (the row and, through the foreign keys,
  its identities and the application's ``public.users`` row), 200 ``{}``.
* ``adminUsers``: ``page`` (default 1) / ``per_page`` (default 50), newest
  first, ``Link`` and ``X-Total-Count`` headers, identities not loaded.

Not reproduced: phone OTP, MFA factors, sessions and audit log tables (the
bootstrap schema has none), the ``filter`` on ``full_name`` only, soft delete
(``should_soft_delete: true`` is answered 501 rather than approximated),
rate limits (use :meth:`AuthStandIn.inject_fault` for 429/5xx), and response
bodies of PUT are re-read from the database after the change.

For tests, :meth:`AuthStandIn.inject_fault` makes the next N matching
requests fail with a status or wait first; :attr:`AuthStandIn.requests`
records every request answered. Both are Python-only, never HTTP routes.

Command line (runs until SIGTERM)::

    python -m local_runtime.standins.auth --port 54331 --dsn postgresql://... --jwt-secret SECRET
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import re
import secrets
import signal
import socket
import string
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode

import bcrypt
import psycopg
from psycopg.types.json import Jsonb

from local_runtime.standins.storage import JwtError, make_jwt, verify_jwt

log = logging.getLogger(__name__)

API_PREFIX = "/auth/v1"
NIL_UUID = "00000000-0000-0000-0000-000000000000"
API_VERSION_HEADER = "X-Supabase-Api-Version"
API_VERSION_2024 = "2024-01-01"
DUPLICATE_EMAIL_MSG = "A user with this email address has already been registered"
DEFAULT_ADMIN_ROLES = ("service_role", "supabase_admin")
BCRYPT_DEFAULT_COST = 10  # golang.org/x/crypto/bcrypt DefaultCost, what GoTrue hashes with

# ----------------------------------------------------------------------------
# Errors, in the shapes the real services send


class AuthError(Exception):
    """GoTrue's ``apierrors.HTTPError``: an HTTP status, an error code, a message."""

    def __init__(self, status: int, code: str, message: str, *, pg: psycopg.Error | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.pg = pg  # the database error behind a 500, rendered by the legacy format


class GatewayError(Exception):
    """What the API gateway answers before the request reaches Auth."""

    def __init__(self, status: int, body: dict[str, str]) -> None:
        super().__init__(body.get("message", ""))
        self.status = status
        self.payload = body


class NotReproduced(Exception):
    """A feature of the real server the stand-in refuses rather than approximates."""


def _bad_request(message: str, code: str = "validation_failed") -> AuthError:
    return AuthError(400, code, message)


def _internal(message: str, pg: psycopg.Error | None = None) -> AuthError:
    return AuthError(500, "unexpected_failure", message, pg=pg)


# ----------------------------------------------------------------------------
# Password hashes: the checks of models.NewUserWithPasswordHash


class HashError(ValueError):
    """A hash GoTrue would refuse; the message is the Go error's."""


_ARGON2 = re.compile(
    r"^[$](?P<alg>argon2(d|i|id))[$]v=(?P<v>(16|19))[$]m=(?P<m>[0-9]+),t=(?P<t>[0-9]+),p=(?P<p>[0-9]+)"
    r"(,keyid=(?P<keyid>[^,$]+))?(,data=(?P<data>[^$]+))?[$](?P<salt>[^$]*)[$](?P<hash>.*)$",
    re.DOTALL,
)
_FBSCRYPT = re.compile(
    r"^\$fbscrypt\$v=(?P<v>[0-9]+),n=(?P<n>[0-9]+),r=(?P<r>[0-9]+),p=(?P<p>[0-9]+)"
    r"(?:,ss=(?P<ss>[^,]+))?(?:,sk=(?P<sk>[^$]+))?\$(?P<salt>[^$]+)\$(?P<hash>.+)$",
    re.DOTALL,
)


def _raw_b64(text: str, what: str) -> bytes:
    """Go's base64.RawStdEncoding: no padding allowed."""
    if "=" in text or len(text) % 4 == 1:
        raise HashError(f"crypto: argon2 hash has invalid base64 in the {what} section")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error as err:
        raise HashError(f"crypto: argon2 hash has invalid base64 in the {what} section") from err


def _go_uint(text: str, bits: int) -> int:
    value = int(text)  # the regex guarantees digits
    if value >= 1 << bits:
        raise ValueError("value out of range")
    return value


def parse_argon2(hash_: str) -> None:
    """crypto.ParseArgon2Hash."""
    m = _ARGON2.match(hash_)
    if m is None:
        raise HashError("crypto: incorrect argon2 hash format")
    if m["alg"] not in ("argon2i", "argon2id"):
        raise HashError(f'crypto: argon2 hash uses unsupported algorithm "{m["alg"]}" only argon2i and '
                        "argon2id supported")
    if m["v"] != "19":
        raise HashError(f'crypto: argon2 hash uses unsupported version "{m["v"]}" only 19 is supported')
    if m["data"]:
        raise HashError("crypto: argon2 hashes with the data parameter not supported")
    if m["keyid"]:
        raise HashError("crypto: argon2 hashes with the keyid parameter not supported")
    for name, bits in (("m", 32), ("t", 32), ("p", 8)):
        try:
            _go_uint(m[name], bits)
        except ValueError as err:
            raise HashError(f'crypto: argon2 hash has invalid {name} parameter "{m[name]}"') from err
    if not _raw_b64(m["hash"], "hash"):
        raise HashError("crypto: argon2 hash is empty")
    if not _raw_b64(m["salt"], "salt"):
        raise HashError("crypto: argon2 salt is empty")


def _std_b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as err:
        raise HashError("crypto: Firebase scrypt hash has invalid base64") from err


def parse_fbscrypt(hash_: str) -> None:
    """crypto.ParseFirebaseScryptHash."""
    m = _FBSCRYPT.match(hash_)
    if m is None:
        raise HashError("crypto: incorrect scrypt hash format")
    if m["v"] != "1":
        raise HashError(f'crypto: Firebase scrypt hash uses unsupported version "{m["v"]}" only version 1 '
                        "is supported")
    for name, bits in (("n", 32), ("r", 64), ("p", 8)):
        try:
            if _go_uint(m[name], bits) == 0:
                raise HashError(f"crypto: Firebase scrypt hash has invalid {name}=0")
        except ValueError as err:
            raise HashError(f'crypto: Firebase scrypt hash has invalid {name} parameter "{m[name]}"') from err
    for part in ("hash", "salt"):
        _std_b64(m[part])
    for part in ("sk", "ss"):
        _std_b64(m[part] or "")


def bcrypt_cost(hash_: str) -> int:
    """golang.org/x/crypto/bcrypt.Cost: what it checks, in its order, with its messages."""
    raw = hash_.encode()
    if len(raw) < 59:
        raise HashError("crypto/bcrypt: hashedSecret too short to be a bcrypted password")
    if raw[0:1] != b"$":
        raise HashError(f"crypto/bcrypt: bcrypt hashes must start with '$', but hashedSecret started with "
                        f"'{chr(raw[0])}'")
    if raw[1] > ord("2"):
        raise HashError(f"crypto/bcrypt: bcrypt algorithm version '{chr(raw[1])}' requested is newer than "
                        "current version '2'")
    n = 3 if raw[2:3] == b"$" else 4
    cost_text = raw[n:n + 2].decode(errors="replace")
    if not re.fullmatch(r"[+-]?[0-9]+", cost_text):
        raise HashError(f'strconv.Atoi: parsing "{cost_text}": invalid syntax')
    cost = int(cost_text)
    if not 4 <= cost <= 31:
        raise HashError(f"crypto/bcrypt: cost {cost} is outside allowed inclusive range 4..31")
    return cost


def check_password_hash(hash_: str) -> None:
    """models.NewUserWithPasswordHash: raise :class:`HashError` for a hash GoTrue refuses."""
    if hash_.startswith("$argon2"):
        parse_argon2(hash_)
    elif hash_.startswith("$fbscrypt"):
        parse_fbscrypt(hash_)
    else:
        bcrypt_cost(hash_)


# ----------------------------------------------------------------------------
# Request parameters, decoded the way Go's encoding/json fills AdminUserParams

_PARAM_TYPES: dict[str, str] = {
    "id": "string",
    "aud": "string",
    "role": "string",
    "email": "string",
    "phone": "string",
    "password": "*string",
    "password_hash": "string",
    "email_confirm": "bool",
    "phone_confirm": "bool",
    "user_metadata": "map[string]interface {}",
    "app_metadata": "map[string]interface {}",
    "ban_duration": "string",
}


@dataclass
class AdminUserParams:
    id: str = ""
    aud: str = ""
    role: str = ""
    email: str = ""
    phone: str = ""
    password: str | None = None
    password_hash: str = ""
    email_confirm: bool = False
    phone_confirm: bool = False
    user_metadata: dict[str, Any] | None = None
    app_metadata: dict[str, Any] | None = None
    ban_duration: str = ""


class _Pairs(list):
    """A JSON object as its key/value pairs, in order (Go assigns them one by one)."""


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, _Pairs):
        return "object"
    return "array"


def _plain(value: Any) -> Any:
    if isinstance(value, _Pairs):
        return {k: _plain(v) for k, v in value}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _syntax_message(body: bytes, err: json.JSONDecodeError) -> str:
    if err.pos >= len(err.doc.rstrip()):
        return "unexpected end of JSON input"
    return f"invalid character {err.doc[err.pos]!r} looking for beginning of value"


def _decode_json(body: bytes, target: str) -> Any:
    """json.Unmarshal's syntax and top-level checks; raises 400 bad_json like retrieveRequestParams."""
    try:
        value = json.loads(body.decode("utf-8", errors="replace"), object_pairs_hook=_Pairs)
    except json.JSONDecodeError as err:
        raise _bad_request(f"Could not parse request body as JSON: {_syntax_message(body, err)}",
                           "bad_json") from err
    if value is not None and not isinstance(value, _Pairs):
        raise _bad_request(f"Could not parse request body as JSON: json: cannot unmarshal "
                           f"{_json_kind(value)} into Go value of type {target}", "bad_json")
    return value


def parse_admin_params(body: bytes) -> AdminUserParams:
    pairs = _decode_json(body, "api.AdminUserParams")
    params = AdminUserParams()
    first_error: str | None = None
    for key, value in pairs or []:
        name = key if key in _PARAM_TYPES else next(
            (n for n in _PARAM_TYPES if n.lower() == key.lower()), None)
        if name is None or value is None:
            if name == "password":
                params.password = None
            continue
        go_type = _PARAM_TYPES[name]
        expected = {"string": "string", "*string": "string", "bool": "bool"}.get(go_type, "object")
        if _json_kind(value) != expected:
            first_error = first_error or (f"json: cannot unmarshal {_json_kind(value)} into Go struct field "
                                          f"AdminUserParams.{name} of type {go_type}")
            continue
        setattr(params, name, _plain(value))
    if first_error:
        raise _bad_request(f"Could not parse request body as JSON: {first_error}", "bad_json")
    return params


# ----------------------------------------------------------------------------
# Validation helpers ported from GoTrue

_EMAIL = re.compile(
    r"[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*"
)
_E164 = re.compile(r"[1-9][0-9]{1,14}")
_BEARER = re.compile(r"^(?:B|b)earer (\S+)$")
_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                   "h": 3600.0}


def validate_email(email: str) -> str:
    """API.validateEmail."""
    if email == "":
        raise _bad_request("An email address is required")
    if len(email.encode()) > 255:
        raise _bad_request("An email address is too long")
    if not _EMAIL.fullmatch(email):
        raise _bad_request("Unable to validate email address: invalid format")
    return email.lower()


def validate_phone(phone: str) -> str:
    phone = phone.removeprefix("+").replace(" ", "")
    if not _E164.fullmatch(phone):
        raise _bad_request("Invalid phone number format (E.164 required)")
    return phone


def parse_go_duration(text: str) -> timedelta:
    """time.ParseDuration (sign, decimal numbers, units ns..h; "0" alone is allowed)."""
    original, sign = text, 1
    if text and text[0] in "+-":
        sign, text = (-1 if text[0] == "-" else 1), text[1:]
    if text == "0":
        return timedelta(0)
    if not text:
        raise ValueError(f'time: invalid duration "{original}"')
    seconds, pos = 0.0, 0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None or m.group(1) in ("", "."):
            what = "missing unit in" if re.fullmatch(r"[0-9.]+", text[pos:]) else "invalid"
            raise ValueError(f'time: {what} duration "{original}"')
        seconds += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return timedelta(seconds=sign * seconds)


def parse_go_uuid(text: str) -> uuid.UUID:
    """gofrs/uuid FromString: canonical, braced, urn:uuid: prefixed, or 32 hex digits."""
    candidate = text
    if len(text) == 45 and text[:9].lower() == "urn:uuid:":
        candidate = text[9:]
    elif len(text) == 38 and text[0] == "{" and text[-1] == "}":
        candidate = text[1:-1]
    if len(candidate) == 36 and not all(candidate[i] == "-" for i in (8, 13, 18, 23)):
        raise ValueError("uuid: incorrect UUID format")
    if len(candidate) not in (32, 36):
        raise ValueError("uuid: incorrect UUID length")
    hex_ = candidate.replace("-", "") if len(candidate) == 36 else candidate
    if len(hex_) != 32 or not all(c in string.hexdigits for c in hex_):
        raise ValueError("uuid: incorrect UUID format")
    return uuid.UUID(hex_)


def _merge(current: dict[str, Any] | None, updates: dict[str, Any]) -> dict[str, Any]:
    """UpdateUserMetaData / UpdateAppMetaData: merge key by key, a null deletes the key."""
    if current is None:
        return dict(updates)
    merged = dict(current)
    for key, value in updates.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _generated_password() -> str:
    """password.Generate(64, 10, 0, false, true): 64 characters, 10 digits, no symbols."""
    letters = [secrets.choice(string.ascii_letters) for _ in range(54)]
    digits = [secrets.choice(string.digits) for _ in range(10)]
    chars = letters + digits
    secrets.SystemRandom().shuffle(chars)
    return "".join(chars)


def _hash_password(password: str, cost: int) -> str:
    if len(password.encode()) > 72:
        raise _bad_request("bcrypt: password length exceeds 72 bytes")
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost, prefix=b"2a")).decode()


def _go_time(value: datetime | None) -> str | None:
    """time.Time's JSON form (RFC 3339 with trailing zeros of the fraction dropped), in UTC."""
    if value is None:
        return None
    value = value.astimezone(UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += ("." + f"{value.microsecond:06d}").rstrip("0")
    return text + "Z"


# ----------------------------------------------------------------------------
# Database access

USER_COLUMNS = (
    "instance_id", "id", "aud", "role", "email", "encrypted_password", "email_confirmed_at", "invited_at",
    "confirmation_token", "confirmation_sent_at", "recovery_token", "recovery_sent_at",
    "email_change_token_new", "email_change", "email_change_sent_at", "last_sign_in_at",
    "raw_app_meta_data", "raw_user_meta_data", "is_super_admin", "created_at", "updated_at", "phone",
    "phone_confirmed_at", "phone_change", "phone_change_token", "phone_change_sent_at",
    "email_change_token_current", "email_change_confirm_status", "banned_until", "reauthentication_token",
    "reauthentication_sent_at", "is_sso_user", "deleted_at", "is_anonymous",
)
_TOKEN_COLUMNS = ("confirmation_token", "recovery_token", "email_change_token_current",
                  "email_change_token_new", "email_change", "phone_change_token", "phone_change",
                  "reauthentication_token")

_SELECT_USER = (
    "SELECT id, aud, role, email, email_confirmed_at, invited_at, phone, phone_confirmed_at, "
    "confirmation_sent_at, confirmed_at, recovery_sent_at, email_change, email_change_sent_at, phone_change, "
    "phone_change_sent_at, reauthentication_sent_at, last_sign_in_at, raw_app_meta_data, raw_user_meta_data, "
    "created_at, updated_at, banned_until, deleted_at, is_anonymous, encrypted_password "
    "FROM auth.users"
)
_SELECT_IDENTITIES = (
    "SELECT id, provider_id, user_id, identity_data, provider, last_sign_in_at, created_at, updated_at, "
    "email FROM auth.identities WHERE user_id = ANY(%s) ORDER BY created_at, id"
)


class _Pool:
    """A few autocommit connections shared by the handler threads."""

    def __init__(self, dsn: str, size: int) -> None:
        self.dsn = dsn
        self.size = size
        self._idle: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(size)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        self._slots.acquire()
        conn = None
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed:
                conn = psycopg.connect(self.dsn, autocommit=True, options="-c TimeZone=UTC",
                                       application_name="auth-standin")
            yield conn
        except Exception:
            if conn is not None and not conn.closed and conn.info.transaction_status != 0:
                conn.close()
            raise
        finally:
            if conn is not None and not conn.closed:
                with self._lock:
                    self._idle.append(conn)
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            for conn in self._idle:
                conn.close()
            self._idle.clear()


# ----------------------------------------------------------------------------
# Requests, faults, the request log


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
    """One request the stand-in answered: method, path under /auth/v1, HTTP status."""

    method: str
    path: str
    status: int


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    api_version: str | None = None

    def arg(self, name: str) -> str:
        return (self.query.get(name) or [""])[0]


@dataclass
class _Response:
    status: int
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)


_USER_ROUTE = re.compile(r"^/admin/users/(?P<user_id>[^/]+)/?$")
_USERS_ROUTE = re.compile(r"^/admin/users/?$")


# ----------------------------------------------------------------------------
# The server


class AuthStandIn:
    """The stand-in server: start it, point ``supabase.create_client`` at :attr:`url`.

    ``dsn`` is a database with the destination bootstrap's ``auth`` schema.
    ``hash_cost`` is the bcrypt cost of passwords the server hashes itself
    (the random password of a user created without one): GoTrue's is 10.
    """

    def __init__(
        self,
        dsn: str,
        jwt_secret: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        aud: str = "authenticated",
        default_role: str = "authenticated",
        admin_roles: tuple[str, ...] = DEFAULT_ADMIN_ROLES,
        password_min_length: int = 6,
        hash_cost: int = BCRYPT_DEFAULT_COST,
        pool_size: int = 8,
        verbose: bool = False,
    ) -> None:
        self.jwt_secret = jwt_secret
        self.aud = aud
        self.default_role = default_role
        self.admin_roles = admin_roles
        self.password_min_length = password_min_length
        self.hash_cost = hash_cost
        self.verbose = verbose
        self.pool = _Pool(dsn, pool_size)
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
        """Project URL as ``create_client`` wants it (Auth lives under /auth/v1)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> AuthStandIn:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="auth-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._connections_lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.pool.close()

    def __enter__(self) -> AuthStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_until_signal(self) -> None:
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        self.start()
        stop.wait()
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
    def inject_fault(self, path: str, *, status: int | None = 503, times: int = 1, delay: float = 0.0,
                     method: str | None = None, body: str | None = None) -> Fault:
        """Make the next ``times`` requests whose path (under /auth/v1) matches regex ``path`` misbehave.

        With ``status`` the request is answered with it and nothing is written;
        with ``status=None`` it is only delayed, then handled (a client that
        timed out may still see its write land, as in production).
        """
        if body is None:
            body = json.dumps({"code": "unexpected_failure", "message": "Injected fault (auth stand-in)"})
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
        return sum(1 for r in list(self.requests)
                   if (method is None or r.method == method) and pattern.search(r.path))

    def write_requests(self) -> int:
        """POST, PUT and DELETE requests answered so far (whatever their status)."""
        return sum(1 for r in list(self.requests) if r.method in ("POST", "PUT", "DELETE"))

    # -- the admin API ------------------------------------------------------------
    def authenticate(self, request: _Request) -> dict[str, Any]:
        """The gateway's apikey check, then GoTrue's requireAdminCredentials; returns the claims."""
        apikey = request.headers.get("apikey", "")
        if not apikey:
            raise GatewayError(401, {"message": "No API key found in request"})
        try:
            verify_jwt(apikey, self.jwt_secret)
        except JwtError as err:
            raise GatewayError(401, {"message": "Invalid API key"}) from err
        m = _BEARER.match(request.headers.get("authorization", ""))
        if m is None:
            raise AuthError(401, "no_authorization", "This endpoint requires a Bearer token")
        try:
            claims = verify_jwt(m.group(1), self.jwt_secret)
        except JwtError as err:
            raise AuthError(403, "bad_jwt", f"invalid JWT: unable to parse or verify signature, "
                                            f"{_GOLANG_JWT_MESSAGES.get(str(err), str(err))}") from err
        if claims.get("role") not in self.admin_roles:
            raise AuthError(403, "not_admin", "User not allowed")
        return claims

    def request_aud(self, request: _Request, claims: dict[str, Any]) -> str:
        """API.requestAud: the X-JWT-AUD header, the token's aud, else the configured one."""
        if request.headers.get("x-jwt-aud"):
            return request.headers["x-jwt-aud"]
        aud = claims.get("aud")
        if isinstance(aud, list):
            aud = aud[0] if aud else None
        return aud if isinstance(aud, str) and aud else self.aud

    def create_user(self, request: _Request, claims: dict[str, Any]) -> _Response:
        """adminUserCreate, its checks in GoTrue's order, then one transaction."""
        params = parse_admin_params(request.body)
        aud = params.aud or self.request_aud(request, claims)
        providers = self._check_contacts(params, aud)
        encrypted = self._initial_password(params)
        user_id = uuid.uuid4()
        if params.id:
            try:
                user_id = parse_go_uuid(params.id)
            except ValueError as err:
                raise _bad_request("ID must conform to the uuid v4 format") from err
            if user_id.int == 0:
                raise _bad_request("ID cannot be a nil uuid")
        row = self._new_user_row(params, aud, user_id, encrypted, providers)
        with self.pool.connection() as conn:
            try:
                with conn.transaction():
                    cols = ", ".join(USER_COLUMNS)
                    marks = ", ".join(f"%({c})s" for c in USER_COLUMNS)
                    conn.execute(f"INSERT INTO auth.users ({cols}) VALUES ({marks})", row)
                    for provider in providers:
                        value = params.email if provider == "email" else params.phone
                        data = {"sub": str(user_id), provider: value, "email_verified": False,
                                "phone_verified": False}
                        _insert_identity(conn, str(user_id), provider, data, row["created_at"])
            except psycopg.Error as err:
                raise _internal("Database error creating new user", err) from err
            user = self._load_user(conn, str(user_id))
        assert user is not None
        user.pop("confirmed_at", None)  # generated column: not read back by pop after Create
        return _Response(200, user)

    def _check_contacts(self, params: AdminUserParams, aud: str) -> list[str]:
        """Email and phone: present, well-formed, not taken. Returns the providers."""
        if not params.email and not params.phone:
            raise _bad_request("Cannot create a user without either an email or phone")
        providers: list[str] = []
        with self.pool.connection() as conn:
            if params.email:
                params.email = validate_email(params.email)
                if self._duplicated_email(conn, params.email, aud):
                    raise AuthError(422, "email_exists", DUPLICATE_EMAIL_MSG)
                providers.append("email")
            if params.phone:
                params.phone = validate_phone(params.phone)
                if conn.execute("SELECT 1 FROM auth.users WHERE phone = %s AND aud = %s "
                                "AND is_sso_user = false", (params.phone, aud)).fetchone():
                    raise AuthError(422, "phone_exists", "Phone number already registered by another user")
                providers.append("phone")
        return providers

    def _new_user_row(self, params: AdminUserParams, aud: str, user_id: uuid.UUID, encrypted: str,
                      providers: list[str]) -> dict[str, Any]:
        """Every column of the auth.users row, as pop inserts models.User and the tx updates it."""
        banned_until = self._ban(params.ban_duration)
        now = datetime.now(UTC)
        app_meta = {"provider": providers[0], "providers": providers}
        if params.app_metadata is not None:
            app_meta = _merge(app_meta, params.app_metadata)
        user_meta = params.user_metadata
        if params.password_hash == "" and user_meta is None:
            user_meta = {}  # models.NewUser defaults it; NewUserWithPasswordHash keeps nil (JSON null)
        if params.email_confirm:
            user_meta = _merge(user_meta, {"email_verified": True})
        row: dict[str, Any] = {c: None for c in USER_COLUMNS}
        row.update({c: "" for c in _TOKEN_COLUMNS})
        row.update(
            instance_id=NIL_UUID, id=user_id, aud=aud, role=(params.role or self.default_role).strip(),
            email=params.email or None, encrypted_password=encrypted,
            email_confirmed_at=now if params.email_confirm else None,
            raw_app_meta_data=Jsonb(app_meta), raw_user_meta_data=Jsonb(user_meta), is_super_admin=False,
            created_at=now, updated_at=now, phone=params.phone or None,
            phone_confirmed_at=now if params.phone_confirm else None, email_change_confirm_status=0,
            banned_until=banned_until, is_sso_user=False, is_anonymous=False,
        )
        return row

    def _initial_password(self, params: AdminUserParams) -> str:
        if params.password is not None and params.password_hash:
            raise _bad_request("Only a password or a password hash should be provided")
        if params.password:
            self._check_strength(params.password)
            return _hash_password(params.password, self.hash_cost)
        if params.password_hash:
            try:
                check_password_hash(params.password_hash)
            except HashError as err:
                raise _internal("Error creating user") from err
            return params.password_hash
        return _hash_password(_generated_password(), self.hash_cost)

    def _check_strength(self, password: str) -> None:
        if len(password) < self.password_min_length:
            raise AuthError(422, "weak_password",
                            f"Password should be at least {self.password_min_length} characters.")

    @staticmethod
    def _ban(duration: str) -> datetime | None:
        if not duration:
            return None
        try:
            delta = timedelta(0) if duration == "none" else parse_go_duration(duration)
        except ValueError as err:
            raise _bad_request(f"invalid format for ban duration: {err}") from err
        return None if delta == timedelta(0) else datetime.now(UTC) + delta

    @staticmethod
    def _duplicated_email(conn: psycopg.Connection, email: str, aud: str) -> bool:
        """models.IsDuplicatedEmail: an identity with the email (SSO ones aside), else a user."""
        found = conn.execute(
            "SELECT 1 FROM auth.identities i JOIN auth.users u ON u.id = i.user_id "
            "WHERE i.email = %s AND i.provider NOT LIKE 'sso:%%' AND u.aud = %s LIMIT 1",
            (email.lower(), aud)).fetchone()
        if found:
            return True
        return conn.execute(
            "SELECT 1 FROM auth.users WHERE instance_id = %s AND lower(email) = %s AND aud = %s "
            "AND is_sso_user = false LIMIT 1", (NIL_UUID, email.lower(), aud)).fetchone() is not None

    def get_user(self, request: _Request, user_id: str) -> _Response:
        with self.pool.connection() as conn:
            return _Response(200, self._existing_user(conn, user_id))

    def update_user(self, request: _Request, user_id: str) -> _Response:
        with self.pool.connection() as conn:
            current = self._existing_user(conn, user_id)
            params = parse_admin_params(request.body)
            if params.email:
                params.email = validate_email(params.email)
            if params.phone:
                params.phone = validate_phone(params.phone)
            banned_until = self._ban(params.ban_duration) if params.ban_duration else None
            new_hash = None
            if params.password is not None:
                self._check_strength(params.password)
                new_hash = _hash_password(params.password, self.hash_cost)
            try:
                with conn.transaction():
                    self._apply_update(conn, current, params, new_hash, banned_until)
            except psycopg.Error as err:
                raise _internal("Error updating user", err) from err
            return _Response(200, self._load_user(conn, current["id"]))

    def _apply_update(self, conn: psycopg.Connection, current: dict[str, Any], params: AdminUserParams,
                      new_hash: str | None, banned_until: datetime | None) -> None:
        """The transaction of adminUserUpdate, folded into one UPDATE of auth.users."""
        uid = current["id"]
        now = datetime.now(UTC)
        sets: dict[str, Any] = {}
        user_meta = current["user_metadata"]
        if params.role:
            sets["role"] = params.role.strip()
        if params.email_confirm:  # User.Confirm
            sets.update(confirmation_token="", email_confirmed_at=now)
            user_meta = _merge(user_meta, {"email_verified": True})
        if params.phone_confirm:
            sets.update(confirmation_token="", phone_confirmed_at=now)
        if new_hash is not None:  # User.UpdatePassword
            sets.update(_password_reset_columns(new_hash))
        sets.update(self._contact_changes(conn, uid, params))
        if params.app_metadata is not None:
            sets["raw_app_meta_data"] = Jsonb(_merge(current["app_metadata"], params.app_metadata))
        if params.user_metadata is not None:
            user_meta = _merge(user_meta, params.user_metadata)
        if user_meta is not current["user_metadata"]:
            sets["raw_user_meta_data"] = Jsonb(user_meta)
        if params.ban_duration:
            sets["banned_until"] = banned_until
        if sets:
            sets["updated_at"] = now
            assignments = ", ".join(f"{c} = %({c})s" for c in sets)
            conn.execute(f"UPDATE auth.users SET {assignments} WHERE id = %(uid)s", {**sets, "uid": uid})

    @staticmethod
    def _contact_changes(conn: psycopg.Connection, uid: str, params: AdminUserParams) -> dict[str, Any]:
        """A new email or phone: its identity updated or created, pending tokens cleared."""
        sets: dict[str, Any] = {}
        for provider, value, verified in (("email", params.email, params.email_confirm),
                                          ("phone", params.phone, params.phone_confirm)):
            if not value:
                continue
            flag = f"{provider}_verified"
            found = conn.execute("SELECT id, identity_data FROM auth.identities WHERE provider_id = %s "
                                 "AND provider = %s", (uid, provider)).fetchone()
            if found is None:
                data = {"sub": uid, provider: value, "email_verified": False, "phone_verified": False,
                        flag: verified}
                _insert_identity(conn, uid, provider, data, datetime.now(UTC))
            else:
                data = _merge(found[1], {provider: value, flag: verified})
                conn.execute("UPDATE auth.identities SET identity_data = %s WHERE id = %s",
                             (Jsonb(data), found[0]))
            sets[provider] = value
        if sets:  # User.ClearAllPendingTokens
            sets.update({c: "" for c in _TOKEN_COLUMNS})
        return sets

    def delete_user(self, request: _Request, user_id: str) -> _Response:
        with self.pool.connection() as conn:
            current = self._existing_user(conn, user_id)
            if request.body:
                pairs = _decode_json(request.body, "api.adminUserDeleteParams")
                soft = next((v for k, v in (pairs or []) if k.lower() == "should_soft_delete"), None)
                if soft is not None and not isinstance(soft, bool):
                    raise _bad_request(f"Could not parse request body as JSON: json: cannot unmarshal "
                                       f"{_json_kind(soft)} into Go struct field adminUserDeleteParams."
                                       "should_soft_delete of type bool", "bad_json")
                if soft:
                    raise NotReproduced("should_soft_delete is not reproduced by the auth stand-in")
            try:
                conn.execute("DELETE FROM auth.users WHERE id = %s", (current["id"],))
            except psycopg.Error as err:
                raise _internal("Database error deleting user", err) from err
        return _Response(200, {})

    def list_users(self, request: _Request, claims: dict[str, Any]) -> _Response:
        values = []
        for name, default in (("page", 1), ("per_page", 50)):
            text = request.arg(name)
            if text and not text.isdigit():
                raise _bad_request(
                    f'Bad Pagination Parameters: strconv.ParseUint: parsing "{text}": invalid syntax')
            values.append(int(text) if text else default)
        page, per_page = values
        page, per_page = max(page, 1), per_page or 50
        order = "desc"
        sort = request.arg("sort")
        if sort:
            name, _, direction = sort.partition(" ")
            if name != "created_at" or direction.lower() not in ("", "asc", "desc"):
                raise _bad_request(f"Bad Sort Parameters: bad field for sort '{name}'")
            order = direction.lower() or "desc"
        aud = self.request_aud(request, claims)
        cond, args = "instance_id = %s AND aud = %s", [NIL_UUID, aud]
        if request.arg("filter"):
            like = f"%{request.arg('filter')}%"
            cond += " AND (email LIKE %s OR raw_user_meta_data->>'full_name' ILIKE %s)"
            args += [like, like]
        with self.pool.connection() as conn:
            total = conn.execute(f"SELECT count(*) FROM auth.users WHERE {cond}", args).fetchone()[0]
            rows = conn.execute(f"{_SELECT_USER} WHERE {cond} ORDER BY created_at {order} LIMIT %s OFFSET %s",
                                [*args, per_page, (page - 1) * per_page]).fetchall()
        users = [_user_json(r, None) for r in rows]
        pages = -(-total // per_page)
        query = {k: v[0] for k, v in request.query.items()}
        link = ""
        if pages > page:
            link += f'<{API_PREFIX}{request.path}?{urlencode({**query, "page": page + 1})}>; rel="next", '
        link += f'<{API_PREFIX}{request.path}?{urlencode({**query, "page": pages})}>; rel="last"'
        return _Response(200, {"users": users, "aud": aud}, {"Link": link, "X-Total-Count": str(total)})

    def _existing_user(self, conn: psycopg.Connection, user_id: str) -> dict[str, Any]:
        """loadUser."""
        try:
            parsed = parse_go_uuid(user_id)
        except ValueError as err:
            raise AuthError(404, "validation_failed", "user_id must be an UUID") from err
        user = self._load_user(conn, str(parsed))
        if user is None:
            raise AuthError(404, "user_not_found", "User not found")
        return user

    @staticmethod
    def _load_user(conn: psycopg.Connection, user_id: str) -> dict[str, Any] | None:
        row = conn.execute(f"{_SELECT_USER} WHERE id = %s", (user_id,)).fetchone()
        if row is None:
            return None
        identities = conn.execute(_SELECT_IDENTITIES, ([row[0]],)).fetchall()
        return _user_json(row, identities)


def _insert_identity(conn: psycopg.Connection, uid: str, provider: str, data: dict[str, Any],
                     now: datetime) -> None:
    """models.NewIdentity + tx.Create: provider_id is the sub, last_sign_in_at is now."""
    conn.execute(
        "INSERT INTO auth.identities (id, provider_id, user_id, identity_data, provider, last_sign_in_at, "
        "created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (uuid.uuid4(), uid, uid, Jsonb(data), provider, now, now, now))


def _password_reset_columns(new_hash: str) -> dict[str, Any]:
    """User.UpdatePassword: the new hash, and every token and its sent_at cleared."""
    cleared = {c: "" for c in _TOKEN_COLUMNS if c not in ("email_change", "phone_change")}
    sent = ("confirmation_sent_at", "recovery_sent_at", "email_change_sent_at", "phone_change_sent_at",
            "reauthentication_sent_at")
    return {"encrypted_password": new_hash, **cleared, **dict.fromkeys(sent)}


_GOLANG_JWT_MESSAGES = {
    "jwt must be provided": "token is malformed: token contains an invalid number of segments",
    "jwt malformed": "token is malformed: token contains an invalid number of segments",
    "invalid token": "token is malformed: could not JSON decode header",
    "invalid algorithm": "token is unverifiable: signing method (alg) is unavailable",
    "invalid signature": "token signature is invalid: signature is invalid",
    "jwt expired": "token has invalid claims: token is expired",
    "jwt not active": "token has invalid claims: token is not valid yet",
}


def _user_json(row: tuple[Any, ...], identities: list[tuple[Any, ...]] | None) -> dict[str, Any]:
    """models.User as encoding/json renders it (omitempty fields left out when empty)."""
    (uid, aud, role, email, email_confirmed_at, invited_at, phone, phone_confirmed_at, confirmation_sent_at,
     confirmed_at, recovery_sent_at, email_change, email_change_sent_at, phone_change, phone_change_sent_at,
     reauthentication_sent_at, last_sign_in_at, app_meta, user_meta, created_at, updated_at, banned_until,
     deleted_at, is_anonymous, _encrypted) = row
    user: dict[str, Any] = {"id": str(uid), "aud": aud or "", "role": role or "", "email": email or ""}
    optional = {
        "email_confirmed_at": email_confirmed_at, "invited_at": invited_at,
    }
    user.update({k: _go_time(v) for k, v in optional.items() if v is not None})
    user["phone"] = phone or ""
    later = {
        "phone_confirmed_at": phone_confirmed_at, "confirmation_sent_at": confirmation_sent_at,
        "confirmed_at": confirmed_at, "recovery_sent_at": recovery_sent_at,
    }
    user.update({k: _go_time(v) for k, v in later.items() if v is not None})
    if email_change:
        user["new_email"] = email_change
    if email_change_sent_at:
        user["email_change_sent_at"] = _go_time(email_change_sent_at)
    if phone_change:
        user["new_phone"] = phone_change
    for key, value in (("phone_change_sent_at", phone_change_sent_at),
                       ("reauthentication_sent_at", reauthentication_sent_at),
                       ("last_sign_in_at", last_sign_in_at)):
        if value is not None:
            user[key] = _go_time(value)
    user["app_metadata"] = app_meta
    user["user_metadata"] = user_meta
    user["identities"] = None if identities is None else [
        {"identity_id": str(i[0]), "id": i[1], "user_id": str(i[2]), "identity_data": i[3], "provider": i[4],
         **({"last_sign_in_at": _go_time(i[5])} if i[5] is not None else {}),
         "created_at": _go_time(i[6]), "updated_at": _go_time(i[7]), **({"email": i[8]} if i[8] else {})}
        for i in identities
    ]
    user["created_at"] = _go_time(created_at)
    user["updated_at"] = _go_time(updated_at)
    if banned_until is not None:
        user["banned_until"] = _go_time(banned_until)
    if deleted_at is not None:
        user["deleted_at"] = _go_time(deleted_at)
    user["is_anonymous"] = bool(is_anonymous)
    return user


class _Handler(BaseHTTPRequestHandler):
    """One connection; routes each request to the stand-in's admin methods."""

    protocol_version = "HTTP/1.1"
    server_version = "auth-standin"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    timeout = 120

    @property
    def standin(self) -> AuthStandIn:
        return self.server.standin  # type: ignore[attr-defined,no-any-return]

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

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        raw_path, _, query = self.path.partition("?")
        headers = {k.lower(): v for k, v in self.headers.items()}
        body = self.rfile.read(int(headers.get("content-length") or 0))
        path = raw_path[len(API_PREFIX):] if raw_path.startswith(API_PREFIX + "/") else raw_path
        request = _Request(method, path, parse_qs(query, keep_blank_values=True), headers, body)
        request.api_version = _api_version(headers.get(API_VERSION_HEADER.lower(), ""))
        status = 0
        try:
            status = self._answer(request, raw_path)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self.standin.requests.append(RequestRecord(method, path, status))

    def _answer(self, request: _Request, raw_path: str) -> int:
        try:
            if not raw_path.startswith(API_PREFIX + "/"):
                raise GatewayError(404, {"message": "no Route matched with those values"})
            fault = self.standin._take_fault(request.method, request.path)
            if fault is not None:
                time.sleep(fault.delay)
                if fault.status is not None:
                    return self._send(fault.status, fault.body)
            response = self._route(request)
            return self._send_json(response.status, response.payload, response.headers)
        except GatewayError as err:
            return self._send_json(err.status, err.payload)
        except AuthError as err:
            return self._send_error(request, err)
        except NotReproduced as err:
            return self._send_json(501, {"code": "not_implemented", "message": str(err)})
        except Exception:  # GoTrue's recoverer answers 500 rather than dropping the connection
            log.exception("auth stand-in: unhandled error on %s %s", request.method, request.path)
            return self._send_error(request, _internal("Internal Server Error"))

    def _route(self, request: _Request) -> _Response:
        user_route = _USER_ROUTE.match(request.path)
        users_route = _USERS_ROUTE.match(request.path)
        if users_route is None and user_route is None:
            return _Response(404, "404 page not found\n")
        allowed = ("GET", "POST") if users_route else ("GET", "PUT", "DELETE")
        if request.method not in allowed:
            return _Response(405, "")
        claims = self.standin.authenticate(request)
        if users_route:
            if request.method == "POST":
                return self.standin.create_user(request, claims)
            return self.standin.list_users(request, claims)
        user_id = user_route.group("user_id")  # type: ignore[union-attr]
        handler = {"GET": self.standin.get_user, "PUT": self.standin.update_user,
                   "DELETE": self.standin.delete_user}[request.method]
        return handler(request, user_id)

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> int:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        return status

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> int:
        if isinstance(payload, str):
            return self._send(status, payload.encode(), "text/plain; charset=utf-8", headers)
        return self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _send_error(self, request: _Request, err: AuthError) -> int:
        """HandleResponseError: the 2024-01-01 shape when asked for, else the legacy one."""
        headers = {"x-sb-error-code": err.code}
        if request.api_version == API_VERSION_2024:
            headers[API_VERSION_HEADER] = API_VERSION_2024
            return self._send_json(err.status, {"code": err.code, "message": err.message}, headers)
        pg = err.pg
        if isinstance(pg, psycopg.errors.IntegrityError) and pg.diag.sqlstate:
            body = {"code": pg.diag.sqlstate, "message": pg.diag.message_primary or ""}
            if pg.diag.message_detail:
                body["detail"] = pg.diag.message_detail
            return self._send_json(500, body, headers)
        return self._send_json(err.status, {"code": err.status, "error_code": err.code, "msg": err.message},
                               headers)


def _api_version(header: str) -> str | None:
    """DetermineClosestAPIVersion: the newest known version not after the requested date."""
    if not re.fullmatch(r"2[0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])", header):
        return None
    return API_VERSION_2024 if header >= API_VERSION_2024 else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local stand-in for Supabase Auth's admin API (/auth/v1).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=54331)
    parser.add_argument("--dsn", required=True,
                        help="database holding the auth schema (the destination bootstrap's)")
    parser.add_argument("--jwt-secret", required=True, help="HS256 secret the API keys are signed with")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    standin = AuthStandIn(args.dsn, args.jwt_secret, host=args.host, port=args.port, verbose=args.verbose)
    log.info("auth stand-in listening on %s%s (keys: HS256 JWTs signed with --jwt-secret, role service_role)",
             standin.url, API_PREFIX)
    standin.serve_until_signal()


if __name__ == "__main__":
    main()
