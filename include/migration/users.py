"""The users entity's own steps in the load: Supabase Auth accounts and merged duplicates.

A user is two rows in the destination: ``public.users`` and its Supabase Auth
account (``auth.users`` + ``auth.identities``, whose delete cascades to
``public.users``). The shared load (``load.py``) calls these hooks
(``Entity.hooks``, see ``entities.py``) where a user needs more than its row:

``check_stage``
    An email already held in the destination by another account is
    quarantined (``email_taken_in_destination``).
``before_remove``
    A user already loaded that is now a merged duplicate hands its agents,
    conversations and media to its survivor before it is deleted.
``delete_rows``
    With ``MIGRATION_AUTH_PATH=admin_api`` the accounts are deleted by GoTrue.
``image_updates``
    Changed users' accounts are imaged with their rows.
``before_write``
    Every account of a chunk is written (SQL, ``include/supabase/auth.py``, or
    the admin API, ``include/supabase/auth_admin.py``) before its rows.
``record_ledgers``
    ``migration.user_id_map``: which loser was merged into which survivor.
"""

from __future__ import annotations

import os

import psycopg
from psycopg import sql

from include.migration import images
from include.migration.entities import ENTITIES
from include.migration.load import stage_ident, upsert_chunk

# Who writes users' Supabase Auth accounts: ``sql`` (auth.py, inside the chunk
# transaction) or ``admin_api`` (auth_admin.py: GoTrue over HTTP, for projects
# that forbid writing the auth schema).
AUTH_PATH_ENV = "MIGRATION_AUTH_PATH"
AUTH_PATHS = ("sql", "admin_api")

# The tables whose rows belong to a user, by the column naming the owner: a
# merged duplicate's rows move to its survivor.
OWNED_ROWS = (("agents", "owner_id"), ("conversations", "user_id"), ("media", "owner_id"))


def auth_path() -> str:
    value = (os.environ.get(AUTH_PATH_ENV) or "sql").strip().lower()
    if value not in AUTH_PATHS:
        raise ValueError(f"{AUTH_PATH_ENV}={value!r}: expected one of {', '.join(AUTH_PATHS)}")
    return value


def check_stage(dest: psycopg.Connection, stage: sql.Identifier) -> None:
    """An email held in the destination by another account that this run does not
    remove: loading would break the unique email."""
    dest.execute(
        sql.SQL(
            "UPDATE {stage} s SET _disposition = 'quarantined', _reason = 'email_taken_in_destination', "
            "_source = coalesce(_source, to_jsonb(s) - '_source' - 'password_hash') "
            "WHERE s._disposition = 'loaded' AND EXISTS ("
            "  SELECT 1 FROM public.users t WHERE t.email = s.email AND t.id <> s.id"
            "  AND NOT EXISTS (SELECT 1 FROM {stage} o WHERE o.id = t.id AND o._disposition <> 'loaded'))"
        ).format(stage=stage)
    )


def before_remove(dest: psycopg.Connection, table: str, run_id: str) -> None:
    """A user already in the destination that is now a merged duplicate: load its
    survivor, move its agents, conversations and media to the survivor, then it
    can be deleted. The loser's email is parked first so the survivor can take it."""
    stage = stage_ident(table)
    losers = dest.execute(
        sql.SQL(
            "SELECT s.id, s._maps_to::uuid FROM {stage} s JOIN public.users t ON t.id = s.id "
            "WHERE s._reason = 'merged_duplicate'"
        ).format(stage=stage)
    ).fetchall()
    if not losers:
        return
    loser_ids = [row[0] for row in losers]
    is_loser = sql.SQL("t.id = ANY({})").format(sql.Literal(loser_ids))
    images.image_updates(dest, run_id, "public", "users", is_loser)
    images.image_updates(dest, run_id, "auth", "users", is_loser)
    dest.execute(
        "UPDATE public.users SET email = 'merged+' || id || '@migration.invalid' WHERE id = ANY(%s)",
        (loser_ids,),
    )
    if auth_path() == "admin_api":
        from include.supabase import auth_admin

        auth_admin.set_emails({str(i): f"merged+{i}@migration.invalid" for i in loser_ids})
    else:
        dest.execute(
            "UPDATE auth.users SET email = 'merged+' || id || '@migration.invalid' WHERE id = ANY(%s)",
            (loser_ids,),
        )
    survivors = list({row[1] for row in losers})
    upsert_chunk(
        dest, ENTITIES["users"], table, run_id, sql.SQL("s.id = ANY({})").format(sql.Literal(survivors))
    )
    for child, column in OWNED_ROWS:
        exists = dest.execute("SELECT to_regclass(%s)", (f"public.{child}",)).fetchone()[0]
        if exists:
            images.image_updates(
                dest,
                run_id,
                "public",
                child,
                sql.SQL("t.{} = ANY({})").format(sql.Identifier(column), sql.Literal(loser_ids)),
            )
            dest.execute(
                sql.SQL(
                    "UPDATE public.{child} c SET {col} = m._maps_to::uuid FROM {stage} m "
                    "WHERE m._reason = 'merged_duplicate' AND c.{col} = m.id"
                ).format(child=sql.Identifier(child), col=sql.Identifier(column), stage=stage)
            )


