"""Every cross-DAG Asset, defined once here so the names never drift.

The nightly chain: ``schema_diff`` updates SCHEMA_CHECK; ``migrate_users``
runs on it; each entity's DAG updates its own asset when its reconciliation
succeeds, and its children run on it (users -> agents -> conversations ->
messages -> media). An asset event carries the run mode in its extra, so a
full backfill started at the top flows down as a full backfill.
"""

from __future__ import annotations

from airflow.sdk import Asset

SCHEMA_CHECK = Asset("migration://schema_check")

ENTITY_ASSETS = {
    name: Asset(f"migration://{name}") for name in ("users", "agents", "conversations", "messages", "media")
}

# Which asset starts each entity's DAG.
UPSTREAM = {
    "users": SCHEMA_CHECK,
    "agents": ENTITY_ASSETS["users"],
    "conversations": ENTITY_ASSETS["agents"],
    "messages": ENTITY_ASSETS["conversations"],
    "media": ENTITY_ASSETS["messages"],
}
