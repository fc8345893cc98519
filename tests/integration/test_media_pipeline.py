"""The media entity on the seeded small world: rows into public.media, files into Storage (the stand-in),
every object compared byte for byte with its legacy file.

The users, agents, conversations and messages are migrated once per module
(without Airflow, ``pipeline.run_entity``); each test clones those two
databases (``CREATE DATABASE ... TEMPLATE``), copies the media folder and
starts its own Storage stand-in, named to the pipeline through
``AIRFLOW_CONN_SUPABASE_API`` / ``AIRFLOW_CONN_LEGACY_MEDIA`` as in production.
Each test keeps every planted defect that quarantines, up to 20 rows of each
other planted kind and 200 more rows, so each run takes seconds (the quarantine
threshold is then lifted: 3 of ~330 rows is above 0.1 %); ``make demo`` and
``make bench`` move all 5,000 files of the small world.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from include.migration import pipeline
from include.migration.entities import get
from include.migration.media import hooks as media
from include.migration.media import uploads as media_uploads
from include.migration.media.source import object_path
from include.supabase.storage import ensure_bucket, list_objects
from local_runtime.standins.storage import StorageStandIn
from local_runtime.world import WorldReport, seed
from tests.conftest import create_database, drop_database

pytestmark = pytest.mark.integration

SECRET = "media-pipeline-test-secret-at-least-32-chars"
RELATIONAL = ("users", "agents", "conversations", "messages")
KEEP_ALL = (
    "media.missing_file",
    "media.sha_mismatch",
    "media.orphan_owner",
    "media.dangling_conversation",
    "media.dangling_message",
    "media.large_file",
)
# Retries stay on, their waits short: the tests wait for nothing but the work.
FAST = {"media_upload_retries": 1, "media_upload_backoff_seconds": 0.01}
MAGIC = (
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"%PDF-", "application/pdf"),
    (b"ID3", "audio/mpeg"),
)


@dataclass
class Base:
    legacy: str
    dest: str
    report: WorldReport
    media_root: Path


@dataclass
class MediaWorld:
    conns: pipeline.Conns
    report: WorldReport
    media_root: Path
    standin: StorageStandIn

    def client(self):
        from supabase import create_client

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return create_client(self.standin.url, self.standin.service_key)

    def q(self, query: str, *args, db: str = "dest") -> list[tuple]:
        dsn = self.conns.dest if db == "dest" else self.conns.legacy
        with psycopg.connect(dsn) as conn:
            return conn.execute(query, args).fetchall()

    def legacy_media(self) -> dict[str, tuple]:
        """id -> (owner_id, file_name, mime_type, size_bytes, storage_key, sha256) of every legacy row."""
        rows = self.q(
            "SELECT id::text, owner_id::text, file_name, mime_type, size_bytes, storage_key, sha256 "
            "FROM media_assets",
            db="legacy",
        )
        return {r[0]: r[1:] for r in rows}

    def file(self, storage_key: str) -> bytes:
        return (self.media_root / storage_key).read_bytes()

    def survivor(self, owner: str) -> str:
        return self.report.duplicate_of.get(owner, owner)

    def path_of(self, media_id: str) -> str:
        owner, name = self.legacy_media()[media_id][:2]
        return object_path(self.survivor(owner), media_id, name)

    def uploads(self, run_id: str) -> Counter:
        return Counter(
            dict(
                self.q(
                    "SELECT outcome, count(*) FROM migration.media_uploads WHERE run_id = %s GROUP BY 1",
                    run_id,
                )
            )
        )


def _clone(pg_uri: str, template: str, name: str) -> str:
    with psycopg.connect(f"{pg_uri}/postgres", autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template.rsplit("/", 1)[1])
            )
        )
    return f"{pg_uri}/{name}"


@pytest.fixture(scope="module")
def base(pg_uri: str, tmp_path_factory: pytest.TempPathFactory):
    """The small world seeded and its relational entities migrated, once for the module."""
    from include.migration.bootstrap import bootstrap

    tag = uuid.uuid4().hex[:8]
    legacy, dest = (
        create_database(pg_uri, f"mbase_legacy_{tag}"),
        create_database(pg_uri, f"mbase_dest_{tag}"),
    )
    bootstrap(dest)
    root = tmp_path_factory.mktemp("legacy") / "media"
    report = seed(legacy, scale="small", media_root=root)
    conns = pipeline.Conns(legacy, dest)
    for name in RELATIONAL:
        pipeline.run_entity(conns, name, "base", mode="full", validate_with_gx=False)
    yield Base(legacy, dest, report, root)
    drop_database(pg_uri, f"mbase_legacy_{tag}")
    drop_database(pg_uri, f"mbase_dest_{tag}")


@pytest.fixture
def mw(base: Base, pg_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The seeded world, its relational entities migrated, an empty Storage; the legacy media
    trimmed to the planted rows and a sample (the benchmark moves every file of a whole world)."""
    for world in _media_world(base, pg_uri, tmp_path, monkeypatch):
        yield trimmed(world)


