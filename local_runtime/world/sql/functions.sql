-- Deterministic pseudo-random helpers for the legacy world generator.
-- They live in pg_temp, so they vanish with the session and the legacy
-- database keeps only the application's own tables. All are SQL functions
-- the planner inlines, which keeps generate_series inserts fast.

-- A non-negative pseudo-random bigint for row n of a stream, fixed by the
-- seed. hashint8extended is the hash behind hash partitioning, so its output
-- does not depend on platform or session.
CREATE FUNCTION pg_temp.h(seed bigint, stream integer, n bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT hashint8extended(n, seed * 1000 + stream) & 9223372036854775807 $$;

-- The same for a uuid key.
CREATE FUNCTION pg_temp.hu(seed bigint, stream integer, id uuid) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT uuid_hash_extended(id, seed * 1000 + stream) & 9223372036854775807 $$;

-- The id of row n of a kind; the Python side computes the same value
-- (md5 of 'seed:kind:n'), so it can name planted rows without asking.
CREATE FUNCTION pg_temp.uid(seed bigint, kind text, n bigint) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT md5(seed::text || ':' || kind || ':' || n::text)::uuid $$;

-- A timestamp in [lo, hi), picked by r, with microsecond resolution.
-- date_part (double) rather than extract (numeric): numeric math is slow per row.
CREATE FUNCTION pg_temp.ts_between(r bigint, lo timestamp, hi timestamp) RETURNS timestamp
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT lo + mod(r, greatest(1, (date_part('epoch', hi - lo) * 1000000)::bigint))
                  * interval '1 microsecond' $$;

-- When user n signed up: from the world's first day (epoch) to three months
-- before its horizon. Children are created after their parent, so they
-- recompute this instead of joining users.
CREATE FUNCTION pg_temp.user_created(seed bigint, n bigint, epoch timestamp, horizon timestamp)
RETURNS timestamp
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT pg_temp.ts_between(pg_temp.h(seed, 1, n), epoch, horizon - interval '91 days') $$;

-- A stretch of ASCII prose of len characters cut from the corpus, starting
-- after the first space so it does not begin mid-word. Slicing bytea is
-- O(1) where substr() on UTF-8 text scans from the start, and
-- encode(..., 'escape') is the identity on ASCII without backslashes, much
-- cheaper than convert_from()'s validation.
CREATE FUNCTION pg_temp.prose(corpus bytea, r bigint, len integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT encode(substring(corpus
          FROM 1 + mod(r, length(corpus) - len - 64)::integer
               + position('\x20'::bytea IN substring(corpus FROM 1 + mod(r, length(corpus) - len - 64)::integer FOR 48))
          FOR len), 'escape') $$;

-- The ways the legacy sign-up form let a bad email through.
CREATE FUNCTION pg_temp.break_email(email text, k bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE mod(k, 5)
          WHEN 0 THEN replace(email, '@', '.')                     -- no @
          WHEN 1 THEN replace(email, '@', '@mail@')                -- two @
          WHEN 2 THEN overlay(email PLACING ' ' FROM 3 FOR 0)      -- a space inside
          WHEN 3 THEN ''                                           -- empty
          ELSE split_part(email, '@', 1) || '@'                    -- no domain
       END $$;

-- The same address as typed again by the same person: only case or
-- surrounding spaces differ, so lower(btrim()) makes them collide.
CREATE FUNCTION pg_temp.email_variant(email text, code integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE code
          WHEN 0 THEN email
          WHEN 1 THEN upper(email)
          WHEN 2 THEN upper(left(email, 1)) || substr(email, 2)
          WHEN 3 THEN ' ' || email || ' '
          WHEN 4 THEN split_part(email, '@', 1) || '@' || upper(split_part(email, '@', 2))
          ELSE '  ' || initcap(email)
       END $$;

-- Whether text parses as JSON. Written with an exception block rather than
-- pg_input_is_valid() so it also runs on PostgreSQL before 16.
CREATE FUNCTION pg_temp.is_json(doc text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    PERFORM doc::jsonb;
    RETURN true;
EXCEPTION WHEN others THEN
    RETURN false;
END $$;
