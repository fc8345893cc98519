"""HS256 JSON Web Tokens, as the stand-ins mint and check Supabase's API keys.

This module owns the token format shared by the Storage and Auth stand-ins:
``make_jwt`` mints an ``anon`` / ``service_role`` key signed with the project
secret, ``verify_jwt`` checks one the way jsonwebtoken does (signature, then
``exp`` / ``nbf``), raising :class:`JwtError` with jsonwebtoken's message.
Stdlib only, HS256 only: that is all a Supabase project's keys use.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any


class JwtError(Exception):
    """A token that jsonwebtoken would refuse; the message is jsonwebtoken's."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
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
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = b64url(json.dumps(payload, separators=(",", ":")).encode())
    signature = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(signature)}"


def verify_jwt(token: str, secret: str) -> dict[str, Any]:
    """Check signature and time claims; return the payload or raise :class:`JwtError`."""
    if not token:
        raise JwtError("jwt must be provided")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError("jwt malformed")
    try:
        header = json.loads(b64url_decode(parts[0]))
        payload = json.loads(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2])
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
