"""Transform (destination side) and load: from the stage into the destination tables.

``check_stage`` applies the rules only the destination can decide (a parent
that is not in the destination, an email already taken there) and counts the
dispositions. ``plan_changes`` says what a load would insert, update, leave
unchanged and delete, without writing (the dry run). ``load`` merges the stage
into the destination table in key-ordered chunks, each chunk in its own
transaction with its before-images and its progress mark, so a crash resumes
at the first uncommitted chunk and a rerun of the same data writes nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from include.migration import db, images, runs
from include.migration.entities import ENTITIES, Entity

log = logging.getLogger(__name__)

def stage_ident(table: str) -> sql.Identifier:
    return sql.Identifier("migration_stage", table)


def target_ident(entity: Entity) -> sql.Identifier:
    return sql.Identifier(entity.schema_name, entity.target_table)


def _cols(names: list[str], prefix: str | None = None) -> sql.Composable:
    if prefix:
        return sql.SQL(", ").join(sql.Identifier(prefix, n) for n in names)
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def check_stage(dest: psycopg.Connection, entity: Entity, table: str, *, commit: bool = True) -> dict[str, int]:
    """Quarantine staged rows the destination cannot take; return counts per disposition:reason."""
    stage = stage_ident(table)
    for ref in entity.parents:
        parent = ENTITIES[ref.parent]
        # The orphans' keys first, from the key and parent columns alone; then, only when
        # there are any, their rows. In one UPDATE, the whole staged row (``to_jsonb(s)``)
        # rode through the anti-join and spilled to disk with it: 6.2 s for 3 M messages
        # that found nothing, against 1.5 s this way.
        keys = _key_table(dest, entity)
        found = dest.execute(sql.SQL(
            "INSERT INTO {keys} SELECT s.{key}, false FROM {stage} s "
            "WHERE s._disposition = 'loaded' AND s.{col} IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.{pkey} = s.{col})"
        ).format(keys=keys, key=sql.Identifier(entity.key), stage=stage, col=sql.Identifier(ref.column),
                 parent=target_ident(parent), pkey=sql.Identifier(parent.key))).rowcount
        if found:
            dest.execute(sql.SQL(
                "UPDATE {stage} s SET _disposition = 'quarantined', _reason = {reason}, "
                "_source = coalesce(_source, to_jsonb(s) - '_source') "
                "WHERE s.{key} IN (SELECT k FROM {keys})"
            ).format(stage=stage, reason=sql.Literal(f"{ref.parent}_not_in_destination"),
                     key=sql.Identifier(entity.key), keys=keys))
    hook = entity.hook("check_stage")  # the entity's own rules (users: an email taken in the destination)
    if hook is not None:
        hook(dest, stage)
    counts = disposition_counts(dest, table)
    if commit:
        dest.commit()
    return counts


def disposition_counts(dest: psycopg.Connection, table: str) -> dict[str, int]:
    """Staged rows per "disposition:reason"."""
    rows = dest.execute(sql.SQL("SELECT _disposition, _reason, count(*) FROM {} GROUP BY 1, 2 ORDER BY 1, 2")
                        .format(stage_ident(table))).fetchall()
    return {f"{d}:{r}": n for d, r, n in rows}


def repair_counts(dest: psycopg.Connection, table: str) -> dict[str, int]:
    rows = dest.execute(
        sql.SQL("SELECT r, count(*) FROM {}, unnest(_repairs) r WHERE _disposition = 'loaded' GROUP BY r "
                "ORDER BY r").format(stage_ident(table))
    ).fetchall()
    return dict(rows)


def _distinct_condition(entity: Entity, left: str, right: str) -> sql.Composable:
    names = [c for c in entity.column_names if c != entity.key]
    return sql.SQL("({}) IS DISTINCT FROM ({})").format(_cols(names, left), _cols(names, right))


def plan_changes(dest: psycopg.Connection, entity: Entity, table: str, *, full: bool) -> dict[str, int]:
    """What a load of this stage would do to the destination table (writes nothing)."""
    stage, target, key = stage_ident(table), target_ident(entity), sql.Identifier(entity.key)
    row = dest.execute(
        sql.SQL(
            "SELECT count(*) FILTER (WHERE t.{key} IS NULL), "
            "count(*) FILTER (WHERE t.{key} IS NOT NULL AND {diff}), "
            "count(*) FILTER (WHERE t.{key} IS NOT NULL AND NOT {diff}) "
            "FROM {stage} s LEFT JOIN {target} t ON t.{key} = s.{key} WHERE s._disposition = 'loaded'"
        ).format(key=key, diff=_distinct_condition(entity, "t", "s"), stage=stage, target=target)
    ).fetchone()
    removed = dest.execute(
        sql.SQL("SELECT count(*) FROM {target} t JOIN {stage} s ON s.{key} = t.{key} "
                "WHERE s._disposition <> 'loaded'").format(key=key, stage=stage, target=target)
    ).fetchone()[0]
    gone = 0
    if full:
        gone = dest.execute(
            sql.SQL("SELECT count(*) FROM {target} t WHERE NOT EXISTS "
                    "(SELECT 1 FROM {stage} s WHERE s.{key} = t.{key})").format(
                key=key, stage=stage, target=target)
        ).fetchone()[0]
    dest.rollback()
    return {"insert": row[0], "update": row[1], "unchanged": row[2],
            "delete_excluded_or_quarantined": removed, "delete_gone_from_source": gone}


@dataclass
class LoadResult:
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    chunks: int = 0
    seconds: float = 0.0
    chunk_log: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"inserted": self.inserted, "updated": self.updated, "deleted": self.deleted,
                "chunks": self.chunks, "load_seconds": round(self.seconds, 3)}

    @classmethod
    def from_counts(cls, counts: dict[str, Any] | None) -> LoadResult:
        """What ``as_dict`` stored in the run's counts (a resumed or finished load)."""
        counts = counts or {}
        return cls(**{k: counts[k] for k in ("inserted", "updated", "deleted", "chunks") if k in counts},
                   seconds=counts.get("load_seconds", 0.0))


