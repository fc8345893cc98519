"""Hostile inputs: every case of ``tests/hostile_inputs.py`` through the whole pipeline.

All cases sit in one legacy world; every entity runs every step (extract,
transform, load, Great Expectations validation, reconciliation) and must
succeed. Then each case is looked up: the transform gave its row the expected
disposition, reason and repair, the row is in exactly one place (destination,
quarantine or exclusions) and the loaded value is byte for byte right.
"""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest
from psycopg import sql

from include.migration import accounting, db, extract, pipeline
from include.migration.bootstrap import bootstrap
from include.migration.entities import get
from tests.conftest import ROOT, create_database, drop_database
from tests.hostile_inputs import CASES, IDS, PARAMS, Case, plant, plant_base

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ENTITIES = ("users", "agents", "conversations", "messages")


@pytest.fixture(scope="module")
def hostile(pg_uri: str):
    names = [f"hostile_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("legacy", "dest")]
    conns = pipeline.Conns(create_database(pg_uri, names[0]), create_database(pg_uri, names[1]))
    with psycopg.connect(conns.legacy, autocommit=True) as conn:
        conn.execute((ROOT / "include/sql/legacy/schema.sql").read_text())
        plant_base(conn)
        for case in CASES:
            plant(conn, case)
    bootstrap(conns.dest)
    results = {e: pipeline.run_entity(conns, e, "hostile", mode="full", validate_with_gx=True,
                                      quarantine_threshold_pct=100) for e in ENTITIES}
    yield conns, results
    for name in names:
        drop_database(pg_uri, name)


def _one(dsn: str, query: sql.Composable | str, params: dict | None = None):
    with db.connection(dsn) as conn:
        row = conn.execute(query, params).fetchone()
    return None if row is None else (row[0] if len(row) == 1 else row)


def test_every_step_of_every_entity_succeeds(hostile):
    conns, results = hostile
    with db.connection(conns.dest) as conn:
        rows = conn.execute("SELECT entity, status, counts->'accounting'->>'balanced', "
                            "report->'validation'->>'success' FROM migration.runs ORDER BY entity").fetchall()
    assert rows == [(e, "succeeded", "true", "true") for e in sorted(ENTITIES)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case(case: Case, hostile):
    conns, _ = hostile
    entity = get(case.entity)
    decided = _transform_decision(conns.legacy, case)
    assert decided is not None, f"{case.name}: the transform lost the row"
    disposition, reason, repairs = decided
    assert disposition == case.outcome, (case.name, decided)
    if case.outcome == "loaded":
        assert repairs == ([case.detail] if case.detail else []), (case.name, decided)
    else:
        assert reason == case.detail, (case.name, decided)
    places = _places(conns.dest, entity, case.key)
    assert places == {"loaded": ["destination"], "quarantined": ["quarantine"],
                      "excluded": ["exclusions"]}[case.outcome], (case.name, places)
    if case.outcome == "quarantined":
        assert _one(conns.dest, "SELECT reason FROM migration.quarantine WHERE entity = %(e)s AND source_key = %(k)s",
                    {"e": entity.name, "k": case.key}) == case.detail
    if case.outcome == "excluded":
        assert _one(conns.dest, "SELECT rule FROM migration.exclusions WHERE entity = %(e)s AND source_key = %(k)s",
                    {"e": entity.name, "k": case.key}) == case.detail
    if case.check:
        assert _one(conns.dest, case.check, PARAMS) is True, f"{case.name}: {case.check}"


def _transform_decision(legacy: str, case: Case) -> tuple[str, str, list[str]] | None:
    entity = get(case.entity)
    query = extract.transform_query(entity, extract.Scope(kind="all"))
    # No bind parameters: the transform SQL itself contains % (LIKE patterns).
    return _one(legacy, sql.SQL("SELECT _disposition, _reason, _repairs FROM ({}) t WHERE t.{}::text = {}").format(
        query, sql.Identifier(entity.key), sql.Literal(case.key)))


def _places(dest: str, entity, key: str) -> list[str]:
    target = sql.Identifier(entity.schema_name, entity.target_table)
    found = _one(dest, sql.SQL(
        "SELECT (SELECT count(*) FROM {t} WHERE {k}::text = %(key)s), "
        "(SELECT count(*) FROM migration.quarantine WHERE entity = %(e)s AND source_key = %(key)s), "
        "(SELECT count(*) FROM migration.exclusions WHERE entity = %(e)s AND source_key = %(key)s)").format(
        t=target, k=sql.Identifier(entity.key)), {"key": key, "e": entity.name})
    return [place for place, n in zip(("destination", "quarantine", "exclusions"), found) for _ in range(n)]


def test_a_second_run_keeps_the_same_twin_and_writes_nothing(hostile):
    """Two accounts equal after normalisation, with identical timestamps: the lowest id
    survives, and the decision does not flip on the next run."""
    conns, _ = hostile
    again = pipeline.run_entity(conns, "users", "hostile-again", mode="full", validate_with_gx=False,
                                quarantine_threshold_pct=100)
    assert (again["inserted"], again["updated"], again["deleted"]) == (0, 0, 0)
    twins = [c for c in CASES if c.name.startswith("twins_same_timestamps")]
    survivor, loser = twins[0].key, twins[1].key
    assert survivor < loser
    assert _one(conns.dest, "SELECT survivor_id::text FROM migration.user_id_map WHERE loser_id = %(k)s",
                {"k": loser}) == survivor


def test_future_timestamps_do_not_hold_back_the_watermark(hostile):
    """Rows dated 9999 are quarantined, and their dates are not change timestamps: the
    watermark stays at the present, so the next incremental run still sees new changes."""
    conns, _ = hostile
    with db.connection(conns.dest) as conn:
        stamps = dict(conn.execute("SELECT entity, change_ts FROM migration.watermarks").fetchall())
        now = conn.execute("SELECT now() AT TIME ZONE 'UTC'").fetchone()[0]
    assert set(stamps) == set(ENTITIES)
    assert all(ts is not None and ts < now for ts in stamps.values()), stamps
    with psycopg.connect(conns.legacy, autocommit=True) as conn:
        conn.execute("UPDATE users SET display_name = 'Renamed', updated_at = now() AT TIME ZONE 'UTC' "
                     "WHERE id = %(user)s", IDS)
    pipeline.run_entity(conns, "users", "hostile-incremental", mode="incremental", validate_with_gx=False,
                        quarantine_threshold_pct=100)
    assert _one(conns.dest, "SELECT name FROM public.users WHERE id = %(user)s", IDS) == "Renamed"


# --------------------------------------------------------------------------
# Invalid UTF-8 in a media file name


def test_object_path_of_an_invalid_utf8_file_name():
    from include.migration.media.source import object_path, safe_file_name

    owner, media = IDS["user"], "40000000-0000-4000-8000-000000000001"
    raw = b"caf\xe9 \xff\xfe report.pdf"  # Latin-1 bytes: not UTF-8
    path = object_path(owner, media, raw)
    assert path.startswith(f"{owner}/{media}/") and path.endswith(".pdf")
    assert path.isascii() and "\ufffd" not in path
    # The same bytes as the file system hands them over (os.fsdecode: surrogate escapes).
    assert object_path(owner, media, os.fsdecode(raw)) == path
    # Two names that differ only in their invalid bytes stay two objects.
    assert safe_file_name(b"caf\xe9.pdf") != safe_file_name(b"caf\xe8.pdf")


def test_text_that_is_not_utf8_in_a_sql_ascii_legacy_database_is_quarantined_row_by_row(pg_uri: str):
    """A SQL_ASCII legacy database holds any bytes. A row whose file name or text is not UTF-8
    is quarantined (``invalid_utf8``), its legacy row kept in the ledger with those bytes
    escaped; every other row loads, UTF-8 beyond ASCII included, and every step succeeds."""
    name = f"hostile_ascii_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{pg_uri}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' "
                             "TEMPLATE template0").format(sql.Identifier(name)))
    dest = create_database(pg_uri, f"hostile_ascii_dest_{uuid.uuid4().hex[:8]}")
    latin1_user, utf8_user = "10000000-0000-4000-8000-000000000091", "10000000-0000-4000-8000-000000000092"
    try:
        legacy = f"{pg_uri}/{name}"
        with psycopg.connect(legacy, autocommit=True) as conn:
            conn.execute((ROOT / "include/sql/legacy/schema.sql").read_text())
            plant_base(conn)
            conn.execute("INSERT INTO media_assets (id, owner_id, file_name, mime_type, size_bytes, storage_key, "
                         "created_at) VALUES ('40000000-0000-4000-8000-000000000001', %s, "
                         "convert_from('\\x636166e92e706466'::bytea, 'SQL_ASCII'), 'application/pdf', 3, "
                         "'ab/cd', '2024-01-01')", (IDS["user"],))
            assert conn.execute("SELECT octet_length(file_name) FROM media_assets").fetchone()[0] == 8
            # 'José' in Latin-1 (not UTF-8), and 'Zoë' in UTF-8.
            conn.execute("INSERT INTO users (id, email, display_name, created_at, updated_at) VALUES "
                         "(%s, 'jose@example.com', convert_from('\\x4a6f73e9'::bytea, 'SQL_ASCII'), '2024-01-01', "
                         "'2024-01-01'), (%s, 'zoe@example.com', convert_from('\\x5a6fc3ab'::bytea, 'SQL_ASCII'), "
                         "'2024-01-01', '2024-01-01')", (latin1_user, utf8_user))
            # A truncated three-byte sequence in a message's content.
            conn.execute("INSERT INTO messages (id, conversation_id, role, content, created_at) VALUES "
                         "(2, %s, 'user', convert_from('\\x6f6b20e282'::bytea, 'SQL_ASCII'), '2024-01-02 00:00:02')",
                         (IDS["conversation"],))
        bootstrap(dest)
        conns = pipeline.Conns(legacy, dest)
        for entity in ENTITIES:
            pipeline.run_entity(conns, entity, "ascii", mode="full", validate_with_gx=True,
                                quarantine_threshold_pct=100)
        with db.connection(dest) as conn:
            assert conn.execute("SELECT entity, status FROM migration.runs ORDER BY entity").fetchall() == \
                [(e, "succeeded") for e in sorted(ENTITIES)]
            quarantined = conn.execute("SELECT entity, source_key, reason, source_row->>'legacy_row_escaped' "
                                       "FROM migration.quarantine ORDER BY entity").fetchall()
            assert [q[:3] for q in quarantined] == [("messages", "2", "invalid_utf8"),
                                                   ("users", latin1_user, "invalid_utf8")]
            assert '"content": "ok \\342\\202"' in quarantined[0][3], quarantined[0][3]
            assert '"display_name": "Jos\\351"' in quarantined[1][3], quarantined[1][3]
            assert conn.execute("SELECT name FROM public.users WHERE id = %s", (utf8_user,)).fetchone()[0] == "Zoë"
            assert conn.execute("SELECT count(*) FROM public.messages").fetchone()[0] == 1
        # The media row: staged, and quarantined for its file name, not a failure of the entity.
        out = pipeline.extract(conns, "media", "ascii", mode="full", dry_run=False)
        assert out["stage_rows"] == 1
        with db.connection(dest) as conn:
            stage = conn.execute("SELECT stage_table FROM migration.runs WHERE run_id = %s",
                                 (out["run_id"],)).fetchone()[0]
            assert conn.execute(sql.SQL("SELECT _disposition, _reason, file_name FROM {}").format(
                sql.Identifier("migration_stage", stage))).fetchall() == [("quarantined", "invalid_utf8", None)]
    finally:
        drop_database(pg_uri, name)
        drop_database(pg_uri, dest.rsplit("/", 1)[1])


