"""The bad night: the load killed, its connection dropped, the destination restarted.

Each case runs a step in a child process (``tests/faults.py``) that stops at a
named point; the test then does the damage from outside (SIGKILL, a
``pg_terminate_backend`` of the load's session, a clean or crash restart of the
destination server this module owns), checks what the destination holds at
that moment (committed chunks and their ``load_progress`` mark go together),
reruns the way Airflow would (retry of the failed task, the whole DAG run again
under the same run id, or a fresh DAG run), and compares every table the
entity writes, row by row and by ``fingerprint``, with an uninterrupted run of
the same staged data: no row lost, none duplicated, none different.

The world is the seeded ``small`` legacy world with a third of its messages
(~20k: 10 chunks of 2,000; users: 10 chunks of 500). The destination server
runs with the default durability settings, so a commit the test saw survives
the crash. At the end the module prints one line per fault: rows lost,
duplicated, extra and different after the rerun (all 0).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from include.migration import db, pipeline
from include.migration.bootstrap import bootstrap
from include.migration.entities import get
from include.migration.load import chunk_bounds
from local_runtime import postgres as local_pg
from tests import faults

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUN = "night"  # the Airflow run id of the interrupted run
BATCH = {"users": 500, "messages": 2000}
PARENTS = ("users", "agents", "conversations")


@dataclass
class Server:
    data_dir: Path
    port: int
    uri: str

    def dsn(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn("postgres"), autocommit=True)

    def clone(self, template: str, name: str) -> str:
        with self.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name),
                                                                          sql.Identifier(template)))
        return self.dsn(name)

    def drop(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def restart(self, mode: str) -> None:
        local_pg.restart(self.data_dir, self.port, mode=mode)


@dataclass
class Templates:
    legacy: str
    # databases on the server, each a step further than the one before
    users_staged: str  # users extracted and transformed (run users:night), nothing loaded
    users_loaded: str  # ... and loaded without interruption (not yet validated / reconciled)
    messages_staged: str  # users, agents, conversations migrated; messages staged (run messages:night)
    reference: dict[str, str]  # entity -> database holding its uninterrupted run
    bounds: dict[str, list[str]]  # entity -> upper key of each chunk
    rows_upto: dict[str, dict[str, int]]  # entity -> {'' / chunk bound: loadable rows up to it}

    def restage(self, server: Server) -> None:
        """After a crash restart: crash recovery emptied the (unlogged) stages of the
        template databases too; stage them again, the way an operator would."""
        for template, entity in ((self.users_staged, "users"), (self.messages_staged, "messages")):
            _stage(pipeline.Conns(self.legacy, server.dsn(template)), entity)


RESULTS: list[dict] = []


@pytest.fixture(scope="module")
def server():
    # Not under pytest's basetemp: a concurrent pytest session resets that tree to mode 0700,
    # and the server (running as its own system user when we are root) loses its data directory.
    data_dir = Path(tempfile.mkdtemp(prefix="migration-faults-")) / "pg"
    port = faults.free_port()
    uri = local_pg.start(data_dir, port, fast=False)
    yield Server(data_dir, port, uri)
    local_pg.stop(data_dir)
    shutil.rmtree(data_dir.parent, ignore_errors=True)


def _stage(conns: pipeline.Conns, entity: str) -> None:
    """Extract and transform (run <entity>:night, full), as the DAG does before its load.
    Staged, so the load goes chunk by chunk (test_direct_load.py covers the direct load's faults)."""
    out = pipeline.extract(conns, entity, RUN, mode="full", dry_run=False, load_method="staged")
    pipeline.transform(conns, entity, out["run_id"])


def _chunk_rows(dsn: str, entity: str) -> tuple[list[str], dict[str, int]]:
    ent = get(entity)
    with db.connection(dsn) as conn:
        stage = conn.execute("SELECT stage_table FROM migration.runs WHERE run_id = %s",
                             (f"{entity}:{RUN}",)).fetchone()[0]
        bounds = chunk_bounds(conn, ent, stage, BATCH[entity], None)
        counts = {"": 0}
        for hi in bounds:
            counts[hi] = conn.execute(sql.SQL(
                "SELECT count(*) FROM {} WHERE _disposition = 'loaded' AND {} <= {}::{}").format(
                sql.Identifier("migration_stage", stage), sql.Identifier(ent.key), sql.Literal(hi),
                sql.SQL(ent.key_type))).fetchone()[0]
    return bounds, counts


@pytest.fixture(scope="module")
def templates(server: Server, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    from local_runtime import world as legacy_world

    with server.admin() as conn:
        for name in ("seeded_legacy", "tpl_users_staged"):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    legacy = server.dsn("seeded_legacy")
    legacy_world.seed(legacy, scale="small", media_root=tmp_path_factory.mktemp("fault-media") / "media")
    with psycopg.connect(legacy, autocommit=True) as conn:
        # A third of the messages is enough for ten chunks and keeps the module quick.
        conn.execute("DELETE FROM messages WHERE id % 3 <> 0")
    bootstrap(server.dsn("tpl_users_staged"))
    _stage(pipeline.Conns(legacy, server.dsn("tpl_users_staged")), "users")
    users = pipeline.Conns(legacy, server.clone("tpl_users_staged", "tpl_users_loaded"))
    pipeline.load(users, "users", f"users:{RUN}", batch_size=BATCH["users"], quarantine_threshold_pct=100)
    parents = pipeline.Conns(legacy, server.clone("tpl_users_loaded", "tpl_parents"))
    pipeline.reconcile(parents, "users", f"users:{RUN}")
    for entity in ("agents", "conversations"):
        pipeline.run_entity(parents, entity, RUN, mode="full", validate_with_gx=False, quarantine_threshold_pct=100)
    _stage(parents, "messages")
    server.clone("tpl_parents", "tpl_messages_staged")
    reference = pipeline.Conns(legacy, server.clone("tpl_messages_staged", "ref_messages"))
    pipeline.load(reference, "messages", f"messages:{RUN}", batch_size=BATCH["messages"],
                  quarantine_threshold_pct=100)
    pipeline.reconcile(reference, "messages", f"messages:{RUN}")
    bounds, rows_upto = {}, {}
    for entity, template in (("users", "tpl_users_staged"), ("messages", "tpl_messages_staged")):
        bounds[entity], rows_upto[entity] = _chunk_rows(server.dsn(template), entity)
    assert len(bounds["users"]) >= 9 and len(bounds["messages"]) >= 9, bounds
    yield Templates(legacy, "tpl_users_staged", "tpl_users_loaded", "tpl_messages_staged",
                    {"users": server.dsn("tpl_users_loaded"), "messages": reference.dest}, bounds, rows_upto)
    _print_results(request)


def _print_results(request: pytest.FixtureRequest) -> None:
    if not RESULTS:
        return
    lines = ["", "fault injection: per kill point, the destination after the rerun vs an uninterrupted run",
             f"  {'case':<44} {'child':<8} {'committed at fault':<22} {'rerun':<8} {'rows':>7} {'lost':>5} "
             f"{'dup':>4} {'extra':>5} {'diff':>5}  equal"]
    for r in RESULTS:
        lines.append(f"  {r['case']:<44} {r['child']:<8} {r['at_fault']:<22} {r['rerun']:<8} {r['rows']:>7} "
                     f"{r['lost']:>5} {r['duplicated']:>4} {r['extra']:>5} {r['different']:>5}  {r['equal']}")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print("\n".join(lines), flush=True)


# --------------------------------------------------------------------------
# Checks


def _run_record(dsn: str, entity: str, run: str = RUN) -> dict:
    with db.connection(dsn) as conn:
        row = conn.execute("SELECT status, load_progress, stage_table, stage_rows FROM migration.runs "
                           "WHERE run_id = %s", (f"{entity}:{run}",)).fetchone()
    return dict(zip(("status", "load_progress", "stage_table", "stage_rows"), row))


def _assert_committed_together(dsn: str, tpl: Templates, entity: str, expected_chunks: int | None) -> str:
    """What the fault left: the destination holds exactly the rows of the chunks its
    ``load_progress`` mark says are committed, nothing of the chunk in flight."""
    progress = _run_record(dsn, entity)["load_progress"]
    bounds = tpl.bounds[entity]
    if expected_chunks is not None:
        assert (progress or "") == (bounds[expected_chunks - 1] if expected_chunks else ""), progress
    ent = get(entity)
    with db.connection(dsn) as conn:
        present = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(ent.schema_name, ent.target_table))).fetchone()[0]
        beyond = 0
        if progress:
            beyond = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {} > {}::{}").format(
                sql.Identifier(ent.schema_name, ent.target_table), sql.Identifier(ent.key), sql.Literal(progress),
                sql.SQL(ent.key_type))).fetchone()[0]
        if entity == "users":
            auth = conn.execute("SELECT count(*) FROM auth.users").fetchone()[0]
            assert auth == present, "public.users and auth.users are written in the same chunk transaction"
    assert beyond == 0, f"{beyond} rows above load_progress {progress}: a chunk's rows outlived its progress mark"
    assert present == tpl.rows_upto[entity][progress or ""], (present, progress)
    done = 0 if not progress else bounds.index(progress) + 1
    return f"{done} chunks, {present} rows"


