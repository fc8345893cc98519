"""Media files in Supabase Storage, through the real ``supabase`` client.

Every test that takes ``target`` runs twice: against the local stand-in
(started on a free 127.0.0.1 port with a temporary data folder) and against a
real Supabase project when ``SUPABASE_URL`` and ``SUPABASE_SERVICE_ROLE_KEY``
are set (``SUPABASE_ANON_KEY`` too for the anon checks); without them that run
is skipped and says why. Tests that need the stand-in's fault injection or its
request log take ``standin`` and are skipped against a real project. Each test
works in buckets of its own, removed at the end.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import random
import re
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from storage3.exceptions import StorageApiError
from supabase import Client, ClientOptions, create_client

from include.migration.media.source import (
    LocalMediaSource,
    MediaPathError,
    object_path,
    safe_file_name,
    sniff_mime,
)
from include.supabase.storage import (
    BucketSettingsMismatch,
    ensure_bucket,
    list_objects,
    remove_objects,
    verify_object,
)
from include.supabase.storage_upload import StorageUploader, UploadItem
from local_runtime.standins.storage import StorageStandIn, is_valid_key, make_jwt

pytestmark = pytest.mark.integration

SECRET = "standin-test-secret-at-least-32-characters"
MB = 1024 * 1024


@dataclass
class Target:
    """Where the tests run: the stand-in or a real project."""

    name: str
    url: str
    service_key: str
    anon_key: str | None
    standin: StorageStandIn | None
    buckets: list[str] = field(default_factory=list)

    def client(self, key: str | None = None, **options: object) -> Client:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            opts = ClientOptions(**options) if options else None  # type: ignore[arg-type]
            return create_client(self.url, key or self.service_key, opts)

    def bucket(self, **options: object) -> str:
        """A new private bucket for one test, removed when the module ends."""
        name = f"mig-test-{uuid.uuid4().hex[:10]}"
        self.client().storage.create_bucket(name, options={"public": False, **options})  # type: ignore[typeddict-item]
        self.buckets.append(name)
        return name


@pytest.fixture(scope="module", params=["standin", "supabase"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    if request.param == "supabase":
        url, key = os.environ.get("SUPABASE_URL"), os.environ.get("SUPABASE_SERVICE_ROLE_KEY")
        if not (url and key):
            pytest.skip(
                "SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY are not set: no run against a real project"
            )
        env = Target("supabase", url, key, os.environ.get("SUPABASE_ANON_KEY"), None)
    else:
        standin = StorageStandIn(tmp_path_factory.mktemp("storage"), SECRET).start()
        env = Target("standin", standin.url, standin.service_key, standin.anon_key, standin)
    yield env
    admin = env.client()
    for name in env.buckets:
        try:
            admin.storage.empty_bucket(name)
            admin.storage.delete_bucket(name)
        except StorageApiError:
            pass
    if env.standin is not None:
        env.standin.stop()


@pytest.fixture
def standin(target: Target) -> StorageStandIn:
    if target.standin is None:
        pytest.skip("needs the stand-in (fault injection, request log); not possible against a real project")
    return target.standin


@pytest.fixture
def anon_key(target: Target) -> str:
    if not target.anon_key:
        pytest.skip("SUPABASE_ANON_KEY is not set")
    return target.anon_key


def _bytes(n: int, seed: int, magic: bytes = b"\x89PNG\r\n\x1a\n") -> bytes:
    return (magic + random.Random(seed).randbytes(n))[:n]


def _item(path: str, data: bytes, content_type: str = "image/png") -> UploadItem:
    return UploadItem(
        path, content_type, len(data), hashlib.sha256(data).hexdigest(), lambda: io.BytesIO(data)
    )


def _status(err: StorageApiError) -> int:
    return int(err.status)


def _outcomes(results: object) -> dict[str, str]:
    return {r.object_path: r.outcome for r in results}  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------
# Buckets and objects through the client


def test_bucket_create_get_list_and_duplicate(target: Target) -> None:
    client = target.client()
    name = target.bucket(file_size_limit=1024, allowed_mime_types=["image/*", "application/pdf"])

    bucket = client.storage.get_bucket(name)
    assert (bucket.public, bucket.file_size_limit) == (False, 1024)
    assert sorted(bucket.allowed_mime_types or []) == ["application/pdf", "image/*"]
    assert name in [b.id for b in client.storage.list_buckets()]

    with pytest.raises(StorageApiError) as err:
        client.storage.create_bucket(name)
    assert _status(err.value) == 409
    assert err.value.message == "The resource already exists"

    with pytest.raises(StorageApiError) as err:
        client.storage.get_bucket(f"{name}-missing")
    assert _status(err.value) == 404


def test_upload_download_keeps_bytes_and_content_type(target: Target) -> None:
    files = target.client().storage.from_(target.bucket())
    data = _bytes(5000, seed=1)

    files.upload("u1/m1/photo.png", data, {"content-type": "image/png"})

    assert files.download("u1/m1/photo.png") == data
    info = files.info("u1/m1/photo.png")
    assert (info["size"], info["content_type"]) == (5000, "image/png")
    assert files.exists("u1/m1/photo.png") and not files.exists("u1/m1/other.png")


def test_content_type_defaults_to_text_plain_when_not_passed(target: Target) -> None:
    files = target.client().storage.from_(target.bucket())
    files.upload("a/photo.png", _bytes(100, seed=2))
    assert files.info("a/photo.png")["content_type"].startswith("text/plain")


def test_existing_path_is_409_without_upsert_and_overwritten_with_it(target: Target) -> None:
    files = target.client().storage.from_(target.bucket())
    files.upload("a/x.png", b"first", {"content-type": "image/png"})

    with pytest.raises(StorageApiError) as err:
        files.upload("a/x.png", b"second", {"content-type": "image/png"})
    assert (_status(err.value), err.value.code, err.value.message) == (
        409,
        "Duplicate",
        "The resource already exists",
    )
    assert files.download("a/x.png") == b"first"

    files.upload("a/x.png", b"second", {"content-type": "image/png", "upsert": "true"})
    assert files.download("a/x.png") == b"second"


def test_object_over_bucket_limit_is_refused(target: Target) -> None:
    files = target.client().storage.from_(target.bucket(file_size_limit=1000))
    files.upload("ok.png", _bytes(1000, seed=3), {"content-type": "image/png"})

    with pytest.raises(StorageApiError) as err:
        files.upload("big.png", _bytes(1001, seed=3), {"content-type": "image/png"})
    assert _status(err.value) == 413
    assert err.value.message == "The object exceeded the maximum allowed size"
    assert not files.exists("big.png")


def test_mime_type_outside_allowed_list_is_refused(target: Target) -> None:
    files = target.client().storage.from_(target.bucket(allowed_mime_types=["image/*", "application/pdf"]))
    files.upload("a.webp", b"RIFF....WEBP", {"content-type": "image/webp"})  # through the wildcard
    files.upload("a.pdf", b"%PDF-1.4", {"content-type": "application/pdf"})

    with pytest.raises(StorageApiError) as err:
        files.upload("a.txt", b"hello", {"content-type": "text/plain"})
    assert _status(err.value) == 415
    assert err.value.message == "mime type text/plain is not supported"
    assert sorted(list_objects(target.client(), files.id)) == ["a.pdf", "a.webp"]


def test_anon_key_cannot_write_or_read_a_private_bucket(target: Target, anon_key: str) -> None:
    name = target.bucket()
    target.client().storage.from_(name).upload("u/secret.png", b"secret", {"content-type": "image/png"})
    anon = target.client(anon_key).storage

    with pytest.raises(StorageApiError) as err:
        anon.from_(name).upload("u/new.png", b"x", {"content-type": "image/png"})
    assert (_status(err.value), err.value.message) == (403, "new row violates row-level security policy")

    with pytest.raises(StorageApiError) as err:
        anon.from_(name).download("u/secret.png")
    assert (_status(err.value), err.value.message) == (404, "Object not found")

    assert anon.from_(name).list("u") == []
    with pytest.raises(StorageApiError) as err:
        anon.create_bucket(f"mig-test-anon-{uuid.uuid4().hex[:8]}")
    assert _status(err.value) == 403


def test_key_signed_with_another_secret_is_refused(target: Target) -> None:
    name = target.bucket()
    forged = make_jwt("not-the-project-secret-not-the-project-secret", "service_role")

    with pytest.raises(StorageApiError) as err:
        target.client(forged).storage.from_(name).upload("x.png", b"x", {"content-type": "image/png"})
    assert _status(err.value) in (400, 401, 403)

    # A valid apikey does not rescue a forged Authorization header.
    with pytest.raises(StorageApiError) as err:
        client = target.client(headers={"Authorization": f"Bearer {forged}"})
        client.storage.from_(name).upload("x.png", b"x", {"content-type": "image/png"})
    assert _status(err.value) in (400, 401, 403)
    assert list_objects(target.client(), name) == {}


def test_standin_auth_errors_have_the_real_shapes(standin: StorageStandIn, target: Target) -> None:
    name = target.bucket()
    forged = make_jwt("not-the-project-secret-not-the-project-secret", "service_role")
    with pytest.raises(StorageApiError) as err:
        target.client(forged).storage.get_bucket(name)
    assert _status(err.value) == 401 and "Invalid API key" in err.value.message

    client = target.client(headers={"Authorization": f"Bearer {forged}"})
    with pytest.raises(StorageApiError) as err:
        client.storage.from_(name).upload("x.png", b"x", {"content-type": "image/png"})
    assert (_status(err.value), err.value.code, err.value.message) == (
        403,
        "Unauthorized",
        "invalid signature",
    )

    # A correctly signed token without the service_role claim is bound by RLS.
    user = target.client(standin.key("authenticated", sub=str(uuid.uuid4())))
    with pytest.raises(StorageApiError) as err:
        user.storage.from_(name).upload("x.png", b"x", {"content-type": "image/png"})
    assert _status(err.value) == 403

    response = httpx.get(f"{standin.url}/storage/v1/bucket/{name}")
    assert response.status_code == 401
    assert response.json() == {"message": "No API key found in request"}


def test_list_walks_folders_and_remove_deletes(target: Target) -> None:
    client = target.client()
    name = target.bucket()
    files = client.storage.from_(name)
    for path, size in [("a/b/1.png", 10), ("a/b/2.png", 20), ("a/c.png", 30), ("root.png", 40)]:
        files.upload(path, _bytes(size, seed=size), {"content-type": "image/png"})

    top = files.list()
    assert [(e["name"], e["id"] is None) for e in top] == [("a", True), ("root.png", False)]
    assert top[1]["metadata"]["size"] == 40 and top[1]["metadata"]["mimetype"] == "image/png"
    assert list_objects(client, name) == {"a/b/1.png": 10, "a/b/2.png": 20, "a/c.png": 30, "root.png": 40}

    assert sorted(remove_objects(client, name, ["a/b/1.png", "root.png", "not/there.png"])) == [
        "a/b/1.png",
        "root.png",
    ]
    assert list_objects(client, name) == {"a/b/2.png": 20, "a/c.png": 30}


def test_list_pages_past_the_page_size(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    import include.supabase.storage as media_files

    monkeypatch.setattr(media_files, "LIST_PAGE_SIZE", 3)
    client = target.client()
    name = target.bucket()
    for i in range(7):
        client.storage.from_(name).upload(f"u/{i}.png", b"x" * (i + 1), {"content-type": "image/png"})
    assert list_objects(client, name) == {f"u/{i}.png": i + 1 for i in range(7)}


def test_deleting_a_non_empty_bucket_is_refused(target: Target) -> None:
    client = target.client()
    name = target.bucket()
    client.storage.from_(name).upload("x.png", b"x", {"content-type": "image/png"})

    with pytest.raises(StorageApiError) as err:
        client.storage.delete_bucket(name)
    assert _status(err.value) == 409
    assert err.value.message == "The bucket you tried to delete is not empty"

    client.storage.empty_bucket(name)
    client.storage.delete_bucket(name)
    assert name not in [b.id for b in client.storage.list_buckets()]


# ----------------------------------------------------------------------------
# Resumable (TUS) uploads


def _tus_headers(key: str, **extra: str) -> dict[str, str]:
    return {"apikey": key, "Authorization": f"Bearer {key}", "Tus-Resumable": "1.0.0", **extra}


def _tus_metadata(bucket: str, path: str, content_type: str) -> str:
    pairs = {"bucketName": bucket, "objectName": path, "contentType": content_type}
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())


def test_large_file_goes_through_tus_and_arrives_intact(target: Target, tmp_path: Path) -> None:
    client = target.client()
    name = target.bucket()
    data = _bytes(7 * MB + 123, seed=7)
    (tmp_path / "big.png").write_bytes(data)
    source = LocalMediaSource(tmp_path)
    item = UploadItem(
        "u/m/big.png",
        "image/png",
        len(data),
        hashlib.sha256(data).hexdigest(),
        lambda: source.open("big.png"),
    )

    with StorageUploader(client, name, url=target.url, service_key=target.service_key) as uploader:
        [result] = list(uploader.upload_many([item]))

    assert (result.outcome, result.detail) == ("uploaded", f"{len(data)} bytes, resumable upload")
    assert client.storage.from_(name).download("u/m/big.png") == data
    assert client.storage.from_(name).info("u/m/big.png")["content_type"] == "image/png"
    assert verify_object(client, name, "u/m/big.png", len(data), hashlib.sha256(data).hexdigest()) is None
    if target.standin is not None:
        assert target.standin.count_requests("PATCH", "^/upload/resumable/") == 2  # 6 MB + the rest
        assert re.fullmatch(r'"[0-9a-f]{32}-2"', client.storage.from_(name).info("u/m/big.png")["etag"])


def test_tus_protocol_answers(target: Target) -> None:
    name = target.bucket()
    target.client().storage.from_(name).upload("taken.png", b"x", {"content-type": "image/png"})
    endpoint = f"{target.url}/storage/v1/upload/resumable"
    key = target.service_key

    missing_version = httpx.post(
        endpoint, headers={"apikey": key, "Authorization": f"Bearer {key}", "Upload-Length": "4"}
    )
    assert missing_version.status_code == 412

    taken = httpx.post(
        endpoint,
        headers=_tus_headers(
            key, **{"Upload-Length": "4", "Upload-Metadata": _tus_metadata(name, "taken.png", "image/png")}
        ),
    )
    assert taken.status_code == 409 and "already exists" in taken.text

    created = httpx.post(
        endpoint,
        headers=_tus_headers(
            key, **{"Upload-Length": "10", "Upload-Metadata": _tus_metadata(name, "new.png", "image/png")}
        ),
    )
    assert created.status_code == 201
    location = created.headers["Location"]
    patch_headers = {"Content-Type": "application/offset+octet-stream"}

    wrong = httpx.patch(
        location, content=b"01234", headers=_tus_headers(key, **{"Upload-Offset": "3"}, **patch_headers)
    )
    assert wrong.status_code == 409
    first = httpx.patch(
        location, content=b"01234", headers=_tus_headers(key, **{"Upload-Offset": "0"}, **patch_headers)
    )
    assert (first.status_code, first.headers["Upload-Offset"]) == (204, "5")
    head = httpx.head(location, headers=_tus_headers(key))
    assert (head.headers["Upload-Offset"], head.headers["Upload-Length"]) == ("5", "10")
    last = httpx.patch(
        location, content=b"56789", headers=_tus_headers(key, **{"Upload-Offset": "5"}, **patch_headers)
    )
    assert last.status_code == 204
    assert target.client().storage.from_(name).download("new.png") == b"0123456789"


def test_tus_refuses_over_the_bucket_limit(target: Target) -> None:
    name = target.bucket(file_size_limit=1000)
    response = httpx.post(
        f"{target.url}/storage/v1/upload/resumable",
        headers=_tus_headers(
            target.service_key,
            **{"Upload-Length": "1001", "Upload-Metadata": _tus_metadata(name, "big.png", "image/png")},
        ),
    )
    assert response.status_code == 413


# ----------------------------------------------------------------------------
# StorageUploader


@pytest.mark.parametrize("precheck", [True, False], ids=["precheck", "server-decides"])
def test_uploader_mixed_batch_outcomes(target: Target, precheck: bool) -> None:
    client = target.client()
    name = target.bucket(file_size_limit=64 * 1024, allowed_mime_types=["image/*", "application/pdf"])
    files = client.storage.from_(name)
    same, other = _bytes(3000, seed=11), _bytes(3000, seed=12)
    files.upload("u/same.png", same, {"content-type": "image/png"})
    files.upload("u/changed.png", other, {"content-type": "image/png"})
    files.upload("u/resized.png", other[:100], {"content-type": "image/png"})
    items = [
        _item("u/new.png", _bytes(2000, seed=10)),
        _item("u/same.png", same),
        _item("u/changed.png", _bytes(3000, seed=13)),  # same size, other bytes
        _item("u/resized.png", other),
        _item("u/big.png", _bytes(100 * 1024, seed=14)),
        _item("u/notes.txt", b"plain text", "text/plain"),
    ]

    with StorageUploader(client, name, concurrency=3, backoff=0.01, precheck=precheck) as uploader:
        results = list(uploader.upload_many(items))

    assert _outcomes(results) == {
        "u/new.png": "uploaded",
        "u/same.png": "skipped_identical",
        "u/changed.png": "conflict",
        "u/resized.png": "conflict",
        "u/big.png": "rejected_size",
        "u/notes.txt": "rejected_mime",
    }
    assert all(r.detail for r in results)
    assert files.download("u/changed.png") == other  # a conflict never overwrites
    assert sorted(list_objects(client, name)) == ["u/changed.png", "u/new.png", "u/resized.png", "u/same.png"]


def test_uploader_overwrite_replaces_only_differing_objects(target: Target) -> None:
    client = target.client()
    name = target.bucket()
    files = client.storage.from_(name)
    files.upload("u/same.png", b"same", {"content-type": "image/png"})
    files.upload("u/changed.png", b"old", {"content-type": "image/png"})

    with StorageUploader(client, name, overwrite=True, backoff=0.01) as uploader:
        results = list(uploader.upload_many([_item("u/same.png", b"same"), _item("u/changed.png", b"new!")]))

    assert _outcomes(results) == {"u/same.png": "skipped_identical", "u/changed.png": "uploaded"}
    assert files.download("u/changed.png") == b"new!"


def test_uploader_refuses_a_source_that_does_not_match_its_item(target: Target) -> None:
    client = target.client()
    name = target.bucket()
    declared = _item("u/x.png", b"declared bytes")
    lying = UploadItem(
        declared.object_path,
        "image/png",
        declared.size,
        declared.sha256,
        lambda: io.BytesIO(b"other bytes!!!"),
    )

    with StorageUploader(client, name, backoff=0.01) as uploader:
        [result] = list(uploader.upload_many([lying]))

    assert result.outcome == "failed" and "do not match" in result.detail
    assert list_objects(client, name) == {}


def test_uploader_retries_a_503_twice_then_succeeds(standin: StorageStandIn, target: Target) -> None:
    client = target.client()
    name = target.bucket()
    fault = standin.inject_fault(rf"^/object/{name}/u/retry\.png$", status=503, times=2, method="POST")
    data = _bytes(1000, seed=20)

    with StorageUploader(client, name, backoff=0.01) as uploader:
        [result] = list(uploader.upload_many([_item("u/retry.png", data)]))

    assert (result.outcome, result.attempts, fault.hits) == ("uploaded", 3, 2)
    assert standin.count_requests("POST", rf"^/object/{name}/u/retry\.png$") == 3
    assert client.storage.from_(name).download("u/retry.png") == data


def test_uploader_does_not_retry_a_refusal(standin: StorageStandIn, target: Target) -> None:
    client = target.client()
    name = target.bucket()
    body = '{"statusCode":"403","code":"AccessDenied","error":"Unauthorized","message":"nope"}'
    standin.inject_fault(rf"^/object/{name}/u/x\.png$", status=400, times=5, method="POST", body=body)

    with StorageUploader(client, name, backoff=0.01) as uploader:
        [result] = list(uploader.upload_many([_item("u/x.png", b"x")]))

    assert (result.outcome, result.attempts) == ("failed", 1)
    assert "403" in result.detail


def test_uploader_retries_a_failed_tus_chunk(standin: StorageStandIn, target: Target) -> None:
    client = target.client()
    name = target.bucket()
    data = _bytes(7 * MB, seed=21)
    fault = standin.inject_fault(r"^/upload/resumable/", status=500, times=1, method="PATCH")

    with StorageUploader(client, name, backoff=0.01) as uploader:
        [result] = list(uploader.upload_many([_item("u/big.png", data)]))

    assert (result.outcome, fault.hits) == ("uploaded", 1)
    assert result.attempts == 4  # create, chunk 1 twice, chunk 2
    assert client.storage.from_(name).download("u/big.png") == data


def test_uploader_retries_after_a_timeout(standin: StorageStandIn, target: Target) -> None:
    # The first request is answered too late but still stores the object, as a
    # slow real server would; the retry must not turn that into a conflict.
    name = target.bucket()
    client = target.client(storage_client_timeout=1)
    standin.inject_fault(rf"^/object/{name}/u/slow\.png$", status=None, delay=2.0, times=1, method="POST")
    data = _bytes(500, seed=22)

    with StorageUploader(client, name, backoff=0.01) as uploader:
        [result] = list(uploader.upload_many([_item("u/slow.png", data)]))

    assert result.outcome == "uploaded" and result.attempts == 2
    assert client.storage.from_(name).download("u/slow.png") == data


def test_rerun_after_half_failed_uploads_only_the_missing_half(
    standin: StorageStandIn, target: Target
) -> None:
    client = target.client()
    name = target.bucket()
    items = [_item(f"u/{i}.png", _bytes(800 + i, seed=30 + i)) for i in range(10)]
    for i in range(0, 10, 2):
        standin.inject_fault(rf"^/object/{name}/u/{i}\.png$", status=500, times=3, method="POST")

    with StorageUploader(client, name, retries=2, backoff=0.01) as uploader:
        first = list(uploader.upload_many(items))
    with StorageUploader(client, name, retries=2, backoff=0.01) as uploader:
        second = list(uploader.upload_many(items))

    assert sorted(r.outcome for r in first) == ["failed"] * 5 + ["uploaded"] * 5
    assert {r.object_path for r in second if r.outcome == "uploaded"} == {
        f"u/{i}.png" for i in range(0, 10, 2)
    }
    assert {r.object_path for r in second if r.outcome == "skipped_identical"} == {
        f"u/{i}.png" for i in range(1, 10, 2)
    }


def test_rerun_after_an_interrupted_run_uploads_only_what_is_missing(target: Target) -> None:
    client = target.client()
    name = target.bucket()
    items = [_item(f"u/{i}.png", _bytes(500 + i, seed=40 + i)) for i in range(8)]

    with StorageUploader(client, name, concurrency=2, backoff=0.01) as uploader:
        run = uploader.upload_many(items)
        consumed = [next(run) for _ in range(3)]
        run.close()  # the worker stops here, mid-batch
    landed = list_objects(client, name)
    assert all(r.outcome == "uploaded" for r in consumed)
    assert 3 <= len(landed) < 8

    with StorageUploader(client, name, concurrency=2, backoff=0.01) as uploader:
        rerun = list(uploader.upload_many(items))

    assert {r.object_path for r in rerun if r.outcome == "skipped_identical"} == set(landed)
    assert {r.object_path for r in rerun if r.outcome == "uploaded"} == {i.object_path for i in items} - set(
        landed
    )
    assert len(list_objects(client, name)) == 8


def test_uploader_never_has_more_than_concurrency_files_open(target: Target) -> None:
    client = target.client()
    name = target.bucket()
    open_now, peak = 0, 0

    class Counting(io.BytesIO):
        def __enter__(self) -> Counting:
            nonlocal open_now, peak
            open_now += 1
            peak = max(peak, open_now)
            return self

        def __exit__(self, *exc: object) -> None:
            nonlocal open_now
            open_now -= 1

    def counted(path: str, data: bytes) -> UploadItem:
        return UploadItem(
            path, "image/png", len(data), hashlib.sha256(data).hexdigest(), lambda: Counting(data)
        )

    items = (counted(f"u/{i}.png", _bytes(300, seed=50 + i)) for i in range(12))
    with StorageUploader(client, name, concurrency=3, backoff=0.01) as uploader:
        results = list(uploader.upload_many(items))

    assert [r.outcome for r in results] == ["uploaded"] * 12
    assert 1 <= peak <= 3


# ----------------------------------------------------------------------------
# Buckets, verification, names


def test_ensure_bucket_creates_verifies_and_reports_drift(target: Target) -> None:
    client = target.client()
    name = f"mig-test-{uuid.uuid4().hex[:10]}"
    target.buckets.append(name)
    settings = {"file_size_limit": 10 * MB, "allowed_mime_types": ["image/*", "audio/mpeg"]}

    assert ensure_bucket(client, name, **settings) == "created"  # type: ignore[arg-type]
    assert ensure_bucket(client, name, **settings) == "verified"  # type: ignore[arg-type]
    assert client.storage.get_bucket(name).public is False

    with pytest.raises(BucketSettingsMismatch, match="file_size_limit"):
        ensure_bucket(client, name, file_size_limit=MB, allowed_mime_types=["image/*", "audio/mpeg"])
    assert (
        ensure_bucket(client, name, file_size_limit=MB, allowed_mime_types=["image/*"], fix=True) == "updated"
    )
    assert client.storage.get_bucket(name).file_size_limit == MB


def test_verify_object_reports_missing_size_and_content(target: Target) -> None:
    client = target.client()
    name = target.bucket()
    data = _bytes(2000, seed=60)
    digest = hashlib.sha256(data).hexdigest()
    client.storage.from_(name).upload("u/v.png", data, {"content-type": "image/png"})

    assert verify_object(client, name, "u/v.png", len(data), digest) is None
    assert verify_object(client, name, "u/gone.png", len(data), digest) == "missing"
    assert (
        verify_object(client, name, "u/v.png", len(data) + 1, digest)
        == f"size 2000 != expected {len(data) + 1}"
    )
    client.storage.from_(name).update("u/v.png", _bytes(2000, seed=61), {"content-type": "image/png"})
    assert (verify_object(client, name, "u/v.png", len(data), digest) or "").startswith("sha256 ")


@pytest.mark.parametrize(
    "raw",
    [
        "photo.png",
        "my photo (1).JPG",
        "résumé final.pdf",
        "../../etc/passwd",
        ".hidden",
        "100%#{}.png",
        "日本語.mp3",
        b"caf\xe9.png",
        "bad\udcff.png",
        "con:trol\x07.png",
        "a" * 300 + ".png",
        "",
    ],
    ids=lambda r: repr(r)[:20],
)
def test_object_paths_are_safe_stable_and_accepted(target: Target, raw: str | bytes) -> None:
    path = object_path("11111111-2222-3333-4444-555555555555", 42, raw)
    assert path == object_path("11111111-2222-3333-4444-555555555555", 42, raw)  # deterministic
    owner, media, name = path.split("/")
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) and len(name) <= 120
    assert is_valid_key(path, "strict") and is_valid_key(path, "utf8")
    files = target.client().storage.from_(target.bucket())
    files.upload(path, b"x", {"content-type": "application/octet-stream"})
    assert files.download(path) == b"x"


def test_safe_names_keep_simple_names_and_keep_different_names_apart() -> None:
    assert safe_file_name("photo_1.png") == "photo_1.png"
    assert safe_file_name("a b.png") != safe_file_name("a_b.png")
    assert safe_file_name("a b.png").endswith(".png") and safe_file_name("a b.png").startswith("a_b-")
    assert safe_file_name(b"caf\xe9.png") != safe_file_name("café.png")  # Latin-1 bytes vs UTF-8 text
    assert safe_file_name("café.png").startswith("cafe-")
    with pytest.raises(ValueError, match="owner_id"):
        object_path("../x", 1, "a.png")


def test_standin_refuses_keys_the_strict_rule_refuses(standin: StorageStandIn, target: Target) -> None:
    files = target.client().storage.from_(target.bucket())
    with pytest.raises(StorageApiError) as err:
        files.upload("u/ä.png", b"x", {"content-type": "image/png"})
    assert (_status(err.value), err.value.message) == (400, "Invalid key: u/ä.png")


def test_standin_keeps_its_state_across_a_restart(tmp_path: Path) -> None:
    data = _bytes(3000, seed=70)
    with StorageStandIn(tmp_path, SECRET) as first:
        client = create_client(first.url, first.service_key)
        client.storage.create_bucket("media", options={"public": False, "file_size_limit": 5000})
        client.storage.from_("media").upload("u/m/a.png", data, {"content-type": "image/png"})
    with StorageStandIn(tmp_path, SECRET) as second:
        client = create_client(second.url, second.service_key)
        assert client.storage.get_bucket("media").file_size_limit == 5000
        assert client.storage.from_("media").download("u/m/a.png") == data
        assert client.storage.from_("media").info("u/m/a.png")["content_type"] == "image/png"


# ----------------------------------------------------------------------------
# Sources and MIME sniffing (no server needed)


def test_local_media_source_refuses_paths_outside_its_root(tmp_path: Path) -> None:
    root = tmp_path / "media"
    (root / "u").mkdir(parents=True)
    (root / "u" / "a.png").write_bytes(b"abc")
    (tmp_path / "secret.txt").write_text("secret")
    (root / "u" / "link").symlink_to(tmp_path / "secret.txt")
    source = LocalMediaSource(root)

    assert (source.size("u/a.png"), source.read_bytes("u/a.png"), source.size("u/none.png")) == (
        3,
        b"abc",
        None,
    )
    with source.open("u/a.png") as fh:
        assert fh.read() == b"abc"
    for key in [
        "../secret.txt",
        "u/../../secret.txt",
        "/etc/passwd",
        str(tmp_path / "secret.txt"),
        "u/link",
        "",
    ]:
        with pytest.raises(MediaPathError):
            source.read_bytes(key)


# A data table of magic numbers: its rows share a shape, not logic.
@pytest.mark.parametrize(
    ("head", "name", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", "x.bin", "image/png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "photo.png", "image/jpeg"),  # bytes beat the extension
        (b"GIF89a\x01\x00", "x", "image/gif"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "x", "image/webp"),
        (b"%PDF-1.7\n", "doc", "application/pdf"),
        (b"ID3\x04\x00\x00", "voice", "audio/mpeg"),
        (b"\xff\xfb\x90\x64\x00", "voice", "audio/mpeg"),
        (b"RIFF\x24\x08\x00\x00WAVEfmt ", "x", "audio/wav"),
        (b"OggS\x00\x02" + b"\x00" * 22 + b"OpusHead", "x", "audio/ogg"),
        (b"\x00\x00\x00\x20ftypisom\x00\x00", "x", "video/mp4"),
        (b"\x00\x00\x00\x20ftypM4A \x00\x00", "x", "audio/mp4"),
        (b"hello, world", "notes.txt", "text/plain"),
        (b"\x00\x01\x02", "data.csv", "text/csv"),
        (b"\x00\x01\x02", "clip.webm", "video/webm"),
        (b"\x00\x01\x02", "unknown.zzz", "application/octet-stream"),
        (b"", "", "application/octet-stream"),
    ],
)
def test_sniff_mime(head: bytes, name: str, expected: str) -> None:
    assert sniff_mime(head, name) == expected
