"""Migrate messages: legacy `messages` (append-only) into `public.messages`.

A message whose conversation is missing is quarantined; one whose conversation is excluded is excluded; role
`bot` becomes `assistant`, any other unknown role is quarantined; malformed `metadata` is kept as
`{"legacy_raw": ...}` (counted as repaired). Incremental runs take new ids plus the messages of conversations
that changed. Runs after `migrate_conversations`.

Params: `mode` (full / incremental), `dry_run`, `batch_size`, `quarantine_threshold_pct`,
`accept_schema_differences` + `override_reason`. Each task log ends with what it did, to how many rows, and why.
"""

from airflow.sdk import DAG

from include.orchestration.dag_factory import entity_dag

dag: DAG = entity_dag("messages", __doc__)
