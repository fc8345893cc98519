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
    (``storage_upload.StorageUploader``: bounded pool, retries with backoff, TUS
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

The hooks are here with the media settings and params; their work lives
beside them: each file's legacy side (source, MIME type, object name, the
per-file check) in ``media_source.py``, the upload pass in
``media_uploads.py``, the Storage reconciliation in ``media_reconcile.py``,
and the Storage client in ``include/supabase/storage.py`` and
``storage_upload.py``.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import sql

from include.migration import runs
from include.migration.media.reconcile import (
    RECONCILE_SAMPLE,
    persist_storage_reconciliation,
    reconcile_storage,
)
from include.migration.media.source import MediaSetupError, check_all, media_source, rate
from include.migration.media.uploads import UploadRecorder, UploadTally, stop_if_storage_failing, upload_all

if TYPE_CHECKING:
    import psycopg

    from include.migration.entities import Entity
    from include.migration.pipeline import Conns

log = logging.getLogger(__name__)

BUCKET = "media"
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


def remove_from_storage(paths: list[str]) -> list[str]:
    """Remove objects from the media bucket; the rollback's ``storage_remover``."""
    from include.supabase.storage import remove_objects

    removed = remove_objects(storage_client(), BUCKET, paths)
    log.info("media: removed %d of %d objects from bucket %r", len(removed), len(paths), BUCKET)
    return removed


# ----------------------------------------------------------------------------
# Transform: every staged row's file checked (media_source.check_all)


def _stage(run: runs.Run) -> sql.Identifier:
    assert run.stage_table is not None
    return sql.Identifier("migration_stage", run.stage_table)


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
    tally, read_bytes, started = check_all(conns, dest, stage, source, settings, todo)
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
        rate(read_bytes, seconds),
        f"{tally['loadable']:,}",
        problems,
    )


# ----------------------------------------------------------------------------
# Uploads (load, before the rows are merged)


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
    # -- storage.objects: unchanged objects skipped without a request, versions proven (media_catalog.py)
    from include.migration.media import catalog as media_catalog

    trusted = media_catalog.skip_unchanged(dest, stage, run.run_id, settings.bucket)
    tally.outcomes["skipped_identical"] += trusted
    tally.done += trusted
    # --
    upload_all(conns, stage, client, source, settings, tally, recorder)
    recorder.flush()
    media_catalog.record_proofs(dest, stage, run.run_id, settings.bucket)
    runs.update(dest, run.run_id, counts={"files": tally.as_dict()})
    dest.commit()
    log.info("media: uploads done: %s", tally.line())
    failed = stop_if_storage_failing(dest, files, settings, recorder)
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


# ----------------------------------------------------------------------------
# After the merge: the files' accounting, and objects whose row is gone


def after_merge(conns: Conns, dest: psycopg.Connection, entity: Entity, run: runs.Run) -> None:
    from include.migration.accounting import AccountingMismatch

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
