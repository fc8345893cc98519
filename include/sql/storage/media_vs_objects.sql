-- One key range: every public.media row and every object of the bucket whose
-- key falls in it, side by side (a missing side is NULL). Folder placeholders
-- the dashboard creates are not media. {media_range} / {object_range} bound
-- object_path / name to the range, so each side is read through its index.
SELECT m.id::text, m.owner_id::text, m.file_name, m.bucket, m.object_path, m.size_bytes, m.sha256,
       m.mime_type, o.name, (o.metadata ->> 'size')::bigint, o.metadata ->> 'mimetype'
FROM (SELECT * FROM public.media WHERE {media_range}) m
FULL JOIN (
    SELECT name, metadata FROM storage.objects
    WHERE bucket_id = {bucket} AND {object_range} AND name NOT LIKE '%.emptyFolderPlaceholder'
) o ON o.name = m.object_path
