"""Rollback: put the destination back to where it was before a run (or several).

Undoes a run's changes from its before-images in ``migration.before_images``,
newest first, in one transaction: inserted keys are deleted, updated and
deleted rows are written back. Watermarks return to where they stood before
the earliest rolled-back run, the media objects those runs uploaded are
removed, and the ones their cleanup removed are put back when their rows come
back (``media_restore.py``), or the rollback is refused, saying which and why.
Then it proves the result: each affected table's fingerprint (row
count and checksum) must equal the one recorded when the last run before
them finished (or an empty table, when there was none). A partitioned run into
an empty table that never reached its load had dropped the table's indexes: the
rollback empties the table and puts them back from the run's record.

It holds the write lock of every entity it undoes (``runs.EntityLock``, the
lock loads take) from before it chooses the runs to undo until it has
proved the result, so a rollback and a load of one entity never interleave;
when a load holds the lock, the rollback refuses, naming the holder.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from include.migration import db, direct, images, runs
from include.migration.entities import ENTITIES, ORDER
from include.migration.reconcile import fingerprint

log = logging.getLogger(__name__)


class RollbackRefused(RuntimeError):
    pass


@dataclass
class RollbackResult:
    run_ids: list[str]
    restored: dict[str, int] = field(default_factory=dict)  # table -> rows touched
    verdicts: dict[str, str] = field(default_factory=dict)  # entity -> 'matches' / reason
    removed_objects: list[str] = field(default_factory=list)
    restored_objects: list[str] = field(default_factory=list)

    @property
    def proven(self) -> bool:
        return all(v == "matches" for v in self.verdicts.values())


def select_runs(conn, run_id: str, since: bool) -> list[tuple[str, str, Any]]:
    """(run_id, entity, started_at) of the runs to undo, newest first."""
    row = conn.execute("SELECT started_at, status FROM migration.runs WHERE run_id = %s", (run_id,)).fetchone()
    if row is None:
        raise RollbackRefused(f"no run {run_id!r} in migration.runs (run ids look like 'users:manual__2026-...')")
    if row[1] == "rolled_back":
        raise RollbackRefused(f"run {run_id} was already rolled back")
    if since:
        return conn.execute(
            "SELECT run_id, entity, started_at FROM migration.runs WHERE started_at >= %s AND status <> "
            "'rolled_back' AND NOT dry_run ORDER BY started_at DESC", (row[0],)).fetchall()
    later = conn.execute(
        "SELECT r.run_id FROM migration.runs r WHERE r.started_at > %s AND r.status <> 'rolled_back' "
        "AND NOT r.dry_run AND EXISTS (SELECT 1 FROM migration.before_images b WHERE b.run_id = r.run_id) "
        "AND r.entity = (SELECT entity FROM migration.runs WHERE run_id = %s)", (row[0], run_id)).fetchall()
    if later:
        raise RollbackRefused(
            f"run {run_id} has later runs of the same entity that changed rows ({', '.join(r[0] for r in later)}); "
            "roll back everything since it instead (param since=true)")
    return [(run_id, *conn.execute("SELECT entity, started_at FROM migration.runs WHERE run_id = %s",
                                   (run_id,)).fetchone())]


def rollback(dest_dsn: str, run_id: str, *, since: bool = False, storage_remover=None,
             storage_restorer=None, lock_wait_seconds: float = 60.0) -> RollbackResult:
    """Undo ``run_id`` (with ``since``: it and every later run), under the write locks of
    the entities it touches. ``lock_wait_seconds``: how long to wait for a lock a load
    holds before refusing, as a load waits for another (0: refuse at once). ``storage_restorer``
    puts back the media objects these runs' cleanup removed (``media_restore.restorer``)."""
    with db.connection(dest_dsn, application="migration-rollback") as conn, ExitStack() as locks:
        entities = sorted({r[1] for r in select_runs(conn, run_id, since)}, key=_lock_order)
        conn.commit()
        for entity in entities:  # one fixed order, the same for every rollback: no deadlock between two
            try:
                locks.enter_context(runs.EntityLock(dest_dsn, entity, f"rollback of {run_id}",
                                                    wait_seconds=lock_wait_seconds, conn=conn))
            except runs.LockBusy as exc:
                raise RollbackRefused(f"rollback of {run_id} refused, nothing was changed: {exc}") from None
        # Chosen again under the locks: a run that finished while we waited is undone too.
        selected = select_runs(conn, run_id, since)
        if not {r[1] for r in selected} <= set(entities):
            raise RollbackRefused(
                f"rollback of {run_id} refused, nothing was changed: runs of "
                f"{', '.join(sorted({r[1] for r in selected} - set(entities)))} started while it waited for the "
                "write locks; trigger the rollback again")
        ids = [r[0] for r in selected]
        result = RollbackResult(ids)
        earliest = selected[-1][2]
        # A partitioned run into an empty table that never reached its load left the table
        # without its indexes: emptied and indexed again first, its before-images then find it so.
        undone = direct.undo_detached(conn, ids, f"rollback of {run_id}")
        for emptied_entity, _, emptied in undone:
            label = images.table_label(emptied_entity.schema_name, emptied_entity.target_table)
            result.restored[label] = result.restored.get(label, 0) + emptied
        rows = conn.execute(
            "SELECT entity, op, row_image, keys FROM migration.before_images WHERE run_id = ANY(%s) "
            "ORDER BY recorded_at DESC, ctid DESC", (ids,)).fetchall()
        for label, op, image, keys in rows:
            result.restored[label] = result.restored.get(label, 0) + images.restore(conn, label, op, image, keys)
        direct.restore_referrers(conn, undone)
        _restore_watermarks(conn, selected)
        result.restored_objects = _restore_removed_objects(conn, ids, run_id, storage_restorer)
        restored = set(result.restored_objects)
        objects = [o for o in _uploaded_objects(conn, ids) if o not in restored]
        conn.execute("UPDATE migration.runs SET status = 'rolled_back' WHERE run_id = ANY(%s)", (ids,))
        conn.commit()
        if objects and storage_remover is not None:
            storage_remover(objects)
            result.removed_objects = objects
        for entity in sorted({r[1] for r in selected}):
            result.verdicts[entity] = _verify(conn, entity, earliest)
    for table, n in sorted(result.restored.items()):
        log.info("rollback: %s: %d rows put back or removed", table, n)
    for entity, verdict in result.verdicts.items():
        log.info("rollback: %s: destination %s the state after the last run before %s", entity,
                 "MATCHES" if verdict == "matches" else f"DOES NOT MATCH ({verdict})", run_id)
    return result