def trimmed(world: MediaWorld) -> MediaWorld:
    """The legacy media cut to the planted rows that quarantine, 20 of each other kind and 200 more."""
    planted = world.report.planted
    keep = {k for kind in KEEP_ALL for k in planted[kind]}
    keep |= {k for kind, keys in planted.items() if kind.startswith("media.") for k in sorted(keys)[:20]}
    with psycopg.connect(world.conns.legacy, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM media_assets WHERE NOT (id = ANY(%s::uuid[])) AND id NOT IN "
            "(SELECT id FROM media_assets ORDER BY id LIMIT 200)",
            (sorted(keep),),
        )
    return world


def _media_world(
    base: Base, pg_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, catalog: bool = False
):
    """``catalog``: the stand-in keeps storage.objects in the destination, as Supabase does."""
    tag = uuid.uuid4().hex[:8]
    names = (f"m_legacy_{tag}", f"m_dest_{tag}")
    legacy, dest = _clone(pg_uri, base.legacy, names[0]), _clone(pg_uri, base.dest, names[1])
    root = tmp_path / "media"
    shutil.copytree(base.media_root, root)
    standin = StorageStandIn(tmp_path / "storage", SECRET, catalog_dsn=dest if catalog else None).start()
    monkeypatch.setenv(
        "AIRFLOW_CONN_SUPABASE_API",
        json.dumps({"conn_type": "http", "host": standin.url, "password": standin.service_key}),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_LEGACY_MEDIA", json.dumps({"conn_type": "fs", "extra": {"path": str(root)}})
    )
    monkeypatch.setenv("MIGRATION_STATE_DIR", str(tmp_path / "reports"))
    yield MediaWorld(pipeline.Conns(legacy, dest), base.report, root, standin)
    standin.stop()
    for name in names:
        drop_database(pg_uri, name)


def run_media(
    mw: MediaWorld, label: str, *, mode: str = "full", options: dict | None = None, **kwargs
) -> dict:
    kwargs.setdefault("validate_with_gx", False)
    kwargs.setdefault("quarantine_threshold_pct", 100)
    return pipeline.run_entity(
        mw.conns, "media", label, mode=mode, options={**FAST, **(options or {})}, **kwargs
    )


def _true_mime(data: bytes) -> str:
    return next(mime for magic, mime in MAGIC if data.startswith(magic))


# ----------------------------------------------------------------------------


