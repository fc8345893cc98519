-- The newest schema check and its age by the destination's clock (the same
-- clock that stamped it, so a skewed worker clock cannot open the gate).
SELECT check_id,
       checked_at,
       verdict,
       blocked,
       report -> 'differences' AS differences,
       extract(epoch FROM now() - checked_at) / 3600.0 AS age_hours
FROM migration.schema_checks
ORDER BY checked_at DESC, check_id DESC
LIMIT 1;
