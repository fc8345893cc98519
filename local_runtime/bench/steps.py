"""The benchmark's measured steps: what runs inside each spawned child.

This module owns the bodies :meth:`~local_runtime.bench.measure.Bench.measure`
times: the limit (binary ``COPY`` relay), the naive upsert, one pipeline run,
the reconciliation, and the profiled messages run with its first load chunk
and its transform query explained. Each is a module-level function of plain
arguments returning a dict with ``rows`` (and ``written`` for a pipeline run).
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import sql

from local_runtime.bench.report import NAIVE_BATCH
from local_runtime.bench.server import empty_destination_messages, legacy_columns


def step_limit(legacy: str, dest: str, entity: str) -> dict:
    """Binary COPY of the legacy table into the empty scratch copy: the floor.
    Read and written as fast as the pipeline's own relay does (db.copy_rows, 1 MiB writes)."""
    from include.migration import db

    cols = sql.SQL(", ").join(sql.Identifier(c) for c in legacy_columns(entity))
    with psycopg.connect(legacy) as src, psycopg.connect(dest) as dst:
        with src.cursor() as rcur, dst.cursor() as wcur:
            with rcur.copy(sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT BINARY)").format(
                    cols, sql.Identifier("public", entity))) as out, \
                    wcur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                        sql.Identifier("bench_limit", entity), cols)) as into:
                copied = db.relay_copy(out, into)
            rows = wcur.rowcount
        dst.commit()
    return {"rows": rows, "bytes_copied": copied}


def _naive_columns(entity: str) -> tuple[list[str], str]:
    """The columns both naive baselines copy, and the key they upsert on."""
    from include.migration.entities import get

    return legacy_columns(entity), get(entity).key


def step_naive(legacy: str, dest: str, entity: str, limit_rows: int) -> dict:
    """The migration plan's approach as written: psycopg2, rows read through a server-side
    (named) cursor, upserted with ``execute_values`` in batches of 100, one commit per batch."""
    import psycopg2
    from psycopg2 import sql as sql2
    from psycopg2.extras import execute_values

    names, key = _naive_columns(entity)
    cols = sql2.SQL(", ").join(map(sql2.Identifier, names))
    insert = sql2.SQL("INSERT INTO {t} ({cols}) VALUES %s ON CONFLICT ({key}) DO UPDATE SET {sets}").format(
        t=sql2.Identifier("bench_naive", entity), cols=cols, key=sql2.Identifier(key),
        sets=sql2.SQL(", ").join(
            sql2.SQL("{0} = EXCLUDED.{0}").format(sql2.Identifier(c)) for c in names if c != key))
    rows = 0
    src, dst = psycopg2.connect(legacy), psycopg2.connect(dest)
    try:
        with src.cursor(name="bench_naive") as rcur, dst.cursor() as wcur:
            statement = insert.as_string(wcur)
            rcur.execute(sql2.SQL("SELECT {} FROM {} ORDER BY {} LIMIT {}").format(
                cols, sql2.Identifier("public", entity), sql2.Identifier(key), sql2.Literal(limit_rows)))
            while batch := rcur.fetchmany(NAIVE_BATCH):
                execute_values(wcur, statement, batch, page_size=NAIVE_BATCH)
                dst.commit()
                rows += len(batch)
    finally:
        src.close()
        dst.close()
    return {"rows": rows}


def step_naive_executemany(legacy: str, dest: str, entity: str, limit_rows: int) -> dict:
    """A second baseline: the same upserts through psycopg 3's ``executemany`` (pipelined),
    read through a server-side cursor, 100 rows per batch, one commit per batch."""
    names, key = _naive_columns(entity)
    insert = sql.SQL(
        "INSERT INTO {t} ({cols}) VALUES ({vals}) ON CONFLICT ({key}) DO UPDATE SET {sets}").format(
        t=sql.Identifier("bench_naive", entity), cols=sql.SQL(", ").join(map(sql.Identifier, names)),
        vals=sql.SQL(", ").join(sql.Placeholder() * len(names)), key=sql.Identifier(key),
        sets=sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in names if c != key))
    rows = 0
    with psycopg.connect(legacy) as src, psycopg.connect(dest) as dst:
        with src.cursor(name="bench_naive") as rcur:
            rcur.itersize = 2000
            rcur.execute(sql.SQL("SELECT {} FROM {} ORDER BY {} LIMIT {}").format(
                sql.SQL(", ").join(map(sql.Identifier, names)), sql.Identifier("public", entity),
                sql.Identifier(key), sql.Literal(limit_rows)))
            batch: list[tuple] = []
            for record in rcur:
                batch.append(record)
                if len(batch) == NAIVE_BATCH:
                    rows += _naive_flush(dst, insert, batch)
            rows += _naive_flush(dst, insert, batch)
    return {"rows": rows}


def _naive_flush(dst: psycopg.Connection, insert: sql.Composable, batch: list[tuple]) -> int:
    if not batch:
        return 0
    with dst.cursor() as cur:
        cur.executemany(insert, batch)
    dst.commit()
    n = len(batch)
    batch.clear()
    return n


def step_pipeline(legacy: str, dest: str, entity: str, dag_run_id: str, mode: str, **extra: Any) -> dict:
    """One ``run_entity`` without validation and reconciliation; figures from its run record."""
    from include.migration import pipeline

    out = pipeline.run_entity(pipeline.Conns(legacy, dest), entity, dag_run_id, mode=mode,
                              validate_with_gx=False, reconcile_after=False, quarantine_threshold_pct=100,
                              **extra)
    written = sum(out.get(k) or 0 for k in ("inserted", "updated", "deleted"))
    record = _run_record(dest, out["run_id"])
    return {"rows": record.get("stage_rows"), "written": written, **out, **record}


