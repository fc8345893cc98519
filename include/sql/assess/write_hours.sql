-- Writes per hour of the day (UTC), from every change timestamp the legacy tables keep
-- (created, updated, soft-deleted), over the %(days)s days up to the newest one.
WITH changes AS (
    SELECT created_at AS ts FROM {users}
    UNION ALL SELECT updated_at FROM {users} WHERE updated_at IS NOT NULL
    UNION ALL SELECT deleted_at FROM {users} WHERE deleted_at IS NOT NULL
    UNION ALL SELECT created_at FROM {agents}
    UNION ALL SELECT updated_at FROM {agents} WHERE updated_at IS NOT NULL
    UNION ALL SELECT created_at FROM {conversations}
    UNION ALL SELECT updated_at FROM {conversations} WHERE updated_at IS NOT NULL
    UNION ALL SELECT deleted_at FROM {conversations} WHERE deleted_at IS NOT NULL
    UNION ALL SELECT created_at FROM {messages}
    UNION ALL SELECT created_at FROM {media_assets}
),
anchor AS (
    SELECT least(max(ts), (now() AT TIME ZONE 'UTC')::timestamp) AS newest FROM changes
)
SELECT extract(hour FROM c.ts)::int AS hour, count(*) AS writes
FROM changes c, anchor a
WHERE c.ts > a.newest - make_interval(days => %(days)s) AND c.ts <= a.newest
GROUP BY 1
ORDER BY 1;
