"""The schema check's classification: every difference between a catalog and its contract.

Type changes (:func:`classify_type_change`: a widening is compatible,
anything else breaking), the legacy side (:func:`compare_legacy`), the
destination side (:func:`compare_destination`: columns, nullability, keys,
constraints, indexes, RLS), the lock-down findings
(:func:`security_differences`), unused tables, and the transform probe
(:func:`probe_transforms`: each entity's transform still runs and still
returns the stage's types). Each difference has its id, severity and the
entities it blocks (see the package docstring).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql

from include.migration.entities import ENTITIES, Entity
from include.migration.schema_diff.catalog import EXPOSED_SCHEMA, LEGACY_SCHEMA, Column, Constraint, Table
from include.migration.schema_diff.expectations import (
    DestinationContract,
    ForeignKey,
    LegacyContract,
    target_name,
    with_descendants,
)

log = logging.getLogger(__name__)

BREAKING, COMPATIBLE, INFORMATIONAL = "breaking", "compatible", "informational"
SEVERITY_ORDER = {BREAKING: 0, COMPATIBLE: 1, INFORMATIONAL: 2}

# --------------------------------------------------------------------------- types


_TYPE_ALIASES = {
    "timestamptz": "timestamp with time zone",
    "timestamp": "timestamp without time zone",
    "timetz": "time with time zone",
    "time": "time without time zone",
    "int": "integer",
    "int4": "integer",
    "int8": "bigint",
    "int2": "smallint",
    "float8": "double precision",
    "float4": "real",
    "bool": "boolean",
    "varchar": "character varying",
    "char": "character",
    "bpchar": "character",
    "decimal": "numeric",
}
_TYPE_RE = re.compile(r"^(?P<head>[^()]*?)\s*(?:\((?P<mods>[0-9,\s]*)\))?\s*(?P<tail>[^()]*)$")
_INT_RANK = {"smallint": 1, "integer": 2, "bigint": 3}
_WITH_PRECISION = {
    "timestamp with time zone",
    "timestamp without time zone",
    "time with time zone",
    "time without time zone",
}
_ZONED = {"timestamp with time zone", "timestamp without time zone"}


@dataclass(frozen=True)
class PgType:
    """A type as ``format_type()`` prints it, split into base name, modifiers and array depth."""

    base: str
    mods: tuple[int, ...] = ()
    array: int = 0

    @classmethod
    def parse(cls, text: str) -> PgType:
        text = " ".join(text.strip().lower().split())
        array = 0
        while text.endswith("[]"):
            text, array = text[:-2].rstrip(), array + 1
        m = _TYPE_RE.match(text)
        if m is None:  # a quoted user-defined type: compare it whole
            return cls(text, (), array)
        base = " ".join(f"{m['head']} {m['tail']}".split())
        mods = tuple(int(x) for x in (m["mods"] or "").replace(" ", "").split(",") if x)
        return cls(_TYPE_ALIASES.get(base, base), mods, array)

    def __str__(self) -> str:
        mods = f"({','.join(map(str, self.mods))})" if self.mods else ""
        if self.base in _WITH_PRECISION and mods:
            head, _, tail = self.base.partition(" ")
            text = f"{head}{mods} {tail}"
        else:
            text = self.base + mods
        return text + "[]" * self.array


def _mods_widen(old: PgType, new: PgType) -> bool:
    """Same base type, different modifiers: is every old value still representable?"""
    if not new.mods:  # no limit (varchar, numeric) or the default precision 6 (timestamps)
        return old.base not in _WITH_PRECISION or not old.mods or old.mods[0] <= 6
    if not old.mods:
        return old.base in _WITH_PRECISION and new.mods[0] >= 6
    if old.base == "numeric":
        # Same scale, more digits: numeric(p, s) -> numeric(p2, s), p2 >= p.
        old_scale = old.mods[1] if len(old.mods) > 1 else 0
        new_scale = new.mods[1] if len(new.mods) > 1 else 0
        return new_scale == old_scale and new.mods[0] >= old.mods[0]
    return new.mods[0] >= old.mods[0]


def is_widening(old: PgType, new: PgType) -> bool:
    """Every value of ``old`` fits ``new`` unchanged and prints the same."""
    if old.array != new.array:
        return False
    if old.base == new.base:
        return _mods_widen(old, new)
    if old.base in _INT_RANK and new.base in _INT_RANK:
        return _INT_RANK[new.base] > _INT_RANK[old.base]
    if old.base in _INT_RANK and new.base == "numeric":
        return not new.mods
    if old.base in ("character varying", "text") and new.base in ("character varying", "text"):
        return not new.mods  # to text or unlimited varchar; a length limit is a narrowing
    if (old.base, new.base) == ("real", "double precision"):
        return True
    return False


def classify_type_change(expected: str, actual: str, side: str) -> tuple[str, str, str] | None:
    """(severity, kind, why) of a mapped column whose type is not the expected one; None if equal.

    Two decisions, both documented in the report's detail:

    * ``timestamp`` <-> ``timestamptz`` is never a widening: the legacy
      timestamps are naive UTC by convention, and the transform turns them
      into instants with ``AT TIME ZONE 'UTC'``. A zone added or dropped on
      either side changes what a stored value means (and the transform's
      output type), not just how much it can hold.
    * ``real`` -> ``double precision`` is a widening in the legacy database
      (the transform casts to the stage's type, which the probe verifies) but
      not in the destination: the values fit, yet the reconciliation compares
      text renderings and ``0.7::real`` stored as double prints
      ``0.699999988079071``, so every row would be reported different.
    """
    old, new = PgType.parse(expected), PgType.parse(actual)
    if old == new:
        return None
    if {old.base, new.base} == _ZONED:
        return (BREAKING, "type_changed",
                f"{old} -> {new} changes what a stored time means (naive UTC vs an instant); not a widening")
    if side == "supabase" and (old.base, new.base) == ("real", "double precision"):
        return (BREAKING, "type_changed",
                f"{old} -> {new}: values fit, but the reconciliation's text checksums would differ "
                "for every row (0.7 prints as 0.699999988079071)")
    if is_widening(old, new):
        return COMPATIBLE, "type_widened", f"{old} -> {new}: every expected value still fits"
    return BREAKING, "type_changed", f"{old} -> {new} is not a widening: values may not fit or mean the same"


# --------------------------------------------------------------------------- differences


@dataclass(frozen=True)
class Difference:
    id: str
    severity: str
    kind: str
    side: str  # legacy | supabase | transform
    table: str  # legacy: table; supabase: schema.table; transform: entity
    column: str | None
    detail: str
    entities: tuple[str, ...] = ()
    expected: str | None = None
    actual: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["entities"] = list(self.entities)
        return data


def difference_id(side: str, table: str, column: str | None, kind: str) -> str:
    return ".".join(p for p in (side, table, column) if p) + f":{kind}"


def _diff(side: str, table: str, column: str | None, kind: str, severity: str, detail: str,
          entities: tuple[str, ...], expected: str | None = None, actual: str | None = None) -> Difference:
    return Difference(difference_id(side, table, column, kind), severity, kind, side, table, column, detail,
                      entities, expected, actual)


# --------------------------------------------------------------------------- legacy side


def compare_legacy(catalog: dict[str, Table], contract: LegacyContract) -> list[Difference]:
    table = catalog.get(f"{LEGACY_SCHEMA}.{contract.table}")
    readers = contract.entities
    if table is None:
        return [_diff("legacy", contract.table, None, "missing_table", BREAKING,
                      f"legacy table {contract.table} is gone; the transforms of "
                      f"{', '.join(readers)} read it",
                      readers)]
    diffs: list[Difference] = []
    for name, expected in contract.columns.items():
        col = table.columns.get(name)
        if col is None:
            diffs.append(_diff("legacy", contract.table, name, "missing_column", BREAKING,
                               f"the transforms of {', '.join(readers)} read {contract.table}.{name}",
                               readers, expected))
            continue
        change = classify_type_change(expected, col.data_type, "legacy")
        if change:
            severity, kind, why = change
            diffs.append(_diff("legacy", contract.table, name, kind, severity, why, readers,
                               expected, col.data_type))
    for name, col in table.columns.items():
        if name not in contract.columns:
            diffs.append(_diff("legacy", contract.table, name, "new_column", COMPATIBLE,
                               "a column the mapping does not read", readers, None, col.data_type))
    if not any(c.kind == "p" and c.columns == (contract.key,) for c in table.constraints):
        diffs.append(_diff("legacy", contract.table, None, "primary_key_missing", BREAKING,
                           f"no primary key on {contract.table}({contract.key}): the keyset extraction, "
                           "the fates' joins and the reconciliation assume one row per key",
                           readers, contract.key))
    return diffs


# --------------------------------------------------------------------------- destination side

NullCounter = Callable[[str, str], "int | None"]


def _nullability(contract: DestinationContract, col: Column, nulls: NullCounter) -> Difference | None:
    """A written column's NOT NULL against what the transform can write into it."""
    t, name = contract.table, col.name
    if name in contract.nullable and col.not_null:
        legacy_col = contract.nullable[name]
        count = nulls(contract.legacy_table, legacy_col) if contract.legacy_table and legacy_col else None
        if count == 0:
            return _diff("supabase", t, name, "nullability_tightened", COMPATIBLE,
                         f"now NOT NULL; no legacy {contract.legacy_table}.{legacy_col} is NULL today",
                         contract.entities, "nullable", "not null")
        what = "cannot be counted" if count is None else f"{count} legacy rows have NULL there"
        return _diff("supabase", t, name, "nullability_tightened", BREAKING,
                     f"now NOT NULL, but the mapping writes NULLs into it: {what}",
                     contract.entities, "nullable", "not null")
    if contract.owned and name not in contract.nullable and not col.not_null:
        return _diff("supabase", t, name, "nullability_relaxed", COMPATIBLE,
                     "NOT NULL dropped; the mapping never writes NULL there", contract.entities,
                     "not null", "nullable")
    return None


def _written_column(contract: DestinationContract, name: str, expected: str | None, col: Column | None,
                    nulls: NullCounter) -> list[Difference]:
    t, ents = contract.table, contract.entities
    if col is None:
        return [_diff("supabase", t, name, "missing_column", BREAKING,
                      f"the {ents[0]} load writes {t}.{name}", ents, expected)]
    diffs = []
    change = classify_type_change(expected, col.data_type, "supabase") if expected else None
    if change:
        severity, kind, why = change
        diffs.append(_diff("supabase", t, name, kind, severity, why, ents, expected, col.data_type))
    if not col.writable:
        diffs.append(_diff("supabase", t, name, "not_writable", BREAKING,
                           "now generated or GENERATED ALWAYS AS IDENTITY: the load's INSERT naming it fails",
                           ents))
    nullability = _nullability(contract, col, nulls)
    if nullability:
        diffs.append(nullability)
    return diffs


def _destination_columns(table: Table, contract: DestinationContract, nulls: NullCounter) -> list[Difference]:
    diffs: list[Difference] = []
    for name, expected in contract.columns.items():
        diffs += _written_column(contract, name, expected, table.columns.get(name), nulls)
    for name, col in table.columns.items():
        if name in contract.columns:
            continue
        if col.required:
            diffs.append(_diff("supabase", contract.table, name, "new_required_column", BREAKING,
                               "NOT NULL without a default, and the load does not write it: "
                               "every insert fails",
                               contract.entities, None, col.data_type))
        elif contract.owned:
            diffs.append(_diff("supabase", contract.table, name, "new_column", COMPATIBLE,
                               "a column the mapping ignores (nullable or with a default)",
                               contract.entities, None, col.data_type))
    return diffs


def _unique_keys(table: Table) -> set[tuple[str, ...]]:
    keys = {c.columns for c in table.constraints if c.kind in ("p", "u")}
    return keys | {i.columns for i in table.indexes if i.unique and not i.partial}


def _fk_matches(con: Constraint, fk: ForeignKey) -> bool:
    return con.kind == "f" and con.columns == (fk.column,) and con.ref_table == fk.ref_table \
        and con.ref_columns == (fk.ref_column,)


def _is_expected(con: Constraint, contract: DestinationContract) -> bool:
    if con.kind == "p":
        return True  # a different primary key is reported as primary_key_changed
    if con.kind == "u":
        return con.columns in contract.unique
    if con.kind == "f":
        return any(_fk_matches(con, fk) for fk in contract.foreign_keys)
    if con.kind == "c":
        return con.name in contract.checks
    return False


def _primary_key(table: Table, contract: DestinationContract) -> list[Difference]:
    if contract.primary_key is None:
        return []
    want = contract.primary_key
    pk = next((c for c in table.constraints if c.kind == "p"), None)
    if pk is None:
        return [_diff("supabase", contract.table, None, "primary_key_missing", BREAKING,
                      f"no primary key: the load merges ON CONFLICT ({', '.join(want)})",
                      contract.entities, ", ".join(want))]
    if pk.columns != want:
        return [_diff("supabase", contract.table, None, "primary_key_changed", BREAKING,
                      f"primary key is ({', '.join(pk.columns)}), the load merges on ({', '.join(want)})",
                      contract.entities, ", ".join(want), ", ".join(pk.columns))]
    return []


def _required_constraints(table: Table, contract: DestinationContract) -> list[Difference]:
    t, ents = contract.table, contract.entities
    diffs = _primary_key(table, contract)
    keys = _unique_keys(table)
    for cols in contract.unique:
        if cols not in keys:
            diffs.append(_diff("supabase", t, "+".join(cols), "unique_missing", BREAKING,
                               f"({', '.join(cols)}) is no longer unique", ents))
    for fk in contract.foreign_keys:
        if not any(_fk_matches(c, fk) for c in table.constraints):
            diffs.append(_diff("supabase", t, fk.column, "foreign_key_missing", BREAKING,
                               f"no foreign key {fk.column} -> {fk.ref_table}({fk.ref_column})", ents,
                               f"{fk.ref_table}({fk.ref_column})"))
    names = {c.name for c in table.constraints if c.kind == "c"}
    for name in contract.checks:
        if name not in names:
            diffs.append(_diff("supabase", t, name, "check_missing", BREAKING,
                               f"check constraint {name} is gone", ents))
    return diffs


def _added_constraints(table: Table, contract: DestinationContract) -> list[Difference]:
    """Constraints and unique indexes on an application table that the mapping does not know."""
    if not contract.owned:
        return []
    why = "the load's rows were never checked against it; accept it for one run or add it to the expectations"
    diffs = [
        _diff("supabase", contract.table, con.name, "constraint_added", BREAKING, f"{con.definition}: {why}",
              contract.entities, None, con.definition)
        for con in table.constraints if not _is_expected(con, contract)
    ]
    known = set(contract.unique) | ({contract.primary_key} if contract.primary_key else set())
    diffs += [
        _diff("supabase", contract.table, idx.name, "constraint_added", BREAKING, f"{idx.definition}: {why}",
              contract.entities, None, idx.definition)
        for idx in table.indexes if idx.unique and (idx.partial or idx.columns not in known)
    ]
    return diffs


def _plain_indexes(table: Table, contract: DestinationContract) -> list[Difference]:
    if not contract.owned:
        return []
    plain = {i.columns: i for i in table.indexes if not i.unique}
    diffs = [
        _diff("supabase", contract.table, "+".join(cols), "index_missing", COMPATIBLE,
              f"no index on ({', '.join(cols)}): loads, cascaded deletes and policy checks get slower",
              contract.entities)
        for cols in contract.indexes if cols not in plain
    ]
    diffs += [
        _diff("supabase", contract.table, idx.name, "index_added", COMPATIBLE, idx.definition,
              contract.entities)
        for cols, idx in plain.items() if cols not in contract.indexes
    ]
    return diffs


def _rls(table: Table, contract: DestinationContract) -> list[Difference]:
    if table.schema != EXPOSED_SCHEMA or table.rls_enabled:
        return []
    return [_diff("supabase", contract.table, None, "rls_disabled", BREAKING,
                  f"row level security is off on {contract.table}: the API would expose every row",
                  contract.entities)]


def compare_destination(catalog: dict[str, Table], contract: DestinationContract,
                        nulls: NullCounter) -> list[Difference]:
    table = catalog.get(contract.table)
    if table is None:
        return [_diff("supabase", contract.table, None, "missing_table", BREAKING,
                      f"the {contract.entities[0]} load writes {contract.table}", contract.entities)]
    return [
        *_destination_columns(table, contract, nulls),
        *_required_constraints(table, contract),
        *_added_constraints(table, contract),
        *_plain_indexes(table, contract),
        *_rls(table, contract),
    ]


def _security_entities(relation: str) -> tuple[str, ...]:
    for e in ENTITIES.values():
        if target_name(e) == relation:
            return with_descendants(e.name)
    return tuple(ENTITIES)


def security_differences(conn: psycopg.Connection) -> list[Difference]:
    """``bootstrap.security_report`` findings, each a breaking difference (kind ``security``)."""
    from include.migration.bootstrap import security_report

    return [
        Difference(difference_id("supabase", f.relation, None, f.problem), BREAKING, "security", "supabase",
                   f.relation, None, f.message, _security_entities(f.relation))
        for f in security_report(conn)
    ]


def unused_tables(catalog: dict[str, Table], side: str, schema: str, used: set[str]) -> list[Difference]:
    return [
        _diff(side, t.name if side == "legacy" else t.qualified, None, "unused_table", INFORMATIONAL,
              "a table no entity's mapping reads or writes", ())
        for t in catalog.values() if t.schema == schema and t.name not in used
    ]


# --------------------------------------------------------------------------- transform probe


def _type_names(conn: psycopg.Connection, names: set[str]) -> dict[str, int]:
    rows = conn.execute("SELECT t, to_regtype(t)::oid FROM unnest(%s::text[]) AS t", (sorted(names),))
    return dict(rows.fetchall())


def _oid_names(conn: psycopg.Connection, oids: set[int]) -> dict[int, str]:
    rows = conn.execute("SELECT oid::int, format_type(oid, NULL) FROM pg_type WHERE oid = ANY(%s)",
                        (sorted(oids),))
    return dict(rows.fetchall())


def probe_transform(conn: psycopg.Connection, entity: Entity,
                    stage_types: dict[str, int]) -> list[Difference]:
    """Plan the entity's transform on the legacy schema and compare its output with the stage's columns.

    The extract copies the transform's output by binary COPY into a stage
    typed like the destination, so the output must keep the stage's columns
    and types exactly (a legacy int widened to bigint and passed through
    would be refused). LIMIT 0: planned, not run.
    """
    from include.migration.extract import Scope, transform_query

    query = sql.SQL("SELECT * FROM ({}) AS probe LIMIT 0").format(transform_query(entity, Scope(kind="all")))
    ents = (entity.name,)
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(query)
            got = [(d.name, d.type_code) for d in cur.description or ()]
    except psycopg.Error as err:
        message = (err.diag.message_primary or str(err)).splitlines()[0]
        return [_diff("transform", entity.name, None, "query_failed", BREAKING,
                      f"the {entity.name} transform no longer runs on the legacy schema: {message}", ents)]
    want = [(name, stage_types[typ]) for name, typ in entity.stage_columns]
    if [n for n, _ in got] != [n for n, _ in want]:
        return [_diff("transform", entity.name, None, "output_columns_changed", BREAKING,
                      "the transform's output columns are not the stage's", ents,
                      ", ".join(n for n, _ in want), ", ".join(n for n, _ in got))]
    wrong = [(n, w, g) for (n, g), (_, w) in zip(got, want, strict=True) if g != w]
    names = _oid_names(conn, {o for _, w, g in wrong for o in (w, g)}) if wrong else {}
    return [
        _diff("transform", entity.name, n, "output_type_changed", BREAKING,
              f"the transform now emits {names.get(g, g)} where the stage holds {names.get(w, w)}; "
              "the binary COPY into the stage would fail", ents, names.get(w, str(w)), names.get(g, str(g)))
        for n, w, g in wrong
    ]


def probe_transforms(conn: psycopg.Connection) -> list[Difference]:
    stage_types = _type_names(conn, {t for e in ENTITIES.values() for _, t in e.stage_columns})
    diffs: list[Difference] = []
    for entity in ENTITIES.values():
        diffs += probe_transform(conn, entity, stage_types)
    return diffs
