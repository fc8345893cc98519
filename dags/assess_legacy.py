"""### assess_legacy: the legacy database's current state, before the first backfill

Trigger by hand. It only reads the legacy database (one read-only snapshot) and the
destination's catalog and run history, and answers what an operator must know to
plan the backfill:

* **volumes** per table: rows, bytes on disk, the largest rows; **growth** per day
  over the last `days` days; the **peak write hours** (UTC, from every change
  timestamp) and the quietest window to schedule the nightly sync in;
* the **defect profile**: for every transform rule, how many rows it would exclude,
  quarantine or repair, with sample keys, by running the pipeline's own transform
  SQL over every source row (the counts the following full run will report);
* a **forecast**: the expected quarantine percentage against
  `quarantine_threshold_pct` (and which entities would fail it), and the backfill's
  duration from the last full runs' throughput or the benchmark history, saying
  which it used;
* the **schema check**'s verdict for both sides (computed, not recorded: the load
  gate is not moved by an assessment).

Writes only its report: `$MIGRATION_STATE_DIR/assessment/` (JSON, Markdown, and
`latest.*`) and a summary row in `migration.assessments`, which the Migration
console shows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, task

from include.orchestration.alerts import on_task_failure


@dag(
    dag_id="assess_legacy",
    schedule=None,
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["migration", "assessment"],
    doc_md=__doc__,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1), "on_failure_callback": on_task_failure},
    params={
        "quarantine_threshold_pct": Param(0.1, type="number", minimum=0,
                                          description="the per-entity quarantine threshold the forecast checks"),
        "days": Param(90, type="integer", minimum=1, description="the window of the growth and write-hour profile"),
        "sample_keys": Param(5, type="integer", minimum=0, maximum=50, description="sample keys per rule"),
    },
)
def assess_legacy() -> None:
    @task
    def assess(*, params: dict[str, Any], dag_run: Any) -> dict[str, Any]:
        from include.migration import db
        from include.migration.assess import run_assessment

        return run_assessment(db.dsn_for(db.LEGACY_CONN_ID), db.dsn_for(db.DEST_CONN_ID),
                              dag_run_id=dag_run.run_id, threshold_pct=float(params["quarantine_threshold_pct"]),
                              days=int(params["days"]), samples=int(params["sample_keys"]))

    assess()


assess_legacy()
