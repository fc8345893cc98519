"""Database connections, resolved from Airflow connection ids.

The code only ever names conn_ids (``legacy_db``, ``supabase_db``); where a
connection's URI comes from (``AIRFLOW_CONN_*`` env, a secrets backend, the
metadata DB) is Airflow's business. Passwords never appear in a log line: the
DSN is built here and only ever passed to the driver; ``describe`` prints a
connection without its secret.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

LEGACY_CONN_ID = "legacy_db"
DEST_CONN_ID = "supabase_db"

# Every session of ours renders timestamps the same way on both sides, so
# checksums computed in two databases agree.
SESSION_SETTINGS = "-c TimeZone=UTC -c DateStyle=ISO -c extra_float_digits=1"


# Memory for the transform's sorts and hashes (the fates of every user and
# conversation) in the legacy session: the default 4MB spills them to disk.
LEGACY_WORK_MEM_ENV = "MIGRATION_LEGACY_WORK_MEM"
DEFAULT_LEGACY_WORK_MEM = "128MB"


def tune_legacy(conn: psycopg.Connection) -> None:
    """Settings for a legacy read transaction that runs the transform (call inside the transaction).

    Only ``work_mem``: the fates sort and hash every user and conversation, and on
    disk that costs seconds. The planner's other choices are steered by the queries
    themselves (messages.sql parses its JSON in a plain subquery, which no Memoize
    node wraps; ``extract.transform_query`` fences its output with ``OFFSET 0``)."""
    value = os.environ.get(LEGACY_WORK_MEM_ENV) or DEFAULT_LEGACY_WORK_MEM
    conn.execute(sql.SQL("SET LOCAL work_mem = {}").format(sql.Literal(value)))


def dsn_for(conn_id: str) -> str:
    """The libpq URI of an Airflow connection (``AIRFLOW_CONN_*``, secrets backend or metadata DB)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.log import mask_secret

    conn = BaseHook.get_connection(conn_id)
    if conn.password:
        mask_secret(conn.password)
    netloc = ""
    if conn.login:
        netloc = quote(conn.login, safe="")
        if conn.password:
            netloc += ":" + quote(conn.password, safe="")
        netloc += "@"
    netloc += conn.host or "localhost"
    if conn.port:
        netloc += f":{conn.port}"
    query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in (conn.extra_dejson or {}).items())
    return urlunsplit(("postgresql", netloc, "/" + (conn.schema or ""), query, ""))


def describe(dsn: str) -> str:
    """host:port/db as a log can show it: never the password."""
    parts = urlsplit(dsn)
    host = parts.hostname or "localhost"
    return f"{host}:{parts.port or 5432}{parts.path}"


def connect(dsn: str, *, autocommit: bool = False, application: str = "migration") -> psycopg.Connection:
    return psycopg.connect(
        dsn,
        autocommit=autocommit,
        options=SESSION_SETTINGS,
        application_name=application,
        connect_timeout=15,
        # Text leaves every server as UTF-8, whatever its encoding: converted from a LATIN1
        # legacy database, checked from a SQL_ASCII one (extract.quarantine_invalid_utf8
        # keeps bytes that are not UTF-8 out of its rows), and read as str, not bytes.
        client_encoding="UTF8",
    )


@contextmanager
def connection(conn_id_or_dsn: str, **kwargs) -> Iterator[psycopg.Connection]:
    dsn = conn_id_or_dsn if "://" in conn_id_or_dsn else dsn_for(conn_id_or_dsn)
    conn = connect(dsn, **kwargs)
    try:
        yield conn
    finally:
        conn.close()


BINARY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
BINARY_TRAILER = b"\xff\xff"


def copy_rows(copy: psycopg.Copy) -> Iterator[memoryview]:
    """The messages of a binary ``COPY ... TO STDOUT``, one row each, as fast as libpq hands them over.

    ``Copy.__iter__`` goes through psycopg's generator machinery for every
    message, several microseconds a row: more than the server takes to produce
    it. Here the buffered messages are drained with non-blocking
    ``PQgetCopyData`` calls until the binary trailer; psycopg's own ``read()``
    waits when nothing is buffered and finishes the COPY after the trailer.
    The first message carries the header; the last one is the trailer.
    """
    pgconn = copy.connection.pgconn
    while True:
        nbytes, data = pgconn.get_copy_data(1)
        if nbytes == 0:
            data = copy.read()  # nothing buffered: wait for the next message
            nbytes = len(data)
            if not nbytes:
                raise RuntimeError("the COPY ended without the binary trailer")
        elif nbytes < 0:
            raise RuntimeError("the COPY ended without the binary trailer")
        yield data
        if data[-2:] == BINARY_TRAILER and (nbytes == 2 or (nbytes == 21 and data[:11] == BINARY_SIGNATURE)):
            break
    if copy.read():  # collects the final result
        raise RuntimeError("data after the binary COPY trailer")


def relay_copy(out: psycopg.Copy, into: psycopg.Copy, block_bytes: int = 1 << 20) -> int:
    """Stream a binary ``COPY ... TO STDOUT`` into a ``COPY ... FROM STDIN``, in
    ``block_bytes`` writes (not one per row); returns the bytes relayed."""
    copied = 0
    buffer = bytearray()
    for row in copy_rows(out):
        buffer += row
        if len(buffer) >= block_bytes:
            into.write(buffer)
            copied += len(buffer)
            buffer = bytearray()
    if buffer:
        into.write(buffer)
        copied += len(buffer)
    return copied


def every_nth_key(conn: psycopg.Connection, table: sql.Composable, key: sql.Identifier, step: int,
                  where: sql.Composable | None = None) -> list[str]:
    """The ``step``-th, ``2 * step``-th ... key of ``table``'s rows matching ``where``, in key
    order, as text: one ordered pass over the key index, not one ``OFFSET`` scan per key."""
    return [r[0] for r in conn.execute(sql.SQL(
        "SELECT k::text FROM (SELECT {key} AS k, row_number() OVER (ORDER BY {key}) AS n "
        "FROM {table} WHERE {where}) x WHERE n % {step} = 0 ORDER BY n"
    ).format(key=key, table=table, where=where or sql.SQL("TRUE"), step=sql.Literal(step)))]


def sqlalchemy_url(dsn: str) -> str:
    """The same DSN in SQLAlchemy's form (used by Great Expectations)."""
    return "postgresql+psycopg2://" + dsn.split("://", 1)[1]
