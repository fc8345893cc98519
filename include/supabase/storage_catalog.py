"""Supabase Storage's own catalog, read with the database connection: ``storage.objects``.

Storage keeps one row per object in the project's PostgreSQL
(``storage.objects``: ``bucket_id``, ``name``, ``metadata`` jsonb with
``size`` / ``mimetype`` / ``eTag``, ``version``, timestamps). Reading it is
one query per key range, where the HTTP listing is one request per folder and
per 1,000 entries (measured against the real server: 357 s for 4,917
objects), so checks that must hold at millions of objects read it wherever
the destination database has it, and fall back to the API listing
(:func:`include.supabase.storage.list_objects`) where it does not.

What the catalog can and cannot prove: it has the size, the MIME type and
the S3 eTag, never the SHA-256 the migration verifies (the eTag is an MD5 only
for single-part uploads). So it can rule a match *out* by itself, and rules
one *in* only together with a proof the migration recorded when it
downloaded and hashed that very version (``migration.media_object_proofs``,
see :mod:`include.migration.media.catalog`).

This module owns the SQL under ``include/sql/storage/`` and nothing else: no
HTTP, no knowledge of the media entity beyond the table names in that SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg import sql

if TYPE_CHECKING:
    import psycopg

SQL_DIR = Path(__file__).resolve().parent.parent / "sql" / "storage"
# Keys per range. Object names are scattered over the heap (their order is
# not the upload order), so each range's scan touches most of both tables'
# pages whatever its width: few wide ranges keep the total close to one pass
# (a million objects: 10 queries), while one range's rows (~30 MB) are what
# the client holds at a time.
RANGE_KEYS = 100_000


def load_sql(name: str) -> str:
    return (SQL_DIR / f"{name}.sql").read_text()


def readable(conn: psycopg.Connection) -> bool:
    """True when ``storage.objects`` exists here with the columns we read and we may SELECT it."""
    return bool(conn.execute(load_sql("readable")).fetchone()[0])


def media_ranges(conn: psycopg.Connection, step: int = RANGE_KEYS) -> list[tuple[str | None, str | None]]:
    """(lower, upper] key ranges over ``public.media.object_path`` covering every key, None = open."""
    bounds = [r[0] for r in conn.execute(load_sql("media_range_bounds"), {"step": step})]
    edges: list[str | None] = [None, *bounds, None]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _range(column: str, lo: str | None, hi: str | None) -> sql.Composable:
    """``column > lo AND column <= hi`` with the open ends left out, so each query is index-friendly."""
    parts = []
    if lo is not None:
        parts.append(sql.SQL("{} > {}").format(sql.Identifier(column), sql.Literal(lo)))
    if hi is not None:
        parts.append(sql.SQL("{} <= {}").format(sql.Identifier(column), sql.Literal(hi)))
    return sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")


def media_against_objects(
    conn: psycopg.Connection, bucket: str, lo: str | None, hi: str | None
) -> Iterator[tuple[Any, ...]]:
    """One key range of ``public.media`` beside the bucket's ``storage.objects`` rows (FULL JOIN).

    Each row: media id, owner id, file name, bucket, object_path, size, sha256,
    mime type (all None for an object without a row), then the object's name,
    size and MIME type (None when the row has no object).
    """
    query = sql.SQL(load_sql("media_vs_objects")).format(
        media_range=_range("object_path", lo, hi),
        object_range=_range("name", lo, hi),
        bucket=sql.Literal(bucket),
    )
    # A client-side cursor: one range arrives whole (tens of MB at most). A server-side one
    # would stream it, but its plan is chosen for the first rows (cursor_tuple_fraction) and
    # measured 2-3x slower over a whole range.
    with conn.cursor() as cur:
        cur.execute(query)
        yield from cur


def skip_unchanged(conn: psycopg.Connection, stage: sql.Composable, run_id: str, bucket: str) -> int:
    """Record this run's 'skipped_identical' for every staged file the catalog and a proof vouch for."""
    query = sql.SQL(load_sql("skip_unchanged")).format(stage=stage)
    return conn.execute(query, {"run_id": run_id, "bucket": bucket}).rowcount


def record_proofs(conn: psycopg.Connection, stage: sql.Composable, run_id: str, bucket: str) -> int:
    """Remember the storage.objects version of every object this run verified by its bytes."""
    query = sql.SQL(load_sql("record_proofs")).format(stage=stage)
    return conn.execute(query, {"run_id": run_id, "bucket": bucket}).rowcount
