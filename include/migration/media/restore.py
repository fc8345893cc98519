"""Rollback and Storage: put back the objects a rolled-back run's cleanup removed, or refuse.

A media run removes the objects whose rows it deleted (``media.sweep_orphans``,
recorded as 'removed' in ``migration.media_uploads``). Rolling that run back
brings the rows back from their before-images, and a row without its object
is a broken attachment, so the rollback must bring the object back too. The
bytes are not kept anywhere by the migration: they are read again from the
legacy media root (the row's ``storage_key`` in the legacy ``media_assets``)
and accepted only when their SHA-256 is the one the restored row records.

All objects are checked before any is uploaded: if one cannot be restored
(legacy row gone, file gone or changed), the rollback is refused with the
list and nothing changes, in the database or in Storage. If an upload fails
midway, the objects already put back are removed again and the rollback is
refused the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from include.migration import db

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemovedObject:
    """An object a rolled-back run removed, as the restored ``public.media`` row describes it."""

    object_path: str
    media_id: str
    bucket: str
    size: int
    sha256: str
    mime_type: str


@dataclass
class Restored:
    """What a restorer did: objects put back (or found already there), and the ones it could not."""

    restored: list[str]
    problems: dict[str, str]


Restorer = Callable[[list[RemovedObject]], Restored]


def objects_to_restore(conn: psycopg.Connection, run_ids: list[str]) -> list[RemovedObject]:
    """Objects these runs' cleanup removed whose rows are in ``public.media`` again (in this transaction)."""
    if conn.execute("SELECT to_regclass('migration.media_uploads')").fetchone()[0] is None:
        return []
    rows = conn.execute(
        "SELECT m.object_path, m.id::text, m.bucket, m.size_bytes, m.sha256, m.mime_type FROM public.media m "
        "WHERE EXISTS (SELECT 1 FROM migration.media_uploads u WHERE u.run_id = ANY(%s) "
        "AND u.outcome = 'removed' AND u.object_path = m.object_path) ORDER BY m.object_path",
        (run_ids,),
    ).fetchall()
    return [RemovedObject(*row) for row in rows]


def record_restored(conn: psycopg.Connection, label: str, paths: list[str], objects: list[RemovedObject]) -> None:
    """Ledger lines, so a later cleanup (or rollback) knows the migration wrote these objects again."""
    size = {o.object_path: o.size for o in objects}
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO migration.media_uploads (run_id, object_path, outcome, detail, bytes) "
            "VALUES (%s, %s, 'uploaded', 'restored from the legacy media root by a rollback', %s)",
            [(label, path, size.get(path)) for path in paths],
        )


def _legacy_keys(legacy_dsn: str, ids: list[str]) -> dict[str, str]:
    with db.connection(legacy_dsn, application="migration-rollback-media") as conn:
        conn.read_only = True
        return dict(
            conn.execute(
                "SELECT id::text, storage_key FROM public.media_assets WHERE id = ANY(%s::uuid[])", (ids,)
            ).fetchall()
        )


def _sources(legacy_dsn: str, objects: list[RemovedObject]) -> tuple[dict[str, str], dict[str, str]]:
    """The legacy key of each object whose file still has the row's bytes, and why not for the others."""
    from include.migration.media.source import media_source, read_file

    source = media_source()
    keys = _legacy_keys(legacy_dsn, [o.media_id for o in objects])
    found, problems = {}, {}
    for obj in objects:
        key = keys.get(obj.media_id)
        if key is None:
            problems[obj.object_path] = f"its legacy row {obj.media_id} is gone, so its file cannot be found"
            continue
        try:
            read = read_file(source, key)
        except (OSError, ValueError) as err:
            problems[obj.object_path] = f"the legacy file {key!r} cannot be read ({err})"
            continue
        if read is None:
            problems[obj.object_path] = f"no legacy file at {key!r}"
        elif (read[0], read[1]) != (obj.size, obj.sha256):
            problems[obj.object_path] = (
                f"the legacy file {key!r} now has {read[0]} bytes / sha256 {read[1][:12]}..., "
                f"the row records {obj.size} / {obj.sha256[:12]}..."
            )
        else:
            found[obj.object_path] = key
    return found, problems


def restorer(legacy_dsn: str | None = None) -> Restorer:
    """A restorer reading the legacy media root (connection ``legacy_media``) and legacy database."""

    def restore(objects: list[RemovedObject]) -> Restored:
        from include.migration.media.hooks import storage_client
        from include.migration.media.source import media_source
        from include.supabase.storage import remove_objects, verify_object
        from include.supabase.storage_upload import StorageUploader, UploadItem

        keys, problems = _sources(legacy_dsn or db.dsn_for(db.LEGACY_CONN_ID), objects)
        if problems:
            return Restored([], problems)  # nothing touched
        source, client = media_source(), storage_client()
        restored: list[str] = []
        written: dict[str, list[str]] = {}
        expected = {o.object_path: o for o in objects}
        for bucket in sorted({o.bucket for o in objects}):
            items = [
                UploadItem(o.object_path, o.mime_type, o.size, o.sha256, partial(source.open, keys[o.object_path]))
                for o in objects
                if o.bucket == bucket
            ]
            with StorageUploader(client, bucket) as uploader:
                for result in uploader.upload_many(items):
                    o = expected[result.object_path]
                    if result.outcome == "uploaded":
                        written.setdefault(bucket, []).append(o.object_path)
                        problem = verify_object(client, bucket, o.object_path, o.size, o.sha256)
                    elif result.outcome == "skipped_identical":
                        problem = None
                    else:
                        problem = f"{result.outcome}: {result.detail}"
                    if problem is None:
                        restored.append(o.object_path)
                    else:
                        problems[o.object_path] = problem
        if problems:
            for bucket, paths in written.items():  # leave Storage as the refused rollback found it
                remove_objects(client, bucket, paths)
            return Restored([], problems)
        log.info("rollback: %d media objects put back in Storage from the legacy media root", len(restored))
        return Restored(restored, {})

    return restore
