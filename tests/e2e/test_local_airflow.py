"""The local Airflow the demo runs, and the Migration console in a real browser, on one Airflow.

One local Airflow for the module (``local_runtime.airflow_stack``: the four
components as separate processes, LocalExecutor, ``plugins/`` loaded) serves a
one-task probe DAG and the console over a destination that holds what the demo
leaves behind (the small world's schema check, assessment, full run of the
relational entities and cutover verdict). The tests:

- the runtime: it starts for real, answers the API with Airflow's own login
  (and refuses without it), runs a DAG with its conf and serves its task log;
- the console: headless chromium (Debian's ``chromium``) signs in, opens the
  page, checks the rendered entity table against the destination, and saves a
  screenshot;

and when the module ends, stopping it leaves no process and frees its port.
"""

from __future__ import annotations

import json
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from local_runtime import airflow_stack as local_airflow
from tests.browser import Browser, chromium_path
from tests.conftest import ROOT, create_database, drop_database, free_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]

RELATIONAL = ["users", "agents", "conversations", "messages"]
SCREENSHOT = ROOT / ".local" / "test-artifacts" / "migration-console.png"

PROBE_DAG = '''
"""A one-task DAG: proves the scheduler, the LocalExecutor and the Execution API work together."""
import pendulum
from airflow.sdk import dag, task


@dag(schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False, tags=["probe"])
def runtime_probe():
    @task
    def echo(params=None, dag_run=None):
        print("conf is", dag_run.conf)
        return dag_run.conf["mode"]

    echo()


runtime_probe()
'''


@dataclass
class Served:
    af: local_airflow.LocalAirflow
    client: local_airflow.AirflowClient
    legacy: str
    dest: str


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _migrate_like_the_demo(legacy: str, dest: str, reports: Path, media: Path) -> None:
    """The small generated world, its schema check, assessment, a full run of the relational
    entities and a cutover verdict: what the demo leaves behind."""
    from include.migration import assess, cutover, pipeline
    from include.migration.bootstrap import bootstrap
    from include.migration.schema_diff import run_schema_diff
    from local_runtime.world import seed

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MIGRATION_STATE_DIR", str(reports))
        seed(legacy, scale="small", media_root=media)
        bootstrap(dest)
        assess.run_assessment(legacy, dest, dag_run_id="manual__assess")
        run_schema_diff(legacy, dest, "manual__schema")
        conns = pipeline.Conns(legacy, dest)
        for entity in RELATIONAL:
            pipeline.run_entity(conns, entity, "manual__backfill", mode="full", validate_with_gx=False,
                                quarantine_threshold_pct=100.0)
        cutover.evaluate(legacy, dest, "manual__cutover", entities=RELATIONAL)


