"""Migrate users: legacy `users` into `public.users` and Supabase Auth (`auth.users`, `auth.identities`).

Emails are trimmed and lower-cased; invalid emails are quarantined; soft-deleted users are excluded (and removed
from the destination); accounts whose emails collide are merged into the most recently updated one, and the
id map `migration.user_id_map` re-points their agents, conversations and media. Password hashes are copied
unchanged so users sign in with their old passwords. Runs after `schema_diff`; its asset starts `migrate_agents`.

Params: `mode` (full / incremental), `dry_run`, `batch_size`, `quarantine_threshold_pct`,
`accept_schema_differences` + `override_reason`. Each task log ends with what it did, to how many rows, and why.
"""

from airflow.sdk import DAG

from include.orchestration.dag_factory import entity_dag

dag: DAG = entity_dag("users", __doc__)
