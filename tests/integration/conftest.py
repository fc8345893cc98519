"""Fixtures shared by the integration modules."""

from __future__ import annotations

import pytest


@pytest.fixture
def twin(world, fresh_db):
    """The direct-load world (tests/integration/test_direct_load.py: the rules world and a few
    thousand plain messages), and a second destination on the same legacy database."""
    from include.migration import pipeline
    from include.migration.bootstrap import bootstrap
    from tests.integration.test_direct_load import seed

    seed(world.legacy)
    other = fresh_db("dest2")
    bootstrap(other)
    return world, pipeline.Conns(world.legacy, other)