def test_full_run_moves_every_file_byte_for_byte_and_accounts_for_every_row(mw: MediaWorld):
    legacy = mw.legacy_media()
    # The trimmed world: every planted row that quarantines, 20 of each other planted kind, 200 more.
    planted = {kind: [k for k in keys if k in legacy] for kind, keys in mw.report.planted.items()}
    res = run_media(mw, "full1", validate_with_gx=True)

    # Each quarantine reason on exactly its planted keys; soft-deleted owners excluded.
    quarantine = dict(mw.q("SELECT source_key, reason FROM migration.quarantine WHERE entity = 'media'"))
    assert quarantine == {
        **dict.fromkeys(planted["media.missing_file"], "file_missing"),
        **dict.fromkeys(planted["media.sha_mismatch"], "sha256_mismatch"),
        **dict.fromkeys(planted["media.orphan_owner"], "owner_missing"),
    }
    mismatch = planted["media.sha_mismatch"][0]
    detail = mw.q(
        "SELECT source_row->>'file_problem' FROM migration.quarantine WHERE source_key = %s", mismatch
    )
    assert f"records sha256 {legacy[mismatch][5]}" in detail[0][0]
    exclusions = dict(mw.q("SELECT source_key, rule FROM migration.exclusions WHERE entity = 'media'"))
    assert exclusions == dict.fromkeys(planted["media.owner_soft_deleted"], "owner_excluded")

    # Every other row is in public.media, and its object holds exactly the legacy file's bytes.
    rows = {
        r[0]: r[1:]
        for r in mw.q(
            "SELECT id::text, owner_id::text, conversation_id::text, message_id, bucket, object_path, "
            "file_name, mime_type, size_bytes, sha256 FROM public.media"
        )
    }
    assert set(rows) == set(legacy) - set(quarantine) - set(exclusions)
    files = mw.client().storage.from_("media")
    null_mime = set(planted["media.null_mime"])
    for media_id, (owner, _conv, _msg, bucket, path, name, mime, size, sha) in rows.items():
        legacy_owner, legacy_name, legacy_mime, _, key, _ = legacy[media_id]
        data = mw.file(key)
        assert files.download(path) == data, media_id
        assert (bucket, size, sha) == ("media", len(data), hashlib.sha256(data).hexdigest())
        assert owner == mw.survivor(legacy_owner)
        assert (path, name) == (object_path(owner, media_id, legacy_name), legacy_name)
        assert mime == (_true_mime(data) if media_id in null_mime else legacy_mime), media_id
    # The stored content type is the row's (sniffed from the bytes where the legacy row had none).
    for media_id in planted["media.no_extension"][:5]:
        assert files.info(rows[media_id][4])["content_type"] == rows[media_id][6]
    # Nothing else is in the bucket (the server's own index, not a client listing).
    assert set(mw.standin.store.objects["media"]) == {r[4] for r in rows.values()}

    # References: merged owners re-pointed; dangling and soft-deleted targets nulled.
    losers = [k for k in planted["media.owner_duplicate_loser"] if k in rows]
    assert losers and all(rows[k][0] == mw.survivor(legacy[k][0]) != legacy[k][0] for k in losers)
    for kind, column in (
        ("media.dangling_conversation", 1),
        ("media.dangling_message", 2),
        ("media.conversation_soft_deleted", 1),
    ):
        assert planted[kind] and all(rows[k][column] is None for k in planted[kind] if k in rows), kind
    for key in set(planted["media.null_sha"]) & set(rows):
        assert rows[key][8] == hashlib.sha256(mw.file(legacy[key][4])).hexdigest()
    repaired = mw.q("SELECT report->'repaired' FROM migration.runs WHERE run_id = 'media:full1'")[0][0]
    assert repaired["mime_type_sniffed"] == len(null_mime & set(rows))
    assert repaired["sha256_from_file"] == len(set(planted["media.null_sha"]) & set(rows))

    # The file over 6 MB went through the resumable (TUS) endpoint.
    large = planted["media.large_file"][0]
    assert rows[large][7] > 6 * 1024 * 1024
    assert mw.standin.count_requests("POST", r"^/upload/resumable/?$") == 1
    assert mw.standin.count_requests("PATCH", r"^/upload/resumable/") == 2

    # The accounting invariant, stored; every file recorded once, uploaded and verified.
    assert res["inserted"] == len(rows)
    acc = mw.q("SELECT counts->'accounting' FROM migration.runs WHERE run_id = 'media:full1'")[0][0]
    assert acc["balanced"] and acc["in_scope"] == len(legacy)
    assert (acc["loaded"], acc["excluded"], acc["quarantined"]) == (
        len(rows),
        len(exclusions),
        len(quarantine),
    )
    assert mw.uploads("media:full1") == {"uploaded": len(rows)}
    assert mw.q(
        "SELECT count(DISTINCT object_path), bool_and(detail LIKE '%%verified size and sha256') "
        "FROM migration.media_uploads"
    ) == [(len(rows), True)]
    # GX validated, rows and Storage reconciled clean.
    verdicts = dict(
        mw.q("SELECT entity, verdict FROM migration.reconciliations WHERE run_id = 'media:full1'")
    )
    assert verdicts == {"media": "clean", "media_storage": "clean"}
    assert mw.q(
        "SELECT status, report->'validation'->>'success' FROM migration.runs WHERE run_id = 'media:full1'"
    ) == [("succeeded", "true")]
    bucket = mw.client().storage.get_bucket("media")
    assert (bucket.public, bucket.file_size_limit) == (False, 50 * 1024 * 1024)
    assert sorted(bucket.allowed_mime_types) == sorted(media.DEFAULT_ALLOWED_MIME_TYPES)


