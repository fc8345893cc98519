"""The Auth stand-in server: its configuration and its command line.

This module owns :class:`AuthStandIn` (start it, point
``supabase.create_client`` at :attr:`AuthStandIn.url`) and ``main``; the life
cycle, keys, faults and request log come from
:mod:`local_runtime.standins.base`, the admin API's rules from
:mod:`local_runtime.standins.auth.admin`.
"""

from __future__ import annotations

import logging
from typing import Any

from local_runtime.standins.auth.admin import BCRYPT_DEFAULT_COST, DEFAULT_ADMIN_ROLES, AdminUsers
from local_runtime.standins.auth.db import _Pool
from local_runtime.standins.auth.errors import API_PREFIX
from local_runtime.standins.auth.handler import _Handler
from local_runtime.standins.base import StandInServer, server_arguments

log = logging.getLogger(__name__)


class AuthStandIn(AdminUsers, StandInServer):
    """The stand-in server: start it, point ``supabase.create_client`` at :attr:`url`.

    ``dsn`` is a database with the destination bootstrap's ``auth`` schema.
    ``hash_cost`` is the bcrypt cost of passwords the server hashes itself
    (the random password of a user created without one): GoTrue's is 10.
    """

    thread_name = "auth-standin"

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
        self.aud = aud
        self.default_role = default_role
        self.admin_roles = admin_roles
        self.password_min_length = password_min_length
        self.hash_cost = hash_cost
        self.pool = _Pool(dsn, pool_size)
        super().__init__(_Handler, jwt_secret, host=host, port=port, verbose=verbose)

    def stop(self) -> None:
        super().stop()
        self.pool.close()

    def default_fault_body(self, status: int | None) -> dict[str, Any]:
        return {"code": "unexpected_failure", "message": "Injected fault (auth stand-in)"}

    def write_requests(self) -> int:
        """POST, PUT and DELETE requests answered so far (whatever their status)."""
        return sum(1 for r in list(self.requests) if r.method in ("POST", "PUT", "DELETE"))


def main(argv: list[str] | None = None) -> None:
    parser = server_arguments("Local stand-in for Supabase Auth's admin API (/auth/v1).", 54331)
    parser.add_argument("--dsn", required=True,
                        help="database holding the auth schema (the destination bootstrap's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    standin = AuthStandIn(args.dsn, args.jwt_secret, host=args.host, port=args.port, verbose=args.verbose)
    log.info("auth stand-in listening on %s%s (keys: HS256 JWTs signed with --jwt-secret, role service_role)",
             standin.url, API_PREFIX)
    standin.serve_until_signal()
