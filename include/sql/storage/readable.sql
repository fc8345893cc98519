-- Does this database hold Supabase Storage's catalog, readable by us? True on
-- a Supabase project (the postgres role reads storage.objects) and where the
-- local stand-in keeps it; false on a destination without it, where the
-- Storage checks fall back to the HTTP listing.
SELECT to_regclass('storage.objects') IS NOT NULL
   AND (SELECT count(*) = 4 FROM pg_catalog.pg_attribute
         WHERE attrelid = to_regclass('storage.objects')
           AND attname IN ('bucket_id', 'name', 'metadata', 'version') AND NOT attisdropped)
   AND has_table_privilege('storage.objects', 'SELECT')
