"""The Storage stand-in server: its configuration, its state, and its command line.

This module owns :class:`StorageStandIn` (start it, point
``supabase.create_client`` at :attr:`StorageStandIn.url`) and ``main``; the
life cycle, keys, faults and request log come from
:mod:`local_runtime.standins.base`, the routes from
:mod:`local_runtime.standins.storage.handler`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from local_runtime.standins.base import StandInServer, server_arguments
from local_runtime.standins.storage.catalog import ObjectsCatalog
from local_runtime.standins.storage.handler import _Handler
from local_runtime.standins.storage.rules import API_PREFIX, DEFAULT_GLOBAL_FILE_SIZE_LIMIT, KeyRules
from local_runtime.standins.storage.store import _Store

log = logging.getLogger(__name__)


class StorageStandIn(StandInServer):
    """The stand-in server: start it, point ``supabase.create_client`` at :attr:`url`.

    ``global_file_size_limit`` is the project-wide upload limit (Free plan:
    50 MB); ``standard_upload_limit``, when set, caps the non-resumable upload
    only, like the server's ``UPLOAD_FILE_SIZE_LIMIT_STANDARD``.
    """

    thread_name = "storage-standin"

    def __init__(
        self,
        data_dir: str | Path,
        jwt_secret: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        global_file_size_limit: int = DEFAULT_GLOBAL_FILE_SIZE_LIMIT,
        standard_upload_limit: int | None = None,
        key_rules: KeyRules = "strict",
        verbose: bool = False,
        catalog_dsn: str | None = None,
    ) -> None:
        self.global_file_size_limit = global_file_size_limit
        self.standard_upload_limit = standard_upload_limit
        self.key_rules: KeyRules = key_rules
        self.store = _Store(Path(data_dir))  # before the socket: a bad folder binds no port
        if catalog_dsn:  # keep storage.objects in that database, as the real server does
            self.store.catalog = ObjectsCatalog(catalog_dsn)
            self.store.catalog.sync(self.store.buckets, self.store.objects)
        super().__init__(_Handler, jwt_secret, host=host, port=port, verbose=verbose)

    def default_fault_body(self, status: int | None) -> dict[str, Any]:
        return {
            "statusCode": str(status),
            "code": "InternalError",
            "error": "InternalError",
            "message": "Injected fault (storage stand-in)",
        }


    def stop(self) -> None:
        super().stop()
        if self.store.catalog is not None:
            self.store.catalog.close()


def main(argv: list[str] | None = None) -> None:
    parser = server_arguments("Local stand-in for Supabase Storage (/storage/v1).", 54330)
    parser.add_argument("--data", required=True, help="folder that keeps buckets and objects")
    parser.add_argument(
        "--global-limit",
        type=int,
        default=DEFAULT_GLOBAL_FILE_SIZE_LIMIT,
        help="largest object accepted, in bytes (default: 50 MB)",
    )
    parser.add_argument("--key-rules", choices=["strict", "utf8"], default="strict")
    parser.add_argument(
        "--catalog-dsn", help="database in which to keep storage.objects / storage.buckets (the destination)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    standin = StorageStandIn(
        args.data,
        args.jwt_secret,
        host=args.host,
        port=args.port,
        global_file_size_limit=args.global_limit,
        key_rules=args.key_rules,
        verbose=args.verbose,
        catalog_dsn=args.catalog_dsn,
    )
    log.info("storage stand-in listening on %s%s (data in %s)", standin.url, API_PREFIX, args.data)
    standin.serve_until_signal()
