"""The benchmark's PostgreSQL: the server, its two databases, their settings and scratch tables.

This module owns where the benchmark runs: the embedded server
(``.local/bench-pg``, a free port, ``pg_stat_statements`` preloaded) or the
one of ``BENCH_PG_URI``; fresh ``bench_legacy`` / ``bench_supabase``
databases; checkpoints between steps; the settings and code version the
report records; the scratch tables the limit and the naive steps write into;
and statement tracking for the profile.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from local_runtime.bench.report import ENTITY_ORDER, MB, statement_label

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench-results"
BENCH_PG_DIR = ROOT / ".local" / "bench-pg"
LEGACY_DB, DEST_DB = "bench_legacy", "bench_supabase"


def legacy_columns(entity_name: str) -> list[str]:
    from include.migration.entities import get

    return list(get(entity_name).source_columns)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _running_port(data_dir: Path) -> int | None:
    from local_runtime import postgres as local_pg

    if not local_pg.is_running(data_dir.resolve()):
        return None
    return int((data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()[3])


@dataclass
class Server:
    base_uri: str
    data_dir: Path | None  # the embedded server's folder; None for BENCH_PG_URI
    postmaster_pid: int | None


def start_server() -> Server:
    uri = os.environ.get("BENCH_PG_URI")
    if uri:
        return Server(uri.rstrip("/"), None, None)
    from local_runtime import postgres as local_pg

    fast = os.environ.get("BENCH_FAST") == "1"
    port = _running_port(BENCH_PG_DIR) or _free_port()
    base = local_pg.start(BENCH_PG_DIR, port, fast=fast)
    if _preload_statements(base):
        base = local_pg.restart(BENCH_PG_DIR, port, fast=fast)
    pid = int((BENCH_PG_DIR / "pgdata" / "postmaster.pid").read_text().split()[0])
    return Server(base, BENCH_PG_DIR, pid)


def _preload_statements(base: str) -> bool:
    """Ask for pg_stat_statements (off until the profile); True when a restart is needed."""
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        loaded = conn.execute("SHOW shared_preload_libraries").fetchone()[0]
        if "pg_stat_statements" in loaded:
            return False
        conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        conn.execute("ALTER SYSTEM SET pg_stat_statements.track = 'none'")
    return True


def statements_available(base: str) -> bool:
    try:
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SELECT count(*) FROM pg_stat_statements").fetchone()
        return True
    except psycopg.Error:
        return False


def set_statement_tracking(base: str, on: bool) -> None:
    """Track the bench databases' statements (and only theirs) during the profile."""
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        for name in (LEGACY_DB, DEST_DB):
            statement = ("ALTER DATABASE {} SET pg_stat_statements.track = 'top'" if on
                         else "ALTER DATABASE {} RESET pg_stat_statements.track")
            conn.execute(sql.SQL(statement).format(sql.Identifier(name)))
        if on:
            conn.execute("SELECT pg_stat_statements_reset()")


def fresh_databases(base: str) -> tuple[str, str]:
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        for name in (LEGACY_DB, DEST_DB):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return f"{base}/{LEGACY_DB}", f"{base}/{DEST_DB}"


def checkpoint(base: str) -> None:
    try:
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute("CHECKPOINT")
    except psycopg.Error:  # not allowed on a shared server without pg_checkpoint: measure anyway
        pass


def code_version() -> dict[str, Any]:
    """The commit measured, and the pipeline files that differ from it (figures of a moving tree)."""
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "include").splitlines()
             if line.startswith(" M") or line.startswith("M")]
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or None, "modified": dirty}


def server_settings(base: str) -> dict[str, str]:
    names = ("server_version", "fsync", "synchronous_commit", "full_page_writes", "shared_buffers",
             "work_mem", "maintenance_work_mem", "max_wal_size", "wal_level")
    with psycopg.connect(f"{base}/postgres") as conn:
        return {n: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(n))).fetchone()[0] for n in names}


def settle(legacy: str) -> None:
    """Vacuum and analyze the fresh legacy tables, so no measured step sets hint bits for the others."""
    with psycopg.connect(legacy, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")


def table_bytes(dsn: str, schema: str = "public") -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {e: conn.execute("SELECT pg_total_relation_size(%s)", (f"{schema}.{e}",)).fetchone()[0]
                for e in ENTITY_ORDER}


def scratch_table(legacy: str, dest: str, schema: str, entity: str) -> None:
    """An empty table with the legacy columns and types (binary COPY matches) and a primary key."""
    from include.migration.entities import get

    names = legacy_columns(entity)
    with psycopg.connect(legacy) as conn:
        types = dict(conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (f"public.{entity}",)).fetchall())
    table = sql.Identifier(schema, entity)
    with psycopg.connect(dest, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(table, sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(types[n])) for n in names)))
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(
            table, sql.Identifier(get(entity).key)))


def drop_scratch(dest: str, schema: str) -> None:
    with psycopg.connect(dest, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def empty_destination_messages(dest: str) -> None:
    with psycopg.connect(dest, autocommit=True) as conn:
        conn.execute("TRUNCATE public.messages CASCADE")


def top_statements(base: str, limit: int = 40) -> list[dict]:
    with psycopg.connect(f"{base}/postgres") as conn:
        rows = conn.execute(
            "SELECT d.datname, s.calls, s.total_exec_time / 1000, s.rows, s.shared_blks_hit, "
            "s.shared_blks_read, "
            "s.wal_bytes, s.query FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
            "WHERE d.datname IN (%s, %s) AND s.query NOT ILIKE 'EXPLAIN%%' ORDER BY s.total_exec_time DESC "
            "LIMIT %s", (LEGACY_DB, DEST_DB, limit)).fetchall()
    return [{"database": db_name, "calls": calls, "seconds": round(secs, 3), "rows": n, "blks_hit": hit,
             "blks_read": read, "wal_mb": round(float(wal or 0) / MB, 1), "part": statement_label(query),
             "query": " ".join(query.split())[:300]}
            for db_name, calls, secs, n, hit, read, wal, query in rows]