def _assert_same_as_uninterrupted(tpl: Templates, dsn: str, entity: str, case: str, child: str, at_fault: str,
                                  rerun: str) -> None:
    entities = ("users",) if entity == "users" else PARENTS + ("messages",)
    diffs = faults.compare_tables(tpl.reference[entity], dsn, entities)
    main = next(d for d in diffs if d.table == f"public.{entity}")
    RESULTS.append({"case": case, "child": child, "at_fault": at_fault, "rerun": rerun, "rows": main.rows,
                    "lost": sum(d.lost for d in diffs), "duplicated": sum(d.duplicated for d in diffs),
                    "extra": sum(d.extra for d in diffs), "different": sum(d.different for d in diffs),
                    "equal": all(d.equal for d in diffs)})
    print(RESULTS[-1])
    assert [d for d in diffs if not d.equal] == []
    assert faults.fingerprints(dsn, entities) == faults.fingerprints(tpl.reference[entity], entities)
    assert main.rows == main.reference_rows > 0


def _rerun(conns: pipeline.Conns, entity: str, how: str) -> None:
    batch = BATCH[entity]
    if how == "retry":  # Airflow retries the failed task, then the DAG goes on
        pipeline.load(conns, entity, f"{entity}:{RUN}", batch_size=batch, quarantine_threshold_pct=100)
        assert pipeline.reconcile(conns, entity, f"{entity}:{RUN}")["verdict"] == "clean"
    elif how == "dag":  # the whole DAG run cleared: same run id, same run record
        pipeline.run_entity(conns, entity, RUN, mode="full", batch_size=batch, validate_with_gx=False,
                            quarantine_threshold_pct=100)
    elif how == "fresh":  # a new DAG run
        pipeline.run_entity(conns, entity, "morning", mode="full", batch_size=batch, validate_with_gx=False,
                            quarantine_threshold_pct=100)
    else:
        raise ValueError(how)
    assert _run_record(conns.dest, entity, "morning" if how == "fresh" else RUN)["status"] == "succeeded"