def chunk_bounds(dest: psycopg.Connection, entity: Entity, table: str, batch_size: int,
                 after: str | None) -> list[str]:
    """Upper keys of consecutive chunks of ``batch_size`` loadable stage rows."""
    key = sql.Identifier(entity.key)
    cond = sql.SQL("TRUE") if after is None else sql.SQL("{} > {}::{}").format(
        key, sql.Literal(after), sql.SQL(entity.key_type))
    # Every batch_size-th key, then the last one (asked separately: count(*) OVER ()
    # would hold the whole key list in a tuplestore; and uuid has no max() before PostgreSQL 18).
    bounds = db.every_nth_key(dest, stage_ident(table), key, batch_size,
                              sql.SQL("_disposition = 'loaded' AND {}").format(cond))
    last = dest.execute(sql.SQL("SELECT {key}::text AS k FROM {stage} WHERE _disposition = 'loaded' "
                                "AND {cond} ORDER BY {stage}.{key} DESC LIMIT 1")
                        .format(key=key, stage=stage_ident(table), cond=cond)).fetchone()
    if last is not None and (not bounds or bounds[-1] != last[0]):
        bounds.append(last[0])
    return bounds


def _delete_table(entity: Entity) -> tuple[str, str]:
    """Where a delete of the entity's rows starts (``Entity.delete_from``, users: auth.users,
    whose delete cascades to public.users and from there to their rows)."""
    return entity.delete_from or (entity.schema_name, entity.target_table)


def _key_table(dest: psycopg.Connection, entity: Entity) -> sql.Identifier:
    """An empty temporary table of keys (``k``, ``new``) for one step of a load; it
    holds the step's keys in the database, not in this process, and empties at commit.
    Read it as ``= ANY(ARRAY(SELECT k FROM ...))``: the keys are read once (an init
    plan), then the rows fetched by the primary key."""
    keys = sql.Identifier(f"migration_keys_{entity.name}")
    dest.execute(sql.SQL("CREATE TEMPORARY TABLE IF NOT EXISTS {} (k {} NOT NULL, new boolean NOT NULL) "
                         "ON COMMIT DELETE ROWS").format(keys, sql.SQL(entity.key_type)))
    dest.execute(sql.SQL("DELETE FROM {}").format(keys))  # empty, unless used twice in one transaction
    return keys


