-- One reconciliation verdict per run and entity (reconcile.record_verdict); a rerun replaces it.
INSERT INTO migration.reconciliations
    (run_id, entity, verdict, source_rows, target_rows, buckets, missing, extra, different)
VALUES
    (%(run_id)s, %(entity)s, %(verdict)s, %(source_rows)s, %(target_rows)s, %(buckets)s,
     %(missing)s, %(extra)s, %(different)s)
ON CONFLICT (run_id, entity) DO UPDATE SET
    checked_at = now(),
    verdict = EXCLUDED.verdict,
    source_rows = EXCLUDED.source_rows,
    target_rows = EXCLUDED.target_rows,
    buckets = EXCLUDED.buckets,
    missing = EXCLUDED.missing,
    extra = EXCLUDED.extra,
    different = EXCLUDED.different
