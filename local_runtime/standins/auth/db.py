"""The Auth stand-in's database side: the rows GoTrue writes into ``auth.users`` / ``auth.identities``.

This module owns the column lists and reads of ``auth.users`` and
``auth.identities``, a small connection pool shared by the handler threads,
the identity insert and password-reset columns of ``models.User``, and a user
rendered as GoTrue's JSON.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from local_runtime.standins.auth.params import _go_time

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