def test_second_run_uploads_nothing_and_writes_nothing(mw: MediaWorld):
    first = run_media(mw, "one")
    posts = mw.standin.count_requests("POST", r"^/(object/media|upload/resumable)")
    # Into an empty bucket an object's upload is its first request: nothing asks first what is there
    # (the info request after it is the upload's verification; a resumable upload's requests name no path).
    seen: dict[str, list[str]] = {}
    for r in list(mw.standin.requests):
        seen.setdefault(re.sub(r"^/object/(info/)?media/", "", r.path), []).append(r.method)
    posted = [methods for methods in seen.values() if "POST" in methods]
    assert len(posted) >= first["inserted"] - 1 and all(methods[0] == "POST" for methods in posted)
    assert posts == first["inserted"]
    second = run_media(mw, "two")
    assert (second["inserted"], second["updated"], second["deleted"]) == (0, 0, 0)
    assert mw.uploads("media:two") == {"skipped_identical": first["inserted"]}
    assert mw.standin.count_requests("POST", r"^/(object/media|upload/resumable)") == posts


def test_an_interrupted_upload_pass_resumes_with_only_the_missing_files(mw: MediaWorld):
    out = pipeline.extract(mw.conns, "media", "cut", mode="full", dry_run=False, options=FAST)
    run_id = out["run_id"]
    pipeline.transform(mw.conns, "media", run_id)
    stage = mw.q("SELECT stage_table FROM migration.runs WHERE run_id = %s", run_id)[0][0]
    paths = [
        r[0]
        for r in mw.q(
            sql.SQL("SELECT object_path FROM {} WHERE _disposition = 'loaded' ORDER BY id")
            .format(sql.Identifier("migration_stage", stage))
            .as_string()
        )
    ]
    # Storage refuses every upload of one file in ten: 10 % fail, above the 1 % that means "Storage is down".
    large = mw.path_of(mw.report.planted["media.large_file"][0])  # its upload is TUS, another route
    broken = [p for p in paths if p != large][::10]
    ids = "|".join(p.split("/")[1] for p in broken)
    fault = mw.standin.inject_fault(rf"^/object/media/[^/]+/({ids})/", status=503, times=10**6, method="POST")

    with pytest.raises(media_uploads.UploadsFailing, match=f"{len(broken)} of {len(paths)} uploads failed"):
        pipeline.load(mw.conns, "media", run_id, quarantine_threshold_pct=100)
    # Stopped before any row changed; what landed is recorded.
    assert mw.q("SELECT count(*) FROM public.media") == [(0,)]
    assert mw.uploads(run_id) == {"uploaded": len(paths) - len(broken), "failed": len(broken)}
    assert mw.q("SELECT load_progress FROM migration.runs WHERE run_id = %s", run_id) == [(None,)]

    fault.remaining = 0  # Storage is back; Airflow retries the load task.
    loaded = pipeline.load(mw.conns, "media", run_id, quarantine_threshold_pct=100)
    assert loaded["inserted"] == len(paths)
    assert mw.uploads(run_id) == {
        "uploaded": len(paths),
        "skipped_identical": len(paths) - len(broken),
        "failed": len(broken),
    }
    # The second pass uploaded only the missing files: no object was ever uploaded twice.
    per_path = dict(
        mw.q(
            "SELECT object_path, array_agg(outcome ORDER BY recorded_at) FROM migration.media_uploads "
            "WHERE run_id = %s GROUP BY 1",
            run_id,
        )
    )
    assert {p: per_path[p] for p in broken} == {p: ["failed", "uploaded"] for p in broken}
    assert all(per_path[p] == ["uploaded", "skipped_identical"] for p in set(paths) - set(broken))
    stored = [
        r
        for r in mw.standin.requests
        if r.method == "POST" and r.path.startswith("/object/media/") and r.status == 200
    ]
    assert len(stored) == len({r.path for r in stored}) == len(paths) - 1  # the large file goes through TUS
    assert pipeline.reconcile(mw.conns, "media", run_id)["verdict"] == "clean"