# --------------------------------------------------------------------------
# The load, killed / cut off / restarted at each point


@dataclass(frozen=True)
class Fault:
    entity: str
    point: str
    action: str  # kill | terminate | crash (immediate restart) | restart (clean restart)
    rerun: str  # retry | dag | fresh
    committed: int | None  # chunks committed when the fault hits (None: whatever the mark says)

    @property
    def id(self) -> str:
        return f"{self.entity}-{self.point.replace(':', '')}-{self.action}-{self.rerun}"


LAST = -1  # every chunk
LOAD_FAULTS = [
    Fault("messages", "ledgers_committed", "kill", "retry", 0),
    Fault("messages", "chunk_written:4", "kill", "retry", 3),
    Fault("messages", "progress_written:4", "kill", "retry", 3),
    Fault("messages", "chunk_committed:4", "kill", "dag", 4),
    Fault("messages", "before_accounting", "kill", "retry", LAST),
    Fault("messages", "watermark_written", "kill", "retry", LAST),
    Fault("messages", "chunk_written:6", "terminate", "retry", 5),
    Fault("messages", "progress_written:6", "terminate", "fresh", 5),
    Fault("messages", "chunk_written:5", "crash", "dag", 4),
    Fault("messages", "chunk_committed:5", "restart", "retry", 5),
    Fault("messages", "progress_written:8", "crash", "fresh", 7),
    Fault("users", "chunk_written:3", "kill", "retry", 2),
    Fault("users", "progress_written:3", "crash", "dag", 2),
    Fault("users", "chunk_committed:3", "terminate", "retry", 3),
]


