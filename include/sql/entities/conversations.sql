-- conversations: user never existed -> quarantined; user quarantined ->
-- quarantined; user excluded (or the conversation soft-deleted) -> excluded;
-- user merged -> re-pointed; dangling agent_id (missing, or an agent that
-- does not migrate) -> null, counted as repaired; null or blank title ->
-- 'Untitled conversation'.
WITH {fates}
SELECT
    c.id,
    coalesce(uf.survivor_id, c.user_id) AS user_id,
    CASE WHEN af.id IS NOT NULL AND af.problem IS NULL THEN c.agent_id END AS agent_id,
    coalesce(nullif(btrim(c.title), ''), 'Untitled conversation') AS title,
    c.created_at AT TIME ZONE 'UTC' AS created_at,
    ({effective_updated_at(c)}) AT TIME ZONE 'UTC' AS updated_at,
    coalesce(split_part(cf.problem, ':', 1), 'loaded') AS _disposition,
    coalesce(split_part(cf.problem, ':', 2), 'ok') AS _reason,
    array_remove(ARRAY[
        CASE WHEN c.agent_id IS NOT NULL AND (af.id IS NULL OR af.problem IS NOT NULL)
             THEN 'agent_dangling_set_null' END,
        CASE WHEN nullif(btrim(c.title), '') IS NULL THEN 'title_defaulted' END,
        CASE WHEN uf.survivor_id <> c.user_id THEN 'user_repointed_to_survivor' END
    ], NULL) AS _repairs,
    NULL::text AS _maps_to,
    greatest(cf.change_ts, af.change_ts) AS _change_ts,
    CASE WHEN cf.problem IS NOT NULL THEN to_jsonb(c) END AS _source
FROM {src_conversations} c
JOIN conversation_fate cf ON cf.id = c.id
LEFT JOIN user_fate uf ON uf.id = c.user_id
LEFT JOIN agent_fate af ON af.id = c.agent_id
WHERE {scope}
