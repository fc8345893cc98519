"""The media entity's own steps: each row's file checked, put in Supabase Storage, and verified.

The generic pipeline moves ``media_assets`` rows like any entity (transform SQL
``include/sql/entities/media.sql``: owner fate, merged owners re-pointed,
dangling conversation / message references nulled). This module adds the
files, as the hooks ``pipeline.py`` calls (``Entity.hooks``):

``on_transform``
    After the destination's checks: each loadable row's file is read from the
    legacy media root (connection ``legacy_media``) and hashed as it streams;
    the stage gets the bytes' size and SHA-256, the MIME type (the row's, else
    sniffed from the bytes and the name), the bucket and the object path
    ``{owner}/{media id}/{file name}``, or the row is quarantined: file
    missing, SHA-256 (or, without one, size) different from the row's, over
    the bucket's size limit, MIME type not allowed. Read-only, so a dry run
    reports these too. Written back in bulk (COPY into a temp table, one
    UPDATE).
``before_merge``
    The bucket is created (private, size limit, allowed MIME types) or
    checked; every loadable file is uploaded through the ``supabase`` client
    (``media_files.StorageUploader``: bounded pool, retries with backoff, TUS
    above 6 MB, an identical object is skipped, a different one is a
    conflict), and each new object is downloaded back and compared (size and
    SHA-256). Every outcome is recorded in ``migration.media_uploads`` as it
    happens; conflicts, refusals and failures quarantine their rows before
    any row is merged. When more than ``media_max_failed_uploads_pct`` of the
    uploads fail (Storage is down), the load stops before changing a row.
``after_merge``
    The files' accounting: every loaded row has an object this run uploaded
    or found identical. Then objects the migration uploaded whose row is gone
    (owner deleted, row quarantined, source row deleted) are removed.
``on_reconcile``
    Storage against ``public.media``: rows whose object is missing, objects
    with no row (orphans), rows whose object differs (size from the listing;
    SHA-256 of a sample of objects, or of every object with
    ``media_verify_all_objects``), rows whose path breaks the naming rule.

Connections: ``supabase_api`` (http: host = project URL, password =
service-role key) and ``legacy_media`` (fs: extra ``{"path": ...}``). They are
only resolved when there is a file to read or an object to touch, and nothing
here runs at DAG-parse time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg import sql
from psycopg.types.json import Jsonb

from include.migration import db, runs

if TYPE_CHECKING:
    import psycopg

    from include.migration.entities import Entity
    from include.supabase.storage import LocalMediaSource, UploadItem, UploadResult
    from include.migration.pipeline import Conns

log = logging.getLogger(__name__)

BUCKET = "media"
MEDIA_CONN_ID = "legacy_media"
STORAGE_CONN_ID = "supabase_api"
MIB = 1024 * 1024
DEFAULT_FILE_SIZE_LIMIT_MB = 50
# What a chatbot's users attach. No text/html or SVG: served back from
# Storage they could carry scripts. Anything else is quarantined, not guessed.
DEFAULT_ALLOWED_MIME_TYPES = (
    "image/*",
    "application/pdf",
    "audio/*",
    "video/*",
    "text/plain",
    "text/markdown",
    "text/csv",
)
DEFAULT_CONCURRENCY = 8
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF_SECONDS = 0.5
DEFAULT_MAX_FAILED_PCT = 1.0

HEAD_BYTES = 512  # enough for every signature sniff_mime knows
READ_BLOCK = 1 << 20
CHECK_BATCH = 1000  # staged rows read and checked per round
RECORD_BATCH = 500  # upload outcomes written to the destination per commit
PROGRESS_SECONDS = 15.0
VERIFY_TRIES = 3
# Objects the reconciliation downloads and hashes (besides sizes, compared for
# all): each was verified when uploaded, so a sample is independent evidence;
# media_verify_all_objects hashes every one.
RECONCILE_SAMPLE = 200

# Upload outcomes that leave the row out, and the quarantine reason each becomes.
UPLOAD_PROBLEMS = {
    "conflict": "storage_conflict",
    "rejected_size": "file_too_large",
    "rejected_mime": "mime_type_not_allowed",
    "failed": "upload_failed",
}
_MIME_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "audio/mp3": "audio/mpeg",
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/x-m4a": "audio/mp4",
}
_GENERIC_MIME = {"", "application/octet-stream", "binary/octet-stream"}


class MediaSetupError(RuntimeError):
    """A connection or folder the media migration needs is missing or wrong."""


class UploadsFailing(RuntimeError):
    """Too many uploads failed: the load stopped before changing any row."""


# ----------------------------------------------------------------------------
# Settings: module defaults, overridden per run by the DAG's media params


@dataclass(frozen=True)
class MediaSettings:
    bucket: str = BUCKET
    file_size_limit: int = DEFAULT_FILE_SIZE_LIMIT_MB * MIB
    allowed_mime_types: tuple[str, ...] = DEFAULT_ALLOWED_MIME_TYPES
    concurrency: int = DEFAULT_CONCURRENCY
    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF_SECONDS
    max_failed_pct: float = DEFAULT_MAX_FAILED_PCT
    update_bucket_settings: bool = False
    verify_all_objects: bool = False

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> MediaSettings:
        """From a run's options (the ``media_*`` DAG params); missing ones keep the defaults."""
        o = options or {}
        d = cls()
        limit_mb = o.get("media_file_size_limit_mb")
        return cls(
            file_size_limit=int(float(limit_mb) * MIB) if limit_mb is not None else d.file_size_limit,
            allowed_mime_types=tuple(o.get("media_allowed_mime_types") or d.allowed_mime_types),
            concurrency=int(o.get("media_upload_concurrency", d.concurrency)),
            retries=int(o.get("media_upload_retries", d.retries)),
            backoff=float(o.get("media_upload_backoff_seconds", d.backoff)),
            max_failed_pct=float(o.get("media_max_failed_uploads_pct", d.max_failed_pct)),
            update_bucket_settings=bool(o.get("media_update_bucket_settings", d.update_bucket_settings)),
            verify_all_objects=bool(o.get("media_verify_all_objects", d.verify_all_objects)),
        )


