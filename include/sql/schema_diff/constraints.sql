-- Primary keys, unique, foreign key, check and exclusion constraints of the
-- tables of the given schemas, with their columns in key order.
--
-- NOT NULL is left out: PostgreSQL 18 stores it as a constraint (contype 'n')
-- too, but nullability is read per column, the same way on every version.
-- Parameter: schemas (text[]).
SELECT n.nspname AS schema_name,
       c.relname AS table_name,
       k.conname AS constraint_name,
       k.contype::text AS kind,
       ARRAY(SELECT a.attname::text
             FROM unnest(k.conkey) WITH ORDINALITY AS u (attnum, ord)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.attnum
             ORDER BY u.ord) AS columns,
       CASE WHEN k.confrelid <> 0 THEN format('%%s.%%s', rn.nspname, rc.relname) END AS ref_table,
       ARRAY(SELECT a.attname::text
             FROM unnest(k.confkey) WITH ORDINALITY AS u (attnum, ord)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.attnum
             ORDER BY u.ord) AS ref_columns,
       pg_catalog.pg_get_constraintdef(k.oid) AS definition
FROM pg_catalog.pg_constraint k
JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_class rc ON rc.oid = k.confrelid
LEFT JOIN pg_catalog.pg_namespace rn ON rn.oid = rc.relnamespace
WHERE n.nspname = ANY(%(schemas)s)
  AND k.contype IN ('p', 'u', 'f', 'c', 'x')
  -- Partitions are reported through their parent (tables.sql).
  AND NOT c.relispartition
ORDER BY 1, 2, 3;
