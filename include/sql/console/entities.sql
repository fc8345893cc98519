-- One row per entity for the console: its last run, that run's accounting, the
-- latest reconciliation, the watermark and who holds the write lock.
-- %(entities)s: the entity names, in the backfill's order.
SELECT e.entity,
       r.run_id, r.mode, r.dry_run, r.status, r.dag_run_id, r.started_at, r.finished_at,
       extract(epoch FROM coalesce(r.finished_at, now()) - r.started_at) AS seconds,
       r.stage_rows,
       (r.counts -> 'accounting' ->> 'in_scope')::bigint     AS in_scope,
       (r.counts -> 'accounting' ->> 'loaded')::bigint       AS loaded,
       (r.counts -> 'accounting' ->> 'excluded')::bigint     AS excluded,
       (r.counts -> 'accounting' ->> 'quarantined')::bigint  AS quarantined,
       CASE WHEN r.report ? 'repaired' THEN coalesce(
           (SELECT sum(value::bigint)::bigint FROM jsonb_each_text(r.report -> 'repaired')), 0) END AS repaired,
       rc.verdict AS reconcile_verdict, rc.checked_at AS reconciled_at,
       rc.missing_keys, rc.extra_keys, rc.different_keys,
       w.change_ts AS watermark, w.last_key AS watermark_key,
       l.run_id AS lock_run_id, l.holder AS lock_holder, l.acquired_at AS lock_acquired_at
FROM unnest(%(entities)s::text[]) WITH ORDINALITY AS e(entity, position)
LEFT JOIN LATERAL (
    SELECT * FROM migration.runs x WHERE x.entity = e.entity ORDER BY x.started_at DESC LIMIT 1
) r ON TRUE
LEFT JOIN LATERAL (
    SELECT c.verdict, c.checked_at,
           jsonb_array_length(c.missing) AS missing_keys,
           jsonb_array_length(c.extra) AS extra_keys,
           jsonb_array_length(c.different) AS different_keys
    FROM migration.reconciliations c WHERE c.entity = e.entity ORDER BY c.checked_at DESC LIMIT 1
) rc ON TRUE
LEFT JOIN migration.watermarks w ON w.entity = e.entity
LEFT JOIN migration.locks l ON l.entity = e.entity
ORDER BY e.position;