def dag_params() -> dict[str, Any]:
    """The media DAG's own params (added to the entity params by the DAG factory)."""
    from airflow.sdk import Param

    return {
        "media_file_size_limit_mb": Param(
            DEFAULT_FILE_SIZE_LIMIT_MB,
            type="number",
            minimum=0.001,
            description=(
                "The media bucket's file size limit, in MiB. A file above it is quarantined "
                "(file_too_large). The bucket is created with it; an existing bucket with another "
                "limit stops the load (see media_update_bucket_settings)."
            ),
        ),
        "media_allowed_mime_types": Param(
            list(DEFAULT_ALLOWED_MIME_TYPES),
            type="array",
            description=(
                "MIME types the bucket accepts ('type/*' allowed). A file of another type is "
                "quarantined (mime_type_not_allowed)."
            ),
        ),
        "media_upload_concurrency": Param(
            DEFAULT_CONCURRENCY,
            type="integer",
            minimum=1,
            maximum=64,
            description="Files read, uploaded and verified at the same time.",
        ),
        "media_upload_retries": Param(
            DEFAULT_RETRIES,
            type="integer",
            minimum=0,
            maximum=10,
            description=(
                "Extra attempts per Storage request after a 5xx, 429, timeout or connection error "
                "(exponential backoff). Other refusals are final."
            ),
        ),
        "media_upload_backoff_seconds": Param(
            DEFAULT_BACKOFF_SECONDS,
            type="number",
            minimum=0,
            maximum=60,
            description="First wait before a retry; doubles each time.",
        ),
        "media_max_failed_uploads_pct": Param(
            DEFAULT_MAX_FAILED_PCT,
            type="number",
            minimum=0,
            maximum=100,
            description=(
                "When more than this percentage of the uploads fail, Storage is treated as down: the "
                "load stops before any row changes (uploads that landed are kept and skipped on the "
                "retry). Below it, failed files are quarantined (upload_failed) and retried by the "
                "next run."
            ),
        ),
        "media_update_bucket_settings": Param(
            False,
            type="boolean",
            description=(
                "Change an existing bucket's size limit and MIME types to the ones above. Off: a "
                "bucket with other settings stops the load and the log lists the differences."
            ),
        ),
        "media_verify_all_objects": Param(
            False,
            type="boolean",
            description=(
                "Reconcile by downloading and hashing every object in the bucket, not a sample of "
                f"{RECONCILE_SAMPLE} (every object's size is always compared; every upload was "
                "verified when it landed)."
            ),
        ),
    }