def _lock_order(entity: str) -> tuple[int, str]:
    return (ORDER.index(entity) if entity in ORDER else len(ORDER), entity)


def _restore_watermarks(conn, selected: list[tuple[str, str, Any]]) -> None:
    """Each entity's watermark goes back to where it stood before its earliest rolled-back run."""
    done: set[str] = set()
    for rid, entity, _ in reversed(selected):  # oldest first
        if entity in done:
            continue
        done.add(entity)
        report = runs.get(conn, rid).report or {}
        if "watermark_before" not in report:
            continue  # the run never reached its load
        before = report["watermark_before"]
        if before is None:
            conn.execute("DELETE FROM migration.watermarks WHERE entity = %s", (entity,))
        else:
            conn.execute("UPDATE migration.watermarks SET change_ts = %s, last_key = %s, run_id = %s, "
                         "updated_at = now() WHERE entity = %s",
                         (before.get("change_ts"), before.get("last_key"), f"rollback of {rid}", entity))


def _restore_removed_objects(conn, ids: list[str], run_id: str, storage_restorer) -> list[str]:
    """Objects these runs' cleanup removed whose rows are back: restored, else the rollback is refused."""
    from include.migration.media.restore import objects_to_restore, record_restored

    removed = objects_to_restore(conn, ids)
    if not removed:
        return []
    first = ", ".join(o.object_path for o in removed[:3])
    if storage_restorer is None:
        conn.rollback()
        raise RollbackRefused(
            f"rollback of {run_id} refused, nothing changed: the runs' cleanup removed {len(removed)} media "
            f"objects from Storage whose rows the rollback would bring back (first: {first}), and no restorer "
            "was given to put them back from the legacy media root")
    outcome = storage_restorer(removed)
    if outcome.problems:
        conn.rollback()
        lines = "; ".join(f"{path}: {why}" for path, why in sorted(outcome.problems.items())[:5])
        raise RollbackRefused(
            f"rollback of {run_id} refused, nothing changed: {len(outcome.problems)} of the {len(removed)} media "
            f"objects the runs' cleanup removed cannot be put back in Storage, and their rows would come back "
            f"without them: {lines}")
    record_restored(conn, f"rollback of {run_id}", outcome.restored, removed)
    log.info("rollback: %d media objects removed by the rolled-back runs put back in Storage", len(outcome.restored))
    return outcome.restored


def _uploaded_objects(conn, ids: list[str]) -> list[str]:
    exists = conn.execute("SELECT to_regclass('migration.media_uploads')").fetchone()[0]
    if not exists:
        return []
    return [r[0] for r in conn.execute(
        "SELECT object_path FROM migration.media_uploads WHERE run_id = ANY(%s) AND outcome = 'uploaded'",
        (ids,))]


def _verify(conn, entity_name: str, before) -> str:
    entity = ENTITIES.get(entity_name)
    if entity is None:
        return "matches"
    prior = conn.execute(
        "SELECT counts->'fingerprint' FROM migration.runs WHERE entity = %s AND status NOT IN "
        "('rolled_back', 'running') AND NOT dry_run AND finished_at < %s AND counts ? 'fingerprint' "
        "ORDER BY finished_at DESC LIMIT 1", (entity_name, before)).fetchone()
    if prior is None:
        earlier = conn.execute("SELECT count(*) FROM migration.runs WHERE entity = %s AND finished_at < %s AND "
                               "status NOT IN ('rolled_back', 'running') AND NOT dry_run",
                               (entity_name, before)).fetchone()[0]
        if earlier:
            return "unverified: the earlier run recorded no fingerprint (it ran without reconciliation)"
    now = fingerprint(conn, entity)
    expected = prior[0] if prior else {"rows": 0, "checksum": 0, "digest": now["digest"]}
    if expected.get("digest") != now["digest"]:
        # Taken by an earlier version of this pipeline, with another digest: not comparable.
        if expected["rows"] != now["rows"]:
            return f"expected {expected['rows']} rows, found {now['rows']}"
        return (f"unverified: {now['rows']} rows as expected, but the earlier run's checksum was taken with "
                f"another digest ({expected.get('digest', 'md5 of the row text')})")
    if now == expected:
        return "matches"
    return f"expected {expected['rows']} rows / checksum {expected['checksum']}, found {now['rows']} / {now['checksum']}"
