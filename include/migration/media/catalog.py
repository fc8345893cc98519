"""The media entity's Storage checks at scale: read ``storage.objects``, not the HTTP listing.

Three checks of :mod:`include.migration.media.hooks` go through here when the
destination database has Storage's catalog (:func:`storage_catalog.readable`):

* the reconciliation: ``public.media`` against ``storage.objects``, one FULL
  JOIN per key range inside the database, so a million objects is ~20
  queries instead of thousands of listing requests; each row's naming rule,
  bucket, presence, size and MIME type are checked for every row, and a
  sample of objects (or all, ``media_verify_all_objects``) is downloaded and
  its SHA-256 compared, because the catalog has no content hash;
* the rerun's "already there and identical?" check: one INSERT ... SELECT
  that records 'skipped_identical' for every staged file whose object is the
  very version the migration once downloaded and hashed (the proof ledger
  ``migration.media_object_proofs``), so an unchanged object costs no HTTP
  request; anything else (new file, other version, no proof) still goes
  through the uploader's own check (size from ``info``, then a download);
* the proofs themselves, written after each upload pass.

Where the destination has no readable ``storage.objects``, every function
here reports that and the caller keeps the API path.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING, Any

from include.migration import db
from include.supabase import storage_catalog

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

    from include.migration.media.hooks import MediaSettings
    from include.migration.media.reconcile import StorageReconciliation

log = logging.getLogger(__name__)


def readable(dest_dsn: str) -> bool:
    """Whether the destination database has a ``storage.objects`` we can read."""
    with db.connection(dest_dsn, application="migration-media-catalog") as conn:
        return storage_catalog.readable(conn)


class _Sample:
    """A reservoir of at most ``size`` objects, seeded, so a sample never needs every row in memory."""

    def __init__(self, size: int | None, seed: str | None) -> None:
        self.size, self.rng = size, random.Random(seed)
        self.items: list[tuple[str, int, str]] = []
        self.seen = 0

    def offer(self, item: tuple[str, int, str]) -> None:
        self.seen += 1
        if self.size == 0:
            return
        if self.size is None or len(self.items) < self.size:
            self.items.append(item)
            return
        slot = int(self.rng.random() * self.seen)  # randrange's exactness costs 3x here, per row
        if slot < self.size:
            self.items[slot] = item


def compare_catalog(
    conn: psycopg.Connection, settings: MediaSettings, result: StorageReconciliation, sample: _Sample
) -> int:
    """Every row and object, range by range, into ``result``; returns the number of key ranges read."""
    from include.migration.media.source import object_path

    ranges = storage_catalog.media_ranges(conn)
    for lo, hi in ranges:
        for row in storage_catalog.media_against_objects(conn, settings.bucket, lo, hi):
            media_id, owner_id, file_name, bucket, path, size, sha, mime, name, stored, stored_mime = row
            if name is not None:
                result.objects += 1
            if media_id is None:
                result.orphans.append(name)
                continue
            result.rows += 1
            try:
                expected = object_path(owner_id, media_id, file_name)
            except ValueError as err:
                expected = f"<none: {err}>"
            if bucket != settings.bucket:
                result.different[path] = (
                    f"the row says bucket {bucket!r}, the migration uses {settings.bucket!r}"
                )
            elif path != expected:
                result.different[path] = f"the row's object_path should be {expected!r} (owner/id/file name)"
            elif name is None:
                result.missing.append(path)
            elif stored != size:
                result.different[path] = f"Storage holds {stored} bytes, the row says {size}"
            elif stored_mime != mime:
                result.different[path] = f"Storage serves it as {stored_mime}, the row says {mime}"
            else:
                sample.offer((path, size, sha))
    result.missing.sort()
    result.orphans.sort()
    return len(ranges)


def reconcile_storage(
    dest_dsn: str, settings: MediaSettings, *, run_id: str | None, client: Any, sample_size: int | None
) -> StorageReconciliation | None:
    """:func:`media.reconcile_storage` through ``storage.objects``; None when neither side has anything.

    ``sample_size`` None downloads every object that passed the catalog checks.
    """
    from include.migration.media.hooks import storage_client
    from include.migration.media.reconcile import RECONCILE_SAMPLE, StorageReconciliation, _hash_objects

    started = time.perf_counter()
    with db.connection(dest_dsn, application="migration-reconcile-media") as conn:
        anything = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM public.media) OR EXISTS (SELECT 1 FROM migration.media_uploads)"
        ).fetchone()[0]
        if not anything:
            log.info("media: no row in public.media and no upload recorded; Storage not compared")
            return None
        result = StorageReconciliation(settings.bucket, 0, 0)
        sample = _Sample(sample_size, run_id)
        ranges = compare_catalog(conn, settings, result, sample)
    compared = time.perf_counter() - started
    log.info(
        "media: %s rows and %s objects compared through storage.objects in %d key ranges (%.2f s): "
        "%d missing, %d without a row, %d differ; downloading %d of %s objects to compare their sha256%s",
        f"{result.rows:,}",
        f"{result.objects:,}",
        ranges,
        compared,
        len(result.missing),
        len(result.orphans),
        len(result.different),
        len(sample.items),
        f"{sample.seen:,}",
        "" if sample_size is None else f" (a sample: sample size {sample_size}, default {RECONCILE_SAMPLE})",
    )
    if sample.items:
        _hash_objects(client or storage_client(), settings, sample.items, result)
    result.seconds = time.perf_counter() - started
    return result


def _stage_has_rows(dest: psycopg.Connection, stage: sql.Composable) -> bool:
    from psycopg import sql as _sql

    return bool(
        dest.execute(
            _sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE _disposition = 'loaded')").format(stage)
        ).fetchone()[0]
    )


def skip_unchanged(dest: psycopg.Connection, stage: sql.Composable, run_id: str, bucket: str) -> int:
    """Record 'skipped_identical' for staged files whose object is a proven version; commits.

    Trusted without a request: size, MIME type and eTag in ``storage.objects``
    rule a different object out but cannot prove the same bytes (no SHA-256
    there; the eTag is no content hash for resumable uploads). The proof does:
    this run's SHA-256 equals one the migration computed from a download of the
    object at this exact version (id, version, eTag and updated_at unchanged;
    Storage gives every write a new version). Everything else goes to the
    uploader's own check, which downloads.
    """
    if not storage_catalog.readable(dest) or not _stage_has_rows(dest, stage):
        return 0
    return _committed(
        dest,
        storage_catalog.skip_unchanged(dest, stage, run_id, bucket),
        "media: %s files already in Storage and identical by storage.objects and an earlier verified "
        "download of the same version; skipped without a request to Storage",
    )


def record_proofs(dest: psycopg.Connection, stage: sql.Composable, run_id: str, bucket: str) -> int:
    """After the upload pass: remember the version of each object this run verified; commits."""
    if not storage_catalog.readable(dest):
        log.info("media: the destination has no readable storage.objects; the next run checks over HTTP")
        return 0
    return _committed(
        dest,
        storage_catalog.record_proofs(dest, stage, run_id, bucket),
        "media: %s objects verified by their bytes this run; their storage.objects versions recorded in "
        "migration.media_object_proofs so an unchanged object is not downloaded again",
    )


def _committed(dest: psycopg.Connection, count: int, message: str) -> int:
    """Commit a catalog step's writes and log its count (``message`` has one %s for it)."""
    dest.commit()
    log.info(message, f"{count:,}")
    return count
