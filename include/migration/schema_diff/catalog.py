"""The schema check's catalog reading: what each database holds, read from its catalog.

Tables with their columns, constraints, indexes and RLS state
(:func:`read_catalog`, SQL in ``include/sql/schema_diff/``), and the NULL
counts of the legacy columns a tightened NOT NULL is checked against
(:class:`NullCounts`). Reads only; what it means is ``classify.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

import psycopg
from psycopg import sql

from include.migration.entities import SQL_DIR

log = logging.getLogger(__name__)

# extract.transform_query reads the legacy tables from this schema.
LEGACY_SCHEMA = "public"
# The application's tables, and Supabase Auth's (the users load writes them).
DEST_SCHEMAS = ("public", "auth")
# Supabase exposes this schema through its API: every table in it needs RLS.
EXPOSED_SCHEMA = "public"


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


class NullCounts:
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
