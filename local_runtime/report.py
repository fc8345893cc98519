"""The per-entity report the demo prints: what every run did, and whether it adds up.

Read from the destination's ``migration`` schema only, so it shows what the
pipeline recorded, not what the demo believes. With the legacy world's
report file (known passwords), it also proves a sample of migrated users can
sign in with their old passwords: each password is checked against the hash
in ``auth.users`` with the ``bcrypt`` package, and a wrong one must fail.
"""

from __future__ import annotations

import json
from pathlib import Path

from include.migration import db

ENTITY_ORDER = ("users", "agents", "conversations", "messages", "media")


def run_rows(conn) -> list[tuple]:
    return conn.execute(
        """
        SELECT r.entity, r.mode,
               -- A run left unfinished with no live session is not shown as running (abandoned.py).
               CASE WHEN r.status IN ('running', 'loaded')
                         AND NOT migration.advisory_lock_held('migration.run', r.run_id)
                    THEN 'no live session since ' || to_char(coalesce(r.heartbeat_at, r.started_at) AT TIME ZONE 'UTC',
                                                             'YYYY-MM-DD HH24:MI:SS') || 'Z (left ' || r.status || ')'
                    WHEN r.status = 'abandoned'
                    THEN 'abandoned, found ' || to_char(r.abandoned_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')
                         || 'Z by ' || r.abandoned_by
                    ELSE r.status END,
               r.stage_rows,
               r.counts->'accounting' AS acc,
               extract(epoch FROM (r.finished_at - r.started_at)) AS seconds,
               (SELECT verdict FROM migration.reconciliations c WHERE c.run_id = r.run_id AND c.entity = r.entity),
               r.run_id
        FROM migration.runs r
        WHERE NOT r.dry_run
        ORDER BY r.started_at
        """
    ).fetchall()


def _reasons(acc: dict, disposition: str) -> str:
    parts = [f"{k.split(':', 1)[1]} {v}" for k, v in sorted((acc.get("by_reason") or {}).items())
             if k.startswith(disposition + ":")]
    return ", ".join(parts)


def entity_table(conn) -> list[str]:
    lines = [f"{'entity':<14}{'mode':<12}{'in scope':>10}{'loaded':>10}{'excluded':>10}{'quarant.':>10}"
             f"{'written':>10}  {'reconciliation':<16}{'time':>8}  status"]
    for entity, mode, status, in_scope, acc, seconds, verdict, _ in run_rows(conn):
        acc = acc or {}
        written = (acc.get("inserted", 0) or 0) + (acc.get("updated", 0) or 0) + (acc.get("deleted", 0) or 0)
        lines.append(
            f"{entity:<14}{mode:<12}{(in_scope or 0):>10,}{acc.get('loaded', 0):>10,}{acc.get('excluded', 0):>10,}"
            f"{acc.get('quarantined', 0):>10,}{written:>10,}  {(verdict or '-'):<16}{(seconds or 0):>7.1f}s  {status}")
        for disposition in ("excluded", "quarantined"):
            reasons = _reasons(acc, disposition)
            if reasons:
                lines.append(f"{'':<14}  {disposition}: {reasons}")
        if acc and acc.get("in_scope") is not None:
            total = acc.get("loaded", 0) + acc.get("excluded", 0) + acc.get("quarantined", 0)
            mark = "adds up" if total == acc["in_scope"] and acc.get("balanced") else "DOES NOT ADD UP"
            lines.append(f"{'':<14}  {acc['in_scope']:,} in scope = {acc.get('loaded', 0):,} + "
                         f"{acc.get('excluded', 0):,} + {acc.get('quarantined', 0):,}: {mark}")
    return lines


def auth_lines(conn, world_report: Path | None) -> list[str]:
    from include.supabase.auth import account_summary

    s = account_summary(conn)
    lines = [f"auth accounts: {s['accounts']:,} ({s['with_password']:,} with a password, "
             f"{s['without_password']:,} without: OAuth-only), {s['email_identities']:,} email identities"]
    if world_report and world_report.exists():
        known = json.loads(world_report.read_text()).get("known_passwords") or {}
        lines.append(password_check(conn, known))
    return lines


def password_check(conn, known: dict[str, str]) -> str:
    import bcrypt

    ok = wrong_refused = missing = 0
    for user_id, password in known.items():
        row = conn.execute("SELECT encrypted_password FROM auth.users WHERE id = %s", (user_id,)).fetchone()
        if not row or not row[0]:
            missing += 1
            continue
        # Go's bcrypt (Supabase Auth) accepts $2a$, $2b$ and $2y$; the bcrypt package checks $2y$ as $2b$.
        stored = row[0].replace("$2y$", "$2b$", 1).encode()
        ok += bcrypt.checkpw(password.encode(), stored)
        wrong_refused += not bcrypt.checkpw((password + "!").encode(), stored)
    total = len(known)
    verdict = "OK" if ok == total and wrong_refused == total else "PROBLEM"
    return (f"password check ({verdict}): {ok} of {total} known legacy passwords verify against the migrated "
            f"hashes, {wrong_refused} of {total} wrong passwords refused, {missing} accounts missing")


def demo_report(dest_dsn: str, world_report: str | Path | None = None) -> str:
    world = Path(world_report) if world_report else None
    with db.connection(dest_dsn) as conn:
        lines = ["", "Migration report (from migration.runs, migration.run_accounting, migration.reconciliations)"]
        lines += entity_table(conn)
        lines.append("")
        lines += auth_lines(conn, world)
        media = media_lines(conn)
        if media:
            lines.append("")
            lines += media
    return "\n".join(lines)


def media_lines(conn) -> list[str]:
    exists = conn.execute("SELECT to_regclass('migration.media_uploads')").fetchone()[0]
    if not exists:
        return []
    rows = conn.execute(
        "SELECT outcome, count(*), coalesce(sum(bytes), 0)::float8 FROM migration.media_uploads GROUP BY 1 ORDER BY 1"
    ).fetchall()
    if not rows:
        return []
    return ["media uploads: " + ", ".join(f"{o} {n:,} files ({b / 1e6:.1f} MB)" for o, n, b in rows)]
