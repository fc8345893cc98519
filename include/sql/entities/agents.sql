-- agents: orphan owner quarantined; null owner stays null (built-in agent);
-- malformed tools JSON quarantined; owner merged -> re-pointed to survivor;
-- owner soft-deleted -> excluded with it; owner quarantined -> quarantined.
-- temperature NaN, infinite, outside 0..2 (what the model APIs accept; the
-- destination's GX suite checks the same range) or non-zero but too small for
-- a real (the cast would fail the whole query) -> null, the model's default,
-- repaired (temperature_invalid_set_null).
WITH {fates}
SELECT
    a.id,
    coalesce(af.owner_survivor_id, a.owner_id) AS owner_id,
    a.name,
    a.description,
    a.system_prompt,
    a.model,
    -- NaN compares above every number in PostgreSQL, so BETWEEN is false for it.
    CASE WHEN a.temperature = 0 OR a.temperature BETWEEN 1e-30 AND 2 THEN a.temperature::real END AS temperature,
    CASE WHEN af.problem IS NULL THEN coalesce(a.tools::jsonb, jsonb_build_array()) END AS tools,
    a.is_public,
    a.created_at AT TIME ZONE 'UTC' AS created_at,
    ({effective_updated_at(a)}) AT TIME ZONE 'UTC' AS updated_at,
    coalesce(split_part(af.problem, ':', 1), 'loaded') AS _disposition,
    coalesce(split_part(af.problem, ':', 2), 'ok') AS _reason,
    array_remove(ARRAY[
        CASE WHEN af.owner_survivor_id <> a.owner_id THEN 'owner_repointed_to_survivor' END,
        CASE WHEN a.updated_at IS NULL OR a.updated_at < a.created_at THEN 'updated_at_from_created_at' END,
        CASE WHEN a.temperature IS NOT NULL AND NOT (a.temperature = 0 OR a.temperature BETWEEN 1e-30 AND 2)
             THEN 'temperature_invalid_set_null' END
    ], NULL) AS _repairs,
    NULL::text AS _maps_to,
    af.change_ts AS _change_ts,
    CASE WHEN af.problem IS NOT NULL THEN to_jsonb(a) END AS _source
FROM {src_agents} a
JOIN agent_fate af ON af.id = a.id
WHERE {scope}
