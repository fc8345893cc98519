-- One legacy table's volume: rows, bytes on disk (with indexes and TOAST), the widest row.
-- The table is bound by include/migration/assess.py, its name again for the size functions.
SELECT count(*) AS rows,
       pg_total_relation_size(%(regclass)s::regclass) AS total_bytes,
       pg_relation_size(%(regclass)s::regclass) AS heap_bytes,
       coalesce(round(avg(pg_column_size(t.*))), 0)::bigint AS avg_row_bytes,
       coalesce(max(pg_column_size(t.*)), 0)::bigint AS max_row_bytes
FROM {table} t;
