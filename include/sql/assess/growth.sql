-- New rows per day of one legacy table over the %(days)s days up to its newest row
-- (no later than now): the growth the nightly sync has to keep up with.
WITH anchor AS (
    SELECT least(max(created_at), (now() AT TIME ZONE 'UTC')::timestamp) AS newest FROM {table}
)
SELECT date_trunc('day', t.created_at)::date AS day, count(*) AS rows
FROM {table} t, anchor a
WHERE t.created_at > a.newest - make_interval(days => %(days)s) AND t.created_at <= a.newest
GROUP BY 1
ORDER BY 1;
