"""### schema_diff: are both databases still what the migration's mapping expects?

Runs at 02:00 UTC, before the nightly syncs, and by hand. It reads the legacy
and the Supabase catalogs (tables, columns, types, nullability, defaults,
keys, foreign keys, unique and check constraints, indexes, row level
security, the lock-down report) and compares them with what each entity's
mapping reads and writes. Every difference gets an id and a class:

* **breaking**: blocks the loads of the entities it affects;
* **compatible**: reported, loads go on (a new nullable column, a widened type);
* **informational**: tables no mapping uses.

The result goes to the `compare` task's log (a table), to
`$MIGRATION_STATE_DIR/schema/` (one JSON file per check and `latest.json`)
and to `migration.schema_checks`, which each entity's load gate reads.

**Tasks**

* `compare` runs the check and updates the `migration://schema_check` asset,
  with `{"mode", "partitions", "verdict", "check_id"}` in the event's extra. It succeeds
  whatever the verdict: the entity DAGs start from the asset, and each one's
  load gate refuses only the entities a breaking difference blocks, saying
  which difference and how to clear it. Unaffected entities still sync.
* `verdict` fails the run when the verdict is breaking, so the operator sees
  it here, in one place, and gets the failure alert. It does not retry: the
  verdict would not change.

**Clearing a block**: fix the schema and trigger this DAG again (a
compatible check lets the chain run), or accept a difference id for one run
of an entity DAG with its `accept_schema_differences` and `override_reason`
params. The acceptance is recorded in `migration.schema_overrides`.

**Params**: `mode` is the mode the entity DAGs triggered by this check run in
(`incremental` nightly, `full` for a backfill started from the top);
`partitions` is how many key ranges their extract splits into (one task each,
side by side on a cluster's workers).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, task

from include.orchestration.alerts import on_task_failure
from include.orchestration.assets import SCHEMA_CHECK


@dag(
    dag_id="schema_diff",
    schedule="0 2 * * *",
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["migration", "schema", "gate"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2), "on_failure_callback": on_task_failure},
    params={
        "mode": Param(
            "incremental",
            type="string",
            enum=["incremental", "full"],
            description="the mode the entity DAGs triggered by this check run in",
        ),
        "partitions": Param(
            1,
            type="integer",
            minimum=1,
            maximum=64,
            description="the partitions (extract tasks) of the entity DAGs triggered by this check",
        ),
    },
)
def schema_diff() -> None:
    @task(outlets=[SCHEMA_CHECK])
    def compare(*, params: dict[str, Any], dag_run: Any, outlet_events: Any) -> dict[str, Any]:
        from include.migration import db
        from include.migration.schema_diff import run_schema_diff

        report = run_schema_diff(
            db.dsn_for(db.LEGACY_CONN_ID), db.dsn_for(db.DEST_CONN_ID), dag_run_id=dag_run.run_id
        )
        outlet_events[SCHEMA_CHECK].extra = {
            "mode": params["mode"],
            "partitions": params["partitions"],
            "verdict": report.verdict,
            "check_id": report.check_id,
        }
        return report.summary()

    @task(retries=0)
    def verdict(summary: dict[str, Any]) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        from include.migration.schema_diff import BREAKING, breaking_message

        if summary["verdict"] == BREAKING:
            raise AirflowFailException(breaking_message(summary))

    verdict(compare())


schema_diff()
