-- users: the legacy rows in scope, transformed, each with its disposition.
-- Rules (README "Transform rules"): email trimmed and lower-cased, invalid
-- email quarantined; name = trimmed display name, else the email's local
-- part; updated_at = updated_at, or created_at when null or earlier; naive
-- timestamps are UTC; soft-deleted users excluded; duplicate emails merged
-- into the most recently updated account; created_at before 1970 or
-- created_at / updated_at more than a day ahead quarantined (_fates.sql).
WITH {fates}
SELECT
    f.id,
    f.email_norm AS email,
    coalesce(nullif(btrim(f.display_name), ''), split_part(f.email_norm, '@', 1)) AS name,
    f.avatar_url,
    f.created_at AT TIME ZONE 'UTC' AS created_at,
    f.effective_updated_at AT TIME ZONE 'UTC' AS updated_at,
    f.password_hash,
    CASE WHEN f.problem = 'soft_deleted' THEN 'excluded'
         WHEN f.problem IS NOT NULL THEN 'quarantined'
         WHEN f.survivor_id <> f.id THEN 'excluded'
         ELSE 'loaded' END AS _disposition,
    CASE WHEN f.problem IS NOT NULL THEN f.problem
         WHEN f.survivor_id <> f.id THEN 'merged_duplicate'
         ELSE 'ok' END AS _reason,
    array_remove(ARRAY[
        CASE WHEN nullif(btrim(f.display_name), '') IS NULL THEN 'name_from_email' END,
        CASE WHEN f.updated_at IS NULL OR f.updated_at < f.created_at THEN 'updated_at_from_created_at' END
    ], NULL) AS _repairs,
    CASE WHEN f.survivor_id <> f.id THEN f.survivor_id::text END AS _maps_to,
    f.change_ts AS _change_ts,
    CASE WHEN f.problem IS NOT NULL OR f.survivor_id <> f.id
         THEN to_jsonb(u) END AS _source
FROM user_fate f
JOIN {src_users} u ON u.id = f.id
WHERE {scope}
