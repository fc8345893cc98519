-- Every column of the relations of the given schemas: its type as
-- format_type() prints it (the spelling entities.py uses), nullability,
-- default (or generation expression) and whether it can be written.
-- Parameter: schemas (text[]).
SELECT n.nspname                                    AS schema_name,
       c.relname                                    AS table_name,
       a.attname                                    AS column_name,
       pg_catalog.format_type(a.atttypid, a.atttypmod) AS data_type,
       a.attnotnull                                 AS not_null,
       pg_catalog.pg_get_expr(d.adbin, d.adrelid)   AS default_expr,
       a.attgenerated <> ''                         AS generated,
       -- 'a' = GENERATED ALWAYS AS IDENTITY: an INSERT naming it is refused.
       a.attidentity::text                          AS identity
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = ANY(%(schemas)s)
  AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND NOT c.relispartition
  AND a.attnum > 0
  AND NOT a.attisdropped
ORDER BY n.nspname, c.relname, a.attnum;