# ----------------------------------------------------------------------------
# Connections


def project_url(host: str, scheme: str | None = None, port: int | None = None) -> str:
    """The Supabase project URL from a connection's host (with or without its scheme)."""
    if "://" in host:
        return host.rstrip("/")
    return f"{scheme or 'https'}://{host.rstrip('/')}" + (f":{port}" if port else "")


def storage_client() -> Any:
    """A ``supabase`` client for the ``supabase_api`` connection (service-role key)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.log import mask_secret

    conn = BaseHook.get_connection(STORAGE_CONN_ID)
    if not conn.host or not conn.password:
        raise MediaSetupError(
            f"connection {STORAGE_CONN_ID} needs host = the project URL and password = the service-role key"
        )
    mask_secret(conn.password)
    from supabase import create_client

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return create_client(project_url(conn.host, conn.schema, conn.port), conn.password)


def media_source() -> LocalMediaSource:
    """The legacy media root of the ``legacy_media`` connection (extra ``path``)."""
    from airflow.sdk import BaseHook

    from include.supabase.storage import LocalMediaSource

    conn = BaseHook.get_connection(MEDIA_CONN_ID)
    root = (conn.extra_dejson or {}).get("path")
    if not root:
        raise MediaSetupError(
            f'connection {MEDIA_CONN_ID} has no extra {{"path": ...}} (the legacy media root)'
        )
    if not Path(root).is_dir():
        raise MediaSetupError(
            f"the legacy media root {root} (connection {MEDIA_CONN_ID}) is not a folder this "
            "worker can read; is the volume mounted?"
        )
    return LocalMediaSource(root)


def remove_from_storage(paths: list[str]) -> list[str]:
    """Remove objects from the media bucket; the rollback's ``storage_remover``."""
    from include.supabase.storage import remove_objects

    removed = remove_objects(storage_client(), BUCKET, paths)
    log.info("media: removed %d of %d objects from bucket %r", len(removed), len(paths), BUCKET)
    return removed


# ----------------------------------------------------------------------------
# Files: check each staged row's file (transform)


@dataclass(frozen=True)
class FileCheck:
    """What one staged row's file says: loadable (reason None) with its facts, or why not."""

    id: str
    reason: str | None
    detail: str = ""
    object_path: str | None = None
    mime_type: str | None = None
    size: int | None = None
    sha256: str | None = None
    repairs: tuple[str, ...] = ()

    def row(self) -> tuple:
        return (
            self.id,
            self.reason,
            self.detail,
            self.object_path,
            self.mime_type,
            self.size,
            self.sha256,
            list(self.repairs),
        )


def read_file(source: Any, key: str) -> tuple[int, str, bytes] | None:
    """(bytes read, SHA-256, first bytes) of a file, streamed; None when there is no file."""
    if source.size(key) is None:
        return None
    digest, head, read = hashlib.sha256(), b"", 0
    with source.open(key) as stream:
        while block := stream.read(READ_BLOCK):
            if len(head) < HEAD_BYTES:
                head += block[: HEAD_BYTES - len(head)]
            digest.update(block)
            read += len(block)
    return read, digest.hexdigest(), head


def resolve_mime(legacy: str | None, head: bytes, file_name: str, storage_key: str) -> tuple[str, str | None]:
    """The MIME type to store, and the repair it took (None: the row's own, unchanged)."""
    from include.supabase.storage import sniff_mime

    declared = (legacy or "").split(";", 1)[0].strip().lower()
    if declared not in _GENERIC_MIME and "/" in declared:
        canonical = _MIME_ALIASES.get(declared, declared)
        return canonical, (None if canonical == legacy else "mime_type_normalized")
    sniffed = sniff_mime(head, file_name)
    if sniffed == "application/octet-stream":
        sniffed = sniff_mime(head, storage_key)
    return sniffed, "mime_type_sniffed"


