"""The schema check: both catalogs against what each entity's mapping expects.

This module owns the comparison behind the ``schema_diff`` DAG and the record
the load gate (``gate.py``) reads. ``run_schema_diff`` reads the legacy and the
destination catalogs (tables, columns, types, nullability, defaults, primary
keys, foreign keys, unique and check constraints, indexes, RLS), compares them
with the entities of ``entities.py`` plus the expectations below, classifies
every difference, and records the result three ways: a table in the log, a
JSON file under ``$MIGRATION_STATE_DIR/schema/`` (one per check, plus
``latest.json``) and a row in ``migration.schema_checks``.

Every difference has an id an operator can type, ``<side>.<table>[.<column or
constraint>]:<kind>`` (``legacy.users.display_name:missing_column``,
``supabase.public.messages.role:type_changed``,
``supabase.public.users:rls_disabled``, ``transform.messages:query_failed``),
and names the entities it affects. A breaking difference blocks those
entities' loads until the schema is fixed or an operator accepts it for one
run (see ``gate.py``).

What breaks and what does not:

=============  ==============================================================
breaking       a table or column the mapping reads or writes is missing; a
               mapped type changed in a way that is not a widening (see
               ``classify_type_change``); a destination column the mapping
               can leave NULL became NOT NULL while the legacy data has NULLs
               there; a new NOT NULL destination column without a default (the
               load does not write it); a written column became generated or
               GENERATED ALWAYS AS IDENTITY; a primary key, a parent foreign
               key, an expected unique or check constraint is gone; a
               constraint or unique index the mapping does not know was added
               to an application table (the load's rows were never checked
               against it, so it would fail halfway); RLS off on a public
               table and every other ``bootstrap.security_report`` finding; a
               transform query that no longer runs on the legacy schema or
               whose output no longer has the stage's types.
compatible     a new column the mapping ignores (nullable or with a default),
               a widened type, a NOT NULL that the data does not violate yet,
               a relaxed NOT NULL, an added or missing plain index.
informational  tables neither side of the mapping uses.
=============  ==============================================================

Which entities a difference blocks: every transform inlines the shared fates
(``_fates.sql``), so a legacy table is read by its own entity, by the entities
whose direct parent it is the source of, and the root fate (``users``) by
every entity. A destination table's difference blocks its entity and all its
descendants (their rows would lose their parent). A transform probe failure
blocks that entity. A security finding on an entity's table blocks it and its
descendants; any other finding blocks every entity.

Command line (exit 1 when the verdict is breaking)::

    python -m include.migration.schema_diff --legacy-dsn postgresql://... --dest-dsn postgresql://...
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from include.migration import db
from include.migration.entities import ENTITIES, SQL_DIR, Entity

log = logging.getLogger(__name__)

BREAKING, COMPATIBLE, INFORMATIONAL = "breaking", "compatible", "informational"
_SEVERITY_ORDER = {BREAKING: 0, COMPATIBLE: 1, INFORMATIONAL: 2}

# extract.transform_query reads the legacy tables from this schema.
LEGACY_SCHEMA = "public"
# The application's tables, and Supabase Auth's (the users load writes them).
DEST_SCHEMAS = ("public", "auth")
# Supabase exposes this schema through its API: every table in it needs RLS.
EXPOSED_SCHEMA = "public"


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


# --------------------------------------------------------------------------- catalog snapshot


@dataclass
class Column:
    name: str
    data_type: str
    not_null: bool
    default: str | None
    generated: bool
    identity: str  # '' | 'a' (always) | 'd' (by default)

    @property
    def required(self) -> bool:
        """An INSERT that does not name it fails."""
        return self.not_null and self.default is None and not self.generated and not self.identity

    @property
    def writable(self) -> bool:
        return not self.generated and self.identity != "a"


@dataclass
class Constraint:
    name: str
    kind: str  # p, u, f, c, x
    columns: tuple[str, ...]
    ref_table: str | None
    ref_columns: tuple[str, ...]
    definition: str


@dataclass
class Index:
    name: str
    unique: bool
    columns: tuple[str, ...]
    partial: bool
    definition: str


@dataclass
class Table:
    schema: str
    name: str
    kind: str
    rls_enabled: bool
    rls_forced: bool
    columns: dict[str, Column] = field(default_factory=dict)
    constraints: list[Constraint] = field(default_factory=list)
    indexes: list[Index] = field(default_factory=list)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rls_enabled": self.rls_enabled,
            "rls_forced": self.rls_forced,
            "columns": {n: {k: v for k, v in asdict(c).items() if k != "name"}
                        for n, c in self.columns.items()},
            "constraints": [asdict(c) for c in self.constraints],
            "indexes": [asdict(i) for i in self.indexes],
        }


@cache
def schema_sql(name: str) -> str:
    """The text of include/sql/schema_diff/<name>.sql."""
    return (SQL_DIR / "schema_diff" / f"{name}.sql").read_text()


def read_catalog(conn: psycopg.Connection, schemas: Iterable[str]) -> dict[str, Table]:
    """Every table of ``schemas`` with its columns, constraints, indexes and RLS, keyed ``schema.table``."""
    params = {"schemas": list(schemas)}
    tables = {
        f"{s}.{t}": Table(s, t, kind, rls, forced)
        for s, t, kind, rls, forced in conn.execute(schema_sql("tables"), params)
    }
    for s, t, *column in conn.execute(schema_sql("columns"), params):
        tables[f"{s}.{t}"].columns[column[0]] = Column(*column)
    for s, t, name, kind, cols, ref, ref_cols, definition in conn.execute(schema_sql("constraints"), params):
        tables[f"{s}.{t}"].constraints.append(
            Constraint(name, kind, tuple(cols), ref, tuple(ref_cols), definition))
    for s, t, name, unique, cols, partial, definition in conn.execute(schema_sql("indexes"), params):
        tables[f"{s}.{t}"].indexes.append(Index(name, unique, tuple(cols), partial, definition))
    return tables


# --------------------------------------------------------------------------- what the mapping expects


@dataclass(frozen=True)
class ForeignKey:
    column: str
    ref_table: str  # schema.table
    ref_column: str


@dataclass(frozen=True)
class Expectation:
    """What a destination table keeps beyond its entity's columns, key and parent foreign keys.

    entities.py does not describe these, so they live here, keyed by entity
    name, and mirror ``include/sql/destination/010_supabase.sql``.
    """

    unique: tuple[tuple[str, ...], ...] = ()
    checks: tuple[str, ...] = ()  # check constraints, by name
    foreign_keys: tuple[ForeignKey, ...] = ()  # beyond the entity's parents
    indexes: tuple[tuple[str, ...], ...] = ()  # plain indexes, by key columns
    # Written columns the transform may leave NULL (besides nullable parent
    # references); each takes the NULLs of the legacy column of the same name.
    nullable: tuple[str, ...] = ()


DESTINATION_EXPECTATIONS: dict[str, Expectation] = {
    "users": Expectation(
        unique=(("email",),),
        checks=("users_email_lowercase",),
        foreign_keys=(ForeignKey("id", "auth.users", "id"),),
        nullable=("avatar_url",),
    ),
    "agents": Expectation(indexes=(("owner_id",),), nullable=("description", "temperature")),
    "conversations": Expectation(indexes=(("user_id",), ("agent_id",))),
    "messages": Expectation(
        checks=("messages_role_check",),
        indexes=(("conversation_id",),),
        nullable=("token_count", "model"),
    ),
    "media": Expectation(
        unique=(("object_path",),),
        indexes=(("owner_id",), ("conversation_id",), ("message_id",)),
    ),
}

# What the users load writes into Supabase Auth (auth.py), and the keys its
# ON CONFLICT clauses need. Supabase owns these tables: only what the load
# relies on is checked, not every column or constraint Auth adds over time.
AUTH_WRITES: dict[str, tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]] = {
    "auth.users": (
        ("instance_id", "id", "aud", "role", "email", "encrypted_password", "email_confirmed_at",
         "raw_app_meta_data", "raw_user_meta_data", "created_at", "updated_at", "confirmation_token",
         "recovery_token", "email_change_token_new", "email_change", "is_sso_user", "is_anonymous"),
        (("id",),),
    ),
    "auth.identities": (
        ("provider_id", "user_id", "identity_data", "provider", "last_sign_in_at", "created_at",
         "updated_at"),
        (("provider_id", "provider"),),
    ),
}


@dataclass(frozen=True)
class LegacyContract:
    table: str
    columns: dict[str, str]
    key: str
    entities: tuple[str, ...]  # whose transforms read it


@dataclass(frozen=True)
class DestinationContract:
    table: str  # schema.table
    entities: tuple[str, ...]  # blocked when it breaks
    columns: dict[str, str | None]  # written columns -> expected type (None: not checked)
    primary_key: tuple[str, ...] | None = None
    unique: tuple[tuple[str, ...], ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = ()
    checks: tuple[str, ...] = ()
    indexes: tuple[tuple[str, ...], ...] = ()
    nullable: dict[str, str | None] = field(default_factory=dict)  # column -> legacy column (NULL counts)
    legacy_table: str | None = None
    # The application's own table: every column and constraint on it is the
    # mapping's business. Supabase's tables (auth) are not.
    owned: bool = True


def _ordered(names: Iterable[str]) -> tuple[str, ...]:
    wanted = set(names)
    return tuple(n for n in ENTITIES if n in wanted)


def with_descendants(entity: str) -> tuple[str, ...]:
    """The entity and every entity whose rows hang below it through parent references."""
    found = {entity}
    grew = True
    while grew:
        more = {e.name for e in ENTITIES.values() if e.name not in found and set(e.upstream) & found}
        found |= more
        grew = bool(more)
    return _ordered(found)


def legacy_readers(table: str) -> tuple[str, ...]:
    """The entities whose transform reads legacy ``table``.

    An entity reads its own source table and the fates of its direct parents;
    every fate joins the fate of the root entities (those without parents:
    the users), so their tables are read by every transform.
    """
    readers = set()
    for e in ENTITIES.values():
        read = {e.source_table} | {ENTITIES[p.parent].source_table for p in e.parents if p.parent in ENTITIES}
        read |= {r.source_table for r in ENTITIES.values() if not r.parents}
        if table in read:
            readers.add(e.name)
    return _ordered(readers)


def legacy_contracts() -> list[LegacyContract]:
    return [
        LegacyContract(e.source_table, dict(e.source_columns), e.key, legacy_readers(e.source_table))
        for e in ENTITIES.values()
    ]


def _target(entity: Entity) -> str:
    return f"{entity.schema_name}.{entity.target_table}"


def _entity_contract(e: Entity) -> DestinationContract:
    x = DESTINATION_EXPECTATIONS.get(e.name, Expectation())
    parents = tuple(
        ForeignKey(p.column, _target(ENTITIES[p.parent]), ENTITIES[p.parent].key)
        for p in e.parents if p.parent in ENTITIES
    )
    nullable = sorted({p.column for p in e.parents if p.nullable} | set(x.nullable))
    return DestinationContract(
        table=_target(e),
        entities=with_descendants(e.name),
        columns=dict(e.columns),
        primary_key=(e.key,),
        unique=x.unique,
        foreign_keys=parents + x.foreign_keys,
        checks=x.checks,
        indexes=x.indexes,
        nullable={c: (c if c in e.source_columns else None) for c in nullable},
        legacy_table=e.source_table,
    )


def destination_contracts() -> list[DestinationContract]:
    contracts = [_entity_contract(e) for e in ENTITIES.values()]
    if "users" in ENTITIES:
        for table, (columns, unique) in AUTH_WRITES.items():
            contracts.append(DestinationContract(
                table=table, entities=with_descendants("users"), columns=dict.fromkeys(columns),
                unique=unique, owned=False,
            ))
    return contracts


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
        if _target(e) == relation:
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


# --------------------------------------------------------------------------- the report


@dataclass
class SchemaReport:
    differences: list[Difference]
    legacy_database: str
    supabase_database: str
    catalogs: dict[str, Any] = field(default_factory=dict)
    dag_run_id: str | None = None
    check_id: int | None = None
    checked_at: datetime | None = None
    json_path: Path | None = None

    def by_severity(self, severity: str) -> list[Difference]:
        return [d for d in self.differences if d.severity == severity]

    @property
    def verdict(self) -> str:
        return BREAKING if self.by_severity(BREAKING) else "compatible"

    @property
    def blocked(self) -> dict[str, list[str]]:
        """Entity -> the ids of the breaking differences that block its load."""
        out: dict[str, set[str]] = {}
        for d in self.by_severity(BREAKING):
            for e in d.entities:
                out.setdefault(e, set()).add(d.id)
        return {e: sorted(out[e]) for e in sorted(out, key=_entity_order)}

    def counts(self) -> dict[str, int]:
        return {s: len(self.by_severity(s)) for s in (BREAKING, COMPATIBLE, INFORMATIONAL)}

    def comparison(self) -> dict[str, Any]:
        """Per side: missing tables, new tables, and per table missing / new / changed columns."""
        sides: dict[str, Any] = {}
        for side in ("legacy", "supabase"):
            diffs = [d for d in self.differences if d.side == side]
            tables: dict[str, dict[str, list]] = {}
            for d in diffs:
                if d.kind in ("missing_column", "new_column", "new_required_column", "type_changed",
                              "type_widened"):
                    entry = tables.setdefault(d.table, {"missing_columns": [], "new_columns": [],
                                                        "changed_columns": []})
                    if d.kind == "missing_column":
                        entry["missing_columns"].append(d.column)
                    elif d.kind.startswith("new_"):
                        entry["new_columns"].append({"column": d.column, "type": d.actual})
                    else:
                        entry["changed_columns"].append({"column": d.column, "expected": d.expected,
                                                         "actual": d.actual, "change": d.kind})
            sides[side] = {
                "missing_tables": [d.table for d in diffs if d.kind == "missing_table"],
                "new_tables": [d.table for d in diffs if d.kind == "unused_table"],
                "tables": tables,
            }
        return sides

    def summary(self) -> dict[str, Any]:
        """The small descriptor a task hands on (XCom, asset extra): never the whole report."""
        return {"check_id": self.check_id, "verdict": self.verdict, "counts": self.counts(),
                "blocked": self.blocked, "report": str(self.json_path) if self.json_path else None}

    def as_dict(self) -> dict[str, Any]:
        return {
            "check_id": self.check_id,
            "checked_at": self.checked_at.isoformat() if self.checked_at else None,
            "dag_run_id": self.dag_run_id,
            "legacy_database": self.legacy_database,
            "supabase_database": self.supabase_database,
            "verdict": self.verdict,
            "counts": self.counts(),
            "blocked": self.blocked,
            "comparison": self.comparison(),
            "differences": [d.as_dict() for d in self.differences],
            "catalogs": self.catalogs,
        }

    def table_lines(self, detail_width: int = 100) -> list[str]:
        """The report as a fixed-width table for the task log (the JSON file has every detail)."""
        when = f" at {self.checked_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if self.checked_at else ""
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items())
        lines = [f"schema check #{self.check_id}{when}: verdict {self.verdict.upper()} ({counts})"]
        if not self.differences:
            return lines + ["no differences: both schemas are what the mapping expects"]
        header = ("severity", "difference", "entities", "detail")
        rows = [(d.severity, d.id, ", ".join(d.entities) or "-", _shorten(d.detail, detail_width))
                for d in self.differences]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
        for r in [header, tuple("-" * w for w in widths), *rows]:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        lines += [f"BLOCKED {entity}: {', '.join(ids)}" for entity, ids in self.blocked.items()]
        return lines


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _entity_order(name: str) -> tuple[int, str]:
    order = list(ENTITIES)
    return (order.index(name) if name in order else len(order), name)


class _NullCounts:
    """Counts NULLs in the legacy data, only for the columns asked about (a NOT NULL that
    tightened where the mapping writes NULLs), and remembers them for the report."""

    def __init__(self, conn: psycopg.Connection, catalog: dict[str, Table]):
        self.conn, self.catalog = conn, catalog
        self.counted: dict[str, int | None] = {}

    def __call__(self, table: str, column: str) -> int | None:
        key = f"{table}.{column}"
        if key not in self.counted:
            found = self.catalog.get(f"{LEGACY_SCHEMA}.{table}")
            if found is None or column not in found.columns:
                self.counted[key] = None
            else:
                query = sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(
                    sql.Identifier(LEGACY_SCHEMA, table), sql.Identifier(column))
                self.counted[key] = self.conn.execute(query).fetchone()[0]
        return self.counted[key]


def _dedupe(diffs: Iterable[Difference]) -> list[Difference]:
    """One difference per id (the first wins), breaking first, then by id."""
    seen: dict[str, Difference] = {}
    for d in diffs:
        seen.setdefault(d.id, d)
    return sorted(seen.values(), key=lambda d: (_SEVERITY_ORDER[d.severity], d.id))


def _catalog_extract(catalog: dict[str, Table], relevant: Iterable[str]) -> dict[str, Any]:
    return {
        "tables": sorted(catalog),
        "mapped": {k: catalog[k].as_dict() for k in sorted(set(relevant)) if k in catalog},
    }


def _security(conn: psycopg.Connection) -> list[Difference]:
    try:
        return security_differences(conn)
    except ImportError:
        # No lock-down report in this checkout: the RLS check of every mapped
        # public table (compare_destination) still runs.
        log.warning("bootstrap.security_report is not available; checking RLS state only")
        return []


def compare(legacy_dsn: str, dest_dsn: str) -> SchemaReport:
    """Read both catalogs and classify every difference. Writes nothing."""
    legacy_contracts_, dest_contracts = legacy_contracts(), destination_contracts()
    with db.connection(dest_dsn, application="migration-schema-diff") as conn:
        conn.read_only = True
        dest_catalog = read_catalog(conn, DEST_SCHEMAS)
        # Security findings first: on the same id their message wins over our own RLS check's.
        diffs = _security(conn)
        conn.rollback()
    with db.connection(legacy_dsn, application="migration-schema-diff") as conn:
        conn.read_only = True
        legacy_catalog = read_catalog(conn, [LEGACY_SCHEMA])
        nulls = _NullCounts(conn, legacy_catalog)
        for contract in dest_contracts:
            diffs += compare_destination(dest_catalog, contract, nulls)
        for legacy in legacy_contracts_:
            diffs += compare_legacy(legacy_catalog, legacy)
        diffs += probe_transforms(conn)
        conn.rollback()
    used_public = {c.table.split(".", 1)[1] for c in dest_contracts
                   if c.table.startswith(f"{EXPOSED_SCHEMA}.")}
    diffs += unused_tables(dest_catalog, "supabase", EXPOSED_SCHEMA, used_public)
    diffs += unused_tables(legacy_catalog, "legacy", LEGACY_SCHEMA, {c.table for c in legacy_contracts_})
    return SchemaReport(
        differences=_dedupe(diffs),
        legacy_database=db.describe(legacy_dsn),
        supabase_database=db.describe(dest_dsn),
        catalogs={
            "legacy": _catalog_extract(legacy_catalog,
                                       (f"{LEGACY_SCHEMA}.{c.table}" for c in legacy_contracts_))
            | {"null_counts": nulls.counted},
            "supabase": _catalog_extract(dest_catalog, (c.table for c in dest_contracts)),
        },
    )


# --------------------------------------------------------------------------- recording


def reports_dir() -> Path:
    base = Path(os.environ.get("MIGRATION_STATE_DIR", Path.cwd() / ".local" / "reports"))
    path = base / "schema"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_atomically(path: Path, text: str) -> None:
    # latest.json may be read while the next check writes it.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def record(dest_dsn: str, report: SchemaReport) -> None:
    """Store the check in ``migration.schema_checks`` (the gate reads it) and as JSON files."""
    with db.connection(dest_dsn, application="migration-schema-diff") as conn:
        try:
            row = conn.execute(schema_sql("record_check"), {
                "dag_run_id": report.dag_run_id, "verdict": report.verdict,
                "blocked": Jsonb(report.blocked), "report": Jsonb(report.as_dict()),
            }).fetchone()
        except psycopg.errors.UndefinedTable as err:
            raise RuntimeError(
                "migration.schema_checks does not exist in the destination: bootstrap it first "
                "(python -m include.migration.bootstrap --dsn ...)") from err
        conn.commit()
    report.check_id, report.checked_at = row
    stamp = report.checked_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(report.as_dict(), indent=2, default=str)
    report.json_path = reports_dir() / f"{stamp}-check-{report.check_id}.json"
    _write_atomically(report.json_path, text)
    _write_atomically(report.json_path.with_name("latest.json"), text)


def run_schema_diff(legacy_dsn: str, dest_dsn: str, dag_run_id: str | None = None) -> SchemaReport:
    """Compare, record (row + JSON files) and log the table. Usable without Airflow."""
    report = compare(legacy_dsn, dest_dsn)
    report.dag_run_id = dag_run_id
    record(dest_dsn, report)
    for line in report.table_lines():
        log.info("%s", line)
    log.info("schema report: %s", report.json_path)
    return report


def breaking_message(summary: dict[str, Any]) -> str:
    """One line for a failed verdict: what blocks which entity and how to clear it."""
    blocked = "; ".join(f"{e}: {', '.join(ids)}" for e, ids in summary["blocked"].items())
    return (f"schema check #{summary['check_id']} found breaking differences, loads are blocked ({blocked}). "
            "Fix the schema and rerun schema_diff, or accept a difference for one run of an entity DAG "
            "with the params accept_schema_differences + override_reason. "
            f"Report: {summary.get('report')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m include.migration.schema_diff",
        description="Compare both schemas with the mapping and record the check.")
    parser.add_argument("--legacy-dsn", required=True)
    parser.add_argument("--dest-dsn", required=True)
    parser.add_argument("--run-id", default=None, help="recorded as dag_run_id")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = run_schema_diff(args.legacy_dsn, args.dest_dsn, args.run_id)
    return 1 if report.verdict == BREAKING else 0


if __name__ == "__main__":
    sys.exit(main())
