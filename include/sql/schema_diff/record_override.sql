-- An operator's acceptance of one blocking difference for one run. A retried
-- task passes the same acceptance again; it is recorded once.
-- Parameters: entity, difference_id, accepted_by, reason, run_id.
INSERT INTO migration.schema_overrides (entity, difference_id, accepted_by, reason, run_id)
SELECT %(entity)s, %(difference_id)s, %(accepted_by)s, %(reason)s, %(run_id)s
WHERE NOT EXISTS (
    SELECT 1
    FROM migration.schema_overrides o
    WHERE o.entity = %(entity)s
      AND o.difference_id = %(difference_id)s
      AND o.run_id = %(run_id)s
);
