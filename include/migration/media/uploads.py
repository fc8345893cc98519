"""The media load's upload pass: every loadable staged file into Storage, verified, recorded.

``media.before_merge`` calls :func:`upload_all`: the loadable rows stream from
the stage into the Storage uploader (``include/supabase/storage_upload.py``:
bounded pool, retries, TUS); each new object is downloaded back and compared
in a second pool as it lands (:func:`verify_upload`). Every outcome is written
to ``migration.media_uploads`` in committed batches (:class:`UploadRecorder`),
so an interrupted pass still tells the rollback what it uploaded; problems go
to a temp table the load turns into quarantines. :func:`stop_if_storage_failing`
stops the load when so many uploads failed that Storage looks down.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from psycopg import sql

from include.migration import db
from include.migration.media.source import PROGRESS_SECONDS, rate

if TYPE_CHECKING:
    import psycopg

    from include.migration.media.hooks import MediaSettings
    from include.migration.pipeline import Conns
    from include.supabase.storage_upload import UploadItem, UploadResult

log = logging.getLogger(__name__)

RECORD_BATCH = 500  # upload outcomes written to the destination per commit
VERIFY_TRIES = 3
VERIFY_BACKOFF_SECONDS = 0.5

# Upload outcomes that leave the row out, and the quarantine reason each becomes.
UPLOAD_PROBLEMS = {
    "conflict": "storage_conflict",
    "rejected_size": "file_too_large",
    "rejected_mime": "mime_type_not_allowed",
    "failed": "upload_failed",
}


class UploadsFailing(RuntimeError):
    """Too many uploads failed: the load stopped before changing any row."""


@dataclass
class UploadTally:
    """Counts of one upload pass, for the log and the run record."""

    files: int
    total_bytes: int
    outcomes: Counter[str] = field(default_factory=Counter)
    done: int = 0
    sent_bytes: int = 0
    requests: int = 0
    started: float = field(default_factory=time.perf_counter)
    last_log: float = field(default_factory=time.perf_counter)

    def add(self, outcome: str, size: int, attempts: int) -> None:
        self.outcomes[outcome] += 1
        self.done += 1
        self.requests += attempts
        if outcome == "uploaded":
            self.sent_bytes += size

    def line(self) -> str:
        seconds = time.perf_counter() - self.started
        kinds = ", ".join(f"{k.replace('_', ' ')} {n:,}" for k, n in sorted(self.outcomes.items()))
        return (
            f"{self.done:,} of {self.files:,} files ({self.total_bytes / 1e6:.1f} MB in all); "
            f"{self.sent_bytes / 1e6:.1f} MB sent in {seconds:.1f} s ({rate(self.sent_bytes, seconds)}); "
            f"{kinds or 'nothing yet'}; {self.requests:,} upload requests"
        )

    def progress(self) -> None:
        if time.perf_counter() - self.last_log >= PROGRESS_SECONDS:
            self.last_log = time.perf_counter()
            log.info("media: uploading: %s", self.line())

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "bytes": self.total_bytes,
            "sent_bytes": self.sent_bytes,
            "requests": self.requests,
            "seconds": round(time.perf_counter() - self.started, 3),
            "outcomes": dict(self.outcomes),
        }


class UploadRecorder:
    """Writes outcomes to ``migration.media_uploads`` (and problems to a temp table) in committed batches,
    so an interrupted pass still tells the rollback which objects it uploaded."""

    def __init__(self, dest: psycopg.Connection, run_id: str) -> None:
        self.dest, self.run_id = dest, run_id
        self.records: list[tuple] = []
        self.problems: list[tuple] = []
        self.failures: list[str] = []
        dest.execute(
            "CREATE TEMP TABLE IF NOT EXISTS media_upload_problems "
            "(object_path text, reason text, detail text)"
        )
        dest.execute("TRUNCATE media_upload_problems")
        dest.commit()

    def add(self, path: str, outcome: str, detail: str, size: int, problem: str | None) -> None:
        self.records.append((self.run_id, path, outcome, detail, size))
        if problem is not None:
            self.problems.append((path, problem, f"{outcome}: {detail}"))
            if problem == "upload_failed" and len(self.failures) < 5:
                self.failures.append(f"{path}: {detail}")
        if len(self.records) >= RECORD_BATCH:
            self.flush()

    def flush(self) -> None:
        with self.dest.cursor() as cur:
            if self.records:
                with cur.copy(
                    "COPY migration.media_uploads (run_id, object_path, outcome, detail, bytes) FROM STDIN"
                ) as copy:
                    for record in self.records:
                        copy.write_row(record)
            if self.problems:
                with cur.copy("COPY media_upload_problems (object_path, reason, detail) FROM STDIN") as copy:
                    for problem in self.problems:
                        copy.write_row(problem)
        self.dest.commit()
        self.records, self.problems = [], []


def verify_upload(
    client: Any, bucket: str, item: UploadItem, result: UploadResult
) -> tuple[str, str, str | None]:
    """Download a new object back and compare it with the source: (outcome, detail, problem)."""
    from include.supabase.retry import Backoff, call_with_retry
    from include.supabase.storage import remove_objects, verify_object

    try:
        reason = call_with_retry(
            lambda: verify_object(client, bucket, item.object_path, item.size, item.sha256),
            attempts=VERIFY_TRIES,
            retryable=lambda err: True,  # a Storage hiccup while reading back: try again, then report
            backoff=Backoff(VERIFY_BACKOFF_SECONDS),
            what=f"verify {item.object_path}",
        )
    except Exception as err:
        return "uploaded", f"{result.detail}; NOT VERIFIED ({type(err).__name__}: {err})", "upload_failed"
    if reason is None:
        return "uploaded", f"{result.detail}; verified size and sha256", None
    try:
        remove_objects(client, bucket, [item.object_path])
    except Exception as err:
        return (
            "uploaded",
            f"{result.detail}; verification failed ({reason}); removal failed ({err})",
            "upload_failed",
        )
    return (
        "failed",
        f"{result.detail}; verification failed ({reason}); the object was removed",
        "upload_failed",
    )


def _detail(result: UploadResult) -> str:
    return result.detail + (f" ({result.attempts} requests)" if result.attempts > 1 else "")


def stop_if_storage_failing(
    dest: psycopg.Connection, files: int, settings: MediaSettings, recorder: UploadRecorder
) -> int:
    """Raise when so many uploads failed that Storage looks down; else the number that failed."""
    failed = dest.execute(
        "SELECT count(*) FROM media_upload_problems WHERE reason = 'upload_failed'"
    ).fetchone()[0]
    pct = 100.0 * failed / files
    if failed and pct > settings.max_failed_pct:
        raise UploadsFailing(
            f"media: {failed} of {files} uploads failed ({pct:.1f}%, above media_max_failed_uploads_pct "
            f"{settings.max_failed_pct}%), so Storage looks unhealthy; no row was changed. "
            "Uploads that landed are recorded in migration.media_uploads and are skipped (identical) "
            "on the retry. First failures: " + "; ".join(recorder.failures)
        )
    return failed


def upload_all(
    conns: Conns,
    stage: sql.Identifier,
    client: Any,
    source: Any,
    settings: MediaSettings,
    tally: UploadTally,
    recorder: UploadRecorder,
) -> None:
    """Stream the loadable rows into the uploader; verify new objects in a second pool as they land."""
    from include.supabase.storage_upload import StorageUploader

    inflight: dict[str, UploadItem] = {}
    verifying: set[Future[tuple[UploadItem, UploadResult, tuple[str, str, str | None]]]] = set()

    def verified(item: UploadItem, result: UploadResult) -> tuple[UploadItem, UploadResult, tuple]:
        return item, result, verify_upload(client, settings.bucket, item, result)

    def record(done: set[Future]) -> None:
        for future in done:
            item, result, (outcome, detail, problem) = future.result()
            recorder.add(item.object_path, outcome, detail, item.size, problem)
            tally.add(outcome, item.size, result.attempts)

    with (
        db.connection(conns.dest, application="migration-media-upload") as reader,
        reader.cursor(name="media_files_to_upload") as cur,
        StorageUploader(
            client,
            settings.bucket,
            concurrency=settings.concurrency,
            retries=settings.retries,
            backoff=settings.backoff,
        ) as uploader,
        ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="media-verify") as verifier,
    ):
        cur.execute(
            sql.SQL(
                "SELECT object_path, mime_type, size_bytes, sha256, storage_key, "
                # an object some run put or found there is asked about first; any other is sent first
                "EXISTS (SELECT 1 FROM migration.media_uploads p WHERE p.object_path = s.object_path "
                "AND p.outcome <> 'failed') FROM {} s "
                "WHERE _disposition = 'loaded' "
                # skipped already by storage.objects (media_catalog.skip_unchanged): no request for them
                "AND NOT EXISTS (SELECT 1 FROM migration.media_uploads u WHERE u.run_id = %s "
                "AND u.object_path = s.object_path AND u.outcome = 'skipped_identical') ORDER BY id"
            ).format(stage),
            (recorder.run_id,),
        )
        for result in uploader.upload_many(_items(cur, source, inflight)):
            item = inflight.pop(result.object_path)
            if result.outcome == "uploaded":
                verifying.add(verifier.submit(verified, item, result))
            else:
                recorder.add(
                    item.object_path,
                    result.outcome,
                    _detail(result),
                    item.size,
                    UPLOAD_PROBLEMS.get(result.outcome),
                )
                tally.add(result.outcome, item.size, result.attempts)
            finished = {f for f in verifying if f.done()}
            record(finished)
            verifying -= finished
            tally.progress()
        while verifying:
            finished, verifying = wait(verifying, return_when=FIRST_COMPLETED)
            record(finished)


def _items(cur: Any, source: Any, inflight: dict[str, UploadItem]) -> Iterator[UploadItem]:
    from include.supabase.storage_upload import UploadItem

    for path, mime, size, sha, key, recorded in cur:
        item = UploadItem(path, mime, size, sha, partial(source.open, key), probe_first=recorded)
        inflight[path] = item
        yield item
