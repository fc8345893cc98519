"""Storage checks through ``storage.objects``: the stand-in keeps the table as the real server does,
the reconciliation reads it by key range instead of listing the bucket, and a rerun's
"already there and identical?" check costs no request per unchanged object.

Each test gets the media module's seeded world (cloned), trimmed to a few hundred files, and a
Storage stand-in that keeps ``storage.objects`` in the destination database.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from include.migration.cutover import evaluate
from include.migration.media import catalog as media_catalog
from include.migration.media import hooks as media
from local_runtime.standins.storage import StorageStandIn
from tests.integration.test_media_pipeline import (  # noqa: F401 - the module's seeded world, as a fixture
    SECRET,
    MediaWorld,
    _media_world,
    base,
    run_media,
    trimmed,
)

pytestmark = pytest.mark.integration

OBJECT_REQUESTS = r"^/(object|upload)/"  # every per-object route: info, download, upload, list, TUS


def _world(base, pg_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, catalog: bool):
    for world in _media_world(base, pg_uri, tmp_path, monkeypatch, catalog=catalog):
        yield trimmed(world)


@pytest.fixture
def cw(base, pg_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A world whose Storage stand-in keeps storage.objects in the destination database."""
    yield from _world(base, pg_uri, tmp_path, monkeypatch, catalog=True)


