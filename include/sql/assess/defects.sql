-- The defect profile of one entity: its transform (the pipeline's own SQL, bound to
-- every source row by extract.transform_query) counted per disposition and reason, and
-- per repair on the rows it loads, each with a few sample keys (the transform query,
-- the entity's key column and the sample count are bound by include/migration/assess.py).
WITH t AS MATERIALIZED (
    SELECT x.{key}::text AS k, x._disposition, x._reason, x._repairs FROM ({transform}) x
),
dispositions AS (
    SELECT _disposition, _reason, count(*) AS n FROM t GROUP BY 1, 2
),
repairs AS (
    SELECT r, count(*) AS n FROM t, unnest(t._repairs) r WHERE t._disposition = 'loaded' GROUP BY r
)
SELECT 'disposition' AS kind, d._disposition AS disposition, d._reason AS reason, d.n AS rows,
       CASE WHEN d._disposition = 'loaded' AND d._reason = 'ok' THEN ARRAY[]::text[]
            ELSE ARRAY(SELECT t.k FROM t WHERE t._disposition = d._disposition AND t._reason = d._reason
                       ORDER BY t.k LIMIT {samples}) END AS samples
FROM dispositions d
UNION ALL
SELECT 'repair', 'loaded', r.r, r.n,
       ARRAY(SELECT t.k FROM t WHERE t._disposition = 'loaded' AND r.r = ANY (t._repairs)
             ORDER BY t.k LIMIT {samples})
FROM repairs r
ORDER BY 1, 2, 3;
