"""The generator's SQL and its small database helpers.

This module owns where the world's SQL lives (``local_runtime/world/sql``,
one statement per file, or ``-- kind:`` sections), how statements are read,
the row ids every part agrees on (``uid``, equal to ``pg_temp.uid()`` in
``functions.sql``), and the column updates planting uses.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from psycopg import sql

HERE = Path(__file__).resolve().parent
LEGACY_SCHEMA = HERE.parents[1] / "include" / "sql" / "legacy" / "schema.sql"
WORLD_SQL = HERE / "sql"
MEDIA_MARKER = ".legacy-world"


# --------------------------------------------------------------------------
# Small helpers


@cache
def _sql_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _sql(text: str) -> sql.SQL:
    # Statements come from this repository's .sql files, never from input.
    return sql.SQL(text)  # type: ignore[arg-type]


def _query(name: str) -> sql.SQL:
    """A statement of local_runtime/world/sql/<name>.sql."""
    return _sql(_sql_text(WORLD_SQL / f"{name}.sql"))


def _named_queries(name: str) -> dict[str, sql.SQL]:
    """Sections of a .sql file, each headed by a '-- kind: NAME' line."""
    sections: dict[str, str] = {}
    current: str | None = None
    for line in _sql_text(WORLD_SQL / f"{name}.sql").splitlines():
        if line.startswith("-- kind: "):
            current = line.removeprefix("-- kind: ").strip()
            sections[current] = ""
        elif current is not None and not line.startswith("--"):
            sections[current] += line + "\n"
    return {kind: _sql(text.strip().rstrip(";")) for kind, text in sections.items()}


def uid(seed: int, kind: str, n: int) -> uuid.UUID:
    """The id of row n of a kind; equals pg_temp.uid() in functions.sql."""
    return uuid.UUID(hashlib.md5(f"{seed}:{kind}:{n}".encode()).hexdigest())


def _ids(seed: int, kind: str, rows: Iterable[int]) -> list[uuid.UUID]:
    return [uid(seed, kind, n) for n in rows]


def _keys(values: Iterable[Any]) -> list[str]:
    """Report keys: message ids sort as numbers, uuids as text."""
    keys = [str(v) for v in values]
    return sorted(keys, key=lambda k: (len(k), k) if k.isdigit() else (0, k))


def _set_column(
    conn: psycopg.Connection,
    table: str,
    column: str,
    keys: Sequence[Any],
    values: Sequence[Any] | None,
    key_type: str = "uuid",
) -> None:
    """Set one column of the rows with these ids (to NULL when values is None)."""
    if not keys:
        return
    target = {"table": sql.Identifier(table), "column": sql.Identifier(column)}
    if values is None:
        conn.execute(
            sql.SQL("UPDATE {table} SET {column} = NULL WHERE id = ANY(%s)").format(**target), [list(keys)]
        )
        return
    conn.execute(
        sql.SQL(
            "UPDATE {table} SET {column} = v.val FROM unnest(%s::{key_type}[], %s::text[]) AS v(key, val)"
            " WHERE {table}.id = v.key"
        ).format(key_type=sql.SQL(key_type), **target),
        [list(keys), list(values)],
    )


def _fetch_column(
    conn: psycopg.Connection, query: sql.SQL | sql.Composed | LiteralString, params: Any = None
) -> list[Any]:
    return [row[0] for row in conn.execute(query, params).fetchall()]
