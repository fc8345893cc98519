"""Migrate agents: legacy `agents` into `public.agents`.

Orphan owners and malformed `tools` JSON are quarantined; a null owner stays null (built-in agent); agents of
merged accounts move to the survivor; agents of soft-deleted users are excluded. Runs after `migrate_users`;
its asset starts `migrate_conversations`.

Params: `mode` (full / incremental), `dry_run`, `batch_size`, `quarantine_threshold_pct`,
`accept_schema_differences` + `override_reason`. Each task log ends with what it did, to how many rows, and why.
"""

from airflow.sdk import DAG

from include.orchestration.dag_factory import entity_dag

dag: DAG = entity_dag("agents", __doc__)
