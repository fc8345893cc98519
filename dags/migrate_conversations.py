"""Migrate conversations: legacy `conversations` into `public.conversations`.

A conversation whose user never existed is quarantined; one whose user is excluded is excluded with it; a
dangling `agent_id` is set null (counted as repaired); a blank title becomes "Untitled conversation". Runs
after `migrate_agents`; its asset starts `migrate_messages`.

Params: `mode` (full / incremental), `dry_run`, `batch_size`, `quarantine_threshold_pct`,
`accept_schema_differences` + `override_reason`. Each task log ends with what it did, to how many rows, and why.
"""

from airflow.sdk import DAG

from include.orchestration.dag_factory import entity_dag

dag: DAG = entity_dag("conversations", __doc__)