# --------------------------------------------------------------------------
# Identifiers that need quoting

ODD_SCHEMA = 'Legacy "App"; --'
ODD_TARGET = ('Odd "Dest"', "Messages.v2; --")


@pytest.fixture
def small_world(world):
    with psycopg.connect(world.legacy, autocommit=True) as conn:
        plant_base(conn)
        for case in CASES:
            if case.entity != "messages" or not case.insert.startswith("build:big_content"):
                plant(conn, case)
    return world


def test_legacy_tables_in_a_schema_that_needs_quoting(small_world):
    """Every source table of the transform is an identifier: the same world in a schema
    named ``Legacy "App"; --`` transforms to exactly the same rows."""
    with psycopg.connect(small_world.legacy, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(ODD_SCHEMA)))
        for table in ("users", "agents", "conversations", "messages", "media_assets"):
            conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
                sql.Identifier(ODD_SCHEMA, table), sql.Identifier("public", table)))
            conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(
                sql.Identifier(ODD_SCHEMA, table), sql.Identifier("public", table)))
    for name in ENTITIES:
        entity = get(name)
        digests = []
        for schema in ("public", ODD_SCHEMA):
            query = extract.transform_query(entity, extract.Scope(kind="all"), source_schema=schema)
            digests.append(_one(small_world.legacy, sql.SQL(
                "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t.{})) FROM ({}) t").format(
                sql.Identifier(entity.key), query)))
        assert digests[0] == digests[1] and digests[0][0] > 0, name