def test_conflicts_rejections_and_transient_errors_end_as_specified(mw: MediaWorld):
    planted = mw.report.planted
    legacy = mw.legacy_media()
    bad = set().union(
        *(
            planted[k]
            for k in (
                "media.missing_file",
                "media.sha_mismatch",
                "media.orphan_owner",
                "media.owner_soft_deleted",
                "media.large_file",
            )
        )
    )
    ok = sorted(k for k, v in legacy.items() if k not in bad and v[2] in ("image/png", "image/jpeg"))
    conflicted, flaky = ok[0], ok[1]
    # Another writer already put other bytes at the row's path, in a bucket like the migration's.
    options = {
        "media_file_size_limit_mb": 5,
        "media_upload_retries": 4,
        "media_allowed_mime_types": ["image/*", "audio/*", "video/*", "text/plain"],
    }
    settings = media.MediaSettings.from_options(options)
    client = mw.client()
    ensure_bucket(
        client,
        "media",
        file_size_limit=settings.file_size_limit,
        allowed_mime_types=list(settings.allowed_mime_types),
    )
    foreign = b"\x89PNG\r\n\x1a\n not the legacy file"
    client.storage.from_("media").upload(mw.path_of(conflicted), foreign, {"content-type": "image/png"})
    # A passing Storage error on another file: two 503s, then it works.
    mw.standin.inject_fault(rf"^/object/media/[^/]+/{flaky}/", status=503, times=2, method="POST")

    with pytest.raises(pipeline.ReconciliationFailed, match="1 objects without a row"):
        run_media(mw, "rules", options=options, quarantine_threshold_pct=100)

    quarantine = dict(mw.q("SELECT source_key, reason FROM migration.quarantine WHERE entity = 'media'"))
    assert quarantine[conflicted] == "storage_conflict"
    assert client.storage.from_("media").download(mw.path_of(conflicted)) == foreign  # never overwritten
    large = planted["media.large_file"][0]
    assert quarantine[large] == "file_too_large"
    pdfs = {k for k, v in legacy.items() if v[2] == "application/pdf" and k not in bad}
    assert pdfs and {quarantine.get(k) for k in pdfs} == {"mime_type_not_allowed"}
    # Refused by the bucket's rules before any request: nothing of them reached Storage.
    for key in [large, *sorted(pdfs)[:20]]:
        assert mw.standin.count_requests(None, re.escape(key)) == 0
    assert (
        mw.q(
            "SELECT outcome, detail FROM migration.media_uploads WHERE object_path = %s",
            mw.path_of(conflicted),
        )[0][0]
        == "conflict"
    )
    # The 5xx was retried and the file landed.
    flaky_path = mw.path_of(flaky)
    assert [
        r.status
        for r in mw.standin.requests
        if r.method == "POST" and r.path == f"/object/media/{flaky_path}"
    ] == [503, 503, 200]
    assert mw.q("SELECT count(*) FROM public.media WHERE id = %s", flaky) == [(1,)]
    assert mw.q("SELECT outcome FROM migration.media_uploads WHERE object_path = %s", flaky_path) == [
        ("uploaded",)
    ]
    orphans = mw.q("SELECT extra FROM migration.reconciliations WHERE entity = 'media_storage'")[0][0]
    assert orphans == [mw.path_of(conflicted)]
    # Validation expects exactly the rows the destination holds: the reasons decided from the files and
    # by Storage are known to it (Entity.hook_reasons), as those decided by the transform SQL.
    assert pipeline.expected_rows(mw.conns, get("media")) == mw.q("SELECT count(*) FROM public.media")[0][0]

    # Someone resolves the conflict; the next (incremental) run retries the quarantined rows.
    client.storage.from_("media").remove([mw.path_of(conflicted)])
    run_media(mw, "after", mode="incremental", options=options, quarantine_threshold_pct=100)
    assert client.storage.from_("media").download(mw.path_of(conflicted)) == mw.file(legacy[conflicted][4])
    quarantine = dict(mw.q("SELECT source_key, reason FROM migration.quarantine WHERE entity = 'media'"))
    assert conflicted not in quarantine and quarantine[large] == "file_too_large"
    assert mw.uploads("media:after")["uploaded"] == 1


