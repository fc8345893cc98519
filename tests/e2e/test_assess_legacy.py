"""assess_legacy on the generated world: its defect profile equals, rule by rule, what the
following full run quarantines, excludes and repairs; and it writes only its report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psycopg
import pytest

from tests.e2e.conftest import run_dag

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RELATIONAL = ("users", "agents", "conversations", "messages")


def _fingerprint(dsn: str) -> dict[str, int]:
    """Row counts of every table of every non-system schema: what 'writes nothing' is checked against."""
    with psycopg.connect(dsn) as conn:
        tables = conn.execute(
            "SELECT format('%I.%I', schemaname, relname) FROM pg_stat_user_tables ORDER BY 1").fetchall()
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for (t,) in tables}


def test_assessment_predicts_the_full_run_rule_by_rule(airflow_world, tmp_path):
    from local_runtime.world import seed

    world = airflow_world
    seed(world.legacy, scale="small", media_root=tmp_path / "media")
    legacy_before, dest_before = _fingerprint(world.legacy), _fingerprint(world.dest)

    state, tasks = run_dag("assess_legacy")
    assert state == "success", tasks

    # It wrote its report, and nothing else.
    base = Path(os.environ["MIGRATION_STATE_DIR"]) / "assessment"
    report = json.loads((base / "latest.json").read_text())
    assert "## Defect profile" in (base / "latest.md").read_text()
    assert _fingerprint(world.legacy) == legacy_before
    dest_after = _fingerprint(world.dest)
    assert dest_after.pop("migration.assessments") == dest_before.pop("migration.assessments") + 1
    assert dest_after == dest_before
    with psycopg.connect(world.dest) as conn:
        summary = conn.execute("SELECT summary FROM migration.assessments").fetchone()[0]
    assert summary["entities"]["users"]["quarantined"] == report["defects"]["users"]["quarantined"]

    # The profile is about the generated world's planted defects, not an empty shell.
    volumes = report["volumes"]
    assert volumes["messages"]["rows"] == sum(report["defects"]["messages"]["dispositions"].values())
    assert report["defects"]["users"]["quarantined"] > 0 and report["defects"]["messages"]["repaired"] > 0
    assert sum(report["write_hours"]["per_hour_utc"]) > 0 and len(report["write_hours"]["peak_hours_utc"]) == 3
    assert report["schema"]["verdict"] in ("compatible", "breaking")
    assert report["forecast"]["backfill"]["source"] == "none"  # nothing measured yet: it says so

    from include.migration import pipeline

    actual: dict[str, dict] = {}
    for entity in RELATIONAL:
        out = pipeline.run_entity(world, entity, "after-assessment", mode="full", validate_with_gx=False,
                                  reconcile_after=False, quarantine_threshold_pct=100.0)
        with psycopg.connect(world.dest) as conn:
            accounting = dict(conn.execute(
                "SELECT disposition || ':' || reason, rows FROM migration.run_accounting WHERE run_id = %s",
                (out["run_id"],)).fetchall())
            repaired = conn.execute("SELECT report -> 'repaired' FROM migration.runs WHERE run_id = %s",
                                    (out["run_id"],)).fetchone()[0]
        actual[entity] = {"dispositions": accounting, "repairs": repaired or {}}

    for entity in RELATIONAL:
        predicted = report["defects"][entity]
        assert predicted["dispositions"] == actual[entity]["dispositions"], entity
        assert predicted["repairs"] == actual[entity]["repairs"], entity
    # Every quarantine / exclusion rule the run applied was predicted, sample keys included.
    with psycopg.connect(world.dest) as conn:
        for entity in RELATIONAL:
            for key, keys in report["defects"][entity]["samples"].items():
                disposition, reason = key.split(":", 1)
                if disposition == "quarantined":
                    found = conn.execute("SELECT count(*) FROM migration.quarantine WHERE entity = %s "
                                         "AND reason = %s AND source_key = ANY(%s)", (entity, reason, keys)).fetchone()
                    assert found[0] == len(keys), (entity, reason)
                elif disposition == "excluded":
                    found = conn.execute("SELECT count(*) FROM migration.exclusions WHERE entity = %s "
                                         "AND rule = %s AND source_key = ANY(%s)", (entity, reason, keys)).fetchone()
                    assert found[0] == len(keys), (entity, reason)
