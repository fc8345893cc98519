-- messages: conversation missing -> quarantined; conversation quarantined ->
-- quarantined; conversation excluded -> excluded; role 'bot' -> 'assistant';
-- any other unknown role -> quarantined; metadata null -> an empty object; malformed (or
-- not a JSON object) -> loaded as an object with key legacy_raw holding the text, repaired.
WITH {fates}
SELECT
    m.id,
    m.conversation_id,
    CASE WHEN m.role = 'bot' THEN 'assistant' ELSE m.role END AS role,
    m.content,
    m.token_count,
    m.model,
    CASE WHEN m.metadata IS NULL THEN jsonb_build_object()
         WHEN jsonb_typeof(j.parsed) = 'object' THEN j.parsed
         ELSE jsonb_build_object('legacy_raw', m.metadata) END AS metadata,
    m.created_at AT TIME ZONE 'UTC' AS created_at,
    CASE WHEN cf.id IS NULL THEN 'quarantined'
         WHEN cf.problem IS NOT NULL THEN split_part(cf.problem, ':', 1)
         WHEN m.role NOT IN ('user', 'assistant', 'system', 'tool', 'bot') THEN 'quarantined'
         ELSE 'loaded' END AS _disposition,
    CASE WHEN cf.id IS NULL THEN 'conversation_missing'
         WHEN cf.problem LIKE 'quarantined:%' THEN 'conversation_quarantined'
         WHEN cf.problem IS NOT NULL THEN 'conversation_excluded'
         WHEN m.role NOT IN ('user', 'assistant', 'system', 'tool', 'bot') THEN 'unknown_role'
         ELSE 'ok' END AS _reason,
    array_remove(ARRAY[
        CASE WHEN m.role = 'bot' THEN 'role_bot_to_assistant' END,
        CASE WHEN m.metadata IS NOT NULL AND jsonb_typeof(j.parsed) IS DISTINCT FROM 'object'
             THEN 'metadata_kept_as_legacy_raw' END
    ], NULL) AS _repairs,
    NULL::text AS _maps_to,
    greatest(m.created_at, cf.change_ts) AS _change_ts,
    CASE WHEN cf.id IS NULL OR cf.problem IS NOT NULL
              OR m.role NOT IN ('user', 'assistant', 'system', 'tool', 'bot')
         THEN to_jsonb(m) END AS _source
FROM {src_messages} m
-- Parse the JSON once per row (OFFSET 0 keeps the planner from inlining it
-- into every expression that uses it).
CROSS JOIN LATERAL (
    SELECT CASE WHEN pg_input_is_valid(m.metadata, 'jsonb') THEN m.metadata::jsonb END AS parsed OFFSET 0
) j
LEFT JOIN conversation_fate cf ON cf.id = m.conversation_id
WHERE {scope}
