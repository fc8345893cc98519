-- Shared CTEs: the fate of every legacy user, agent and conversation.
-- A pure function of the legacy database, so every entity decides the same
-- way about a parent, and the reconciliation can recompute it at any time.
--
-- user_fate.problem: NULL (migrates), 'soft_deleted' (excluded) or
--   'invalid_email' (quarantined). Among migrating users that share an email
--   after lower(trim()), the most recently updated survives (ties: latest
--   created, then lowest id); the others are merged into it (survivor_id).
user_base AS (
    SELECT u.*,
           lower(btrim(u.email)) AS email_norm,
           CASE WHEN u.updated_at IS NULL OR u.updated_at < u.created_at
                THEN u.created_at ELSE u.updated_at END AS effective_updated_at,
           CASE WHEN u.deleted_at IS NOT NULL THEN 'soft_deleted'
                WHEN lower(btrim(u.email)) !~ '^[^@[:space:]]+@[^@[:space:].]+(\.[^@[:space:].]+)+$'
                  OR length(btrim(u.email)) > 254
                THEN 'invalid_email'
           END AS problem,
           greatest(u.created_at, u.updated_at, u.deleted_at) AS change_ts
    FROM {src_users} u
),
user_fate AS (
    SELECT b.*,
           CASE WHEN b.problem IS NULL
                THEN first_value(b.id) OVER (
                    PARTITION BY b.problem IS NULL, b.email_norm
                    ORDER BY b.effective_updated_at DESC, b.created_at DESC, b.id)
           END AS survivor_id
    FROM user_base b
),
-- agent_fate.problem: NULL, or the reason the agent cannot migrate.
agent_fate AS (
    SELECT a.id,
           CASE WHEN a.owner_id IS NOT NULL AND uf.id IS NULL THEN 'quarantined:owner_missing'
                WHEN uf.problem = 'invalid_email' THEN 'quarantined:owner_quarantined'
                WHEN uf.problem = 'soft_deleted' THEN 'excluded:owner_excluded'
                WHEN a.tools IS NOT NULL AND NOT (
                       pg_input_is_valid(a.tools, 'jsonb')
                       AND jsonb_typeof(CASE WHEN pg_input_is_valid(a.tools, 'jsonb')
                                             THEN a.tools::jsonb END) = 'array')
                THEN 'quarantined:tools_malformed'
           END AS problem,
           uf.survivor_id AS owner_survivor_id,
           greatest(a.created_at, a.updated_at, uf.change_ts) AS change_ts
    FROM {src_agents} a
    LEFT JOIN user_fate uf ON uf.id = a.owner_id
),
-- conversation_fate.problem: NULL, or why the conversation cannot migrate.
conversation_fate AS (
    SELECT c.id,
           CASE WHEN uf.id IS NULL THEN 'quarantined:user_missing'
                WHEN uf.problem = 'invalid_email' THEN 'quarantined:user_quarantined'
                WHEN uf.problem = 'soft_deleted' THEN 'excluded:user_excluded'
                WHEN c.deleted_at IS NOT NULL THEN 'excluded:soft_deleted'
           END AS problem,
           uf.survivor_id AS user_survivor_id,
           greatest(c.created_at, c.updated_at, c.deleted_at, uf.change_ts) AS change_ts
    FROM {src_conversations} c
    LEFT JOIN user_fate uf ON uf.id = c.user_id
)
