"""Migrate media: legacy `media_assets` rows into `public.media`, their files into Supabase Storage.

Each file is read from the legacy media root (connection `legacy_media`), checked against its row,
uploaded to the private bucket `media` (created if missing) at `{owner_id}/{media_id}/{file_name}`
through the `supabase` client (connection `supabase_api`), then downloaded back and compared (size and
sha256) before its row is merged. Files over 6 MB use resumable (TUS) uploads; an object already there
with the same bytes is skipped, one with other bytes is a conflict. Every upload is recorded in
`migration.media_uploads` (the rollback removes what a run uploaded).

Quarantined: owner never existed or quarantined, file missing, sha256 (or size) different from the
row's, over the bucket's size limit, MIME type not allowed, Storage conflict, upload failed. Excluded:
owner soft-deleted. Repaired: merged owners re-pointed to the survivor; conversation or message
references that do not migrate set to null; MIME type sniffed from the bytes when the row has none;
sha256 computed when the row has none. When more than `media_max_failed_uploads_pct` of the uploads
fail, the load stops before any row changes; retry it. The reconciliation compares the rows by
checksum, and Storage with the rows: objects missing, objects without a row, objects whose bytes
differ. Runs after `migrate_messages`.

Params: `mode` (full / incremental), `dry_run` (checks the files, uploads nothing), `batch_size`,
`quarantine_threshold_pct`, `accept_schema_differences` + `override_reason`, and the `media_*` bucket
and upload settings. Each task log ends with files, bytes, MB/s and the outcome of every kind.
"""

from airflow.sdk import DAG

from include.orchestration.dag_factory import entity_dag

dag: DAG = entity_dag("media", __doc__)
