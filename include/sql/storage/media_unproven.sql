-- public.media rows whose object, at the version storage.objects shows now,
-- was never downloaded and hashed by the migration with the row's SHA-256
-- (migration.media_object_proofs). Zero means every object was verified by
-- its bytes at its current version; the count and a few paths say which not.
SELECT count(*), (array_agg(m.object_path ORDER BY m.object_path))[1:5]
FROM public.media m
LEFT JOIN storage.objects o ON o.bucket_id = m.bucket AND o.name = m.object_path
LEFT JOIN migration.media_object_proofs p ON p.bucket = m.bucket AND p.object_path = m.object_path
WHERE o.id IS NULL OR p.object_path IS NULL OR p.sha256 <> m.sha256 OR p.size_bytes <> m.size_bytes
   OR o.id <> p.object_id OR o.version IS DISTINCT FROM p.version
   OR o.updated_at IS DISTINCT FROM p.object_updated_at