def _delete_with_images(dest: psycopg.Connection, entity: Entity, run_id: str, keys: sql.Composable) -> int:
    """Image, then delete, the destination rows whose key is in ``keys`` (a subquery)."""
    schema, table = _delete_table(entity)
    # The keys present are collected first, whole. Asked as "EXISTS (... IN (keys))",
    # the planner chose a fast-start plan (one index probe of the stage per table
    # row) that took seconds when, as usual, there is nothing to find.
    present = _key_table(dest, entity)
    collect = sql.SQL("INSERT INTO {present} SELECT t.{key}, false FROM {t} t WHERE t.{key} IN ({keys})").format(
        present=present, key=sql.Identifier(entity.key), t=sql.Identifier(schema, table), keys=keys)
    if not dest.execute(collect).rowcount:
        return 0  # the usual case: nothing to delete, so nothing to image either
    where = sql.SQL("t.{} = ANY(ARRAY(SELECT k FROM {}))").format(sql.Identifier(entity.key), present)
    images.image_deletes(dest, run_id, schema, table, where)
    delete = entity.hook("delete_rows")  # users with the admin API: GoTrue deletes the accounts
    deleted = delete(dest, where) if delete is not None else None
    if deleted is not None:
        return deleted
    return dest.execute(sql.SQL("DELETE FROM {} t WHERE {}").format(sql.Identifier(schema, table), where)).rowcount


def remove_non_loaded(dest: psycopg.Connection, entity: Entity, table: str, run_id: str) -> int:
    """Delete destination rows whose source row is now excluded or quarantined.

    Users merged into a survivor hand their children to the survivor first
    (the entity's ``before_remove`` hook). Runs in the caller's transaction
    (with ``admin_api``, commits it before the accounts are deleted through the API).
    """
    before = entity.hook("before_remove")
    if before is not None:
        before(dest, table, run_id)
    keys = sql.SQL("SELECT s.{key} FROM {stage} s WHERE s._disposition <> 'loaded'").format(
        key=sql.Identifier(entity.key), stage=stage_ident(table))
    return _delete_with_images(dest, entity, run_id, keys)


def upsert_chunk(dest: psycopg.Connection, entity: Entity, table: str, run_id: str,
                  where: sql.Composable) -> tuple[int, int]:
    """Merge the stage rows matching ``where`` (alias ``s``) into the destination;
    returns (inserted, updated)."""
    stage, target, key = stage_ident(table), target_ident(entity), sql.Identifier(entity.key)
    names = entity.column_names
    non_key = [c for c in names if c != entity.key]
    # The rows to write (new, or different from the destination's) are found
    # once, into the key table; the before-images and the upsert then fetch them
    # by key. Identical rows are left out: an ON CONFLICT that finds nothing to
    # change still pays a speculative insert and a row lock per row. The
    # comparison probes the table's primary key once per stage row (a correlated
    # subquery, NULL when the row is new): as a join, the planner hashed the
    # whole table for each chunk, the chunk's key range not carrying over to
    # the table's side.
    keys = _key_table(dest, entity)
    dest.execute(sql.SQL(
        "INSERT INTO {keys} SELECT k, differs IS NULL FROM (SELECT s.{key} AS k, "
        "(SELECT {diff} FROM {target} t WHERE t.{key} = s.{key}) AS differs "
        "FROM {stage} s WHERE s._disposition = 'loaded' AND {where} OFFSET 0) x "
        "WHERE differs IS NOT FALSE").format(
        keys=keys, key=key, stage=stage, target=target, where=where,
        diff=_distinct_condition(entity, "t", "s")))
    new_rows, changed = dest.execute(sql.SQL(
        "SELECT count(*) FILTER (WHERE new), count(*) FILTER (WHERE NOT new) FROM {}").format(keys)).fetchone()
    if changed:
        changing_keys = sql.SQL("ARRAY(SELECT k FROM {} WHERE NOT new)").format(keys)
        changing = sql.SQL("t.{} = ANY({})").format(key, changing_keys)
        images.image_updates(dest, run_id, entity.schema_name, entity.target_table, changing)
        image = entity.hook("image_updates")  # users: their Auth accounts
        if image is not None:
            image(dest, run_id, changing_keys)
    before_write = entity.hook("before_write")  # users: every account of the range, changed or not
    if before_write is not None:
        before_write(dest, table, where)
    if not new_rows + changed:
        return 0, 0
    where = sql.SQL("s.{} = ANY(ARRAY(SELECT k FROM {}))").format(key, keys)
    row = dest.execute(
        sql.SQL(
            "WITH m AS (INSERT INTO {target} AS t ({cols}) SELECT {scols} FROM {stage} s "
            "WHERE s._disposition = 'loaded' AND {where} "
            "ON CONFLICT ({key}) DO UPDATE SET ({noncols}) = ROW({excluded}) WHERE {diff} "
            "RETURNING t.{key}, (xmax = 0) AS inserted), "
            "i AS (INSERT INTO migration.before_images (run_id, entity, op, keys) "
            "SELECT {run}, {label}, 'insert', array_agg({key}::text) FROM m WHERE inserted HAVING count(*) > 0) "
            "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM m"
        ).format(
            target=target, cols=_cols(names), scols=_cols(names, "s"), stage=stage, where=where, key=key,
            noncols=_cols(non_key),
            excluded=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in non_key),
            diff=_distinct_condition(entity, "t", "excluded"),
            run=sql.Literal(run_id), label=sql.Literal(images.table_label(*_delete_table(entity))),
        )
    ).fetchone()
    return row[0], row[1]


