"""The destination bootstrap and its lock-down report.

This module owns two things:

* ``bootstrap(dsn)`` applies every ``include/sql/destination/*.sql`` file, in
  name order, in one transaction, so a failing file leaves the destination as
  it was. ``010_supabase.sql`` gives a plain PostgreSQL database the shape of
  a Supabase project (roles, ``auth``, the application's ``public`` tables
  with row level security); later files (``020_migration.sql``: the
  pipeline's own state) are picked up when they exist. Every file is
  idempotent, so the bootstrap runs before every load.
* ``security_report(conn)`` lists what breaks the lock-down Supabase requires
  (RLS on every public table, owner policies using ``auth.uid()``, no access
  for ``anon``, a private ``migration`` schema). The pipeline calls it after
  every load and the schema gate treats any finding as breaking.

Command line::

    python -m include.migration.bootstrap --dsn postgresql://postgres@127.0.0.1:54329/supabase
    python -m include.migration.bootstrap --dsn ... --report-only

Both print the findings and exit 1 when there are any.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

SQL_ROOT = Path(__file__).resolve().parent.parent / "sql"
DESTINATION_SQL = SQL_ROOT / "destination"
LOCKDOWN_FINDINGS_SQL = SQL_ROOT / "security" / "lockdown_findings.sql"

# Serialises bootstraps of the same database (advisory locks are per
# database): two concurrent CREATE TABLE IF NOT EXISTS can both pass the
# check and then collide. The number is arbitrary but fixed.
_BOOTSTRAP_LOCK = 7_310_255_001


@dataclass(frozen=True)
class SecurityFinding:
    """One lock-down problem: what it is about, a stable code, a sentence."""

    relation: str
    problem: str
    message: str

    def __str__(self) -> str:
        return self.message


def destination_files(directory: Path = DESTINATION_SQL) -> list[Path]:
    """The bootstrap's SQL files in the order they are applied."""
    return sorted(directory.glob("*.sql"), key=lambda p: p.name)


def bootstrap(dsn: str, directory: Path = DESTINATION_SQL) -> list[str]:
    """Apply every SQL file of ``directory`` in one transaction.

    Returns the names of the files applied, in order. On an error nothing is
    kept and the exception carries a note naming the file that failed.
    """
    files = destination_files(directory)
    if not files:
        raise FileNotFoundError(f"no .sql files in {directory}")
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_BOOTSTRAP_LOCK,))
        for path in files:
            try:
                # Bytes, not str: a file is many statements (and DO blocks),
                # sent without parameters so the server parses them as a script.
                conn.execute(path.read_bytes())
            except psycopg.Error as err:
                err.add_note(f"while applying {path.name}")
                raise
    # Leaving the `with` block committed the transaction.
    return [path.name for path in files]


def security_report(conn: Any) -> list[SecurityFinding]:
    """What breaks the destination's lock-down; empty when it holds.

    ``conn`` is an open DB-API connection to the destination (psycopg 3 or
    psycopg2). The query only reads the catalog; it runs in the caller's
    transaction, so it sees the caller's uncommitted changes.
    """
    with conn.cursor() as cur:
        cur.execute(LOCKDOWN_FINDINGS_SQL.read_text())
        rows = cur.fetchall()
    return [SecurityFinding(relation, problem, message) for relation, problem, message in rows]


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m include.migration.bootstrap",
        description="Give the destination database Supabase's shape, then report lock-down problems.",
    )
    parser.add_argument("--dsn", required=True, help="libpq URI or key=value string of the destination")
    parser.add_argument(
        "--report-only", action="store_true", help="only run the security report, change nothing"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    if not args.report_only:
        for name in bootstrap(args.dsn):
            print(f"applied {name}")
    with psycopg.connect(args.dsn) as conn:
        findings = security_report(conn)
    for finding in findings:
        print(f"FINDING {finding.problem}: {finding.message}")
    if not findings:
        print("lock-down holds: no findings")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
