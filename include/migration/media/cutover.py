"""The cutover criterion for the files: Storage holds every media row's object, verified, and nothing else.

The rows' criteria (accounted, reconciled) say nothing about Storage: a
``public.media`` row whose object is missing or altered is a broken
attachment in the application the day it switches over. This criterion runs
the media Storage reconciliation (``storage.objects`` by key range where the
destination has it, else the API listing; a sample downloaded and hashed)
and, where ``storage.objects`` is readable, counts the rows whose object at
its current version was never verified by its bytes
(``migration.media_object_proofs``). Value: the number of problems;
threshold: 0.
"""

from __future__ import annotations

import logging

from include.migration import db
from include.migration.cutover import Criterion
from include.supabase import storage_catalog

log = logging.getLogger(__name__)

NAME = "Storage objects present and verified"


def unproven(dest_dsn: str) -> tuple[int, list[str]] | None:
    """(rows whose current object version was never verified by its bytes, first paths); None without a catalog."""
    with db.connection(dest_dsn, application="migration-cutover-media") as conn:
        if not storage_catalog.readable(conn):
            return None
        count, first = conn.execute(storage_catalog.load_sql("media_unproven")).fetchone()
    return int(count), list(first or [])


def storage_verified(dest_dsn: str, run_id: str) -> Criterion:
    from include.migration.media.hooks import MediaSettings, persist_storage_reconciliation, reconcile_storage

    result = reconcile_storage(dest_dsn, MediaSettings(), run_id=run_id)
    if result is None:
        return Criterion(NAME, True, "no row in public.media and no upload recorded: Storage holds nothing to check",
                         value=0, threshold=0)
    persist_storage_reconciliation(dest_dsn, run_id, result)
    not_proven = unproven(dest_dsn)
    problems = len(result.missing) + len(result.orphans) + len(result.different)
    parts = [
        f"{result.rows} rows, {result.objects} objects in bucket {result.bucket!r}: {len(result.missing)} missing, "
        f"{len(result.orphans)} without a row, {len(result.different)} differ; {result.hashed} downloaded and "
        "their sha256 compared"
    ]
    if not_proven is None:
        parts.append("(no readable storage.objects: compared through the API listing; each object was verified "
                     "when uploaded, see migration.media_uploads)")
    else:
        problems += not_proven[0]
        parts.append(f"{not_proven[0]} rows whose object at its current version was never verified by its bytes"
                     + (f" (first: {', '.join(not_proven[1])}; a full media run re-verifies them)"
                        if not_proven[0] else ""))
    if not result.clean:
        parts.append(result.verdict_line())
    evidence = "; ".join(parts) + f"; problems {problems}, threshold 0"
    return Criterion(NAME, problems == 0, evidence, value=problems, threshold=0)
