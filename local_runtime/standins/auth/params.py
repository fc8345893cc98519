"""How the Auth stand-in reads a request: the admin parameters, decoded as Go would, and their checks.

This module owns request parsing: ``AdminUserParams`` filled the way Go's
``encoding/json`` fills it (unknown keys ignored, keys matched
case-insensitively, a wrong JSON type is 400 ``bad_json``), GoTrue's
validation helpers (email, phone, durations, UUIDs, metadata merge), the
passwords GoTrue generates and hashes, and Go's time format in responses.
"""

from __future__ import annotations

import json
import re
import secrets
import string
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import bcrypt

from local_runtime.standins.auth.errors import _bad_request

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
