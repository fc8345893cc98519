"""Cutover check: GO or NO-GO for switching the application to Supabase, from evidence.

Trigger by hand on cutover day (after stopping writes to the legacy app). It runs the final incremental
sync of every entity (the same steps as the entity DAGs, in order), then checks the migration plan's
criteria: 100% of in-scope rows accounted for (source = loaded + quarantined + excluded), quarantine under
0.1% of users, zero differences in a full reconciliation of every entity, zero breaking schema differences
in a fresh schema check, a locked-down destination (RLS on), and the identity of `public.messages.id` above
every migrated id (the step moves it there first: after cutover the application inserts messages). The
verdict and its evidence go to the task log, to `$MIGRATION_STATE_DIR/cutover/latest.json`, and on NO-GO to
the alert connection `migration_alerts`; a NO-GO fails the run, each line naming its cause.
"""

from datetime import datetime

from airflow.sdk import dag, task

from include.migration.entities import ORDER
from include.orchestration.alerts import on_task_failure


# Declared in full in its own file, where an operator reads its settings: that it has the shape of
# the other operational DAG's declaration is a matter of data, not copied logic.
@dag(
    dag_id="cutover_check",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["migration", "cutover"],
    doc_md=__doc__,
    default_args={"on_failure_callback": on_task_failure},
)
def cutover_check():
    @task
    def final_sync(entity: str, run_id: str | None = None) -> dict:
        from include.migration import pipeline

        # Gate as usual: a breaking schema difference stops the sync, and the verdict says so.
        return pipeline.run_entity(pipeline.Conns.from_airflow(), entity, run_id, mode="incremental",
                                   validate_with_gx=True, reconcile_after=False,
                                   gate={"max_age_hours": 26.0})

    @task(trigger_rule="all_done")
    def verdict(run_id: str | None = None) -> dict:
        from include.orchestration.tasks import cutover_task

        return cutover_task(run_id)

    @task
    def schema_check(run_id: str | None = None) -> dict:
        from include.migration import db
        from include.migration.schema_diff import run_schema_diff

        return run_schema_diff(db.dsn_for(db.LEGACY_CONN_ID), db.dsn_for(db.DEST_CONN_ID), run_id).summary()

    previous = schema_check()
    for name in ORDER:
        step = final_sync.override(task_id=f"sync_{name}")(name)
        previous >> step
        previous = step
    previous >> verdict()


cutover_check()