def _run_record(dest: str, run_id: str) -> dict:
    with psycopg.connect(dest) as conn:
        row = conn.execute("SELECT stage_rows, source_rows, scope->>'kind', counts, report->'changes' "
                           "FROM migration.runs WHERE run_id = %s", (run_id,)).fetchone()
    if row is None:
        return {}
    counts = row[3] or {}
    accounting = counts.get("accounting") or {}
    return {"stage_rows": row[0], "source_rows": row[1], "scope": row[2], "changes": row[4],
            "extract_seconds": counts.get("extract_seconds"),
            "load_seconds": (counts.get("load") or {}).get("load_seconds"),
            "dispositions": {k: accounting.get(k) for k in ("loaded", "excluded", "quarantined")}}


def step_reconcile(legacy: str, dest: str, entity: str) -> dict:
    from include.migration.entities import get
    from include.migration.reconcile import reconcile

    rec = reconcile(legacy, dest, get(entity))
    return {"rows": rec.source_rows, "target_rows": rec.target_rows, "buckets": rec.buckets,
            "clean": rec.clean, "verdict": rec.verdict_line()}


def step_profile(legacy: str, dest: str, entity: str, dag_run_id: str) -> dict:
    """The messages full run's steps one by one, timed, with its first load chunk explained (untimed)."""
    from include.migration import pipeline

    conns = pipeline.Conns(legacy, dest)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    run_id = pipeline.extract(conns, entity, dag_run_id, mode="full", dry_run=False)["run_id"]
    timings["extract"] = time.perf_counter() - started
    started = time.perf_counter()
    pipeline.transform(conns, entity, run_id)
    timings["transform (destination checks)"] = time.perf_counter() - started
    chunk_plan = explain_first_chunk(dest, entity, run_id)
    empty_destination_messages(dest)  # the explained chunk was rolled back: drop its dead rows too
    started = time.perf_counter()
    loaded = pipeline.load(conns, entity, run_id, quarantine_threshold_pct=100)
    timings["load (merge, ledgers, accounting)"] = time.perf_counter() - started
    with psycopg.connect(dest) as conn:
        direct_steps = conn.execute("SELECT counts->'direct'->'steps' FROM migration.runs WHERE run_id = %s",
                                    (run_id,)).fetchone()[0]
    for name, secs in (direct_steps or {}).items():  # a direct load: its own steps, inside the load
        timings[f"  of which direct load: {name}"] = secs
    started = time.perf_counter()
    pipeline.finish(conns, run_id, "succeeded")
    timings["finish (drop stage)"] = time.perf_counter() - started
    record = _run_record(dest, run_id)
    return {"rows": record.get("stage_rows"), "timings": timings, "chunk_plan": chunk_plan,
            "extract_seconds": record.get("extract_seconds"), "load_seconds": record.get("load_seconds"),
            "chunks": loaded.get("chunks")}


class _FirstWriteSeen(Exception):
    pass


class _ExplainFirstWrite:
    """A connection stand-in for the load: passes statements through, holds its
    commits back, and runs the first statement that writes the target table
    (plain INSERT into an empty range, or the merge) under ``EXPLAIN (ANALYZE,
    BUFFERS)``, then stops the load. The caller rolls everything back."""

    def __init__(self, conn: psycopg.Connection, target: sql.Identifier):
        self.conn = conn
        self.target = target.as_string(conn)
        self.plan: list[str] = []

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        text = query.as_string(self.conn) if isinstance(query, sql.Composable) else str(query)
        if f"INSERT INTO {self.target}" not in text:
            return self.conn.execute(query, params, **kwargs)
        explained = sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ") + (
            query if isinstance(query, sql.Composable) else sql.SQL(text))
        self.plan = [r[0] for r in self.conn.execute(explained, params)]
        raise _FirstWriteSeen

    def commit(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def explain_first_chunk(dest: str, entity_name: str, run_id: str) -> list[str]:
    """The first chunk of a staged run's load, explained, in a transaction that is rolled back."""
    try:
        from include.migration import db, pipeline, runs
        from include.migration import load as load_mod
        from include.migration.entities import get

        entity = get(entity_name)
        with db.connection(dest) as conn:
            run = runs.get(conn, run_id)
            assert run is not None and run.stage_table is not None
            spy = _ExplainFirstWrite(conn, sql.Identifier(entity.schema_name, entity.target_table))
            try:
                load_mod.load(spy, entity, run, batch_size=pipeline.DEFAULT_BATCH_SIZE,  # type: ignore[arg-type]
                              full=run.mode == "full")
            except _FirstWriteSeen:
                pass
            conn.rollback()
        return spy.plan or ["not captured: the load wrote no chunk"]
    except Exception as err:  # the load's internals moved: the rest of the profile stands
        return [f"not captured: {type(err).__name__}: {err}"]


def explain_transform(legacy: str, entity_name: str) -> list[str]:
    from include.migration import db
    from include.migration.entities import get
    from include.migration.extract import Scope, transform_query

    query = transform_query(get(entity_name), Scope(kind="all"))
    with db.connection(legacy) as conn:
        conn.read_only = True
        db.tune_legacy(conn)  # the settings the pipeline's own legacy sessions run with
        try:
            rows = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS, SERIALIZE BINARY) ") + query).fetchall()
        except psycopg.Error:  # before PostgreSQL 17: no SERIALIZE
            conn.rollback()
            db.tune_legacy(conn)
            rows = conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ") + query).fetchall()
    return [r[0] for r in rows]