@pytest.fixture(scope="module")
def served(pg_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("local-airflow")
    suffix = uuid.uuid4().hex[:8]
    names = [f"la_{kind}_{suffix}" for kind in ("airflow", "legacy", "dest")]
    metadata, legacy, dest = (create_database(pg_uri, name) for name in names)
    reports = tmp / "reports"
    _migrate_like_the_demo(legacy, dest, reports, tmp / "media")
    dags = tmp / "dags"
    dags.mkdir()
    (dags / "runtime_probe.py").write_text(textwrap.dedent(PROBE_DAG))
    af = local_airflow.LocalAirflow(
        state_dir=tmp / "state",
        sql_alchemy_conn="postgresql+psycopg2://" + metadata.split("://", 1)[1],
        dags_folder=dags,
        plugins_folder=ROOT / "plugins",
        port=free_port(),
        extra_env={"AIRFLOW_CONN_SUPABASE_DB": dest, "AIRFLOW_CONN_LEGACY_DB": legacy,
                   "MIGRATION_STATE_DIR": str(reports), "PYTHONPATH": str(ROOT)},
    )
    seen: set[int] = set()
    try:
        client = local_airflow.start(af, timeout=300)
        seen = {p.pid for p in local_airflow.our_processes(af.state_dir)}
        yield Served(af, client, legacy, dest)
    finally:
        seen |= {p.pid for p in local_airflow.our_processes(af.state_dir)}
        local_airflow.stop(af.state_dir)
        local_airflow.sweep(af.state_dir)
        for name in names:
            drop_database(pg_uri, name)
    # Stopped means stopped: no component, no child of one, the API port free.
    assert local_airflow.running(af.state_dir) == {}
    assert local_airflow.our_processes(af.state_dir) == []
    assert [pid for pid in seen if _alive(pid)] == []
    assert local_airflow.port_is_free(af.port)


def _wait_for_dag(client: local_airflow.AirflowClient, dag_id: str, seconds: float = 90) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for dag in client.dags():
            if dag["dag_id"] == dag_id:
                return dag
        time.sleep(2)
    raise AssertionError(f"{dag_id} was not served within {seconds}s")


def test_local_airflow_serves_and_runs_a_dag(served: Served) -> None:
    af, client = served.af, served.client
    assert set(local_airflow.running(af.state_dir)) == set(local_airflow.COMPONENTS)

    assert client.version()["version"] == "3.3.2"
    assert client.token().count(".") == 2  # a JWT
    wrong = httpx.post(f"{af.api_url}/auth/token", json={"username": "admin", "password": "wrong"})
    assert wrong.status_code == 401
    unauthenticated = httpx.get(f"{af.api_url}/api/v2/dags")
    assert unauthenticated.status_code == 401

    dag = _wait_for_dag(client, "runtime_probe")
    assert dag["is_paused"] is True
    client.unpause("runtime_probe")
    run = client.trigger("runtime_probe", {"mode": "full"})
    finished = client.wait_for_run("runtime_probe", run["dag_run_id"], timeout=120)
    assert finished["state"] == "success"
    assert finished["conf"] == {"mode": "full"}
    [ti] = client.task_instances("runtime_probe", run["dag_run_id"])
    log = client.task_log("runtime_probe", run["dag_run_id"], "echo", ti["try_number"])
    assert any("conf is {'mode': 'full'}" in line for line in log)


def test_the_console_in_a_browser(served: Served, tmp_path: Path) -> None:
    chromium = chromium_path()
    if chromium is None:
        pytest.skip("no chromium on this machine, and `make test` could not install it (apt-get missing or "
                    "not root): the browser test needs Debian's chromium package")
    af, client = served.af, served.client
    password = local_airflow.admin_password(af)

    # Without a login the API refuses, and gives no data.
    bare = httpx.get(f"{af.api_url}/migration/api/overview", timeout=60)
    assert bare.status_code in (401, 403) and "entities" not in bare.text
    # The plugin is registered with its nav entry.
    plugins = httpx.get(f"{af.api_url}/api/v2/plugins", timeout=60,
                        headers={"Authorization": f"Bearer {client.token()}"}).json()["plugins"]
    console = next(p for p in plugins if p["name"] == "migration_console")
    assert console["external_views"][0]["name"] == "Migration"

    with psycopg.connect(served.dest) as conn:
        loaded = {e: conn.execute("SELECT (counts -> 'accounting' ->> 'loaded')::bigint FROM migration.runs "
                                  "WHERE entity = %s", (e,)).fetchone()[0] for e in RELATIONAL}
        reasons = {r for (r,) in conn.execute("SELECT DISTINCT reason FROM migration.quarantine")}
    assert reasons

    with Browser(chromium, timeout=90) as browser:
        # Before signing in, the page says how to, and shows nothing.
        browser.goto(f"{af.ui_url}/migration/")
        browser.wait_for("document.querySelector('#refused')", timeout=60)
        assert browser.evaluate("document.querySelector('#entities')") is None
        browser.goto(f"{af.ui_url}/auth/login")
        browser.type_into("input[name=username]", local_airflow.ADMIN_USER)
        browser.type_into("input[type=password]", password)
        browser.evaluate("document.querySelector('form button[type=submit]').click()")
        browser.wait_for("!location.pathname.startsWith('/auth/login')", timeout=60)
        # The nav entry's route: the Airflow UI showing the console in its frame.
        browser.goto(f"{af.ui_url}/plugin/migration")
        browser.wait_for("[...document.querySelectorAll('iframe')].some(f => f.src.endsWith('/migration/'))",
                         timeout=90)
        time.sleep(3)  # the frame's own load, for the screenshot only
        browser.screenshot(tmp_path / "migration-console-in-airflow.png")
        browser.screenshot(SCREENSHOT.with_name("migration-console-in-airflow.png"))
        # The page itself, with the same login (the UI's cookie).
        browser.goto(f"{af.ui_url}/migration/")
        browser.wait_for("document.querySelector('#entities')", timeout=60)
        table = browser.evaluate(
            "[...document.querySelectorAll('#entities tr[data-entity]')].map("
            "r => [r.dataset.entity, ...[...r.cells].map(c => c.innerText.trim())])")
        quarantine = browser.evaluate(
            "[...document.querySelectorAll('#quarantine tr')].slice(1).map(r => r.cells[1].innerText)")
        cutover = browser.evaluate("document.querySelector('#cutover-verdict').innerText")
        browser.screenshot(SCREENSHOT)
        browser.screenshot(tmp_path / "migration-console.png")

    rows = {r[0]: r for r in table}
    assert list(rows) == ["users", "agents", "conversations", "messages", "media"], table
    header = ["entity", "entity_cell", "last run", "state", "when", "duration", "in scope", "loaded"]
    loaded_col = header.index("loaded")
    for entity in RELATIONAL:
        assert rows[entity][loaded_col].replace(",", "") == str(loaded[entity]), rows[entity]
        assert rows[entity][header.index("last run")].startswith("full"), rows[entity]
    assert "never run" in rows["media"][header.index("last run")]
    assert set(quarantine) == reasons
    assert cutover.split()[0] in ("GO", "NO-GO")
    assert SCREENSHOT.stat().st_size > 10_000
    print(json.dumps({"screenshot": str(SCREENSHOT)}))
