"""A backfill triggered at the top with ``partitions`` splits every entity's extract the same way."""

from __future__ import annotations

from types import SimpleNamespace

from include.orchestration.dag_factory import resolve_mode, resolve_partitions


def _context(params: dict, *extras: dict) -> dict:
    events = {"asset": [SimpleNamespace(extra=extra) for extra in extras]} if extras else {}
    return {"params": params, "triggering_asset_events": events}


def test_a_run_started_by_its_parent_takes_the_parents_partitions() -> None:
    context = _context({"partitions": 1, "mode": "incremental"}, {"mode": "full", "partitions": 2})
    assert (resolve_partitions(context), resolve_mode(context)) == (2, "full")


def test_a_manual_run_or_a_parent_without_partitions_uses_the_param() -> None:
    assert resolve_partitions(_context({"partitions": 3})) == 3
    assert resolve_partitions(_context({"partitions": 3}, {"mode": "full"})) == 3
    assert resolve_partitions(_context({"partitions": 3}, {"partitions": 0})) == 3