def _range(entity: Entity, alias: str, after: str | None, hi: str | None) -> sql.Composable:
    """``alias.key`` in (after, hi]; None: no bound on that side."""
    key = sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(entity.key))
    typ = sql.SQL(entity.key_type)
    conds = []
    if hi is not None:
        conds.append(sql.SQL("{} <= {}::{}").format(key, sql.Literal(hi), typ))
    if after is not None:
        conds.append(sql.SQL("{} > {}::{}").format(key, sql.Literal(after), typ))
    return sql.SQL(" AND ").join(conds) if conds else sql.SQL("TRUE")


def _range_is_empty(dest: psycopg.Connection, entity: Entity, after: str | None, hi: str) -> bool:
    tables = [target_ident(entity)]
    if entity.delete_from:  # its rows start there (users: auth.users)
        tables.append(sql.Identifier(*entity.delete_from))
    return not any(dest.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} t WHERE {})").format(
        t, _range(entity, "t", after, hi))).fetchone()[0] for t in tables)


def _insert_range(dest: psycopg.Connection, entity: Entity, table: str, run_id: str,
                  after: str | None, hi: str) -> int:
    """The first load of a key range: a plain INSERT (nothing to compare or image), and
    one before-image that says 'this whole range was empty'. The usual path of a backfill."""
    names = entity.column_names
    where = _range(entity, "s", after, hi)
    before_write = entity.hook("before_write")
    if before_write is not None:
        before_write(dest, table, where)
    set_based = entity.set_based_fk_checks and _defer_fk_checks(dest)
    inserted = dest.execute(sql.SQL(
        "INSERT INTO {target} ({cols}) SELECT {scols} FROM {stage} s WHERE s._disposition = 'loaded' AND {where}"
    ).format(target=target_ident(entity), cols=_cols(names), scols=_cols(names, "s"), stage=stage_ident(table),
             where=where)).rowcount
    if set_based:
        check_parents(dest, entity, after, hi)
    images.record_insert_range(dest, run_id, *_delete_table(entity), after, hi)
    return inserted


def _defer_fk_checks(dest: psycopg.Connection) -> bool:
    """Turn off the per-row foreign-key triggers for this chunk's transaction.

    A foreign-key trigger checks one row at a time (an index probe through
    SPI: most of a bulk insert's cost); ``check_parents`` does the same
    check for the whole chunk in one query, and locks the parent rows
    ``FOR KEY SHARE`` exactly as the triggers would, so a concurrent delete of
    a parent still waits for this transaction. Needs permission to set
    ``session_replication_role`` (superuser, or GRANT SET ON PARAMETER);
    without it the triggers stay on and the load is only slower.
    """
    try:
        with dest.transaction():
            dest.execute("SET LOCAL session_replication_role = replica")
        return True
    except psycopg.errors.InsufficientPrivilege:
        return False


def check_parents(dest: psycopg.Connection, entity: Entity, after: str | None, hi: str | None, *,
                  lock: bool = True) -> None:
    """The foreign-key check of the keys (after, hi] (None: unbounded), set-based; raises
    (rolling the transaction back) on an orphan. ``lock``: lock the parent rows as the
    triggers would; not needed when the parent tables are locked whole."""
    dest.execute("SET LOCAL session_replication_role = origin")
    for ref in entity.parents:
        parent = ENTITIES[ref.parent]
        col, pkey = sql.Identifier(ref.column), sql.Identifier(parent.key)
        chunk = sql.SQL("SELECT t.{col} FROM {target} t WHERE {rng} AND t.{col} IS NOT NULL").format(
            col=col, target=target_ident(entity), rng=_range(entity, "t", after, hi))
        if lock:
            dest.execute(sql.SQL("SELECT 1 FROM {parent} p WHERE p.{pkey} IN ({chunk}) FOR KEY SHARE").format(
                parent=target_ident(parent), pkey=pkey, chunk=chunk))
        orphans = dest.execute(sql.SQL(
            "SELECT count(*) FROM ({chunk}) c({col}) WHERE NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.{pkey} = c.{col})"
        ).format(chunk=chunk, col=col, parent=target_ident(parent), pkey=pkey)).fetchone()[0]
        if orphans:
            raise RuntimeError(
                f"{entity.name}: {orphans} rows of keys ({after or 'start'} .. {hi or 'end'}] reference a missing "
                f"{ref.parent} row ({ref.column}); the load's transaction was rolled back. A parent was deleted "
                "while this run loaded: rerun the DAG run.")