@pytest.fixture
def plain(base, pg_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The same world, the stand-in keeping no storage.objects (a destination without Storage's tables)."""
    yield from _world(base, pg_uri, tmp_path, monkeypatch, catalog=False)


def objects(mw: MediaWorld) -> dict[str, tuple]:
    """name -> (size, mimetype, eTag, version) of every row of storage.objects in bucket media."""
    rows = mw.q(
        "SELECT name, (metadata->>'size')::bigint, metadata->>'mimetype', metadata->>'eTag', version "
        "FROM storage.objects WHERE bucket_id = 'media'"
    )
    return {r[0]: r[1:] for r in rows}


def test_the_standin_keeps_storage_objects_row_for_row(cw: MediaWorld, tmp_path: Path):
    client = cw.client()
    client.storage.create_bucket("media", options={"public": False})
    files = client.storage.from_("media")
    files.upload("u1/a.png", b"\x89PNG\r\n\x1a\nfirst", {"content-type": "image/png"})
    files.upload("u1/b.pdf", b"%PDF-1.4 b", {"content-type": "application/pdf"})
    first = objects(cw)
    assert {k: v[:2] for k, v in first.items()} == {"u1/a.png": (13, "image/png"), "u1/b.pdf": (10, "application/pdf")}
    assert cw.q("SELECT id, public FROM storage.buckets") == [("media", False)]
    assert cw.q("SELECT path_tokens FROM storage.objects WHERE name = 'u1/a.png'") == [(["u1", "a.png"],)]
    # An overwrite is a new version with a new eTag; a removal deletes the row.
    files.update("u1/a.png", b"\x89PNG\r\n\x1a\nsecond", {"content-type": "image/png"})
    files.remove(["u1/b.pdf"])
    after = objects(cw)
    assert list(after) == ["u1/a.png"]
    assert after["u1/a.png"][0] == 14 and after["u1/a.png"][2:] != first["u1/a.png"][2:]
    # A stand-in restarted on the same data puts the table back in step with its store.
    cw.standin.stop()
    with psycopg.connect(cw.conns.dest, autocommit=True) as conn:
        conn.execute("DELETE FROM storage.objects")
    again = StorageStandIn(tmp_path / "storage", SECRET, catalog_dsn=cw.conns.dest).start()
    try:
        assert objects(cw) == after
    finally:
        again.stop()


def test_reconciliation_reads_storage_objects_and_lists_nothing(cw: MediaWorld):
    run_media(cw, "rec")
    paths = sorted(r[0] for r in cw.q("SELECT object_path FROM public.media WHERE mime_type = 'image/jpeg'"))
    files = cw.client().storage.from_("media")
    gone, swapped, cut, retyped = paths[:4]
    files.remove([gone])
    original = files.download(swapped)
    files.update(swapped, original[:-1] + bytes([original[-1] ^ 1]), {"content-type": "image/jpeg"})
    files.update(cut, original[:10], {"content-type": "image/jpeg"})
    files.update(retyped, files.download(retyped), {"content-type": "image/png"})
    files.upload("stray/object.png", b"\x89PNG\r\n\x1a\n", {"content-type": "image/png"})

    lists = cw.standin.count_requests("POST", r"^/object/list/")
    rec = media.reconcile_storage(cw.conns.dest, media.MediaSettings(verify_all_objects=True))
    assert cw.standin.count_requests("POST", r"^/object/list/") == lists  # no listing at all
    assert rec is not None and not rec.clean
    assert rec.missing == [gone]
    assert rec.orphans == ["stray/object.png"]
    assert set(rec.different) == {swapped, cut, retyped}
    assert rec.different[cut].startswith("Storage holds 10 bytes, the row says ")
    assert rec.different[retyped] == "Storage serves it as image/png, the row says image/jpeg"
    assert "sha256" in rec.different[swapped]
    rows = cw.q("SELECT count(*) FROM public.media")[0][0]
    assert (rec.rows, rec.objects) == (rows, rows)  # one gone, one stray
    # By default a sample is downloaded; presence, sizes, types and orphans are always complete.
    quick = media.reconcile_storage(cw.conns.dest, media.MediaSettings(), run_id="any")
    assert quick.missing == [gone] and quick.orphans == ["stray/object.png"] and cut in quick.different
    assert quick.hashed == media.RECONCILE_SAMPLE < rec.hashed


def test_a_rerun_skips_unchanged_objects_without_a_request_and_rechecks_a_rewritten_one(cw: MediaWorld):
    first = run_media(cw, "one")
    loaded = first["inserted"]
    assert cw.q("SELECT count(*) FROM migration.media_object_proofs")[0][0] == loaded
    # Someone rewrites one object with other bytes of the same size: its version changes.
    path = cw.q("SELECT object_path FROM public.media WHERE mime_type = 'application/pdf' ORDER BY 1 LIMIT 1")[0][0]
    files = cw.client().storage.from_("media")
    data = files.download(path)
    files.update(path, data[:-1] + bytes([data[-1] ^ 1]), {"content-type": "application/pdf"})

    seen = len(cw.standin.requests)
    run_media(cw, "two", reconcile_after=False)
    asked = sorted({r.path for r in cw.standin.requests[seen:] if re.match(OBJECT_REQUESTS, r.path)})
    # The rewritten one is a conflict (its row quarantined, and so its object swept, as before).
    assert cw.uploads("media:two") == {"skipped_identical": loaded - 1, "conflict": 1, "removed": 1}
    # Only the rewritten object was asked about (info, then a download to compare its sha256),
    # and the sweep's one bulk removal; none of the unchanged objects cost a request.
    assert asked == [f"/object/info/media/{path}", "/object/media", f"/object/media/{path}"]


def test_without_storage_objects_the_rerun_checks_each_object_over_http(plain: MediaWorld):
    first = run_media(plain, "one")
    assert not media_catalog.readable(plain.conns.dest)
    before = plain.standin.count_requests(None, OBJECT_REQUESTS)
    run_media(plain, "two", reconcile_after=False)
    assert plain.uploads("media:two") == {"skipped_identical": first["inserted"]}
    # info and a download per object: the cost the storage.objects check removes.
    assert plain.standin.count_requests(None, OBJECT_REQUESTS) - before >= 2 * first["inserted"]


def test_the_cutover_verdict_checks_storage(cw: MediaWorld):
    run_media(cw, "cut")
    entities = ["media"]
    verdict = evaluate(cw.conns.legacy, cw.conns.dest, "cutover-media-1", entities=entities)
    storage = next(c for c in verdict.criteria if c.name == "Storage objects present and verified")
    assert storage.ok and (storage.value, storage.threshold) == (0, 0), storage.evidence
    path = cw.q("SELECT object_path FROM public.media ORDER BY 1 LIMIT 1")[0][0]
    cw.client().storage.from_("media").remove([path])
    verdict = evaluate(cw.conns.legacy, cw.conns.dest, "cutover-media-2", entities=entities)
    storage = next(c for c in verdict.criteria if c.name == "Storage objects present and verified")
    assert not storage.ok and not verdict.go
    assert storage.value == 2  # the row's object missing, and so never verified at a current version
    assert "1 missing" in storage.evidence and path in storage.evidence


def _quarantine_one_and_rerun(cw: MediaWorld, label: str) -> tuple[str, str, bytes]:
    """A legacy row turns into a type the bucket refuses; a full run quarantines it, deletes its destination
    row and removes its object. Returns (media id, object path, the object's bytes)."""
    media_id, path, key = cw.q(
        "SELECT m.id::text, m.object_path, NULL FROM public.media m WHERE m.mime_type = 'application/pdf' "
        "ORDER BY 1 LIMIT 1"
    )[0]
    key = cw.q("SELECT storage_key FROM media_assets WHERE id = %s", media_id, db="legacy")[0][0]
    with psycopg.connect(cw.conns.legacy, autocommit=True) as conn:
        conn.execute("UPDATE media_assets SET mime_type = 'text/html' WHERE id = %s", (media_id,))
    run_media(cw, label)
    assert cw.uploads(f"media:{label}")["removed"] == 1
    assert cw.q("SELECT count(*) FROM public.media WHERE id = %s", media_id) == [(0,)]
    assert path not in objects(cw)
    return media_id, path, cw.file(key)


def test_rollback_puts_back_the_objects_a_later_cleanup_removed(cw: MediaWorld):
    from include.migration.media.restore import restorer
    from include.migration.rollback import rollback

    run_media(cw, "first")
    media_id, path, data = _quarantine_one_and_rerun(cw, "second")
    result = rollback(cw.conns.dest, "media:second", storage_remover=media.remove_from_storage,
                      storage_restorer=restorer(cw.conns.legacy))
    assert result.proven, result.verdicts
    assert result.restored_objects == [path]
    assert cw.client().storage.from_("media").download(path) == data
    assert media.reconcile_storage(cw.conns.dest, media.MediaSettings(verify_all_objects=True)).clean


def test_rollback_refuses_when_a_removed_object_cannot_be_put_back(cw: MediaWorld):
    from include.migration.media.restore import restorer
    from include.migration.rollback import RollbackRefused, rollback

    run_media(cw, "first")
    media_id, path, _ = _quarantine_one_and_rerun(cw, "second")
    rows = cw.q("SELECT count(*) FROM public.media")
    # Without a restorer, and with one whose legacy file is gone: refused, saying which object and why.
    with pytest.raises(RollbackRefused, match="no restorer was given") as refused:
        rollback(cw.conns.dest, "media:second", storage_remover=media.remove_from_storage)
    assert path in str(refused.value)
    key = cw.q("SELECT storage_key FROM media_assets WHERE id = %s", media_id, db="legacy")[0][0]
    (cw.media_root / key).unlink()
    with pytest.raises(RollbackRefused, match="cannot be put back") as refused:
        rollback(cw.conns.dest, "media:second", storage_remover=media.remove_from_storage,
                 storage_restorer=restorer(cw.conns.legacy))
    assert f"{path}: no legacy file at {key!r}" in str(refused.value)
    # Nothing changed: the rows, the run's status, Storage.
    assert cw.q("SELECT count(*) FROM public.media") == rows
    assert cw.q("SELECT status FROM migration.runs WHERE run_id = 'media:second'") != [("rolled_back",)]
    assert path not in objects(cw)


def test_a_role_that_row_level_security_filters_falls_back_to_the_listing(cw: MediaWorld):
    from include.supabase import storage_catalog

    run_media(cw, "rls")
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(cw.conns.dest, autocommit=True) as conn:
        assert storage_catalog.readable(conn)
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA storage TO {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON storage.objects TO {}").format(sql.Identifier(role)))
        try:
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            # RLS on, no policy: this role would see no object at all, so the catalog is not used.
            assert conn.execute("SELECT count(*) FROM storage.objects").fetchone()[0] == 0
            assert not storage_catalog.readable(conn)
        finally:
            conn.execute("RESET ROLE")
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