def check_file(source: Any, settings: MediaSettings, row: Sequence[Any]) -> FileCheck:
    """Read one staged row's file and decide: loadable with its facts, or quarantined and why."""
    from include.supabase.storage import MediaPathError

    media_id, owner_id, file_name, key, legacy_mime, legacy_size, legacy_sha = row
    try:
        found = read_file(source, key)
    except MediaPathError as err:
        return FileCheck(media_id, "file_path_invalid", str(err))
    except FileNotFoundError:
        found = None  # removed between the size and the read
    except OSError as err:
        return FileCheck(media_id, "file_unreadable", f"{key}: {type(err).__name__}: {err}")
    if found is None:
        return FileCheck(media_id, "file_missing", f"no file at {key!r} under the legacy media root")
    size, digest, head = found
    integrity = _integrity(media_id, key, size, digest, legacy_size, legacy_sha)
    if isinstance(integrity, FileCheck):
        return integrity
    mime, mime_repair = resolve_mime(legacy_mime, head, file_name or "", key)
    repairs = integrity + ([mime_repair] if mime_repair else [])
    return _admit(settings, media_id, owner_id, file_name, mime, size, digest, tuple(repairs))


def _integrity(
    media_id: str, key: str, size: int, digest: str, legacy_size: int | None, legacy_sha: str | None
) -> FileCheck | list[str]:
    """The file against what the legacy row recorded: a quarantine, or the repairs it needs."""
    recorded = (legacy_sha or "").strip().lower()
    if recorded and recorded != digest:
        return FileCheck(
            media_id,
            "sha256_mismatch",
            f"the row records sha256 {recorded}, the file {key!r} ({size} bytes) has {digest}",
        )
    if recorded:
        return [] if legacy_size == size else ["size_bytes_from_file"]
    if legacy_size is not None and legacy_size != size:
        return FileCheck(
            media_id,
            "size_mismatch",
            f"the row records {legacy_size} bytes and no sha256; the file {key!r} has {size} bytes",
        )
    return ["sha256_from_file"]


def _admit(
    settings: MediaSettings,
    media_id: str,
    owner_id: str,
    file_name: str,
    mime: str,
    size: int,
    digest: str,
    repairs: tuple[str, ...],
) -> FileCheck:
    """The bucket's rules (size, MIME type) and the object's name."""
    from include.supabase.storage import mime_allowed, object_path

    if size > settings.file_size_limit:
        return FileCheck(
            media_id,
            "file_too_large",
            f"{size} bytes, over the bucket's limit of {settings.file_size_limit} bytes",
        )
    if not mime_allowed(mime, settings.allowed_mime_types):
        return FileCheck(
            media_id,
            "mime_type_not_allowed",
            f"{mime} is not among the bucket's types ({', '.join(settings.allowed_mime_types)})",
        )
    try:
        path = object_path(owner_id, media_id, file_name)
    except ValueError as err:
        return FileCheck(media_id, "object_path_invalid", str(err))
    return FileCheck(media_id, None, "", path, mime, size, digest, repairs)


def _stage(run: runs.Run) -> sql.Identifier:
    assert run.stage_table is not None
    return sql.Identifier("migration_stage", run.stage_table)


def _rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / 1e6 / seconds:.1f} MB/s" if seconds > 0 else "- MB/s"


def on_transform(conns: Conns, dest: psycopg.Connection, entity: Entity, run: runs.Run) -> None:
    """Check the file of every loadable staged row (not yet checked) and write the verdicts back."""
    settings = MediaSettings.from_options(run.report.get("options"))
    stage = _stage(run)
    todo, legacy_bytes = dest.execute(
        sql.SQL(
            "SELECT count(*), coalesce(sum(size_bytes), 0)::bigint FROM {} WHERE _disposition = 'loaded' "
            "AND object_path IS NULL"
        ).format(stage)
    ).fetchone()
    if not todo:
        log.info("media: no staged file to check")
        return
    source = media_source()
    log.info(
        "media: checking %s files (%.1f MB by the legacy rows) under %s, %d at a time",
        f"{todo:,}",
        legacy_bytes / 1e6,
        source.root,
        settings.concurrency,
    )
    dest.execute(
        "CREATE TEMP TABLE media_file_checks (id uuid, reason text, detail text, object_path text, "
        "mime_type text, size_bytes bigint, sha256 text, repairs text[]) ON COMMIT DROP"
    )
    tally, read_bytes, started = _check_all(conns, dest, stage, source, settings, todo)
    dest.execute(
        sql.SQL(
            "UPDATE {stage} s SET "
            "_disposition = CASE WHEN c.reason IS NULL THEN s._disposition ELSE 'quarantined' END, "
            "_reason = coalesce(c.reason, s._reason), "
            "_source = CASE WHEN c.reason IS NULL THEN s._source "
            "  ELSE coalesce(s._source, to_jsonb(s) - '_source') "
            "       || jsonb_build_object('file_problem', c.detail) END, "
            "bucket = CASE WHEN c.reason IS NULL THEN {bucket} END, object_path = c.object_path, "
            "mime_type = coalesce(c.mime_type, s.mime_type), "
            "size_bytes = coalesce(c.size_bytes, s.size_bytes), "
            "sha256 = coalesce(c.sha256, s.sha256), _repairs = s._repairs || c.repairs "
            "FROM media_file_checks c WHERE s.id = c.id"
        ).format(stage=stage, bucket=sql.Literal(settings.bucket))
    )
    seconds = time.perf_counter() - started
    summary = {"files": todo, "bytes": read_bytes, "seconds": round(seconds, 3), "outcomes": dict(tally)}
    runs.update(dest, run.run_id, report={"files_checked": summary})
    dest.commit()
    problems = ", ".join(f"{k} {n:,}" for k, n in sorted(tally.items()) if k != "loadable") or "none"
    log.info(
        "media: checked %s files, %.1f MB read in %.2f s (%s): %s loadable; quarantined: %s",
        f"{todo:,}",
        read_bytes / 1e6,
        seconds,
        _rate(read_bytes, seconds),
        f"{tally['loadable']:,}",
        problems,
    )


