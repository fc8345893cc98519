-- Shared CTEs: the fate of every legacy user, agent and conversation.
-- A pure function of the legacy database, so every entity decides the same
-- way about a parent, and the reconciliation can recompute it at any time.
--
-- A timestamp is implausible before 1970 or more than a day after the
-- snapshot: a row carrying one is quarantined ('implausible_timestamp'),
-- and no change_ts takes a future value, so one row dated 9999 cannot carry
-- the incremental watermark past every later change.
--
-- {user_fates}, {conversation_fates} and {agent_fates} restrict whose fate is
-- computed (extract.transform_query): TRUE for a full run; in an incremental
-- run, the rows the entity's scope needs (Entity.fate_scope), so its cost
-- follows the change, not the table. A restriction keeps every parent a
-- needed row joins and, where a survivor is needed, whole email groups, so
-- each fate it computes is the same as over every row.
clock AS (
    SELECT timestamp '1970-01-01' AS earliest, (now() AT TIME ZONE 'UTC') + interval '1 day' AS latest
),
-- user_fate.problem: NULL (migrates), 'soft_deleted' (excluded),
--   'invalid_email' or 'implausible_timestamp' (quarantined). Among migrating
--   users that share an email after lower(trim()), the most recently updated
--   survives (ties: latest created, then lowest id); the others are merged
--   into it (survivor_id). The partition compares bytes (COLLATE "C"): the
--   same groups as the default collation's equality, without its slow sort.
user_base AS (
    SELECT u.*,
           lower(btrim(u.email)) AS email_norm,
           {effective_updated_at(u)} AS effective_updated_at,
           CASE WHEN u.deleted_at IS NOT NULL THEN 'soft_deleted'
                WHEN lower(btrim(u.email)) !~ '^[^@[:space:]]+@[^@[:space:].]+(\.[^@[:space:].]+)+$'
                  OR length(btrim(u.email)) > 254
                THEN 'invalid_email'
                WHEN u.created_at < (SELECT earliest FROM clock) OR u.created_at > (SELECT latest FROM clock) OR u.updated_at > (SELECT latest FROM clock)
                THEN 'implausible_timestamp'
           END AS problem,
           greatest(CASE WHEN u.created_at <= (SELECT latest FROM clock) THEN u.created_at END,
                    CASE WHEN u.updated_at <= (SELECT latest FROM clock) THEN u.updated_at END,
                    CASE WHEN u.deleted_at <= (SELECT latest FROM clock) THEN u.deleted_at END) AS change_ts
    FROM {src_users} u
    -- (clock: read through scalar subqueries, evaluated once)
    WHERE {user_fates}
),
user_fate AS (
    SELECT b.*,
           CASE WHEN b.problem IS NULL
                THEN first_value(b.id) OVER (
                    PARTITION BY b.problem IS NULL, b.email_norm COLLATE "C"
                    ORDER BY b.effective_updated_at DESC, b.created_at DESC, b.id)
           END AS survivor_id
    FROM user_base b
),
-- agent_fate.problem: NULL, or the reason the agent cannot migrate. tools
-- nested deeper than 100 levels counts as malformed (see messages.sql).
agent_fate AS (
    SELECT a.id,
           CASE WHEN a.owner_id IS NOT NULL AND uf.id IS NULL THEN 'quarantined:owner_missing'
                WHEN uf.problem = 'soft_deleted' THEN 'excluded:owner_excluded'
                WHEN uf.problem IS NOT NULL THEN 'quarantined:owner_quarantined'
                WHEN a.created_at < (SELECT earliest FROM clock) OR a.created_at > (SELECT latest FROM clock) OR a.updated_at > (SELECT latest FROM clock)
                THEN 'quarantined:implausible_timestamp'
                WHEN a.tools IS NULL THEN NULL
                -- Measured before anything parses it (see messages.sql).
                WHEN {json_too_deep(a.tools)}
                THEN 'quarantined:tools_malformed'
                WHEN NOT pg_input_is_valid(a.tools, 'jsonb') THEN 'quarantined:tools_malformed'
                WHEN jsonb_typeof(a.tools::jsonb) <> 'array' THEN 'quarantined:tools_malformed'
           END AS problem,
           uf.survivor_id AS owner_survivor_id,
           greatest(CASE WHEN a.created_at <= (SELECT latest FROM clock) THEN a.created_at END,
                    CASE WHEN a.updated_at <= (SELECT latest FROM clock) THEN a.updated_at END, uf.change_ts) AS change_ts
    FROM {src_agents} a
    -- (clock: read through scalar subqueries, evaluated once)
    LEFT JOIN user_fate uf ON uf.id = a.owner_id
    WHERE {agent_fates}
),
-- conversation_fate.problem: NULL, or why the conversation cannot migrate.
conversation_fate AS (
    SELECT c.id,
           CASE WHEN uf.id IS NULL THEN 'quarantined:user_missing'
                WHEN uf.problem = 'soft_deleted' THEN 'excluded:user_excluded'
                WHEN uf.problem IS NOT NULL THEN 'quarantined:user_quarantined'
                WHEN c.deleted_at IS NOT NULL THEN 'excluded:soft_deleted'
                WHEN c.created_at < (SELECT earliest FROM clock) OR c.created_at > (SELECT latest FROM clock) OR c.updated_at > (SELECT latest FROM clock)
                THEN 'quarantined:implausible_timestamp'
           END AS problem,
           greatest(CASE WHEN c.created_at <= (SELECT latest FROM clock) THEN c.created_at END,
                    CASE WHEN c.updated_at <= (SELECT latest FROM clock) THEN c.updated_at END,
                    CASE WHEN c.deleted_at <= (SELECT latest FROM clock) THEN c.deleted_at END, uf.change_ts) AS change_ts
    FROM {src_conversations} c
    -- (clock: read through scalar subqueries, evaluated once)
    -- user_base, not user_fate: a conversation's fate needs the user's problem
    -- and change time, not its survivor (conversations.sql joins user_fate for
    -- that), so the messages transform skips the survivor window.
    LEFT JOIN user_base uf ON uf.id = c.user_id
    WHERE {conversation_fates}
)
