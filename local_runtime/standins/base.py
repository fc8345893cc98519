"""The small HTTP server both stand-ins are built on.

This module owns what the Storage and Auth stand-ins share and nothing of
either service's rules:

* the life cycle: a ``ThreadingHTTPServer`` started in a daemon thread
  (``start`` / ``stop`` / ``with``), or run in the foreground of its own
  process until SIGTERM (``serve_until_signal``, what ``python -m`` uses);
  ``stop`` also cuts idle keep-alive connections, so a stop is a stop;
* the API keys: HS256 JWTs signed with the project secret, and the gateway's
  ``apikey`` check that runs before any service sees a request;
* fault injection: ``inject_fault`` makes the next N requests whose path
  matches a pattern fail with a status or wait first. It is a Python method,
  never an HTTP route, so no client can trigger it;
* the request log: every answered request as (method, path, status).

A stand-in subclasses :class:`StandInServer` (with its handler class) and
:class:`StandInHandler` (with the HTTP methods it answers).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from local_runtime.standins.tokens import JwtError, make_jwt, verify_jwt

log = logging.getLogger(__name__)


class GatewayError(Exception):
    """What the API gateway (Kong) answers before the request reaches the service."""

    def __init__(self, status: int, body: dict[str, str]) -> None:
        super().__init__(body.get("message", ""))
        self.status = status
        self.payload = body


def check_api_key(apikey: str, secret: str) -> None:
    """The gateway's key check: 401 when ``apikey`` is missing or not signed with the secret."""
    if not apikey:
        raise GatewayError(401, {"message": "No API key found in request"})
    try:
        verify_jwt(apikey, secret)
    except JwtError as err:
        raise GatewayError(401, {"message": "Invalid API key"}) from err


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
    """One request a stand-in answered: method, path under the service prefix, HTTP status."""

    method: str
    path: str
    status: int


class StandInServer:
    """Life cycle, keys, faults and the request log of one stand-in server."""

    thread_name: ClassVar[str] = "standin"

    def __init__(self, handler: type[StandInHandler], jwt_secret: str, *, host: str, port: int,
                 verbose: bool) -> None:
        self.jwt_secret = jwt_secret
        self.verbose = verbose
        self._faults: list[Fault] = []
        self._faults_lock = threading.Lock()
        self.requests: list[RequestRecord] = []
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._httpd.standin = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------
    @property
    def url(self) -> str:
        """Project URL as ``create_client`` wants it (the service lives under its prefix)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> Any:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        # Idle keep-alive connections would otherwise keep being served by
        # their threads after the stop; cut them so a stop is a stop.
        with self._connections_lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_until_signal(self) -> None:
        """Run in the foreground until SIGTERM or SIGINT."""
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        self.start()
        stop.wait()
        self.stop()

    def track(self, conn: socket.socket, open_: bool) -> None:
        """Remember the connections being served, so ``stop`` can cut them."""
        with self._connections_lock:
            if open_:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

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
    def default_fault_body(self, status: int | None) -> dict[str, Any]:
        """The body an injected fault answers with, in the service's error shape."""
        raise NotImplementedError

    def inject_fault(self, path: str, *, status: int | None = 503, times: int = 1, delay: float = 0.0,
                     method: str | None = None, body: str | None = None) -> Fault:
        """Make the next ``times`` requests whose path matches regex ``path`` misbehave.

        ``path`` is searched in the decoded path under the service prefix (for
        example ``^/object/media/``). With ``status`` the request is answered
        with that status after its body has been read, and nothing is written;
        with ``status=None`` it is only delayed by ``delay`` seconds, then
        handled normally (so a client that timed out may still see its write
        land, as in production).
        """
        if body is None:
            body = json.dumps(self.default_fault_body(status))
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


class StandInHandler(BaseHTTPRequestHandler):
    """One connection of a stand-in; subclasses name their ``methods`` and implement ``_dispatch``.

    Methods not named get the standard library's 501, as before the split.
    """

    methods: ClassVar[tuple[str, ...]] = ()
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, the client's
    # delayed ACK adds ~40 ms to every keep-alive request.
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections are dropped after this

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for method in cls.methods:
            setattr(cls, f"do_{method}", lambda self, _method=method: self._dispatch(_method))

    @property
    def standin(self) -> Any:
        return self.server.standin  # type: ignore[attr-defined]

    def _dispatch(self, method: str) -> None:
        raise NotImplementedError

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if self.standin.verbose:
            super().log_message(format, *args)

    def setup(self) -> None:
        super().setup()
        self.standin.track(self.connection, True)

    def finish(self) -> None:
        self.standin.track(self.connection, False)
        super().finish()

    def take_fault(self, method: str, path: str) -> Fault | None:
        """An injected fault for this request, after its delay; None when it should be handled."""
        fault = self.standin._take_fault(method, path)
        if fault is None:
            return None
        time.sleep(fault.delay)
        return fault if fault.status is not None else None

    # A request is logged before its answer goes out: a client that counts the log
    # right after its response must see its own request there.
    _pending_log: tuple[str, str] | None = None

    def expect_answer(self, method: str, path: str) -> None:
        """Name the request being handled; it is logged when its answer is sent."""
        self._pending_log = (method, path)

    def log_request_answered(self, method: str, path: str, status: int) -> None:
        """Log a request no answer was sent for (or one never named by ``expect_answer``)."""
        if self._pending_log is not None or status == 0:
            self._pending_log = None
            self.standin.requests.append(RequestRecord(method, path, status))

    def _log_before_answer(self, status: int) -> None:
        if self._pending_log is not None:
            method, path = self._pending_log
            self._pending_log = None
            self.standin.requests.append(RequestRecord(method, path, status))

    def _send_bytes(self, status: int, body: bytes, content_type: str,
                    headers: dict[str, str] | None = None) -> int:
        """Send a whole response; no body (nor length) for HEAD and 204, as the real servers."""
        self._status = status
        self._log_before_answer(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if status != 204:
            self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and status != 204:
            self.wfile.write(body)
        return status


def server_arguments(description: str, port: int) -> argparse.ArgumentParser:
    """The command line every stand-in takes; the caller adds its own options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--jwt-secret", required=True, help="HS256 secret the API keys are signed with")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    return parser