def test_a_bucket_with_other_settings_stops_the_load_before_any_upload(mw: MediaWorld):
    client = mw.client()
    ensure_bucket(client, "media", file_size_limit=1024 * 1024, allowed_mime_types=["image/png"])
    with pytest.raises(Exception, match="file_size_limit is 1048576, expected 52428800"):
        run_media(mw, "strict")
    assert mw.q("SELECT count(*) FROM migration.media_uploads") == [(0,)]
    assert mw.standin.count_requests("POST", "^/object/media/") == 0
    # Asked to, the run brings the bucket to its settings and goes through.
    run_media(mw, "fix", options={"media_update_bucket_settings": True})
    assert client.storage.get_bucket("media").file_size_limit == 50 * 1024 * 1024


def test_dry_run_checks_the_files_and_touches_nothing(mw: MediaWorld):
    planted = mw.report.planted
    assert run_media(mw, "dry", dry_run=True)["dry_run"]
    report = mw.q("SELECT report FROM migration.runs WHERE run_id = 'media:dry'")[0][0]
    assert report["dispositions"]["quarantined:file_missing"] == len(planted["media.missing_file"])
    assert report["dispositions"]["quarantined:sha256_mismatch"] == len(planted["media.sha_mismatch"])
    assert report["dry_run_plan"]["insert"] == report["dispositions"]["loaded:ok"]
    assert mw.standin.requests == []  # not even the bucket was looked at
    assert mw.q(
        "SELECT (SELECT count(*) FROM public.media), (SELECT count(*) FROM migration.media_uploads), "
        "(SELECT count(*) FROM migration.quarantine WHERE entity = 'media')"
    ) == [(0, 0, 0)]


def test_storage_reconciliation_names_missing_orphan_and_altered_objects(mw: MediaWorld):
    run_media(mw, "rec")
    paths = sorted(r[0] for r in mw.q("SELECT object_path FROM public.media WHERE mime_type = 'image/jpeg'"))
    files = mw.client().storage.from_("media")
    gone, swapped, cut = paths[:3]
    files.remove([gone])
    original = files.download(swapped)
    files.update(swapped, original[:-1] + bytes([original[-1] ^ 1]), {"content-type": "image/jpeg"})
    files.update(cut, original[:10], {"content-type": "image/jpeg"})
    files.upload("stray/object.png", b"\x89PNG\r\n\x1a\n", {"content-type": "image/png"})

    rec = media.reconcile_storage(mw.conns.dest, media.MediaSettings(verify_all_objects=True))
    assert rec is not None and not rec.clean
    assert rec.missing == [gone]
    assert rec.orphans == ["stray/object.png"]
    assert set(rec.different) == {swapped, cut}
    assert rec.different[cut].startswith("Storage holds 10 bytes, the row says ")
    assert "sha256" in rec.different[swapped]
    # By default only a sample is downloaded; sizes, missing objects and orphans are always complete.
    quick = media.reconcile_storage(mw.conns.dest, media.MediaSettings(), run_id="any")
    assert cut in quick.different and quick.missing == [gone] and quick.orphans == ["stray/object.png"]
    assert quick.hashed == media.RECONCILE_SAMPLE < rec.hashed


