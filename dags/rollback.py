"""Roll back: put the destination back to where it was before a chosen run.

Trigger by hand with `run_id` (as in `migration.runs`, e.g. `users:manual__2026-11-25T01:00:00+00:00`) and
`since` (true: undo that run and every run that started after it, newest first; false: that run alone,
refused if a later run of the same entity changed rows). It holds the write lock of each entity it undoes,
the one loads take, so no load runs meanwhile; while a load holds one it waits a minute, then refuses
naming the holder. Rows the runs inserted are deleted, rows they updated or deleted are written back from
their before-images, watermarks return to where they stood, and media objects the runs uploaded are
removed from Storage. The task then proves it: each affected table's row count and checksum must equal
those recorded after the last run before, or the task fails and says so.
"""

from datetime import datetime

from airflow.sdk import Param, dag, task

from include.orchestration.alerts import on_task_failure


# Declared in full in its own file, where an operator reads its settings: that it has the shape of
# the other operational DAG's declaration is a matter of data, not copied logic.
@dag(
    dag_id="rollback",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["migration", "rollback"],
    doc_md=__doc__,
    default_args={"on_failure_callback": on_task_failure},
    params={
        "run_id": Param("", type="string", minLength=1,
                        description="The migration run to roll back (column run_id of migration.runs)."),
        "since": Param(True, type="boolean",
                       description="Also roll back every run that started after it (newest first)."),
    },
)
def rollback_dag():
    @task
    def rollback(params: dict | None = None) -> dict:
        from include.orchestration.tasks import rollback_task

        return rollback_task(params["run_id"], bool(params["since"]))

    rollback()


rollback_dag()
