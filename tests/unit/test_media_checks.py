"""The per-file decisions of the media transform (``media.source.check_file``) on files in a temporary folder:
what each legacy row becomes, and why."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from include.migration.media.hooks import MediaSettings, project_url
from include.migration.media.source import LocalMediaSource, check_file

OWNER = "00000000-0000-4000-8000-000000000001"
MEDIA = "00000000-0000-4000-9000-000000000002"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
PDF = b"%PDF-1.4\n%%EOF\n"


@pytest.fixture
def source(tmp_path: Path) -> LocalMediaSource:
    (tmp_path / "uploads").mkdir()
    (tmp_path / "uploads" / "a.png").write_bytes(PNG)
    (tmp_path / "uploads" / "pasted").write_bytes(PDF)
    return LocalMediaSource(tmp_path)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check(
    source,
    *,
    key="uploads/a.png",
    name="Screenshot 1.png",
    mime="image/png",
    size=None,
    digest: str | None = "file's",
    settings: MediaSettings | None = None,
):
    """check_file on one row; by default the row matches uploads/a.png exactly."""
    row = (
        MEDIA,
        OWNER,
        name,
        key,
        mime,
        len(PNG) if size is None else size,
        sha(PNG) if digest == "file's" else digest,
    )
    return check_file(source, settings or MediaSettings(), row)


def test_a_matching_file_is_loadable_with_its_bytes_facts_and_its_object_path(source):
    got = check(source, digest=sha(PNG).upper())  # the legacy app stored it upper-cased
    assert got.reason is None and got.repairs == ()
    assert (got.size, got.sha256, got.mime_type) == (len(PNG), sha(PNG), "image/png")
    # Storage-safe name: the space replaced, a tag of the original name's hash keeps names apart.
    assert got.object_path == f"{OWNER}/{MEDIA}/Screenshot_1-746030ae.png"
    assert hashlib.sha256(b"Screenshot 1.png").hexdigest().startswith("746030ae")


def test_integrity_decisions(source):
    assert check(source, key="uploads/gone.png").reason == "file_missing"
    assert check(source, key="../outside.png").reason == "file_path_invalid"
    wrong = check(source, digest=sha(b"other"))
    assert wrong.reason == "sha256_mismatch" and sha(PNG) in wrong.detail
    # No checksum recorded: the size is the only evidence, and it must hold.
    assert check(source, digest=None, size=len(PNG) + 1).reason == "size_mismatch"
    computed = check(source, digest=None)
    assert computed.reason is None and computed.repairs == ("sha256_from_file",)
    # The checksum matches but the recorded size is wrong: the bytes win.
    fixed = check(source, size=7)
    assert (fixed.reason, fixed.size, fixed.repairs) == (None, len(PNG), ("size_bytes_from_file",))


def test_mime_type_from_the_row_normalised_else_sniffed(source):
    assert check(source, mime="image/PNG").repairs == ("mime_type_normalized",)
    assert check(source, mime="image/jpg").mime_type == "image/jpeg"
    for legacy in (None, "application/octet-stream", "png"):
        got = check(
            source, key="uploads/pasted", name="document", mime=legacy, size=len(PDF), digest=sha(PDF)
        )
        assert (got.mime_type, got.repairs) == ("application/pdf", ("mime_type_sniffed",)), legacy


def test_the_buckets_rules(source):
    small = MediaSettings(file_size_limit=len(PNG) - 1)
    assert check(source, settings=small).reason == "file_too_large"
    no_images = MediaSettings(allowed_mime_types=("application/pdf",))
    refused = check(source, settings=no_images)
    assert refused.reason == "mime_type_not_allowed" and "image/png" in refused.detail
    assert check(source, settings=MediaSettings(allowed_mime_types=("image/*",))).reason is None


def test_settings_from_the_dag_params_and_the_project_url():
    s = MediaSettings.from_options(
        {
            "media_file_size_limit_mb": 5,
            "media_allowed_mime_types": ["image/*"],
            "media_upload_concurrency": 3,
            "media_verify_all_objects": True,
        }
    )
    assert (s.file_size_limit, s.allowed_mime_types, s.concurrency, s.verify_all_objects) == (
        5 * 1024 * 1024,
        ("image/*",),
        3,
        True,
    )
    assert MediaSettings.from_options(None) == MediaSettings()
    assert project_url("https://abc.supabase.co/") == "https://abc.supabase.co"
    assert project_url("abc.supabase.co") == "https://abc.supabase.co"
    assert project_url("127.0.0.1", "http", 54321) == "http://127.0.0.1:54321"
