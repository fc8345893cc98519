"""The load gate: may this entity write into the destination now?

This module owns the decision every entity's load task asks for before it
writes, from the newest row of ``migration.schema_checks`` (written by the
``schema_diff`` DAG, see ``schema_diff.py``), and the operator overrides
recorded in ``migration.schema_overrides``.

The gate is closed when

* no schema check is recorded, or the newest is older than ``max_age_hours``
  (an asset event can be stale: a run started by hand, or long after the
  nightly check, must not trust an old verdict), or
* the newest check has breaking differences that block this entity and the
  operator has not accepted every one of them for this run.

An operator accepts a blocking difference for one run with the entity DAG's
params ``accept_schema_differences`` (the ids) and ``override_reason``. The
acceptance is recorded with who and why and is good for that run only: the
next run is blocked again until the schema is fixed or the mapping's
expectations change. A stale or missing check cannot be accepted.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from include.migration.schema_diff import BREAKING, schema_sql

log = logging.getLogger(__name__)

ACCEPT_PARAM = "accept_schema_differences"
REASON_PARAM = "override_reason"
DEFAULT_MAX_AGE_HOURS = 26.0  # the nightly check plus slack for a late chain


class SchemaGateClosed(Exception):
    """The entity may not load. ``str(e)`` is the one line the operator sees."""

    def __init__(self, message: str, *, entity: str, blocking: list[str] | None = None,
                 check_id: int | None = None):
        super().__init__(message)
        self.entity = entity
        self.blocking = list(blocking or [])
        self.check_id = check_id


class UnknownSchemaDifference(ValueError):
    """An accepted id that is not a breaking difference of the newest schema check (a typo, or stale)."""


@dataclass(frozen=True)
class LatestCheck:
    check_id: int
    checked_at: datetime
    verdict: str
    blocked: dict[str, list[str]]
    severities: dict[str, str]  # every difference id of the check -> its severity
    age_hours: float

    @property
    def when(self) -> str:
        return f"{self.checked_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def latest_check(conn: psycopg.Connection) -> LatestCheck | None:
    row = conn.execute(schema_sql("latest_check")).fetchone()
    if row is None:
        return None
    check_id, checked_at, verdict, blocked, differences, age_hours = row
    severities = {d["id"]: d["severity"] for d in differences or []}
    return LatestCheck(check_id, checked_at, verdict, blocked or {}, severities, float(age_hours))


def _clean(ids: list[str] | None) -> list[str]:
    """The accepted ids as typed, without blanks and repeats (a UI list param often carries both)."""
    out: list[str] = []
    for raw in ids or []:
        text = str(raw).strip()
        if text and text not in out:
            out.append(text)
    return out


def _refuse_unknown(wanted: list[str], check: LatestCheck, entity: str) -> None:
    unknown = [i for i in wanted if check.severities.get(i) != BREAKING]
    if not unknown:
        return
    notes = [f"{i} is {check.severities[i]}, nothing to accept" if i in check.severities
             else f"{i} is unknown" for i in unknown]
    blocking = check.blocked.get(entity, [])
    raise UnknownSchemaDifference(
        f"{entity}: cannot accept {', '.join(unknown)}: schema check #{check.check_id} ({check.when}) has no "
        f"such breaking difference ({'; '.join(notes)}). "
        + (f"What blocks {entity}: {', '.join(blocking)}." if blocking else f"Nothing blocks {entity}.")
    )


def _closed_message(entity: str, check: LatestCheck, remaining: list[str], accepted: list[str]) -> str:
    also = f" (accepted for this run: {', '.join(accepted)})" if accepted else ""
    return (
        f"{entity}: load blocked by schema check #{check.check_id} ({check.when}): "
        f"{', '.join(remaining)}{also}. Fix the schema and rerun the schema_diff DAG, or accept for this "
        f"run only by triggering with {ACCEPT_PARAM}={json.dumps(remaining)} and {REASON_PARAM}=\"<why>\"."
    )


def _decide(conn: psycopg.Connection, entity: str, run_id: str, max_age_hours: float,
            wanted: list[str], accepted_by: str | None, reason: str | None) -> list[str]:
    check = latest_check(conn)
    if check is None:
        raise SchemaGateClosed(
            f"{entity}: load blocked: no schema check is recorded in migration.schema_checks. "
            "Run the schema_diff DAG, then retry this load.", entity=entity)
    if check.age_hours > max_age_hours:
        raise SchemaGateClosed(
            f"{entity}: load blocked: the newest schema check #{check.check_id} ran "
            f"{check.age_hours:.1f} h ago ({check.when}), more than the {max_age_hours:g} h allowed. "
            "Rerun the schema_diff DAG, then retry this load (a stale check cannot be accepted).",
            entity=entity, check_id=check.check_id)
    _refuse_unknown(wanted, check, entity)
    blocking = check.blocked.get(entity, [])
    accepted = [i for i in blocking if i in wanted]
    remaining = [i for i in blocking if i not in wanted]
    if remaining:
        raise SchemaGateClosed(_closed_message(entity, check, remaining, accepted), entity=entity,
                               blocking=blocking, check_id=check.check_id)
    for difference_id in accepted:
        conn.execute(schema_sql("record_override"), {
            "entity": entity, "difference_id": difference_id, "accepted_by": accepted_by,
            "reason": reason, "run_id": run_id,
        })
    if accepted:
        log.warning("%s: schema check #%s: %s accepted for run %s by %s: %s", entity, check.check_id,
                    ", ".join(accepted), run_id, accepted_by, reason)
    else:
        log.info("%s: schema gate open (schema check #%s, %s, verdict %s)", entity, check.check_id,
                 check.when, check.verdict)
    return accepted


def check_load_allowed(conn: psycopg.Connection, entity: str, *, run_id: str,
                       max_age_hours: float = DEFAULT_MAX_AGE_HOURS, accept: list[str] | None = None,
                       accepted_by: str | None = None, reason: str | None = None) -> list[str]:
    """Raise ``SchemaGateClosed`` unless ``entity`` may load now; return the difference ids accepted.

    ``accept`` lists difference ids the operator accepts for this run. Each
    must be a breaking difference of the newest check (else
    ``UnknownSchemaDifference``); the ones that block this entity are recorded
    in ``migration.schema_overrides`` with ``accepted_by`` and ``reason``
    (both required) and returned. Ids that block only other entities are
    ignored here, so one list can be handed down a chain of entity DAGs.

    Transactions: the gate's reads and its override rows run in
    ``conn.transaction()``. On a connection with no open transaction (call
    the gate first thing in the load) that commits the override rows at
    once, so the audit trail survives a failed load. Inside the caller's open
    transaction it is a savepoint: the rows commit or roll back with the
    caller's work. The gate never commits anything else.
    """
    wanted = _clean(accept)
    if wanted and not ((accepted_by or "").strip() and (reason or "").strip()):
        raise ValueError(
            f"{entity}: accepting {', '.join(wanted)} needs who accepts it and why "
            f"(accepted_by, and the {REASON_PARAM} param)")
    try:
        with conn.transaction():
            return _decide(conn, entity, run_id, max_age_hours, wanted, accepted_by, reason)
    except psycopg.errors.UndefinedTable as err:
        raise SchemaGateClosed(
            f"{entity}: load blocked: the destination has no migration.schema_checks table; bootstrap it "
            "and run the schema_diff DAG, then retry this load.", entity=entity) from err


def airflow_params() -> dict[str, Any]:
    """The two params an entity DAG offers to accept differences for one run (names from this module)."""
    from airflow.sdk import Param

    return {
        ACCEPT_PARAM: Param(
            [], type="array", items={"type": "string"},
            description="Difference ids from the schema check to accept for this run only "
                        "(the load gate's message lists them); needs override_reason.",
        ),
        REASON_PARAM: Param(
            "", type="string",
            description="Why the accepted schema differences are safe for this run "
                        "(recorded with your name).",
        ),
    }