@pytest.mark.parametrize("fault", LOAD_FAULTS, ids=lambda f: f.id)
def test_load_survives(fault: Fault, server: Server, templates: Templates, tmp_path: Path):
    entity, run_id = fault.entity, f"{fault.entity}:{RUN}"
    name = re.sub(r"[^a-z0-9]+", "_", fault.id.lower())[:50]
    template = templates.users_staged if entity == "users" else templates.messages_staged
    conns = pipeline.Conns(templates.legacy, server.clone(template, name))
    child = faults.start_step("load", conns, entity, run_id, point=fault.point, signal_dir=tmp_path / "signal",
                              batch_size=BATCH[entity], quarantine_threshold_pct=100)
    child.wait_paused()
    if fault.action == "kill":
        child.kill()
        out = child.finish()
        assert out.killed, out.stderr[-2000:]
    elif fault.action == "terminate":
        assert faults.terminate_backends(conns.dest, f"migration-load-{entity}") == 1
        child.go()
        out = child.finish()
        assert out.returncode == 1 and "terminating connection due to administrator command" in out.stderr, \
            out.stderr[-3000:]
    else:
        server.restart("immediate" if fault.action == "crash" else "fast")
        if fault.action == "crash":
            templates.restage(server)
        child.go()
        out = child.finish()
        assert out.returncode == 1, out.stderr[-3000:]
    expected = len(templates.bounds[entity]) if fault.committed == LAST else fault.committed
    at_fault = _assert_committed_together(conns.dest, templates, entity, expected)
    record = _run_record(conns.dest, entity)
    assert record["status"] == "running"
    if fault.point == "watermark_written":
        with db.connection(conns.dest) as conn:
            assert conn.execute("SELECT count(*) FROM migration.watermarks WHERE entity = %s",
                                (entity,)).fetchone()[0] == 0, "the watermark moved without its run"
    if fault.action == "crash":
        # Crash recovery empties unlogged tables: the retried load finds its stage empty, stages
        # the run's scope again by itself, and loads (the rerun below then finds it loaded).
        pipeline.load(conns, entity, run_id, batch_size=BATCH[entity], quarantine_threshold_pct=100)
        with db.connection(conns.dest) as conn:
            restaged = conn.execute("SELECT report->'restaged' FROM migration.runs WHERE run_id = %s",
                                    (run_id,)).fetchone()[0]
        assert len(restaged) == 1 and re.search(r"holds 0 of the \d+ rows .*emptied the unlogged stage",
                                                restaged[0]), restaged
    _rerun(conns, entity, fault.rerun)
    _assert_same_as_uninterrupted(templates, conns.dest, entity, fault.id, _child_label(out), at_fault, fault.rerun)
    server.drop(name)


def _child_label(out: faults.Outcome) -> str:
    return "SIGKILL" if out.killed else f"exit {out.returncode}"


