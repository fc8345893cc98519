"""Benchmark step: the media Storage reconciliation through ``storage.objects`` at a million objects.

The step builds a destination whose ``storage.objects`` holds ``objects``
rows, as the Storage stand-in keeps it (``ObjectsCatalog``), beside the same
number of ``public.media`` rows:

* ``real`` objects (200 by default, the reconciliation's sample size) are
  uploaded through the stand-in's HTTP API, so they exist as bytes and as
  rows, and their ``public.media`` rows carry their real size and SHA-256;
* the rest are written straight into ``storage.objects`` and ``public.media``
  with one ``INSERT ... SELECT`` each (a million HTTP uploads would measure
  the stand-in, not the reconciliation). They have no bytes, so they are
  never offered to the sampled download.

Then it measures, each separately: the catalog comparison of every row and
object (one FULL JOIN per key range, ``media.catalog.compare_catalog``), the
sampled download and SHA-256 of the ``real`` objects, and, for the ratio, the
API listing the reconciliation used before, over the ``real`` objects only
(extrapolated linearly to ``objects``; the real server measured 357 s for
4,917 objects). Target: comparison plus sample under 60 s at 1 M objects.

``make bench`` runs :func:`step_storage_reconcile` as its ``storage`` phase (20 k objects at
SCALE=small, 200 k at medium, 1 M at large); on its own::

    python -m local_runtime.bench.storage --objects 20000 [--pg-uri postgresql://...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import resource
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

TARGET_SECONDS = 60.0
TARGET_OBJECTS = 1_000_000
BENCH_DB = "bench_storage"
SECRET = "bench-storage-secret-at-least-32-characters"
OWNER = "00000000-0000-4000-8000-00000000b0b0"

# The synthetic rows: ids and names derived from n, so a rerun builds the same world. Foreign keys
# (public.media.owner_id -> users) are not checked for them: the owner is not what is measured.
_SYNTHETIC_MEDIA = """
INSERT INTO public.media (id, owner_id, bucket, object_path, file_name, mime_type, size_bytes, sha256, created_at)
SELECT md5('media' || n)::uuid, %(owner)s::uuid, %(bucket)s,
       %(owner)s::text || '/' || md5('media' || n)::uuid || '/photo-' || n || '.jpg',
       'photo-' || n || '.jpg', 'image/jpeg', 1000 + n %% 5000, encode(sha256(('bytes' || n)::bytea), 'hex'),
       now()
FROM generate_series(1, %(count)s) AS n
"""
_SYNTHETIC_OBJECTS = """
INSERT INTO storage.objects (bucket_id, name, owner_id, metadata, version)
SELECT %(bucket)s, %(owner)s::text || '/' || md5('media' || n)::uuid || '/photo-' || n || '.jpg', %(owner)s::text,
       jsonb_build_object('size', 1000 + n %% 5000, 'mimetype', 'image/jpeg',
                          'eTag', '"' || md5('bytes' || n) || '"', 'contentLength', 1000 + n %% 5000),
       md5('version' || n)
