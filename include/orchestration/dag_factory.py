"""Builds the per-entity DAGs: plan -> extract (one per partition) -> transform -> load -> validate
-> reconcile.

A DAG file is one call, ``entity_dag("users", __doc__)``. Building a DAG
touches no database and imports nothing heavy: connections are resolved
inside the tasks, at run time. Tasks pass only small descriptors (run id,
counts) through XCom; the rows stay in the databases.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from include.migration import pipeline
from include.migration.accounting import AccountingMismatch, QuarantineThresholdExceeded
from include.migration.stage_health import StaleStage
from include.orchestration.alerts import on_task_failure
from include.orchestration.assets import ENTITY_ASSETS, UPSTREAM

# How long Airflow waits before retrying a failed entity task (a lost worker, a busy lock). Read from the
# environment when the DAG file is parsed: an operator can shorten it (tests of the cluster's retries do).
RETRY_DELAY = timedelta(seconds=int(os.environ.get("MIGRATION_RETRY_DELAY_SECONDS", "20")))

MODES = ["incremental", "full"]


def entity_params() -> dict[str, Param]:
    return {
        "mode": Param("incremental", enum=MODES, description=(
            "incremental: rows changed since the last run (the nightly default); full: every source row, "
            "and destination rows whose source row is gone are deleted. A run started by its parent's "
            "asset takes the parent's mode.")),
        "dry_run": Param(False, type="boolean", description=(
            "Report what would be inserted / updated / unchanged / excluded / quarantined, and write "
            "nothing to the destination tables.")),
        "load_method": Param("auto", enum=list(pipeline.LOAD_METHODS), description=(
            "auto: a full run into an empty destination table streams straight into it (the backfill's "
            "fast path: one transaction, indexes rebuilt after); anything else is staged and merged in "
            "chunks. staged: always stage (chunk-by-chunk progress; the table stays readable).")),
        "partitions": Param(1, type="integer", minimum=1, maximum=64, description=(
            "Split the source into this many key ranges of about equal size, each extracted by its own "
            "task (side by side, one per worker). Into an empty table (load_method auto) each task streams "
            "its range straight into it, in its own transaction, and the load rebuilds the indexes once; "
            "otherwise each stages its range and the stage is merged as one. A run started by its parent's "
            "asset takes the parent's.")),
        "detect_changes": Param(True, type="boolean", description=(
            "A full run over a populated table first compares the source and the destination per key "
            "range (checksums inside each database) and stages only the ranges that differ; the rest are "
            "accounted from the destination. Off: stage every row. Users and media always stage every row.")),
        "batch_size": Param(pipeline.DEFAULT_BATCH_SIZE, type="integer", minimum=100, maximum=1_000_000,
                            description="Rows per load chunk; each chunk commits in its own transaction."),
        "quarantine_threshold_pct": Param(pipeline.DEFAULT_QUARANTINE_THRESHOLD_PCT, type="number", minimum=0,
                                          maximum=100, description=(
            "Fail the run (after its report is written) when quarantined rows exceed this percentage of the "
            "entity's rows. Raise it for a known-dirty source.")),
        "accept_schema_differences": Param([], type="array", description=(
            "Breaking schema difference ids (from the schema_diff report) a human accepts for this run "
            "only. Recorded with who and why.")),
        "override_reason": Param("", type="string", description="Why the differences above are acceptable."),
        "schema_max_age_hours": Param(26.0, type="number", minimum=0, description=(
            "The load refuses to run without a schema check newer than this.")),
    }


def _from_parent(context: Any, key: str) -> Any:
    """A value the parent's asset event carries (mode, dry_run), or None."""
    events = context.get("triggering_asset_events") or {}
    try:
        for evs in events.values():
            for ev in evs:
                value = (getattr(ev, "extra", None) or {}).get(key)
                if value is not None:
                    return value
    except (AttributeError, TypeError):
        pass
    return None


def resolve_mode(context: Any) -> str:
    """The parent's mode when started by an asset event, else the param."""
    mode = _from_parent(context, "mode")
    return mode if mode in MODES else context["params"]["mode"]


def resolve_dry_run(context: Any) -> bool:
    """A parent's dry run makes its children dry runs too: a dry run never writes."""
    return bool(_from_parent(context, "dry_run") or context["params"]["dry_run"])


def resolve_partitions(context: Any) -> int:
    """The parent's partitions when started by an asset event, else the param."""
    parts = _from_parent(context, "partitions")
    return int(parts) if isinstance(parts, int) and parts >= 1 else int(context["params"]["partitions"])


