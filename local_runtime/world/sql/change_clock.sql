-- The instant the "app kept running" changes happen (the caller's 'now', or
-- the server's clock in UTC), and the world's size.
-- The clock never goes backwards past the data already there: a change that
-- looked older than existing rows would hide from updated_at watermarks.
SELECT greatest(
           coalesce(%(now)s::timestamp, (now() AT TIME ZONE 'UTC')::timestamp),
           (SELECT max(greatest(created_at, updated_at, deleted_at)) FROM users) + interval '1 millisecond',
           (SELECT max(greatest(created_at, updated_at)) FROM agents) + interval '1 millisecond',
           (SELECT max(greatest(created_at, updated_at, deleted_at)) FROM conversations) + interval '1 millisecond',
           (SELECT max(created_at) FROM messages) + interval '1 millisecond',
           (SELECT max(created_at) FROM media_assets) + interval '1 millisecond'
       ) AS changed_at,
       (SELECT coalesce(max(id), 0) FROM messages) AS max_message_id,
       (SELECT count(*) FROM users) AS users,
       (SELECT count(*) FROM agents) AS agents,
       (SELECT count(*) FROM conversations) AS conversations,
       (SELECT count(*) FROM messages) AS messages,
       (SELECT count(*) FROM media_assets) AS media_assets
