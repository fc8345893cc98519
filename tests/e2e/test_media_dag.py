"""migrate_media end to end: the seeded small world through the schema check and the relational DAGs, then
the media DAG against the Storage stand-in, on the world's planted media and 200 more. Every object is
compared byte for byte with its legacy file."""

from __future__ import annotations

import hashlib
import json
import warnings

import psycopg
import pytest

from tests.e2e.conftest import load_dag, run_dag

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SECRET = "media-dag-test-secret-at-least-32-characters"
CHAIN = ["migrate_users", "migrate_agents", "migrate_conversations", "migrate_messages"]


def q(dsn: str, query: str, *args):
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, args).fetchall()


@pytest.fixture
def media_world(airflow_world, tmp_path, monkeypatch):
    from local_runtime.standins.storage import StorageStandIn
    from local_runtime.world import seed

    root = tmp_path / "media"
    report = seed(airflow_world.legacy, scale="small", media_root=root)
    # The DAG's wiring is what this test adds to tests/integration/test_media_pipeline.py, which moves the
    # whole world's 5,000 files: here every planted file and 200 plain ones are enough.
    planted = sorted({k for kind, keys in report.planted.items() if kind.startswith("media.") for k in keys})
    with psycopg.connect(airflow_world.legacy, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM media_assets WHERE NOT (id = ANY(%s::uuid[])) "
            "AND id NOT IN (SELECT id FROM media_assets ORDER BY id LIMIT 200)",
            (planted,),
        )
    standin = StorageStandIn(tmp_path / "storage", SECRET).start()
    monkeypatch.setenv(
        "AIRFLOW_CONN_SUPABASE_API",
        json.dumps({"conn_type": "http", "host": standin.url, "password": standin.service_key}),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_LEGACY_MEDIA", json.dumps({"conn_type": "fs", "extra": {"path": str(root)}})
    )
    yield airflow_world, report, standin, root
    standin.stop()


def test_media_dag_has_the_entity_shape_and_runs_after_messages(airflow_db):
    from include.orchestration.assets import ENTITY_ASSETS

    dag = load_dag("migrate_media")
    order = ["plan", "extract", "transform", "load", "validate", "reconcile"]
    for up, down in zip(order, order[1:], strict=False):
        assert dag.get_task(down).upstream_task_ids == {up}
    assert dag.max_active_runs == 1
    assert dag.timetable.asset_condition == ENTITY_ASSETS["messages"]  # runs when migrate_messages succeeded
    assert [o.uri for o in dag.get_task("reconcile").outlets] == [ENTITY_ASSETS["media"].uri]
    media_params = {k for k in dag.params if k.startswith("media_")}
    assert {
        "media_file_size_limit_mb",
        "media_allowed_mime_types",
        "media_upload_concurrency",
    } <= media_params
    for key in dag.params:
        assert dag.params.get_param(key).description, key


def test_the_media_dag_moves_every_file_after_the_relational_chain(media_world):
    world, report, standin, root = media_world
    state, tasks = run_dag("schema_diff")
    assert state == "success", tasks
    for dag_id in CHAIN:
        state, tasks = run_dag(dag_id, mode="full")
        assert state == "success", (dag_id, tasks)

    # Three planted quarantines among ~470 rows are over the default 0.1 % threshold (not among 5,000).
    state, tasks = run_dag("migrate_media", mode="full", media_upload_concurrency=8, quarantine_threshold_pct=1)
    assert state == "success", tasks
    assert set(tasks.values()) == {"success"}

    planted = report.planted
    quarantine = dict(
        q(world.dest, "SELECT source_key, reason FROM migration.quarantine WHERE entity = 'media'")
    )
    assert quarantine == {
        **dict.fromkeys(planted["media.missing_file"], "file_missing"),
        **dict.fromkeys(planted["media.sha_mismatch"], "sha256_mismatch"),
        **dict.fromkeys(planted["media.orphan_owner"], "owner_missing"),
    }
    exclusions = dict(
        q(world.dest, "SELECT source_key, rule FROM migration.exclusions WHERE entity = 'media'")
    )
    assert exclusions == dict.fromkeys(planted["media.owner_soft_deleted"], "owner_excluded")

    keys = dict(q(world.legacy, "SELECT id::text, storage_key FROM media_assets"))
    rows = q(world.dest, "SELECT id::text, object_path, size_bytes, sha256 FROM public.media")
    assert len(rows) + len(quarantine) + len(exclusions) == len(keys)
    from supabase import create_client

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        files = create_client(standin.url, standin.service_key).storage.from_("media")
    for media_id, path, size, sha in rows:
        data = (root / keys[media_id]).read_bytes()
        assert files.download(path) == data, media_id
        assert (size, sha) == (len(data), hashlib.sha256(data).hexdigest())

    run = q(
        world.dest,
        "SELECT run_id, status, counts->'accounting'->>'balanced', report->'validation'->>'success' "
        "FROM migration.runs WHERE entity = 'media'",
    )
    assert [r[1:] for r in run] == [("succeeded", "true", "true")]
    run_id = run[0][0]
    assert q(
        world.dest,
        "SELECT outcome, count(*) FROM migration.media_uploads WHERE run_id = %s GROUP BY 1",
        run_id,
    ) == [("uploaded", len(rows))]
    assert dict(
        q(world.dest, "SELECT entity, verdict FROM migration.reconciliations WHERE run_id = %s", run_id)
    ) == {"media": "clean", "media_storage": "clean"}

    # A dry run afterwards reads every file again and writes nothing anywhere.
    writes = standin.count_requests("POST") + standin.count_requests("PUT") + standin.count_requests("DELETE")
    state, tasks = run_dag("migrate_media", mode="full", dry_run=True, quarantine_threshold_pct=1)
    assert state == "success", tasks
    plan = q(
        world.dest, "SELECT report->'dry_run_plan' FROM migration.runs WHERE entity = 'media' AND dry_run"
    )[0][0]
    assert (plan["insert"], plan["update"], plan["unchanged"]) == (0, 0, len(rows))
    assert (
        standin.count_requests("POST") + standin.count_requests("PUT") + standin.count_requests("DELETE")
        == writes
    )
    assert q(world.dest, "SELECT count(*) FROM migration.media_uploads") == [(len(rows),)]