def test_rollback_removes_the_objects_the_run_uploaded(mw: MediaWorld):
    from include.migration.rollback import rollback

    res = run_media(mw, "r1")
    assert len(list_objects(mw.client(), "media")) == res["inserted"] > 0
    result = rollback(mw.conns.dest, "media:r1", since=False, storage_remover=media.remove_from_storage)
    assert result.proven, result.verdicts
    assert len(result.removed_objects) == res["inserted"]
    assert list_objects(mw.client(), "media") == {}
    assert mw.q("SELECT count(*) FROM public.media") == [(0,)]
    # The next run puts everything back.
    again = run_media(mw, "r2")
    assert again["inserted"] == res["inserted"] and mw.uploads("media:r2") == {"uploaded": res["inserted"]}


def test_incremental_run_follows_new_files_and_removes_the_objects_of_deleted_owners(mw: MediaWorld):
    run_media(mw, "base")
    owner, count = mw.q(
        "SELECT m.owner_id::text, count(*) FROM public.media m WHERE NOT EXISTS "
        "(SELECT 1 FROM migration.user_id_map x WHERE x.survivor_id = m.owner_id) "
        "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1"
    )[0]
    owned = [r[0] for r in mw.q("SELECT object_path FROM public.media WHERE owner_id = %s", owner)]
    # The app keeps running: one user deletes their account, another uploads a PDF.
    uploader = mw.q("SELECT id::text FROM public.users WHERE id <> %s ORDER BY id LIMIT 1", owner)[0][0]
    new_id, data = str(uuid.uuid4()), b"%PDF-1.4\nnew upload\n%%EOF\n"
    key = f"uploads/2026/11/{new_id}.pdf"
    (mw.media_root / key).parent.mkdir(parents=True, exist_ok=True)
    (mw.media_root / key).write_bytes(data)
    with psycopg.connect(mw.conns.legacy, autocommit=True) as conn:
        now = "(SELECT max(greatest(created_at, updated_at, deleted_at)) + interval '1 hour' FROM users)"
        conn.execute(f"UPDATE users SET deleted_at = {now}, updated_at = {now} WHERE id = %s", (owner,))
        conn.execute(
            "INSERT INTO media_assets (id, owner_id, file_name, mime_type, size_bytes, storage_key, sha256, "
            f"created_at) VALUES (%s, %s, 'Q4 report.pdf', 'application/pdf', %s, %s, %s, {now})",
            (new_id, uploader, len(data), key, hashlib.sha256(data).hexdigest()),
        )
    for name in RELATIONAL:
        pipeline.run_entity(mw.conns, name, "inc", mode="incremental", validate_with_gx=False)
    run_media(mw, "inc", mode="incremental")

    # Only the new file is uploaded (rows re-read by the lookback are found identical).
    uploads = mw.uploads("media:inc")
    assert (uploads["uploaded"], uploads["removed"]) == (1, count)
    listing = list_objects(mw.client(), "media")
    assert not set(owned) & set(listing)
    new_path = object_path(uploader, new_id, "Q4 report.pdf")
    assert mw.client().storage.from_("media").download(new_path) == data
    exclusions = dict(
        mw.q(
            "SELECT source_key, rule FROM migration.exclusions WHERE entity = 'media' "
            "AND run_id = 'media:inc'"
        )
    )
    assert len(exclusions) == count and set(exclusions.values()) == {"owner_excluded"}
    assert dict(mw.q("SELECT entity, verdict FROM migration.reconciliations WHERE run_id = 'media:inc'")) == {
        "media": "clean",
        "media_storage": "clean",
    }
