-- One legacy table's largest rows (as stored, TOAST-compressed values counted compressed).
SELECT t.{key}::text AS key, pg_column_size(t.*) AS bytes
FROM {table} t
ORDER BY pg_column_size(t.*) DESC, t.{key}
LIMIT %(limit)s;
