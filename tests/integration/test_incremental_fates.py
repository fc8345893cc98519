"""An incremental run computes the fates of only the rows its scope needs: every row it
reads must come out exactly as the full transform gives it (same columns, disposition,
reason, repairs, survivor, change time), and its scope must still hold every change.

One seeded legacy world, changed by the application after a watermark; each entity's
incremental transform is compared with its full transform in the same snapshot.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from include.migration.entities import ORDER, get
from include.migration.extract import Scope, transform_query

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def changed_world(tmp_path_factory, pg_uri):
    """A small legacy world, the watermark taken, then the app's changes of 1 %."""
    from local_runtime.world import apply_changes, seed
    from tests.conftest import create_database, drop_database

    legacy = create_database(pg_uri, "legacy_incremental_fates")
    media = Path(tmp_path_factory.mktemp("media"))
    seed(legacy, scale="small", seed=42, media_root=media)
    with psycopg.connect(legacy, autocommit=True) as conn:
        since = conn.execute("SELECT (now() AT TIME ZONE 'UTC')::text").fetchone()[0]
        last_key = conn.execute("SELECT max(id)::text FROM messages").fetchone()[0]
    report = apply_changes(legacy, seed=7, fraction=0.01, media_root=media)
    with psycopg.connect(legacy, autocommit=True) as conn:
        conn.execute("ANALYZE")
    yield legacy, since, last_key, report.changes
    drop_database(pg_uri, "legacy_incremental_fates")


def _rows(conn: psycopg.Connection, query: sql.Composable, key: str, keys: list[str] | None = None) -> dict:
    """The transform's rows by key (as text), every column compared as text."""
    wrapped = sql.SQL("SELECT t.{key}::text, to_jsonb(t)::text FROM ({q}) t").format(
        key=sql.Identifier(key), q=query)
    if keys is not None:
        wrapped = sql.SQL("{} WHERE t.{}::text = ANY(%s)").format(wrapped, sql.Identifier(key))
    return dict(conn.execute(wrapped, (keys,) if keys is not None else None).fetchall())


@pytest.mark.parametrize("entity_name", ORDER)
def test_an_incremental_run_gives_each_row_in_its_scope_the_full_runs_outcome(changed_world, entity_name):
    legacy, since, last_key, changes = changed_world
    entity = get(entity_name)
    with psycopg.connect(legacy) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        full_query = transform_query(entity, Scope(kind="all"))
        everything = _rows(conn, full_query, entity.key)
        # The rows a real run retries: those quarantined, as the ledger would hold them.
        retry = sorted(k for k, row in everything.items() if '"_disposition": "quarantined"' in row)
        scope = Scope(kind="changed", since=since, retry=retry,
                      last_key=last_key if entity.append_only else None)
        scoped = _rows(conn, transform_query(entity, scope), entity.key)
        conn.rollback()

    assert scoped, "the changes put rows in scope"
    assert len(scoped) < len(everything) / 2, "an incremental run reads the change, not the table"
    # Each row exactly as the full transform gives it: the fates it needed were the same.
    assert scoped == {k: everything[k] for k in scoped}
    # Its scope holds every row the application changed (and every quarantined row to retry).
    touched = {k for kind, keys in changes.items() if kind.split(".")[0] == entity.name
               and not kind.endswith(("hard_deleted", "dangling_agent")) for k in keys}
    assert touched, f"the changes touched {entity.name}"
    assert touched <= set(scoped), sorted(touched - set(scoped))[:5]
    assert set(retry) <= set(scoped)