def _check_all(
    conns: Conns,
    dest: psycopg.Connection,
    stage: sql.Identifier,
    source: Any,
    settings: MediaSettings,
    todo: int,
) -> tuple[Counter[str], int, float]:
    """Read the rows to check in batches, check their files in a pool, COPY the verdicts."""
    tally: Counter[str] = Counter()
    read_bytes, started, last = 0, time.perf_counter(), time.perf_counter()
    check = partial(check_file, source, settings)
    with (
        db.connection(conns.dest, application="migration-media-files") as reader,
        reader.cursor(name="media_files_to_check") as cur,
        ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="media-check") as pool,
        dest.cursor() as wcur,
        wcur.copy(
            "COPY media_file_checks "
            "(id, reason, detail, object_path, mime_type, size_bytes, sha256, repairs) FROM STDIN"
        ) as copy,
    ):
        cur.execute(
            sql.SQL(
                "SELECT id::text, owner_id::text, file_name, storage_key, mime_type, size_bytes, sha256 "
                "FROM {} WHERE _disposition = 'loaded' AND object_path IS NULL ORDER BY id"
            ).format(stage)
        )
        while rows := cur.fetchmany(CHECK_BATCH):
            for verdict in pool.map(check, rows):
                copy.write_row(verdict.row())
                tally[verdict.reason or "loadable"] += 1
                read_bytes += verdict.size or 0
            if time.perf_counter() - last >= PROGRESS_SECONDS:
                last = time.perf_counter()
                done = sum(tally.values())
                log.info(
                    "media: checked %s of %s files, %.1f MB, %s",
                    f"{done:,}",
                    f"{todo:,}",
                    read_bytes / 1e6,
                    _rate(read_bytes, last - started),
                )
    return tally, read_bytes, started


# ----------------------------------------------------------------------------
# Uploads (load, before the rows are merged)


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
            f"{self.sent_bytes / 1e6:.1f} MB sent in {seconds:.1f} s ({_rate(self.sent_bytes, seconds)}); "
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


def _verify_upload(
    client: Any, bucket: str, item: UploadItem, result: UploadResult
) -> tuple[str, str, str | None]:
    """Download a new object back and compare it with the source: (outcome, detail, problem)."""
    from include.supabase.storage import remove_objects, verify_object

    last: Exception | None = None
    for attempt in range(VERIFY_TRIES):
        try:
            reason = verify_object(client, bucket, item.object_path, item.size, item.sha256)
            break
        except Exception as err:  # Storage hiccup while reading back: try again, then report
            last = err
            time.sleep(0.5 * 2**attempt)
    else:
        return "uploaded", f"{result.detail}; NOT VERIFIED ({type(last).__name__}: {last})", "upload_failed"
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