FROM generate_series(1, %(count)s) AS n
"""


def _client(url: str, key: str) -> Any:
    from supabase import create_client

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return create_client(url, key)


def _seed(dest: str, client: Any, bucket: str, objects: int, real: int) -> list[tuple[str, int, str]]:
    """``real`` objects through the API, the rest straight into both tables; returns the real ones."""
    files = client.storage.from_(bucket)
    uploaded = []
    rows = []
    for i in range(real):
        media_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench-storage-{i}"))
        name = f"real-{i}.jpg"
        data = b"\xff\xd8\xff\xe0" + hashlib.sha256(str(i).encode()).digest() * (1 + i % 64)
        path = f"{OWNER}/{media_id}/{name}"
        files.upload(path, data, {"content-type": "image/jpeg"})
        sha = hashlib.sha256(data).hexdigest()
        uploaded.append((path, len(data), sha))
        rows.append((media_id, OWNER, bucket, path, name, "image/jpeg", len(data), sha))
    with psycopg.connect(dest, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # no FK triggers for the synthetic owner
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO public.media (id, owner_id, bucket, object_path, file_name, mime_type, size_bytes, "
                "sha256, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now())",
                rows,
            )
        params = {"owner": OWNER, "bucket": bucket, "count": objects - real}
        conn.execute(_SYNTHETIC_MEDIA, params)
        conn.execute(_SYNTHETIC_OBJECTS, params)
        conn.execute("ANALYZE public.media")
        conn.execute("ANALYZE storage.objects")
    return uploaded


def step_storage_reconcile(base_uri: str, objects: int, *, real: int = 200, data_dir: Path | None = None) -> dict:
    """Build the world on server ``base_uri`` (database ``bench_storage``), measure, return the figures."""
    from include.migration.bootstrap import bootstrap
    from include.migration.media import catalog as media_catalog
    from include.migration.media.hooks import MediaSettings
    from include.migration.media.reconcile import RECONCILE_SAMPLE, StorageReconciliation, _hash_objects
    from include.supabase.storage import ensure_bucket, list_objects
    from local_runtime.standins.storage import StorageStandIn

    real = min(real, objects)
    with psycopg.connect(f"{base_uri}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(BENCH_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DB)))
    dest = f"{base_uri}/{BENCH_DB}"
    bootstrap(dest)
    settings = MediaSettings()
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        standin = StorageStandIn(data_dir or Path(tmp) / "storage", SECRET, catalog_dsn=dest).start()
        try:
            client = _client(standin.url, standin.service_key)
            ensure_bucket(client, settings.bucket, file_size_limit=settings.file_size_limit,
                          allowed_mime_types=list(settings.allowed_mime_types))
            started = time.perf_counter()
            sample = _seed(dest, client, settings.bucket, objects, real)
            seed_seconds = time.perf_counter() - started

            started = time.perf_counter()
            listing = list_objects(client, settings.bucket)
            listing_seconds = time.perf_counter() - started

            result = StorageReconciliation(settings.bucket, 0, 0)
            started = time.perf_counter()
            with psycopg.connect(dest) as conn:
                # Sample size 0: the synthetic objects have no bytes; the real ones are hashed below.
                ranges = media_catalog.compare_catalog(conn, settings, result, media_catalog._Sample(0, "bench"))
            compare_seconds = time.perf_counter() - started
            started = time.perf_counter()
            _hash_objects(client, settings, sample[:RECONCILE_SAMPLE], result)
            hash_seconds = time.perf_counter() - started
        finally:
            standin.stop()
    total = compare_seconds + hash_seconds
    per_listed = listing_seconds / max(len(listing), 1)
    return {
        "step": "storage_reconcile",
        "objects": objects,
        "rows": result.rows,
        "catalog_objects": result.objects,
        "clean": result.clean,
        "differences": len(result.missing) + len(result.orphans) + len(result.different),
        "key_ranges": ranges,
        "seed_seconds": round(seed_seconds, 2),
        "compare_seconds": round(compare_seconds, 3),
        "objects_per_second": round(objects / compare_seconds) if compare_seconds else None,
        "hashed": result.hashed,
        "hash_seconds": round(hash_seconds, 3),
        "seconds": round(total, 3),
        "target_seconds": TARGET_SECONDS if objects >= TARGET_OBJECTS else None,
        "target_met": (total < TARGET_SECONDS) if objects >= TARGET_OBJECTS else None,
        "listing_objects": len(listing),
        "listing_seconds": round(listing_seconds, 3),
        "listing_extrapolated_seconds": round(per_listed * objects, 1),
        "listing_to_catalog_ratio": round(per_listed * objects / total, 1) if total else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def report_lines(figures: dict) -> list[str]:
    target = (
        f"target < {TARGET_SECONDS:.0f} s: {'PASS' if figures['target_met'] else 'MISS'}"
        if figures["target_met"] is not None
        else f"target < {TARGET_SECONDS:.0f} s applies at {TARGET_OBJECTS:,} objects"
    )
    return [
        f"storage reconciliation, {figures['objects']:,} objects in storage.objects: "
        f"{figures['seconds']:.2f} s ({target}); {'CLEAN' if figures['clean'] else 'DIFFERENCES'}",
        f"  catalog comparison: {figures['compare_seconds']:.2f} s in {figures['key_ranges']} key ranges "
        f"({figures['objects_per_second']:,} objects/s)",
        f"  sampled download:   {figures['hash_seconds']:.2f} s for {figures['hashed']} objects (sha256 compared)",
        f"  API listing:        {figures['listing_seconds']:.2f} s for {figures['listing_objects']} objects, "
        f"~{figures['listing_extrapolated_seconds']:,.0f} s at {figures['objects']:,} (linear); "
        f"{figures['listing_to_catalog_ratio']}x the catalog path",
        f"  peak RSS {figures['peak_rss_mb']} MB; seeding took {figures['seed_seconds']:.1f} s (not measured)",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--objects", type=int, default=20_000)
    parser.add_argument("--real", type=int, default=200, help="objects uploaded through the API (and hashed)")
    parser.add_argument("--pg-uri", default=os.environ.get("BENCH_PG_URI"), help="server to use (no database)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    embedded = None
    base = args.pg_uri
    if not base:
        from local_runtime import postgres as local_pg
        from local_runtime.bench.server import _free_port

        embedded = Path(tempfile.mkdtemp(prefix="bench-storage-pg-")) / "pg"
        base = local_pg.start(embedded, _free_port(), fast=True)
    try:
        figures = step_storage_reconcile(base.rstrip("/"), args.objects, real=args.real)
    finally:
        if embedded is not None:
            from local_runtime import postgres as local_pg

            local_pg.stop(embedded)
    print("\n".join(report_lines(figures)))
    print(json.dumps(figures))
    sys.exit(0 if figures["clean"] else 1)


if __name__ == "__main__":
    main()
