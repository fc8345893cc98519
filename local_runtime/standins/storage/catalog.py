"""The Storage stand-in's ``storage.objects`` / ``storage.buckets``, kept in the destination database.

The real Storage server keeps each bucket and object as a row in the
project's own PostgreSQL (``storage.buckets``, ``storage.objects``: name,
metadata with size / mimetype / eTag, version, timestamps), and that database
is the one the migration writes to. The stand-in keeps its bytes and records
on disk; given a ``catalog_dsn`` it also keeps these two tables in that
database, row for row, inside the same lock as its own write, so a client
that reads ``storage.objects`` sees what the real server would show: a row
appears when an upload commits, changes (new ``version``, ``updated_at``,
eTag) when it is overwritten, and disappears when the object is removed.

Column names and types follow supabase/storage's tenant migrations (see
``sql/storage_schema.sql`` beside this module). The tables are created only
when missing.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

log = logging.getLogger(__name__)

SCHEMA_SQL = Path(__file__).with_name("sql") / "storage_schema.sql"

_UPSERT_BUCKET = """
INSERT INTO storage.buckets (id, name, owner, owner_id, public, file_size_limit, allowed_mime_types,
                             created_at, updated_at)
VALUES (%(id)s, %(name)s, %(owner)s, %(owner_id)s, %(public)s, %(file_size_limit)s, %(allowed_mime_types)s,
        %(created_at)s, %(updated_at)s)
ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, public = EXCLUDED.public,
    file_size_limit = EXCLUDED.file_size_limit, allowed_mime_types = EXCLUDED.allowed_mime_types,
    updated_at = EXCLUDED.updated_at
"""

_UPSERT_OBJECT = """
INSERT INTO storage.objects (id, bucket_id, name, owner, owner_id, created_at, updated_at, last_accessed_at,
                             metadata, version, user_metadata)
VALUES (%(id)s, %(bucket_id)s, %(name)s, %(owner)s, %(owner_id)s, %(created_at)s, %(updated_at)s,
        %(last_accessed_at)s, %(metadata)s, %(version)s, %(user_metadata)s)
ON CONFLICT (bucket_id, name) DO UPDATE SET updated_at = EXCLUDED.updated_at,
    last_accessed_at = EXCLUDED.last_accessed_at, metadata = EXCLUDED.metadata, version = EXCLUDED.version,
    owner = EXCLUDED.owner, owner_id = EXCLUDED.owner_id, user_metadata = EXCLUDED.user_metadata
"""


def _uuid_or_none(value: Any) -> str | None:
    """``owner`` is a uuid column (the JWT's ``sub``); a service key without a user has none."""
    try:
        return str(uuid.UUID(str(value))) if value else None
    except ValueError:
        return None


def _bucket_row(bucket: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": bucket["id"],
        "name": bucket["name"],
        "owner": _uuid_or_none(bucket.get("owner")),
        "owner_id": bucket.get("owner") or None,
        "public": bool(bucket.get("public")),
        "file_size_limit": bucket.get("file_size_limit"),
        "allowed_mime_types": bucket.get("allowed_mime_types"),
        "created_at": bucket.get("created_at"),
        "updated_at": bucket.get("updated_at"),
    }


def _object_row(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": record["id"],
        "bucket_id": record["bucket_id"],
        "name": record["name"],
        "owner": _uuid_or_none(record.get("owner")),
        "owner_id": record.get("owner") or None,
        "created_at": record["created_at"],
        "updated_at": record["updated_at"],
        "last_accessed_at": record["last_accessed_at"],
        "metadata": Jsonb(record["metadata"]),
        "version": record["version"],
        "user_metadata": Jsonb(record["user_metadata"]) if record.get("user_metadata") is not None else None,
    }


class ObjectsCatalog:
    """``storage.buckets`` and ``storage.objects`` in one database, written as the stand-in's store changes."""

    def __init__(self, dsn: str) -> None:
        self._conn = psycopg.connect(dsn, autocommit=True, application_name="storage-standin-catalog")
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute(SCHEMA_SQL.read_text())

    def close(self) -> None:
        self._conn.close()

    def sync(self, buckets: dict[str, dict[str, Any]], objects: dict[str, dict[str, dict[str, Any]]]) -> None:
        """Make both tables hold exactly the store's buckets and objects (at start: the store is the truth)."""
        with self._lock, self._conn.transaction(), self._conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE standin_keep (bucket_id text, name text) ON COMMIT DROP")
            with cur.copy("COPY standin_keep (bucket_id, name) FROM STDIN") as copy:
                for bucket_id, records in objects.items():
                    for name in records:
                        copy.write_row((bucket_id, name))
            cur.execute(
                "DELETE FROM storage.objects o WHERE NOT EXISTS "
                "(SELECT 1 FROM standin_keep k WHERE k.bucket_id = o.bucket_id AND k.name = o.name)"
            )
            cur.executemany(_UPSERT_BUCKET, [_bucket_row(b) for b in buckets.values()])
            cur.execute("DELETE FROM storage.buckets WHERE NOT (id = ANY(%s))", (list(buckets),))
            rows = [_object_row(r) for records in objects.values() for r in records.values()]
            cur.executemany(_UPSERT_OBJECT, rows)
        log.info("storage stand-in: storage.objects synced, %d buckets, %d objects", len(buckets), len(rows))

    def put_buckets(self, buckets: Iterable[dict[str, Any]]) -> None:
        """Buckets created or changed; a bucket no longer listed is deleted (the API only deletes empty ones)."""
        buckets = list(buckets)
        with self._lock, self._conn.transaction(), self._conn.cursor() as cur:
            cur.executemany(_UPSERT_BUCKET, [_bucket_row(b) for b in buckets])
            cur.execute(
                "DELETE FROM storage.buckets b WHERE NOT (id = ANY(%s)) "
                "AND NOT EXISTS (SELECT 1 FROM storage.objects o WHERE o.bucket_id = b.id)",
                ([b["id"] for b in buckets],),
            )

    def put_object(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._conn.execute(_UPSERT_OBJECT, _object_row(record))

    def drop_object(self, bucket_id: str, name: str) -> None:
        with self._lock:
            self._conn.execute(
                "DELETE FROM storage.objects WHERE bucket_id = %s AND name = %s", (bucket_id, name)
            )
