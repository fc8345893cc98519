"""Task bodies of the operational DAGs (rollback, cutover_check), kept out of the DAG files."""

from __future__ import annotations

import logging
from typing import Any

from include.migration import db

log = logging.getLogger(__name__)


def storage_remover():
    """Removes media objects through the Supabase client (connection ``supabase_api``)."""
    from include.migration.media.hooks import remove_from_storage

    def remove(paths: list[str]) -> None:
        removed = remove_from_storage(paths)
        log.info("rollback: %d of %d media objects removed from Storage", len(removed), len(paths))

    return remove


def rollback_task(run_id: str, since: bool) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowFailException

    from include.migration.rollback import RollbackRefused, rollback

    try:
        from include.migration.media.restore import restorer  # objects a rolled-back cleanup removed

        result = rollback(db.dsn_for(db.DEST_CONN_ID), run_id, since=since, storage_remover=storage_remover(),
                          storage_restorer=restorer())
    except RollbackRefused as exc:
        raise AirflowFailException(str(exc)) from None
    if not result.proven:
        raise AirflowFailException(
            "rollback applied, but the destination does not match the earlier state: "
            + "; ".join(f"{e}: {v}" for e, v in result.verdicts.items() if v != "matches"))
    return {"rolled_back": result.run_ids, "restored": result.restored, "objects_removed": len(result.removed_objects),
            "objects_restored": len(result.restored_objects)}


def cutover_task(run_id: str) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowFailException

    from include.migration.cutover import evaluate
    from include.orchestration import alerts

    verdict = evaluate(db.dsn_for(db.LEGACY_CONN_ID), db.dsn_for(db.DEST_CONN_ID), run_id)
    if not verdict.go:
        alerts.send(alerts.nogo_message(verdict.nogo_lines(), verdict.report_path), event="cutover_nogo",
                    details={"criteria": verdict.nogo_lines()})
        raise AirflowFailException("cutover verdict NO-GO: " + " | ".join(verdict.nogo_lines()))
    return verdict.as_dict()
