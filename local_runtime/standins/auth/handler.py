"""The Auth stand-in's request handler: reading a request, routing it, rendering the answer.

This module owns the HTTP side of the admin API: the two routes
(``/admin/users`` and ``/admin/users/{id}``), the methods each allows, and
GoTrue's error rendering (``HandleResponseError``): the 2024-01-01 shape when
``X-Supabase-Api-Version`` asks for it, else the legacy one.
"""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import psycopg

from local_runtime.standins.auth.errors import (
    API_PREFIX,
    API_VERSION_2024,
    API_VERSION_HEADER,
    AuthError,
    NotReproduced,
    _internal,
)
from local_runtime.standins.auth.params import _Request, _Response
from local_runtime.standins.base import GatewayError, StandInHandler

if TYPE_CHECKING:
    from local_runtime.standins.auth.server import AuthStandIn

log = logging.getLogger(__name__)

_USER_ROUTE = re.compile(r"^/admin/users/(?P<user_id>[^/]+)/?$")
_USERS_ROUTE = re.compile(r"^/admin/users/?$")


class _Handler(StandInHandler):
    """One connection; routes each request to the stand-in's admin methods."""

    methods = ("GET", "POST", "PUT", "DELETE")
    server_version = "auth-standin"

    @property
    def standin(self) -> AuthStandIn:
        return self.server.standin  # type: ignore[attr-defined,no-any-return]

        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        raw_path, _, query = self.path.partition("?")
        headers = {k.lower(): v for k, v in self.headers.items()}
        body = self.rfile.read(int(headers.get("content-length") or 0))
        path = raw_path[len(API_PREFIX):] if raw_path.startswith(API_PREFIX + "/") else raw_path
        request = _Request(method, path, parse_qs(query, keep_blank_values=True), headers, body)
        request.api_version = _api_version(headers.get(API_VERSION_HEADER.lower(), ""))
        status = 0
        self.expect_answer(method, path)
        try:
            status = self._answer(request, raw_path)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self.log_request_answered(method, path, status)

    def _answer(self, request: _Request, raw_path: str) -> int:
        try:
            if not raw_path.startswith(API_PREFIX + "/"):
                raise GatewayError(404, {"message": "no Route matched with those values"})
            fault = self.take_fault(request.method, request.path)
            if fault is not None:
                return self._send_bytes(fault.status or 0, fault.body, "application/json")
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

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> int:
        if isinstance(payload, str):
            return self._send_bytes(status, payload.encode(), "text/plain; charset=utf-8", headers)
        return self._send_bytes(status, json.dumps(payload).encode(), "application/json", headers)

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