def load(dest: psycopg.Connection, entity: Entity, run: runs.Run, *, batch_size: int,
         full: bool) -> LoadResult:
    """Merge the stage into the destination; resumable from ``run.load_progress``."""
    assert run.stage_table is not None
    table = run.stage_table
    result = LoadResult.from_counts(run.counts.get("load"))
    result.seconds = 0.0  # this attempt's time is added below
    started = time.perf_counter()
    if run.load_progress is None:
        result.deleted += remove_non_loaded(dest, entity, table, run.run_id)
        record_ledgers(dest, entity, table, run.run_id, large_stage=full)
        runs.update(dest, run.run_id, load_progress="", counts={"load": result.as_dict()})
        dest.commit()
        log.info("%s: %d destination rows removed (their source rows are now excluded or quarantined)",
                 entity.name, result.deleted)
    after = run.load_progress or None
    for hi in chunk_bounds(dest, entity, table, batch_size, after):
        t0 = time.perf_counter()
        if _range_is_empty(dest, entity, after, hi):
            ins, upd, how = _insert_range(dest, entity, table, run.run_id, after, hi), 0, "insert into an empty range"
        else:
            ins, upd = upsert_chunk(dest, entity, table, run.run_id, _range(entity, "s", after, hi))
            how = "merge" if ins or upd else "every row already identical"
        result.inserted += ins
        result.updated += upd
        result.chunks += 1
        runs.update(dest, run.run_id, load_progress=hi, counts={"load": result.as_dict()})
        dest.commit()  # the chunk, its before-images and its progress mark, together
        seconds = time.perf_counter() - t0
        log.info("%s chunk %d: keys (%s .. %s], %d inserted, %d updated (%s) in %.2f s, %s rows/s", entity.name,
                 result.chunks, after or "start", hi, ins, upd, how, seconds,
                 f"{int((ins + upd) / seconds):,}" if seconds else "-")
        after = hi
    if full:
        ranges = run.scope.get("ranges")
        result.deleted += sweep_gone(dest, entity, table, run.run_id, ranges)
        if ranges is not None:
            refresh_quarantine_seen(dest, entity, table, run.run_id)
    result.seconds += time.perf_counter() - started
    runs.update(dest, run.run_id, counts={"load": result.as_dict()})
    dest.commit()
    return result


# Ends a ledger's subquery on the stage: ``OFFSET 0`` keeps the planner from turning it into a
# join, so each ledger row probes the stage's key index. As a join, the planner hashed the
# whole stage of a full run (3 M messages: a scan of 1.4 GB) to match 90,000 exclusions,
# 1 to 9 s where the probes take 0.13 s; the planner prices each probe as a disk read.
PER_LEDGER_ROW = "OFFSET 0"


