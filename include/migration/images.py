"""Before-images: what a destination row looked like before a run changed it.

Every row a load updates or deletes is copied (as JSON) into
``migration.before_images`` in the same transaction as the change, and
every key it inserts is listed, so the rollback DAG can put the destination
back exactly. Deletes follow the destination's foreign keys (read from the
catalog): rows that a delete cascades to, or sets a column of to null, are
imaged too, children before parents, so a restore in reverse order puts
parents back first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import psycopg
from psycopg import sql

MAX_DEPTH = 6


@dataclass(frozen=True)
class ChildFK:
    table: tuple[str, str]  # (schema, table) of the referencing table
    column: str
    parent_column: str
    on_delete: str  # 'c' cascade, 'n' set null, 'd' set default, 'a'/'r' no action / restrict


def child_fks(conn: psycopg.Connection, schema: str, table: str) -> list[ChildFK]:
    """The single-column foreign keys that reference ``schema.table``."""
    rows = conn.execute(
        """
        SELECT cn.nspname, cl.relname, a.attname, pa.attname, c.confdeltype
        FROM pg_constraint c
        JOIN pg_class cl ON cl.oid = c.conrelid
        JOIN pg_namespace cn ON cn.oid = cl.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
        JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attnum = c.confkey[1]
        WHERE c.contype = 'f' AND c.confrelid = to_regclass(%s) AND cardinality(c.conkey) = 1
        ORDER BY 1, 2, 3
        """,
        (table_label(schema, table),),
    ).fetchall()
    return [ChildFK((r[0], r[1]), r[2], r[3], r[4]) for r in rows]


_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_$]*")


def _quoted(name: str) -> str:
    return name if _PLAIN_NAME.fullmatch(name) else '"' + name.replace('"', '""') + '"'


def table_label(schema: str, table: str) -> str:
    """The table's name as ``migration.before_images.entity`` keeps it: ``public.users``,
    with a part double-quoted only when it needs it (as ``quote_ident`` would). It is a
    valid ``to_regclass()`` argument, and ``split_label`` gets both parts back."""
    return f"{_quoted(schema)}.{_quoted(table)}"


def split_label(conn: psycopg.Connection, label: str) -> tuple[str, str]:
    """(schema, table) of a ``table_label``: parsed by the server (``parse_ident``), whose
    quoting rules the label follows, not split on a dot that a quoted name may contain."""
    parts = conn.execute("SELECT parse_ident(%s)", (label,)).fetchone()[0]
    if len(parts) != 2:
        raise ValueError(f"before-image label {label!r} does not name a schema-qualified table")
    return parts[0], parts[1]


def image_deletes(conn: psycopg.Connection, run_id: str, schema: str, table: str,
                  where: sql.Composable, depth: int = 0) -> None:
    """Image the rows of ``schema.table`` matching ``where`` (alias ``t``) and every row
    a delete of them would cascade to or modify. Dependents are imaged first."""
    if depth > MAX_DEPTH:
        raise RuntimeError(f"foreign keys nest deeper than {MAX_DEPTH} below {schema}.{table}")
    target = sql.Identifier(schema, table)
    for fk in child_fks(conn, schema, table):
        if fk.on_delete not in ("c", "n", "d"):
            continue
        child_where = sql.SQL("t.{col} IN (SELECT t.{pcol} FROM {target} t WHERE {where})").format(
            col=sql.Identifier(fk.column), pcol=sql.Identifier(fk.parent_column), target=target, where=where)
        if fk.on_delete == "c":
            image_deletes(conn, run_id, fk.table[0], fk.table[1], child_where, depth + 1)
        else:
            _image(conn, run_id, fk.table[0], fk.table[1], "update", child_where)
    _image(conn, run_id, schema, table, "delete", where)


def image_updates(conn: psycopg.Connection, run_id: str, schema: str, table: str, where: sql.Composable) -> None:
    _image(conn, run_id, schema, table, "update", where)


def _image(conn: psycopg.Connection, run_id: str, schema: str, table: str, op: str,
           where: sql.Composable) -> None:
    conn.execute(sql.SQL(
        "INSERT INTO migration.before_images (run_id, entity, op, row_image) "
        "SELECT {run}, {label}, {op}, to_jsonb(t) FROM {target} t WHERE {where}"
    ).format(run=sql.Literal(run_id), label=sql.Literal(table_label(schema, table)), op=sql.Literal(op),
             target=sql.Identifier(schema, table), where=where))


def record_inserts(conn: psycopg.Connection, run_id: str, schema: str, table: str, keys: list[str]) -> None:
    if keys:
        conn.execute("INSERT INTO migration.before_images (run_id, entity, op, keys) VALUES (%s, %s, 'insert', %s)",
                     (run_id, table_label(schema, table), keys))


def record_insert_range(conn: psycopg.Connection, run_id: str, schema: str, table: str,
                        after: str | None, hi: str | None) -> None:
    """A key range that was empty before this run: undo = delete the range (``hi`` None: the whole table)."""
    conn.execute("INSERT INTO migration.before_images (run_id, entity, op, keys) VALUES (%s, %s, 'insert_range', %s)",
                 (run_id, table_label(schema, table), [after, hi]))


def primary_key(conn: psycopg.Connection, schema: str, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) AND i.indisprimary ORDER BY a.attnum",
        (table_label(schema, table),)).fetchall()
    return [r[0] for r in rows]


def writable_columns(conn: psycopg.Connection, schema: str, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
        "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum", (table_label(schema, table),)).fetchall()
    return [r[0] for r in rows]


def restore(conn: psycopg.Connection, label: str, op: str, row_image: dict | None, keys: list[str] | None) -> int:
    """Undo one before-image: delete inserted keys, or put an imaged row back."""
    schema, table = split_label(conn, label)
    target = sql.Identifier(schema, table)
    pk = primary_key(conn, schema, table)
    if op == "insert":
        assert keys is not None and len(pk) == 1
        return conn.execute(sql.SQL("DELETE FROM {} WHERE {}::text = ANY(%s)").format(
            target, sql.Identifier(pk[0])), (keys,)).rowcount
    if op == "insert_range":
        assert keys is not None and len(pk) == 1
        typ = conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                           "to_regclass(%s) AND attname = %s", (table_label(schema, table), pk[0])).fetchone()[0]
        lo, hi = keys
        # [None, None]: the whole table was empty (a direct load).
        cond = sql.SQL("TRUE") if hi is None else sql.SQL("{k} <= {hi}::{t}").format(
            k=sql.Identifier(pk[0]), hi=sql.Literal(hi), t=sql.SQL(typ))
        if lo is not None:
            cond = sql.SQL("{} AND {k} > {lo}::{t}").format(cond, k=sql.Identifier(pk[0]), lo=sql.Literal(lo),
                                                           t=sql.SQL(typ))
        return conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(target, cond)).rowcount
    cols = writable_columns(conn, schema, table)
    non_pk = [c for c in cols if c not in pk]
    from psycopg.types.json import Jsonb

    return conn.execute(sql.SQL(
        "INSERT INTO {t} ({cols}) SELECT {cols} FROM jsonb_populate_record(NULL::{t}, %s) "
        "ON CONFLICT ({pk}) DO UPDATE SET ({non_pk}) = ROW({excluded})"
    ).format(t=target, cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
             pk=sql.SQL(", ").join(map(sql.Identifier, pk)),
             non_pk=sql.SQL(", ").join(map(sql.Identifier, non_pk)),
             excluded=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in non_pk)),
        (Jsonb(row_image),)).rowcount
