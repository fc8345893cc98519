-- Indexes of the tables of the given schemas that do not back a primary key,
-- unique or exclusion constraint (those are read as constraints). A foreign
-- key also points at an index (the referenced side's), hence the contype
-- filter. Key columns come from pg_get_indexdef(), so an expression index
-- shows its expression.
-- Parameter: schemas (text[]).
SELECT n.nspname AS schema_name,
       t.relname AS table_name,
       i.relname AS index_name,
       x.indisunique AS is_unique,
       ARRAY(SELECT pg_catalog.pg_get_indexdef(x.indexrelid, k, true)
             FROM generate_series(1, x.indnkeyatts) AS k
             ORDER BY k) AS columns,
       x.indpred IS NOT NULL AS partial,
       pg_catalog.pg_get_indexdef(x.indexrelid) AS definition
FROM pg_catalog.pg_index x
JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
JOIN pg_catalog.pg_class t ON t.oid = x.indrelid
JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = ANY(%(schemas)s)
  AND t.relkind IN ('r', 'p')
  AND NOT t.relispartition
  AND NOT EXISTS (
      SELECT 1
      FROM pg_catalog.pg_constraint k
      WHERE k.conindid = x.indexrelid
        AND k.contype IN ('p', 'u', 'x')
  )
ORDER BY 1, 2, 3;
