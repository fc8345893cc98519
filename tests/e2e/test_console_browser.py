"""The Migration console in a real browser: headless chromium signs in to the running api-server
(the local Airflow the demo runs, with plugins/ loaded) after a demo-sized run, opens the page,
checks the rendered entity table against the destination, and saves a screenshot."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from local_runtime import airflow_stack as local_airflow
from tests.browser import Browser, chromium_path

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
RELATIONAL = ["users", "agents", "conversations", "messages"]
SCREENSHOT = ROOT / ".local" / "test-artifacts" / "migration-console.png"


@pytest.fixture
def migrated(world, tmp_path, monkeypatch):
    """The small generated world, its schema check, assessment, a full run of the relational
    entities and a cutover verdict: what the demo leaves behind."""
    from include.migration import assess, cutover, pipeline
    from include.migration.schema_diff import run_schema_diff
    from local_runtime.world import seed

    monkeypatch.setenv("MIGRATION_STATE_DIR", str(tmp_path / "reports"))
    seed(world.legacy, scale="small", media_root=tmp_path / "media")
    assess.run_assessment(world.legacy, world.dest, dag_run_id="manual__assess")
    run_schema_diff(world.legacy, world.dest, "manual__schema")
    for entity in RELATIONAL:
        pipeline.run_entity(world, entity, "manual__backfill", mode="full", validate_with_gx=False,
                            quarantine_threshold_pct=100.0)
    cutover.evaluate(world.legacy, world.dest, "manual__cutover", entities=RELATIONAL)
    return world, tmp_path / "reports"


def test_the_console_in_a_browser(migrated, local_airflow_in, tmp_path):
    chromium = chromium_path()
    if chromium is None:
        pytest.skip("no chromium on this machine, and `make test` could not install it (apt-get missing or "
                    "not root): the browser test needs Debian's chromium package")
    world, reports = migrated
    af = local_airflow_in(
        "airflow_console",
        ROOT / "plugins",
        extra_env={"AIRFLOW_CONN_SUPABASE_DB": world.dest, "AIRFLOW_CONN_LEGACY_DB": world.legacy,
                   "MIGRATION_STATE_DIR": str(reports), "PYTHONPATH": str(ROOT)},
    )
    try:
        client = local_airflow.start(af, timeout=300)
        password = local_airflow.admin_password(af)

        # Without a login the API refuses, and gives no data.
        bare = httpx.get(f"{af.api_url}/migration/api/overview", timeout=60)
        assert bare.status_code in (401, 403) and "entities" not in bare.text
        # The plugin is registered with its nav entry.
        plugins = httpx.get(f"{af.api_url}/api/v2/plugins", timeout=60,
                            headers={"Authorization": f"Bearer {client.token()}"}).json()["plugins"]
        console = next(p for p in plugins if p["name"] == "migration_console")
        assert console["external_views"][0]["name"] == "Migration"

        with psycopg.connect(world.dest) as conn:
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
    finally:
        local_airflow.stop(af.state_dir)

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