def delete_rows(dest: psycopg.Connection, where: sql.Composable) -> int | None:
    """admin_api: GoTrue deletes the accounts; public.users and its rows follow by the foreign keys.
    None with the SQL path: the load deletes from ``auth.users`` itself.

    The caller's transaction is committed first: GoTrue deletes in its own
    transactions, which would wait for rows this one holds (a merged user's
    moved children and parked email) while this one waits for the HTTP
    answer. What gets committed early (before-images, the merge moves) is
    idempotent, so a crash before the deletes leaves work the rerun repeats.
    """
    if auth_path() != "admin_api":
        return None
    from include.supabase import auth_admin

    ids = [str(r[0]) for r in dest.execute(sql.SQL("SELECT t.id FROM auth.users t WHERE {}").format(where))]
    dest.commit()
    return auth_admin.delete_accounts(ids)


def image_updates(dest: psycopg.Connection, run_id: str, changing_keys: sql.Composable) -> None:
    """Before-images of the accounts of the users about to change (``changing_keys``: an array of ids)."""
    images.image_updates(dest, run_id, "auth", "users", sql.SQL("t.id = ANY({})").format(changing_keys))
    images.image_updates(
        dest, run_id, "auth", "identities", sql.SQL("t.user_id = ANY({})").format(changing_keys)
    )


def before_write(dest: psycopg.Connection, table: str, where: sql.Composable) -> None:
    """Every account of the chunk (``where`` over the stage, alias ``s``): a password can
    change while public.users stays identical, and public.users' foreign key needs them."""
    if auth_path() == "admin_api":
        from include.supabase import auth_admin

        # GoTrue writes the accounts in its own transactions, before this
        # chunk's INSERT into public.users (whose foreign key needs them), so
        # outside the chunk transaction. That is safe: the calls are
        # idempotent, and a crash before the chunk commits leaves accounts that
        # the rerun finds unchanged (no writes) before loading the chunk again.
        auth_admin.sync_staged_accounts(dest, stage_ident(table), where)
        return
    from include.supabase import auth

    auth.upsert_accounts(dest, stage_ident(table), where)


def record_ledgers(dest: psycopg.Connection, stage: sql.Identifier, run_id: str) -> None:
    """Which loser was merged into which survivor; a key that no longer merges leaves the map."""
    dest.execute(
        sql.SQL(
            "INSERT INTO migration.user_id_map (loser_id, survivor_id, email, run_id) "
            "SELECT s.id, s._maps_to::uuid, s.email, {run} FROM {stage} s "
            "WHERE s._reason = 'merged_duplicate' "
            "ON CONFLICT (loser_id) DO UPDATE SET survivor_id = EXCLUDED.survivor_id, "
            "email = EXCLUDED.email, run_id = EXCLUDED.run_id"
        ).format(run=sql.Literal(run_id), stage=stage)
    )
    dest.execute(
        sql.SQL(
            "DELETE FROM migration.user_id_map m USING {stage} s WHERE m.loser_id = s.id "
            "AND s._reason <> 'merged_duplicate'"
        ).format(stage=stage)
    )
