-- Upper bounds of the key ranges the media checks read storage.objects by:
-- every %(step)s-th object_path of public.media, in the database's order (the
-- unique index on object_path serves it). Ranges are (previous bound, bound],
-- the first open below, one more open above the last bound.
SELECT object_path
FROM (SELECT object_path, row_number() OVER (ORDER BY object_path) AS n FROM public.media) numbered
WHERE n %% %(step)s = 0
ORDER BY object_path
