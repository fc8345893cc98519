"""The Storage stand-in's state on disk: buckets, objects and TUS uploads in progress.

This module owns the data folder (``buckets.json``, one JSON record and one
blob per object, TUS uploads in progress) and its in-memory index, so a
restart keeps everything; and the timestamps the records carry.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from local_runtime.standins.storage.catalog import ObjectsCatalog


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _http_date(iso: str) -> str:
    parsed = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return formatdate(parsed.timestamp(), usegmt=True)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# ----------------------------------------------------------------------------
# On-disk state


@dataclass
class _Blob:
    """Bytes received for an object, already on disk, with their digests."""

    path: Path
    size: int
    md5: str
    sha256: str


class _Store:
    """Buckets, objects and TUS uploads, kept on disk and indexed in memory.

    Each object is a JSON record plus a blob named after its version; the
    record is replaced atomically, so a crash leaves the old or the new object,
    never a mix. One lock guards every read-modify-write of the index.
    """

    # storage.objects / storage.buckets in the destination database, when the
    # stand-in was given one (see catalog.py); written under the lock.
    catalog: ObjectsCatalog | None = None

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.RLock()
        (root / "objects").mkdir(parents=True, exist_ok=True)
        (root / "tus").mkdir(parents=True, exist_ok=True)
        (root / "incoming").mkdir(parents=True, exist_ok=True)
        self.buckets: dict[str, dict[str, Any]] = {}
        self.objects: dict[str, dict[str, dict[str, Any]]] = {}
        self.uploads: dict[str, dict[str, Any]] = {}
        self._load()

    # -- loading ----------------------------------------------------------------
    def _load(self) -> None:
        buckets_file = self.root / "buckets.json"
        if buckets_file.exists():
            self.buckets = json.loads(buckets_file.read_text())
        for bucket_id in self.buckets:
            self.objects[bucket_id] = {}
        for record_file in (self.root / "objects").glob("*/*.json"):
            record = json.loads(record_file.read_text())
            blob = self.blob_path(record["bucket_id"], record["name"], record["version"])
            if record["bucket_id"] in self.objects and blob.exists():
                self.objects[record["bucket_id"]][record["name"]] = record
        for upload_file in (self.root / "tus").glob("*.json"):
            upload = json.loads(upload_file.read_text())
            self.uploads[upload["id"]] = upload
        for stale in (self.root / "incoming").iterdir():
            stale.unlink(missing_ok=True)

    # -- paths ------------------------------------------------------------------
    def bucket_dir(self, bucket_id: str) -> Path:
        return self.root / "objects" / _digest(bucket_id)[:24]

    def record_path(self, bucket_id: str, key: str) -> Path:
        return self.bucket_dir(bucket_id) / f"{_digest(key)}.json"

    def blob_path(self, bucket_id: str, key: str, version: str) -> Path:
        return self.bucket_dir(bucket_id) / f"{_digest(key)}.{version}.bin"

    def upload_paths(self, upload_id: str) -> tuple[Path, Path]:
        stem = self.root / "tus" / _digest(upload_id)[:40]
        return stem.with_suffix(".json"), stem.with_suffix(".part")

    def incoming_path(self) -> Path:
        return self.root / "incoming" / uuid.uuid4().hex

    # -- writes -------------------------------------------------------------------
    @staticmethod
    def _write_json(path: Path, data: Any) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)

    def save_buckets(self) -> None:
        self._write_json(self.root / "buckets.json", self.buckets)
        if self.catalog is not None:
            self.catalog.put_buckets(self.buckets.values())

    def write_blob(self, data: bytes) -> _Blob:
        path = self.incoming_path()
        path.write_bytes(data)
        return _Blob(path, len(data), hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest())

    def commit_object(
        self,
        bucket_id: str,
        key: str,
        blob: _Blob,
        *,
        mimetype: str,
        cache_control: str,
        owner: str | None,
        user_metadata: dict[str, Any] | None,
        etag: str,
    ) -> dict[str, Any]:
        """Make ``blob`` the current content of ``key`` (caller holds the lock)."""
        now = _now_iso()
        old = self.objects[bucket_id].get(key)
        version = uuid.uuid4().hex
        self.bucket_dir(bucket_id).mkdir(parents=True, exist_ok=True)
        os.replace(blob.path, self.blob_path(bucket_id, key, version))
        record = {
            "id": old["id"] if old else str(uuid.uuid4()),
            "bucket_id": bucket_id,
            "name": key,
            "owner": owner,
            "version": version,
            "created_at": old["created_at"] if old else now,
            "updated_at": now,
            "last_accessed_at": now,
            "metadata": {
                "eTag": etag,
                "size": blob.size,
                "mimetype": mimetype,
                "cacheControl": cache_control,
                "lastModified": now,
                "contentLength": blob.size,
                "httpStatusCode": 200,
            },
            "user_metadata": user_metadata,
            # Kept for the stand-in's own bookkeeping; never sent to clients,
            # because the real server has no content hash to offer.
            "standin": {"sha256": blob.sha256},
        }
        self._write_json(self.record_path(bucket_id, key), record)
        self.objects[bucket_id][key] = record
        if self.catalog is not None:
            self.catalog.put_object(record)
        if old:
            self.blob_path(bucket_id, key, old["version"]).unlink(missing_ok=True)
        return record

    def delete_object(self, bucket_id: str, key: str) -> dict[str, Any] | None:
        record = self.objects.get(bucket_id, {}).pop(key, None)
        if record is None:
            return None
        if self.catalog is not None:
            self.catalog.drop_object(bucket_id, key)
        self.record_path(bucket_id, key).unlink(missing_ok=True)
        self.blob_path(bucket_id, key, record["version"]).unlink(missing_ok=True)
        return record

    def save_upload(self, upload: dict[str, Any]) -> None:
        self._write_json(self.upload_paths(upload["id"])[0], upload)
        self.uploads[upload["id"]] = upload

    def drop_upload(self, upload_id: str) -> None:
        self.uploads.pop(upload_id, None)
        for path in self.upload_paths(upload_id):
            path.unlink(missing_ok=True)
