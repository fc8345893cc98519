-- media: owner never existed -> quarantined; owner quarantined -> quarantined;
-- owner soft-deleted -> excluded; owner merged -> re-pointed to the survivor;
-- a conversation or message reference whose target does not migrate (missing,
-- excluded or quarantined; for a message: its conversation's fate and its
-- role) -> null, counted as repaired: the file stays with its owner.
-- bucket and object_path are NULL here and mime_type, size_bytes and sha256
-- carry the legacy values: media.on_transform reads each loadable row's file
-- and fills them in from the bytes (or quarantines the row).
WITH {fates}
SELECT
    ma.id,
    coalesce(uf.survivor_id, ma.owner_id) AS owner_id,
    CASE WHEN cf.id IS NOT NULL AND cf.problem IS NULL THEN ma.conversation_id END AS conversation_id,
    CASE WHEN msg.id IS NOT NULL AND mcf.id IS NOT NULL AND mcf.problem IS NULL
              AND msg.role IN ('user', 'assistant', 'system', 'tool', 'bot')
         THEN ma.message_id END AS message_id,
    NULL::text AS bucket,
    NULL::text AS object_path,
    ma.file_name,
    ma.mime_type,
    ma.size_bytes,
    ma.sha256,
    ma.created_at AT TIME ZONE 'UTC' AS created_at,
    ma.storage_key,
    CASE WHEN uf.id IS NULL OR uf.problem IN ('invalid_email', 'implausible_timestamp') THEN 'quarantined'
         WHEN uf.problem = 'soft_deleted' THEN 'excluded'
         ELSE 'loaded' END AS _disposition,
    CASE WHEN uf.id IS NULL THEN 'owner_missing'
         WHEN uf.problem IN ('invalid_email', 'implausible_timestamp') THEN 'owner_quarantined'
         WHEN uf.problem = 'soft_deleted' THEN 'owner_excluded'
         ELSE 'ok' END AS _reason,
    array_remove(ARRAY[
        CASE WHEN uf.survivor_id <> ma.owner_id THEN 'owner_repointed_to_survivor' END,
        CASE WHEN ma.conversation_id IS NOT NULL AND (cf.id IS NULL OR cf.problem IS NOT NULL)
             THEN 'conversation_dangling_set_null' END,
        CASE WHEN ma.message_id IS NOT NULL AND NOT (
                  msg.id IS NOT NULL AND mcf.id IS NOT NULL AND mcf.problem IS NULL
                  AND msg.role IN ('user', 'assistant', 'system', 'tool', 'bot'))
             THEN 'message_dangling_set_null' END
    ], NULL) AS _repairs,
    NULL::text AS _maps_to,
    greatest(ma.created_at, uf.change_ts, cf.change_ts, mcf.change_ts) AS _change_ts,
    CASE WHEN uf.id IS NULL OR uf.problem IS NOT NULL THEN to_jsonb(ma) END AS _source
FROM {src_media_assets} ma
LEFT JOIN user_fate uf ON uf.id = ma.owner_id
LEFT JOIN conversation_fate cf ON cf.id = ma.conversation_id
LEFT JOIN {src_messages} msg ON msg.id = ma.message_id
LEFT JOIN conversation_fate mcf ON mcf.id = msg.conversation_id
WHERE {scope}