def before_merge(conns: Conns, dest: psycopg.Connection, entity: Entity, run: runs.Run) -> None:
    """Upload every loadable staged file, verify, record; quarantine the rows whose file did not land."""
    from include.supabase.storage import ensure_bucket

    settings = MediaSettings.from_options(run.report.get("options"))
    stage = _stage(run)
    files, total, unchecked = dest.execute(
        sql.SQL(
            "SELECT count(*), coalesce(sum(size_bytes), 0)::bigint, "
            "count(*) FILTER (WHERE object_path IS NULL) FROM {} WHERE _disposition = 'loaded'"
        ).format(stage)
    ).fetchone()
    if unchecked:
        raise RuntimeError(
            f"media: {unchecked} loadable staged rows were never checked against their files; "
            "clear this DAG run from its transform task"
        )
    if not files:
        log.info("media: no file to upload")
        return
    client, source = storage_client(), media_source()
    state = ensure_bucket(
        client,
        settings.bucket,
        file_size_limit=settings.file_size_limit,
        allowed_mime_types=list(settings.allowed_mime_types),
        fix=settings.update_bucket_settings,
    )
    log.info(
        "media: bucket %r %s (private, limit %d bytes, types %s)",
        settings.bucket,
        state,
        settings.file_size_limit,
        ", ".join(settings.allowed_mime_types),
    )
    log.info(
        "media: uploading %s files (%.1f MB) to bucket %r, %d at a time, %d retries per request",
        f"{files:,}",
        total / 1e6,
        settings.bucket,
        settings.concurrency,
        settings.retries,
    )
    tally = UploadTally(files, total)
    recorder = UploadRecorder(dest, run.run_id)
    _upload_all(conns, stage, client, source, settings, tally, recorder)
    recorder.flush()
    runs.update(dest, run.run_id, counts={"files": tally.as_dict()})
    dest.commit()
    log.info("media: uploads done: %s", tally.line())
    failed = _stop_if_storage_failing(dest, files, settings, recorder)
    quarantined = dest.execute(
        sql.SQL(
            "UPDATE {stage} s SET _disposition = 'quarantined', _reason = p.reason, "
            "_source = coalesce(s._source, to_jsonb(s) - '_source') "
            "  || jsonb_build_object('upload_problem', p.detail) "
            "FROM media_upload_problems p WHERE p.object_path = s.object_path AND s._disposition = 'loaded'"
        ).format(stage=stage)
    ).rowcount
    dest.execute("DROP TABLE media_upload_problems")
    dest.commit()
    if quarantined:
        log.warning(
            "media: %d rows quarantined because their file did not land in Storage (%d failed); see "
            "migration.quarantine and migration.media_uploads for run %s",
            quarantined,
            failed,
            run.run_id,
        )


def _stop_if_storage_failing(
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


def _upload_all(
    conns: Conns,
    stage: sql.Identifier,
    client: Any,
    source: Any,
    settings: MediaSettings,
    tally: UploadTally,
    recorder: UploadRecorder,
) -> None:
    """Stream the loadable rows into the uploader; verify new objects in a second pool as they land."""
    from include.supabase.storage import StorageUploader

    inflight: dict[str, UploadItem] = {}
    verifying: set[Future[tuple[UploadItem, UploadResult, tuple[str, str, str | None]]]] = set()

    def verified(item: UploadItem, result: UploadResult) -> tuple[UploadItem, UploadResult, tuple]:
        return item, result, _verify_upload(client, settings.bucket, item, result)

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
                "SELECT object_path, mime_type, size_bytes, sha256, storage_key FROM {} "
                "WHERE _disposition = 'loaded' ORDER BY id"
            ).format(stage)
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
    from include.supabase.storage import UploadItem

    for path, mime, size, sha, key in cur:
        item = UploadItem(path, mime, size, sha, partial(source.open, key))
        inflight[path] = item
        yield item


# ----------------------------------------------------------------------------
# After the merge: the files' accounting, and objects whose row is gone


