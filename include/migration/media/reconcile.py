"""The Storage half of the media reconciliation: Storage against ``public.media``.

Rows whose object is missing, objects with no row (orphans), rows whose object
differs (size from the listing; SHA-256 of a sample of objects, or of every
object with ``media_verify_all_objects``), rows whose path breaks the naming
rule. The verdict is stored in ``migration.reconciliations`` (entity
``media_storage``) and as a JSON report; ``media.on_reconcile`` runs it.
"""

from __future__ import annotations

import json
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.migration import db, runs
from include.migration.media.source import object_path

if TYPE_CHECKING:
    from include.migration.media.hooks import MediaSettings

log = logging.getLogger(__name__)

# Objects the reconciliation downloads and hashes (besides sizes, compared for
# all): each was verified when uploaded, so a sample is independent evidence;
# media_verify_all_objects hashes every one.
RECONCILE_SAMPLE = 200


@dataclass
class StorageReconciliation:
    bucket: str
    rows: int
    objects: int
    missing: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    different: dict[str, str] = field(default_factory=dict)
    hashed: int = 0
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not (self.missing or self.orphans or self.different)

    def verdict_line(self) -> str:
        if self.clean:
            return (
                f"media: Storage reconciliation CLEAN, {self.rows} rows = {self.objects} objects in bucket "
                f"{self.bucket!r}, every size equal, {self.hashed} objects downloaded and their sha256 equal"
            )
        first = [*self.missing[:2], *self.orphans[:2], *list(self.different)[:2]]
        return (
            f"media: Storage reconciliation FOUND DIFFERENCES in bucket {self.bucket!r}: "
            f"{len(self.missing)} rows' objects missing, {len(self.orphans)} objects without a row, "
            f"{len(self.different)} objects differ (rows {self.rows}, objects {self.objects}); "
            f"first: {', '.join(first)}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "verdict": "clean" if self.clean else "differences",
            "rows": self.rows,
            "objects": self.objects,
            "missing": self.missing,
            "orphans": self.orphans,
            "different": self.different,
            "hashed": self.hashed,
            "seconds": round(self.seconds, 3),
        }


def reconcile_storage(
    dest_dsn: str, settings: MediaSettings, *, run_id: str | None = None, client: Any = None
) -> StorageReconciliation | None:
    """Compare every ``public.media`` row with its object; None when there is nothing on either side
    to compare (no row and no upload ever recorded: Storage is not contacted). ``run_id`` seeds the sample."""
    # -- Where the destination has Storage's catalog, storage.objects by key range (media_catalog.py)
    from include.migration.media import catalog as media_catalog
    from include.migration.media.hooks import storage_client  # media imports this module: resolved late
    from include.supabase.storage import list_objects

    if media_catalog.readable(dest_dsn):
        sample = None if settings.verify_all_objects else RECONCILE_SAMPLE
        return media_catalog.reconcile_storage(
            dest_dsn, settings, run_id=run_id, client=client, sample_size=sample
        )
    # -- else the HTTP listing of the whole bucket
    started = time.perf_counter()
    with db.connection(dest_dsn, application="migration-reconcile-media") as conn:
        rows = conn.execute(
            "SELECT id::text, owner_id::text, file_name, bucket, object_path, size_bytes, sha256 "
            "FROM public.media"
        ).fetchall()
        recorded = conn.execute("SELECT EXISTS (SELECT 1 FROM migration.media_uploads)").fetchone()[0]
    if not rows and not recorded:
        log.info("media: no row in public.media and no upload recorded; Storage not compared")
        return None
    client = client or storage_client()
    listing = list_objects(client, settings.bucket)
    result = StorageReconciliation(settings.bucket, len(rows), len(listing))
    to_hash = _compare_rows(rows, listing, settings, result)
    if not settings.verify_all_objects and len(to_hash) > RECONCILE_SAMPLE:
        to_hash = random.Random(run_id).sample(sorted(to_hash), RECONCILE_SAMPLE)
    result.orphans = sorted(set(listing) - {r[4] for r in rows})
    _hash_objects(client, settings, to_hash, result)
    result.seconds = time.perf_counter() - started
    return result


def _compare_rows(
    rows: list[tuple], listing: dict[str, int], settings: MediaSettings, result: StorageReconciliation
) -> list[tuple[str, int, str]]:
    """Row by row against the listing; returns the objects whose bytes may be hashed."""
    to_hash = []
    for media_id, owner_id, file_name, bucket, path, size, sha in rows:
        try:
            expected = object_path(owner_id, media_id, file_name)
        except ValueError as err:
            expected = f"<none: {err}>"
        if bucket != settings.bucket:
            result.different[path] = f"the row says bucket {bucket!r}, the migration uses {settings.bucket!r}"
        elif path != expected:
            result.different[path] = f"the row's object_path should be {expected!r} (owner/id/file name)"
        elif path not in listing:
            result.missing.append(path)
        elif listing[path] != size:
            result.different[path] = f"Storage holds {listing[path]} bytes, the row says {size}"
        else:
            to_hash.append((path, size, sha))
    result.missing.sort()
    return to_hash


def _hash_objects(
    client: Any, settings: MediaSettings, objects: list[tuple[str, int, str]], result: StorageReconciliation
) -> None:
    from include.supabase.storage import verify_object

    def check(obj: tuple[str, int, str]) -> tuple[str, str | None]:
        path, size, sha = obj
        return path, verify_object(client, settings.bucket, path, size, sha)

    with ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="media-reconcile") as pool:
        for path, problem in pool.map(check, objects):
            if problem is not None:
                result.different[path] = problem
    result.hashed = len(objects)


def persist_storage_reconciliation(dest_dsn: str, run_id: str, result: StorageReconciliation) -> Path:
    """Store the verdict in ``migration.reconciliations`` (entity 'media_storage') and as a JSON report."""
    from include.migration.reconcile import record_verdict, report_dir

    data = result.as_dict()
    with db.connection(dest_dsn) as conn:
        record_verdict(
            conn,
            run_id,
            "media_storage",
            data["verdict"],
            result.rows,
            result.objects,
            1,
            result.missing,
            result.orphans,
            sorted(result.different),
        )
        runs.update(
            conn,
            run_id,
            report={
                "storage_reconciliation": {
                    k: v for k, v in data.items() if k not in ("missing", "orphans", "different")
                }
            },
        )
        conn.commit()
    path = report_dir(run_id) / "reconcile-media-storage.json"
    path.write_text(json.dumps(data, indent=2))
    return path