def sweep_gone(dest: psycopg.Connection, entity: Entity, table: str, run_id: str,
               ranges: list[list[str]] | None = None) -> int:
    """Full runs: delete destination rows whose source row no longer exists (hard deletes).
    ``ranges``: the key ranges the run staged (changes.py; None: every key); only there does
    the stage say which source rows exist."""
    from include.migration.extract import in_ranges

    stage, target, key = stage_ident(table), target_ident(entity), sql.Identifier(entity.key)
    typ = sql.SQL(entity.key_type)
    gone = sql.SQL("NOT EXISTS (SELECT 1 FROM {} s WHERE s.{} = t.{})").format(stage, key, key)
    ledger_within = sql.SQL("")
    if ranges is not None:
        gone = sql.SQL("{} AND {}").format(in_ranges(entity, sql.SQL("t.{}").format(key), ranges), gone)
        ledger_within = sql.SQL(" AND {}").format(in_ranges(entity, sql.SQL("q.source_key::{}").format(typ), ranges))
    keys = sql.SQL("SELECT t.{} FROM {} t WHERE {}").format(key, target, gone)
    deleted = _delete_with_images(dest, entity, run_id, keys) if ranges != [] else 0
    for ledger in ("quarantine", "exclusions"):
        dest.execute(sql.SQL(
            "DELETE FROM migration.{ledger} q WHERE q.entity = {entity} AND NOT EXISTS "
            "(SELECT 1 FROM {stage} s WHERE s.{key} = q.source_key::{typ} " + PER_LEDGER_ROW + "){within}"
        ).format(ledger=sql.Identifier(ledger), entity=sql.Literal(entity.name), stage=stage, key=key,
                 typ=typ, within=ledger_within))
    if deleted:
        log.info("%s: %d destination rows deleted, their source rows are gone (hard deletes)", entity.name, deleted)
    dest.commit()
    return deleted


def refresh_quarantine_seen(dest: psycopg.Connection, entity: Entity, table: str, run_id: str) -> None:
    """A run that staged only the differing key ranges (changes.py): the quarantined rows of the
    equal ranges were seen again by this run, as a run staging every row would record them
    (``record_ledgers``: the run that saw a row last, and when)."""
    dest.execute(sql.SQL(
        "UPDATE migration.quarantine q SET run_id = {run}, last_seen_at = now() WHERE q.entity = {entity} "
        "AND NOT EXISTS (SELECT 1 FROM {stage} s WHERE s.{key} = q.source_key::{typ} " + PER_LEDGER_ROW + ")"
    ).format(run=sql.Literal(run_id), entity=sql.Literal(entity.name), stage=stage_ident(table),
             key=sql.Identifier(entity.key), typ=sql.SQL(entity.key_type)))


def record_ledgers(dest: psycopg.Connection, entity: Entity, table: str, run_id: str, *,
                   large_stage: bool) -> None:
    """Quarantine and exclusion ledgers: add this run's rows, drop keys that now load.
    ``large_stage``: the stage holds a full run's rows (``PER_LEDGER_ROW``); an incremental
    run's small stage is left to the planner, which hashes it."""
    stage, key = stage_ident(table), sql.Identifier(entity.key)
    params = {"entity": sql.Literal(entity.name), "run": sql.Literal(run_id), "stage": stage, "key": key}
    dest.execute(sql.SQL(
        "INSERT INTO migration.quarantine (entity, source_key, reason, source_row, run_id) "
        "SELECT {entity}, s.{key}::text, s._reason, s._source, {run} FROM {stage} s "
        "WHERE s._disposition = 'quarantined' "
        "ON CONFLICT (entity, source_key) DO UPDATE SET reason = EXCLUDED.reason, "
        "source_row = EXCLUDED.source_row, run_id = EXCLUDED.run_id, last_seen_at = now()"
    ).format(**params))
    dest.execute(sql.SQL(
        "INSERT INTO migration.exclusions (entity, source_key, rule, detail, run_id) "
        "SELECT {entity}, s.{key}::text, s._reason, s._maps_to, {run} FROM {stage} s "
        "WHERE s._disposition = 'excluded' "
        # An unchanged exclusion is left as it is (a rerun would rewrite every row of
        # the ledger): run_id names the run that recorded the row's current rule.
        "ON CONFLICT (entity, source_key) DO UPDATE SET rule = EXCLUDED.rule, detail = EXCLUDED.detail, "
        "run_id = EXCLUDED.run_id "
        "WHERE (exclusions.rule, exclusions.detail) IS DISTINCT FROM (EXCLUDED.rule, EXCLUDED.detail)"
    ).format(**params))
    for ledger, disposition in (("quarantine", "quarantined"), ("exclusions", "excluded")):
        dest.execute(sql.SQL(
            "DELETE FROM migration.{ledger} q WHERE q.entity = {entity} AND EXISTS (SELECT 1 FROM {stage} s "
            "WHERE s.{key} = q.source_key::{typ} AND s._disposition <> {disp} {per_row})"
        ).format(ledger=sql.Identifier(ledger), disp=sql.Literal(disposition), typ=sql.SQL(entity.key_type),
                 per_row=sql.SQL(PER_LEDGER_ROW if large_stage else ""), **params))
    hook = entity.hook("record_ledgers")  # users: migration.user_id_map
    if hook is not None:
        hook(dest, stage, run_id)
