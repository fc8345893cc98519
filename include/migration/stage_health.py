"""Whether a run's stage can still be loaded as it is: gone, emptied by a crash, damaged, or stale.

The load asks before it merges: a stage that is gone or was emptied by crash
recovery (stages are unlogged) is staged again by the pipeline; one that holds
rows other than what its extract wrote is refused (``StageDamaged``); one older
than a snapshot another run already loaded is stale.
"""

from __future__ import annotations

from psycopg import sql

from include.migration import runs


class StaleStage(RuntimeError):
    pass

class StageDamaged(StaleStage):
    """The stage holds some rows, but not what its extract wrote: not what a crash does
    (crash recovery empties an unlogged table whole), so the load does not stage again by
    itself. A ``StaleStage`` so callers that stop on one stop on this too."""

def stage_gone(dest, run: runs.Run) -> str | None:
    """Why the run's stage can no longer be loaded as it is (gone, or emptied by crash
    recovery: the stage is unlogged), or None when it is whole. Raises ``StageDamaged``
    when it holds some rows but not what the extract wrote."""
    exists = dest.execute("SELECT to_regclass(%s)", (f"migration_stage.{run.stage_table}",)).fetchone()[0]
    rows = dest.execute(sql.SQL("SELECT count(*) FROM {}").format(
        sql.Identifier("migration_stage", run.stage_table))).fetchone()[0] if exists else 0
    dest.rollback()
    if rows == run.stage_rows:
        return None
    if not exists:
        return f"its stage {run.stage_table} is gone"
    partitions = run.report.get("partitions")
    if rows == 0 or partitions:
        # A partition's stage can be gone while the others are whole; staged again, all are.
        return (f"its stage {run.stage_table} holds {rows} of the {run.stage_rows} rows the extract wrote (the "
                "destination restarted after a crash and emptied the unlogged stage"
                + (", or a partition's stage is gone)" if partitions else ")"))
    raise StageDamaged(
        f"{run.entity}: the stage {run.stage_table} holds {rows} rows, the extract wrote {run.stage_rows}. A crash "
        "empties an unlogged stage whole, so something else changed it; staging again would hide what. Nothing "
        "was written. Find what touched migration_stage, then clear this DAG run from its extract task.")

def newer_stage_loaded(dest, run: runs.Run) -> str | None:
    """Why the run's stage is stale: another run of the entity has started to load a newer
    snapshot of the source. None when the stage is the newest.

    Extracts run outside the write lock, so of two runs at once (a nightly
    incremental and a manual full) the one that staged first may load second;
    so may a failed run's load retried after a later run succeeded. Loaded as it
    is, its stage would write older rows over newer ones, behind the watermark.
    """
    mine = run.report.get("extracted_at")
    if not mine:
        return None
    newer = dest.execute(
        "SELECT run_id, report->>'extracted_at' FROM migration.runs WHERE entity = %s AND run_id <> %s "
        "AND NOT dry_run AND status <> 'rolled_back' AND load_progress IS NOT NULL "
        "AND (report->>'extracted_at')::timestamptz > %s::timestamptz "
        "ORDER BY (report->>'extracted_at')::timestamptz DESC LIMIT 1",
        (run.entity, run.run_id, mine)).fetchone()
    dest.rollback()
    if newer is None:
        return None
    return (f"it staged the source as of {mine}, but run {newer[0]} has already loaded it as of {newer[1]}: "
            "loaded as it is, the stage would write older rows over newer ones")
