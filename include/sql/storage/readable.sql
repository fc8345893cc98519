-- Does this database hold Supabase Storage's catalog, readable by us? True on
-- a Supabase project (the postgres role reads storage.objects) and where the
-- local stand-in keeps it; false on a destination without it, where the
-- Storage checks fall back to the HTTP listing.
-- storage.objects has row level security on and no policy for us: a role
-- that RLS applies to would see an empty table, every object "missing". So
-- it counts as readable only for a role RLS does not filter (superuser,
-- BYPASSRLS, as Supabase's postgres role is, or the table's owner).
SELECT to_regclass('storage.objects') IS NOT NULL
   AND (SELECT count(*) = 4 FROM pg_catalog.pg_attribute
         WHERE attrelid = to_regclass('storage.objects')
           AND attname IN ('bucket_id', 'name', 'metadata', 'version') AND NOT attisdropped)
   AND has_table_privilege('storage.objects', 'SELECT')
   AND (SELECT NOT c.relrowsecurity OR r.rolsuper OR r.rolbypassrls
               OR (pg_has_role(c.relowner, 'USAGE') AND NOT c.relforcerowsecurity)
          FROM pg_catalog.pg_class c, pg_catalog.pg_roles r
         WHERE c.oid = to_regclass('storage.objects') AND r.rolname = current_user)
