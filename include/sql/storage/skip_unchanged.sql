-- The rerun's "already there and identical?" check, for every loadable staged
-- file at once, without a request to Storage: an object is taken as holding
-- the staged bytes when its storage.objects row is the very version the
-- migration downloaded and hashed earlier (migration.media_object_proofs:
-- same id, version, eTag, updated_at) with the staged SHA-256 and size, and
-- its metadata still says the staged size and MIME type. Recorded as this
-- run's 'skipped_identical' outcome, as an HTTP check would be.
INSERT INTO migration.media_uploads (run_id, object_path, outcome, detail, bytes)
SELECT %(run_id)s, s.object_path, 'skipped_identical',
       'already in Storage: storage.objects shows the version whose sha256 run ' || p.run_id || ' verified',
       s.size_bytes
FROM {stage} s
JOIN storage.objects o ON o.bucket_id = %(bucket)s AND o.name = s.object_path
JOIN migration.media_object_proofs p ON p.bucket = %(bucket)s AND p.object_path = s.object_path
WHERE s._disposition = 'loaded'
  AND p.sha256 = s.sha256 AND p.size_bytes = s.size_bytes
  AND o.id = p.object_id AND o.version IS NOT DISTINCT FROM p.version
  AND o.updated_at IS NOT DISTINCT FROM p.object_updated_at
  AND o.metadata ->> 'eTag' IS NOT DISTINCT FROM p.etag
  AND (o.metadata ->> 'size')::bigint = s.size_bytes
  AND o.metadata ->> 'mimetype' = s.mime_type
  AND NOT EXISTS (SELECT 1 FROM migration.media_uploads u
                  WHERE u.run_id = %(run_id)s AND u.object_path = s.object_path)
