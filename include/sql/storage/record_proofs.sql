-- After an upload pass: each object this run verified by downloading it
-- (a new upload read back, or an existing object found identical by its
-- SHA-256) is remembered with the storage.objects version it had, so the next
-- run can trust that version without a request (skip_unchanged.sql). The
-- version is read after the verification; an overwrite by another writer in
-- between would be taken for the verified bytes, which is why the
-- reconciliation still downloads a sample.
INSERT INTO migration.media_object_proofs AS p (bucket, object_path, sha256, size_bytes, mime_type, object_id,
                                                version, etag, object_updated_at, run_id)
SELECT %(bucket)s, s.object_path, s.sha256, s.size_bytes, s.mime_type, o.id, o.version,
       o.metadata ->> 'eTag', o.updated_at, %(run_id)s
FROM {stage} s
JOIN storage.objects o ON o.bucket_id = %(bucket)s AND o.name = s.object_path
WHERE s._disposition = 'loaded'
  AND (o.metadata ->> 'size')::bigint = s.size_bytes
  AND EXISTS (SELECT 1 FROM migration.media_uploads u
              WHERE u.run_id = %(run_id)s AND u.object_path = s.object_path
                AND (u.outcome = 'uploaded' AND u.detail LIKE '%%verified size and sha256%%'
                     OR u.outcome = 'skipped_identical' AND u.detail LIKE 'already in Storage with the same sha256%%'))
ON CONFLICT (bucket, object_path) DO UPDATE SET sha256 = EXCLUDED.sha256, size_bytes = EXCLUDED.size_bytes,
    mime_type = EXCLUDED.mime_type, object_id = EXCLUDED.object_id, version = EXCLUDED.version,
    etag = EXCLUDED.etag, object_updated_at = EXCLUDED.object_updated_at, run_id = EXCLUDED.run_id,
    proven_at = now()