def test_load_killed_from_outside_when_progress_shows_three_chunks(server: Server, templates: Templates,
                                                                 tmp_path: Path):
    """No pause point: the test watches ``migration.runs.load_progress`` and SIGKILLs the
    child as soon as three chunks are committed, wherever it then is."""
    entity, run_id = "messages", f"messages:{RUN}"
    conns = pipeline.Conns(templates.legacy, server.clone(templates.messages_staged, "external_kill"))
    child = faults.start_step("load", conns, entity, run_id, signal_dir=tmp_path / "signal",
                              batch_size=BATCH[entity], quarantine_threshold_pct=100)
    third = templates.bounds[entity][2]

    def three_committed() -> bool:
        progress = _run_record(conns.dest, entity)["load_progress"]
        if child.proc.poll() is not None:
            raise AssertionError(f"the load ended before it was killed (progress {progress})")
        return bool(progress) and int(progress) >= int(third)

    faults.wait_for(three_committed, "three committed chunks")
    child.kill()
    out = child.finish()
    assert out.killed
    at_fault = _assert_committed_together(conns.dest, templates, entity, None)
    assert _run_record(conns.dest, entity)["load_progress"] != templates.bounds[entity][-1]
    _rerun(conns, entity, "retry")
    _assert_same_as_uninterrupted(templates, conns.dest, entity, "messages-external-kill-at-3-chunks",
                                  _child_label(out), at_fault, "retry")
    server.drop("external_kill")


# --------------------------------------------------------------------------
# Validation and reconciliation interrupted


def test_validation_killed_then_retried(server: Server, templates: Templates, tmp_path: Path):
    conns = pipeline.Conns(templates.legacy, server.clone(templates.users_loaded, "validate_kill"))
    run_id = f"users:{RUN}"
    child = faults.start_step("validate", conns, "users", run_id, point="validating", signal_dir=tmp_path / "s")
    child.wait_paused()
    child.kill()
    assert child.finish().killed
    assert _run_record(conns.dest, "users")["status"] == "loaded"
    assert pipeline.validate(conns, "users", run_id)["validated"]
    assert pipeline.reconcile(conns, "users", run_id)["verdict"] == "clean"
    assert _run_record(conns.dest, "users")["status"] == "succeeded"
    _assert_same_as_uninterrupted(templates, conns.dest, "users", "users-validating-kill", "SIGKILL",
                                  "loaded, not validated", "retry")
    server.drop("validate_kill")


@pytest.mark.parametrize("action", ["kill", "crash"])
def test_reconciliation_interrupted(action: str, server: Server, templates: Templates, tmp_path: Path):
    """Killed after its verdict is stored but before the run is finished; or the destination
    crashes there (the stage, unlogged, is emptied: the reconciliation does not need it)."""
    name = f"reconcile_{action}"
    conns = pipeline.Conns(templates.legacy, server.clone(templates.users_loaded, name))
    run_id = f"users:{RUN}"
    child = faults.start_step("reconcile", conns, "users", run_id, point="reconciled", signal_dir=tmp_path / "s")
    child.wait_paused()
    if action == "kill":
        child.kill()
        out = child.finish()
        assert out.killed
        assert _run_record(conns.dest, "users")["status"] == "loaded"
        assert pipeline.reconcile(conns, "users", run_id)["verdict"] == "clean"
    else:
        server.restart("immediate")
        templates.restage(server)
        child.go()
        out = child.finish()
        # Each part of the step opens its own connection: it carries on after the restart.
        assert out.returncode == 0 and out.result()["verdict"] == "clean", out.stderr[-3000:]
    record = _run_record(conns.dest, "users")
    assert record["status"] == "succeeded"
    with db.connection(conns.dest) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (f"migration_stage.{record['stage_table']}",)).fetchone()[0] \
            is None, "the finished run's stage is dropped"
        assert conn.execute("SELECT count(*) FROM migration.reconciliations WHERE run_id = %s",
                            (run_id,)).fetchone()[0] == 1
    _assert_same_as_uninterrupted(templates, conns.dest, "users", f"users-reconciled-{action}", _child_label(out),
                                  "loaded, verdict stored", "retry" if action == "kill" else "none")
    server.drop(name)