def _load_into_odd_target(world) -> tuple[object, str]:
    """Stage, check, merge and account the messages into a destination table whose schema
    and name need quoting, with the generic load code."""
    import dataclasses

    from include.migration import load as load_mod
    from include.migration import runs

    for name in ("users", "agents", "conversations"):
        pipeline.run_entity(world, name, "base", mode="full", validate_with_gx=False, quarantine_threshold_pct=100)
    entity = dataclasses.replace(get("messages"), schema_name=ODD_TARGET[0], target_table=ODD_TARGET[1])
    with psycopg.connect(world.dest, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(ODD_TARGET[0])))
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE public.messages INCLUDING ALL)").format(
            sql.Identifier(*ODD_TARGET)))
    with db.connection(world.dest) as dest:
        run = runs.start(dest, "messages", "quoted", "full", False)
    res = extract.extract(world.legacy, world.dest, entity, run.run_id, extract.Scope(kind="all"))
    with db.connection(world.dest) as dest:
        runs.update(dest, run.run_id, stage_table=res.stage_table, stage_rows=res.rows,
                    source_rows=res.source_rows)
        dest.commit()
        load_mod.check_stage(dest, entity, res.stage_table)
        run = runs.get(dest, run.run_id)
        result = load_mod.load(dest, entity, run, batch_size=3, full=True)
        accounting.account(dest, entity, run, result)
    return entity, run.run_id


def test_destination_table_that_needs_quoting(small_world):
    from include.migration.reconcile import fingerprint

    entity, _ = _load_into_odd_target(small_world)
    with db.connection(small_world.dest) as dest:
        odd = fingerprint(dest, entity)
        public = dest.execute("SELECT count(*) FROM public.messages").fetchone()[0]
    with db.connection(small_world.legacy) as legacy:
        loaded = legacy.execute(sql.SQL("SELECT count(*) FROM ({}) t WHERE _disposition = 'loaded'").format(
            extract.transform_query(get("messages"), extract.Scope(kind="all")))).fetchone()[0]
    assert public == 0 and odd["rows"] == loaded > 0


def test_rollback_of_a_table_that_needs_quoting(small_world):
    from include.migration.reconcile import fingerprint
    from include.migration.rollback import rollback

    entity, run_id = _load_into_odd_target(small_world)
    rollback(small_world.dest, run_id)
    with db.connection(small_world.dest) as dest:
        assert fingerprint(dest, entity)["rows"] == 0