def _who(context: Any) -> str:
    dag_run = context["dag_run"]
    return getattr(dag_run, "triggering_user_name", None) or f"{dag_run.run_type} run"


def _fail(exc: Exception) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    # Retrying cannot fix these; the message is what the operator reads.
    raise AirflowFailException(str(exc)) from None


def own_params(name: str) -> dict[str, Param]:
    """The entity's own params (its hooks' ``dag_params``), e.g. media's bucket limits."""
    from include.migration.entities import get

    hooks = pipeline.entity_hooks(get(name))
    return hooks.dag_params() if hooks is not None and hasattr(hooks, "dag_params") else {}


def entity_dag(name: str, doc: str | None) -> Any:
    outlet = ENTITY_ASSETS[name]
    extra = own_params(name)

    @dag(
        dag_id=f"migrate_{name}",
        schedule=UPSTREAM[name],
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        tags=["migration", name],
        doc_md=doc,
        params={**entity_params(), **extra},
        default_args={"retries": 2, "retry_delay": RETRY_DELAY, "on_failure_callback": on_task_failure},
    )
    def migrate() -> None:
        @task
        def plan() -> list[dict]:
            context = get_current_context()
            options = {key: context["params"][key] for key in extra}
            return pipeline.plan(pipeline.Conns.from_airflow(), name, context["run_id"], mode=resolve_mode(context),
                                 dry_run=resolve_dry_run(context), options=options or None,
                                 load_method=context["params"]["load_method"],
                                 partitions=resolve_partitions(context),
                                 detect_changes=context["params"]["detect_changes"])

        # One task per key-range partition; with a worker each, they extract side by side.
        @task(map_index_template="{{ partition_label }}")
        def extract(part: dict) -> dict:
            context = get_current_context()
            context["partition_label"] = pipeline.partition_label(part)  # type: ignore[typeddict-unknown-key]
            try:
                return pipeline.extract_partition(pipeline.Conns.from_airflow(), name, part)
            except pipeline.SchemaMismatch as exc:
                _fail(exc)
                raise

        @task
        def transform(extracted: Any) -> dict:
            # The mapped extracts' descriptors; every one names the same run.
            run_id = next(iter(extracted))["run_id"]
            return pipeline.transform(pipeline.Conns.from_airflow(), name, run_id)

        @task
        def load(transformed: dict) -> dict:
            from include.migration.gate import SchemaGateClosed

            context = get_current_context()
            params = context["params"]
            gate = {"max_age_hours": float(params["schema_max_age_hours"]),
                    "accept": list(params["accept_schema_differences"] or []),
                    "accepted_by": _who(context), "reason": params["override_reason"] or None}
            try:
                return pipeline.load(pipeline.Conns.from_airflow(), name, transformed["run_id"],
                                     batch_size=int(params["batch_size"]), gate=gate,
                                     quarantine_threshold_pct=float(params["quarantine_threshold_pct"]))
            except (SchemaGateClosed, AccountingMismatch, QuarantineThresholdExceeded,
                    pipeline.LockdownBroken, StaleStage) as exc:
                _fail(exc)
                raise

        @task
        def validate(loaded: dict) -> dict:
            if loaded.get("dry_run"):
                return loaded
            try:
                return pipeline.validate(pipeline.Conns.from_airflow(), name, loaded["run_id"])
            except pipeline.ValidationFailed as exc:
                _fail(exc)
                raise

        @task(outlets=[outlet])
        def reconcile(validated: dict) -> dict:
            context = get_current_context()
            conns = pipeline.Conns.from_airflow()
            if validated.get("dry_run"):
                pipeline.finish(conns, validated["run_id"], "dry_run")
                result = {"run_id": validated["run_id"], "verdict": "dry_run"}
            else:
                try:
                    result = pipeline.reconcile(conns, name, validated["run_id"])
                except pipeline.ReconciliationFailed as exc:
                    _fail(exc)
                    raise
            context["outlet_events"][outlet].extra = {"mode": resolve_mode(context),
                                                      "dry_run": resolve_dry_run(context),
                                                      "partitions": resolve_partitions(context)}
            return result

        reconcile(validate(load(transform(extract.expand(part=plan())))))

    built = migrate()
    # The DAG belongs to the file that called us, not to this module (Airflow
    # finds, serializes and reparses a DAG by its file).
    built.fileloc = sys._getframe(1).f_globals.get("__file__", built.fileloc)
    return built
