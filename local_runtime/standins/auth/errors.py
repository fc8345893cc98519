"""GoTrue's errors and the API constants every part of the Auth stand-in shares.

This module owns :class:`AuthError` (``apierrors.HTTPError``: a status, an
error code, a message, and the database error behind a 500), the constructors
of the two most common ones, and :class:`NotReproduced` for features the
stand-in refuses rather than approximates.
"""

from __future__ import annotations

import psycopg

API_PREFIX = "/auth/v1"
API_VERSION_HEADER = "X-Supabase-Api-Version"
API_VERSION_2024 = "2024-01-01"


class AuthError(Exception):
    """GoTrue's ``apierrors.HTTPError``: an HTTP status, an error code, a message."""

    def __init__(self, status: int, code: str, message: str, *, pg: psycopg.Error | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.pg = pg  # the database error behind a 500, rendered by the legacy format


class NotReproduced(Exception):
    """A feature of the real server the stand-in refuses rather than approximates."""


def _bad_request(message: str, code: str = "validation_failed") -> AuthError:
    return AuthError(400, code, message)


def _internal(message: str, pg: psycopg.Error | None = None) -> AuthError:
    return AuthError(500, "unexpected_failure", message, pg=pg)
