-- messages: conversation missing -> quarantined; conversation quarantined ->
-- quarantined; conversation excluded -> excluded; role 'bot' -> 'assistant';
-- any other unknown role -> quarantined; created_at before 1970 or more than
-- a day ahead -> quarantined (implausible_timestamp); metadata null -> an
-- empty object; malformed (or not a JSON object, or with a \u0000 escape
-- jsonb refuses, or nested deeper than 100 levels) -> loaded as an object
-- with key legacy_raw holding the text, repaired; a negative token_count (a
-- count cannot be; the GX suite wants >= 0) -> null, unknown, repaired.
WITH {fates}
SELECT
    m.id,
    m.conversation_id,
    CASE WHEN m.role = 'bot' THEN 'assistant' ELSE m.role END AS role,
    m.content,
    CASE WHEN m.token_count >= 0 THEN m.token_count END AS token_count,
    m.model,
    CASE WHEN m.metadata IS NULL THEN jsonb_build_object()
         WHEN jsonb_typeof(m._parsed) = 'object' THEN m._parsed
         ELSE jsonb_build_object('legacy_raw', m.metadata) END AS metadata,
    m.created_at AT TIME ZONE 'UTC' AS created_at,
    CASE WHEN cf.id IS NULL THEN 'quarantined'
         WHEN cf.problem IS NOT NULL THEN split_part(cf.problem, ':', 1)
         WHEN m.role NOT IN ('user', 'assistant', 'system', 'tool', 'bot') THEN 'quarantined'
         WHEN m._implausible_ts THEN 'quarantined'
         ELSE 'loaded' END AS _disposition,
    CASE WHEN cf.id IS NULL THEN 'conversation_missing'
         WHEN cf.problem LIKE 'quarantined:%' THEN 'conversation_quarantined'
         WHEN cf.problem IS NOT NULL THEN 'conversation_excluded'
         WHEN m.role NOT IN ('user', 'assistant', 'system', 'tool', 'bot') THEN 'unknown_role'
         WHEN m._implausible_ts THEN 'implausible_timestamp'
         ELSE 'ok' END AS _reason,
    array_remove(ARRAY[
        CASE WHEN m.role = 'bot' THEN 'role_bot_to_assistant' END,
        CASE WHEN m.metadata IS NOT NULL AND jsonb_typeof(m._parsed) IS DISTINCT FROM 'object'
             THEN 'metadata_kept_as_legacy_raw' END,
        CASE WHEN m.token_count < 0 THEN 'token_count_negative_set_null' END
    ], NULL) AS _repairs,
    NULL::text AS _maps_to,
    greatest(CASE WHEN NOT m._implausible_ts THEN m.created_at END, cf.change_ts) AS _change_ts,
    CASE WHEN cf.id IS NULL OR cf.problem IS NOT NULL
              OR m.role NOT IN ('user', 'assistant', 'system', 'tool', 'bot') OR m._implausible_ts
         THEN to_jsonb(m) - '_parsed' - '_implausible_ts' END AS _source
FROM (
    -- The JSON is parsed once per row, here (OFFSET 0 keeps the planner from
    -- inlining the subquery into every expression that uses it), and the scope
    -- filters inside, where an index can serve it. Its depth is measured first,
    -- without parsing: PostgreSQL's JSON parser recurses, and past its stack
    -- limit (~10^5 levels) it fails the whole query, not the row. Only a text
    -- with more than 100 opening brackets is scanned (string literals removed,
    -- then the running bracket count: _json_too_deep.sql, shared with agents'
    -- tools). Braces are doubled for psycopg's sql.SQL.
    -- (Not a LATERAL subquery: the planner put a Memoize node keyed on the
    -- metadata text over it, nearly all misses, a third of the query's time.)
    SELECT m.*,
           CASE WHEN {json_too_deep(m.metadata)}
                THEN NULL
                WHEN pg_input_is_valid(m.metadata, 'jsonb') THEN m.metadata::jsonb END AS _parsed,
           m.created_at < (SELECT earliest FROM clock) OR m.created_at > (SELECT latest FROM clock) AS _implausible_ts
    FROM {src_messages} m
    WHERE {scope}
    OFFSET 0
) m
LEFT JOIN conversation_fate cf ON cf.id = m.conversation_id