def after_merge(conns: Conns, dest: psycopg.Connection, entity: Entity, run: runs.Run) -> None:
    from include.migration.pipeline import AccountingMismatch

    stage = _stage(run)
    loaded, unverified = dest.execute(
        sql.SQL(
            "SELECT count(*), count(*) FILTER (WHERE NOT EXISTS ("
            "  SELECT 1 FROM migration.media_uploads u WHERE u.run_id = %s "
            "  AND u.object_path = s.object_path AND u.outcome IN ('uploaded', 'skipped_identical') "
            "  AND coalesce(u.detail, '') NOT LIKE '%%NOT VERIFIED%%')) "
            "FROM {} s WHERE s._disposition = 'loaded'"
        ).format(stage),
        (run.run_id,),
    ).fetchone()
    if unverified:
        raise AccountingMismatch(
            f"media: {unverified} of {loaded} loaded rows have no object this run uploaded and verified "
            "or found identical in Storage (migration.media_uploads); rerun the DAG run from its load task"
        )
    outcomes = dict(
        dest.execute(
            "SELECT outcome, count(DISTINCT object_path) FROM migration.media_uploads WHERE run_id = %s "
            "GROUP BY 1",
            (run.run_id,),
        ).fetchall()
    )
    log.info(
        "media: files accounted: %s loaded rows, each with an object verified by size and sha256 "
        "(this run: %s uploaded, %s already in Storage and identical)",
        f"{loaded:,}",
        f"{outcomes.get('uploaded', 0):,}",
        f"{outcomes.get('skipped_identical', 0):,}",
    )
    sweep_orphans(dest, run.run_id, MediaSettings.from_options(run.report.get("options")))


def sweep_orphans(dest: psycopg.Connection, run_id: str, settings: MediaSettings) -> list[str]:
    """Remove objects the migration uploaded whose row is no longer in ``public.media``.

    Only paths with an 'uploaded' record newer than their last 'removed' one
    are candidates: an object the migration never wrote is never touched.
    """
    from include.supabase.storage import remove_objects

    candidates = [
        r[0]
        for r in dest.execute(
            "SELECT u.object_path FROM migration.media_uploads u "
            "WHERE NOT EXISTS (SELECT 1 FROM public.media m WHERE m.object_path = u.object_path) "
            "GROUP BY u.object_path HAVING max(u.recorded_at) FILTER (WHERE u.outcome = 'uploaded') > "
            "coalesce(max(u.recorded_at) FILTER (WHERE u.outcome = 'removed'), '-infinity') ORDER BY 1"
        )
    ]
    if not candidates:
        return []
    removed = set(remove_objects(storage_client(), settings.bucket, candidates))
    with (
        dest.cursor() as cur,
        cur.copy("COPY migration.media_uploads (run_id, object_path, outcome, detail) FROM STDIN") as copy,
    ):
        for path in candidates:
            copy.write_row(
                (
                    run_id,
                    path,
                    "removed",
                    "its row is no longer in public.media"
                    if path in removed
                    else "its row is no longer in public.media; already absent from Storage",
                )
            )
    dest.commit()
    log.info(
        "media: removed %d objects whose rows are gone (owner deleted or excluded, row quarantined or "
        "deleted at the source); %d were already absent",
        len(removed),
        len(candidates) - len(removed),
    )
    return sorted(removed)


# ----------------------------------------------------------------------------
# Reconciliation: Storage against public.media


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
    from include.supabase.storage import list_objects

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
    from include.supabase.storage import object_path

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
    from include.migration.reconcile import report_dir

    data = result.as_dict()
    with db.connection(dest_dsn) as conn:
        conn.execute(
            "INSERT INTO migration.reconciliations (run_id, entity, verdict, source_rows, target_rows, "
            "buckets, missing, extra, different) "
            "VALUES (%s, 'media_storage', %s, %s, %s, 1, %s, %s, %s) "
            "ON CONFLICT (run_id, entity) DO UPDATE SET checked_at = now(), verdict = EXCLUDED.verdict, "
            "source_rows = EXCLUDED.source_rows, target_rows = EXCLUDED.target_rows, "
            "missing = EXCLUDED.missing, extra = EXCLUDED.extra, different = EXCLUDED.different",
            (
                run_id,
                data["verdict"],
                result.rows,
                result.objects,
                Jsonb(result.missing),
                Jsonb(result.orphans),
                Jsonb(sorted(result.different)),
            ),
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


def on_reconcile(conns: Conns, entity: Entity, run: runs.Run) -> list[str]:
    """The Storage half of the media reconciliation; returns its verdict line when it is not clean."""
    result = reconcile_storage(
        conns.dest, MediaSettings.from_options(run.report.get("options")), run_id=run.run_id
    )
    if result is None:
        return []
    path = persist_storage_reconciliation(conns.dest, run.run_id, result)
    (log.info if result.clean else log.error)(result.verdict_line())
    log.info("media: Storage reconciliation report written to %s (%.2f s)", path, result.seconds)
    return [] if result.clean else [result.verdict_line()]
