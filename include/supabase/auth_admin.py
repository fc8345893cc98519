"""Supabase Auth accounts through the admin API, for projects that forbid writing the ``auth`` schema.

The alternative to ``auth.upsert_accounts`` (SQL), chosen with
``MIGRATION_AUTH_PATH=admin_api`` (see ``users.auth_path``). Every account is
made by GoTrue itself, over HTTP, with the supabase client's
``auth.admin`` calls: ``create_user`` with the legacy ``id``, the bcrypt
hash as ``password_hash`` (copied unchanged, so the old password keeps
working), ``email_confirm`` and the profile in ``user_metadata``;
``update_user_by_id`` only for what differs; ``delete_user`` for accounts
whose source row is now excluded.

One HTTP call per user, a few in flight at once (a small thread pool), each
retried with exponential backoff on 429, 5xx and timeouts. A rerun of the
same data sends no writes: an account that already matches is only read.
When the caller knows which accounts exist (``known_accounts``, read with
SQL from ``auth.users``; reading is allowed where writing is not), a new
user costs one POST and an existing one one GET; without it, one GET more.

What the admin API cannot do, and is reported as ``failed`` rather than
done half-way (GoTrue ``internal/api/admin.go``):

* replace a password hash: ``PUT /admin/users/{id}`` reads ``password_hash``
  and ignores it, only a plaintext ``password`` is taken. A user whose legacy
  hash changed after the account was created fails with
  ``password_hash_changed`` (SQL path, or a password reset, fixes it).
* keep a hash it cannot parse: ``password_hash`` must be bcrypt
  (``$2a$``/``$2b$``/``$2y$``), argon2i/argon2id or Firebase scrypt; anything
  else is answered 500 "Error creating user", so it is checked here first and
  fails with ``unsupported_password_hash`` without a call.
* set ``created_at``: accounts made by the API are dated when they are made
  (the SQL path copies the legacy date), and ``email_confirmed_at`` is the
  time of the call.

And what differs from the SQL path by GoTrue's own design: a user without a
password (OAuth-only) gets a random 64-character password GoTrue hashes and
nobody knows, and an email identity; ``identity_data.email_verified`` is
false on identities GoTrue creates; ``raw_user_meta_data`` carries
``"email_verified": true`` after ``email_confirm``.

Throughput, measured against the local stand-in (``auth_standin`` in its own
process, the embedded PostgreSQL server with fsync off, 8 workers, on a
2-CPU machine shared with other jobs, load average 10-17): the 4,895
loadable users of ``legacy_world`` small took 112-145 s to create (34-44
accounts/s; 233 of them OAuth-only, whose random password GoTrue hashes at
bcrypt cost 10), and 22-25 s to re-check on a rerun (199-220 reads/s). The
SQL path loads the same users, accounts and ``public.users`` together, in
1.2-2.4 s (2,000-4,200 rows/s): one to two orders of magnitude faster.
Against a hosted project the network round trip dominates: at best about
``workers / round-trip seconds`` accounts per second (8 / 0.05 s = 160/s),
less under Auth's own load; plan a large user table accordingly.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from include.supabase.retry import Backoff, call_with_retry

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql
    from supabase import Client

log = logging.getLogger(__name__)

API_CONN_ID = "supabase_api"
METADATA_KEYS = ("name", "avatar_url")
APP_METADATA = {"provider": "email", "providers": ["email"]}
DEFAULT_WORKERS = 8
DEFAULT_ATTEMPTS = 5

T = TypeVar("T")


@dataclass(frozen=True)
class AccountRow:
    """A loadable user as the stage has it."""

    id: str
    email: str
    password_hash: str | None
    name: str | None
    avatar_url: str | None


@dataclass(frozen=True)
class RowOutcome:
    user_id: str
    outcome: str  # created | updated | unchanged | deleted | absent | failed
    reason: str | None = None


@dataclass
class AdminSyncResult:
    outcomes: list[RowOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes if o.outcome == outcome)

    @property
    def failed(self) -> list[RowOutcome]:
        return [o for o in self.outcomes if o.outcome == "failed"]

    @property
    def rate(self) -> float:
        """Rows handled per second."""
        return len(self.outcomes) / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        counts: dict[str, Any] = {}
        for o in self.outcomes:
            counts[o.outcome] = counts.get(o.outcome, 0) + 1
        return {**counts, "seconds": round(self.seconds, 3)}

    def failure_summary(self, limit: int = 10) -> str:
        by_reason: dict[str, list[str]] = {}
        for o in self.failed:
            by_reason.setdefault(o.reason or "unknown", []).append(o.user_id)
        return "; ".join(f"{reason}: {len(ids)} ({', '.join(ids[:limit])})"
                         for reason, ids in by_reason.items())


class AdminSyncFailed(RuntimeError):
    """Some accounts could not be made right through the admin API."""

    def __init__(self, action: str, result: AdminSyncResult) -> None:
        message = (f"{action}: {len(result.failed)} of {len(result.outcomes)} accounts failed through the "
                   f"Auth admin API: {result.failure_summary()}. A rerun retries them; accounts already "
                   "right are only read.")
        if any(o.reason == "password_hash_changed" for o in result.failed):
            message += (" password_hash_changed cannot be fixed through the API (GoTrue's update takes "
                        "no hash): load those users with MIGRATION_AUTH_PATH=sql, or have them reset "
                        "their password.")
        super().__init__(message)
        self.result = result


# ----------------------------------------------------------------------------
# What GoTrue accepts as password_hash (models.NewUserWithPasswordHash)

_ARGON2 = re.compile(r"^\$argon2(i|id)\$v=19\$m=[0-9]+,t=[0-9]+,p=[0-9]+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$")
_FBSCRYPT = re.compile(r"^\$fbscrypt\$v=1,n=[1-9][0-9]*,r=[1-9][0-9]*,p=[1-9][0-9]*(,ss=[^,$]+)?(,sk=[^$]+)?"
                       r"\$[^$]+\$.+$")
_BCRYPT = re.compile(r"^\$[0-2][a-z]?\$([0-9]{2})\$")


def unsupported_hash_reason(hash_: str) -> str | None:
    """Why GoTrue would refuse ``hash_`` as ``password_hash`` (None: it takes it).

    bcrypt is checked as Go's ``bcrypt.Cost`` does (at least 59 bytes, ``$``,
    a version up to 2, a cost 4..31), argon2 and Firebase scrypt by their PHC
    shapes. The stand-in ports GoTrue's checks separately, so a test can show
    the two agree.
    """
    if hash_.startswith("$argon2"):
        return None if _ARGON2.match(hash_) else "not an argon2i/argon2id v=19 hash GoTrue can parse"
    if hash_.startswith("$fbscrypt"):
        return None if _FBSCRYPT.match(hash_) else "not a Firebase scrypt hash GoTrue can parse"
    m = _BCRYPT.match(hash_)
    if len(hash_.encode()) < 59 or m is None or not 4 <= int(m.group(1)) <= 31:
        return "neither bcrypt, argon2 nor Firebase scrypt"
    return None


# ----------------------------------------------------------------------------
# Calls with retry


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = DEFAULT_ATTEMPTS
    base_delay: float = 0.25
    max_delay: float = 8.0

    @property
    def backoff(self) -> Backoff:
        # Jitter below the nominal wait: concurrent workers do not retry in step.
        return Backoff(self.base_delay, self.max_delay, jitter=(0.5, 1.0))


def _status(err: Exception) -> int | None:
    from supabase_auth.errors import AuthApiError, AuthRetryableError, AuthUnknownError

    if isinstance(err, AuthRetryableError):
        return err.status or 0  # 0: no response (connection error, timeout)
    if isinstance(err, AuthApiError):
        return err.status
    if isinstance(err, AuthUnknownError):
        response = getattr(err.original_error, "response", None)
        return getattr(response, "status_code", None)
    return None


def _retryable(err: Exception) -> bool:
    status = _status(err)
    return status is not None and (status == 0 or status == 429 or status >= 500)


def _fatal(err: Exception) -> bool:
    """The key is wrong for every row: stop instead of failing each one."""
    return _status(err) in (401, 403)


def _call(fn: Callable[[], T], policy: RetryPolicy, what: str) -> T:
    """``fn()``, retried on 429, 5xx and no answer; ``what`` names the call in the log."""
    return call_with_retry(fn, attempts=policy.attempts, retryable=_retryable, backoff=policy.backoff,
                           what=f"Auth admin API {what}", describe=_describe)


def _describe(err: Exception) -> str:
    code = getattr(err, "code", None)
    return f"{_status(err) or 'no response'} {code or type(err).__name__}: {getattr(err, 'message', err)}"


def _is(err: Exception, status: int, code: str | None = None) -> bool:
    return _status(err) == status and (code is None or getattr(err, "code", None) == code)


# ----------------------------------------------------------------------------
# One account


class _Account:
    """Brings one account to the state of its row."""

    def __init__(self, client: Client, row: AccountRow, known: Mapping[str, str | None] | None,
                 policy: RetryPolicy) -> None:
        self.admin = client.auth.admin
        self.row = row
        self.known = known
        self.policy = policy
        self.may_have_created = False
        self.last_error: str | None = None

    def sync(self) -> RowOutcome:
        row = self.row
        if self.known is not None and row.id not in self.known:
            outcome = self._create()
            if outcome is not None:
                return outcome
        user = self._get()
        if user is None:
            outcome = self._create()
            if outcome is not None:
                return outcome
            user = self._get()
            if user is None:
                reason = f"create: {self.last_error}" if self.last_error else "email_taken_by_another_account"
                return RowOutcome(row.id, "failed", reason)
        return self._reconcile(user)

    def _get(self) -> Any | None:
        try:
            user_id = self.row.id
            return _call(lambda: self.admin.get_user_by_id(user_id), self.policy, f"get user {user_id}").user
        except Exception as err:
            if _is(err, 404):
                return None
            raise

    def _create(self) -> RowOutcome | None:
        """Create the account; None when it (or its email) already exists."""
        row = self.row
        if row.password_hash is not None:
            reason = unsupported_hash_reason(row.password_hash)
            if reason:
                return RowOutcome(row.id, "failed", f"unsupported_password_hash: {reason}")
        attributes: dict[str, Any] = {
            "id": row.id, "email": row.email, "email_confirm": True,
            "user_metadata": desired_metadata(row), "app_metadata": dict(APP_METADATA),
        }
        if row.password_hash is not None:
            attributes["password_hash"] = row.password_hash
        try:
            _call(lambda: self._create_once(attributes), self.policy, f"create user {row.id}")
        except Exception as err:  # noqa: BLE001 - classified below
            if _is(err, 422, "email_exists"):
                return None
            if _fatal(err):
                raise
            if not _retryable(err):
                return RowOutcome(row.id, "failed", f"create: {_describe(err)}")
            self.last_error = _describe(err)  # retries exhausted: the caller looks the account up
            return None
        return RowOutcome(row.id, "created")

    def _create_once(self, attributes: dict[str, Any]) -> None:
        try:
            self.admin.create_user(attributes)  # type: ignore[arg-type]
        except Exception as err:
            if _retryable(err):
                # A timeout or 5xx may still have created it; a 500 is also how
                # GoTrue answers an id that exists with another email.
                self.may_have_created = True
            raise

    def _reconcile(self, user: Any) -> RowOutcome:
        row = self.row
        changes = account_changes(row, user)
        stale_password = (row.password_hash is not None and self.known is not None and row.id in self.known
                          and self.known[row.id] != row.password_hash)
        if changes:
            try:
                update = self.admin.update_user_by_id
                _call(lambda: update(row.id, changes), self.policy, f"update user {row.id}")  # type: ignore[arg-type]
            except Exception as err:
                if _fatal(err):
                    raise
                return RowOutcome(row.id, "failed", f"update: {_describe(err)}")
        if stale_password:
            return RowOutcome(row.id, "failed", "password_hash_changed")
        if self.may_have_created:
            return RowOutcome(row.id, "created")
        return RowOutcome(row.id, "updated" if changes else "unchanged")


def desired_metadata(row: AccountRow) -> dict[str, Any]:
    return {k: v for k, v in (("name", row.name), ("avatar_url", row.avatar_url)) if v is not None}


def account_changes(row: AccountRow, user: Any) -> dict[str, Any]:
    """The update_user_by_id attributes that bring ``user`` (a GoTrue User) to ``row``; {} when it matches."""
    changes: dict[str, Any] = {}
    email = row.email.lower()
    if (user.email or "") != email:
        changes["email"] = email
    if user.email_confirmed_at is None:
        changes["email_confirm"] = True
    have = user.user_metadata or {}
    want = desired_metadata(row)
    # GoTrue merges user_metadata key by key and deletes a key sent as null.
    metadata = {k: want.get(k) for k in METADATA_KEYS if have.get(k) != want.get(k)}
    if metadata:
        changes["user_metadata"] = metadata
    app = user.app_metadata or {}
    providers = list(app.get("providers") or [])
    if "email" not in providers or not app.get("provider"):
        changes["app_metadata"] = {"provider": app.get("provider") or "email",
                                   "providers": providers if "email" in providers else [*providers, "email"]}
    has_identity = any(i.provider == "email" for i in (user.identities or []))
    if row.password_hash is not None and not has_identity:
        changes["email"] = email  # an update with the email creates the missing email identity
    return changes


# ----------------------------------------------------------------------------
# Batches


def _run(items: list[T], work: Callable[[T], RowOutcome], workers: int) -> AdminSyncResult:
    started = time.perf_counter()
    if not items:
        return AdminSyncResult([], 0.0)
    workers = max(1, min(workers, len(items)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="auth-admin") as pool:
        outcomes = list(pool.map(work, items))
    return AdminSyncResult(outcomes, time.perf_counter() - started)


def sync_accounts_via_admin_api(
    client: Client,
    rows: Iterable[AccountRow | tuple[str, str, str | None, str | None, str | None]],
    *,
    known_accounts: Mapping[str, str | None] | None = None,
    workers: int = DEFAULT_WORKERS,
    policy: RetryPolicy | None = None,
) -> AdminSyncResult:
    """Create or update the account of every row (id, email, password_hash, name, avatar_url).

    ``known_accounts`` maps the ids that already have an account to their
    stored ``encrypted_password``: with it, new users are created without a
    GET first and a changed hash is detected (and failed: the API cannot
    replace it). Without it every row is read first.
    """
    policy = policy or RetryPolicy()
    items = [r if isinstance(r, AccountRow) else AccountRow(*r) for r in rows]
    return _run(items, lambda row: _Account(client, row, known_accounts, policy).sync(), workers)


def delete_accounts_via_admin_api(client: Client, user_ids: Iterable[str], *, workers: int = DEFAULT_WORKERS,
                                  policy: RetryPolicy | None = None) -> AdminSyncResult:
    """Delete the accounts (GoTrue's hard delete; the foreign keys take public.users and its rows)."""
    policy = policy or RetryPolicy()
    admin = client.auth.admin

    def delete(user_id: str) -> RowOutcome:
        _call(lambda: admin.delete_user(user_id), policy, f"delete user {user_id}")
        return RowOutcome(user_id, "deleted")

    return _run([str(u) for u in user_ids], _per_user("delete", delete), workers)


def set_emails_via_admin_api(client: Client, emails: Mapping[str, str], *, workers: int = DEFAULT_WORKERS,
                             policy: RetryPolicy | None = None) -> AdminSyncResult:
    """Give accounts a new email (GoTrue updates the email identity with it); a match is left alone."""
    policy = policy or RetryPolicy()
    admin = client.auth.admin

    def set_email(user_id: str) -> RowOutcome:
        user = _call(lambda: admin.get_user_by_id(user_id), policy, f"get user {user_id}").user
        if (user.email or "") == emails[user_id].lower():
            return RowOutcome(user_id, "unchanged")
        _call(lambda: admin.update_user_by_id(user_id, {"email": emails[user_id]}), policy,
              f"set email of user {user_id}")
        return RowOutcome(user_id, "updated")

    return _run(list(emails), _per_user("email", set_email), workers)


def _per_user(step: str, action: Callable[[str], RowOutcome]) -> Callable[[str], RowOutcome]:
    """``action`` on one account, its failure an outcome: a 404 is ``absent``, any other refusal
    ``failed`` naming ``step``; a key refused for every account (401, 403) stops them all."""

    def run(user_id: str) -> RowOutcome:
        try:
            return action(user_id)
        except Exception as err:
            if _is(err, 404):
                return RowOutcome(user_id, "absent")
            if _fatal(err):
                raise
            return RowOutcome(user_id, "failed", f"{step}: {_describe(err)}")

    return run


# ----------------------------------------------------------------------------
# The pipeline's side: the client from Airflow, the stage, the destination


def client_from_airflow(conn_id: str = API_CONN_ID) -> Client:
    """A supabase client from the Airflow connection (host = project URL, password = service-role key)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.log import mask_secret
    from supabase import create_client

    conn = BaseHook.get_connection(conn_id)
    if not conn.password:
        raise RuntimeError(f"the Airflow connection {conn_id!r} has no password (the service-role key)")
    mask_secret(conn.password)
    url = conn.host or ""
    if not url.startswith(("http://", "https://")):
        url = f"{conn.schema or 'https'}://{url}" + (f":{conn.port}" if conn.port else "")
    return create_client(url, conn.password)


def sync_staged_accounts(dest: psycopg.Connection, stage: sql.Identifier, where: sql.Composable,
                         client: Client | None = None) -> AdminSyncResult:
    """The admin-API counterpart of ``auth.upsert_accounts``: every loadable staged user matching ``where``.

    Reads in the caller's transaction; writes nothing there. Raises
    :class:`AdminSyncFailed` when an account could not be made right, so the
    chunk's ``public.users`` rows are not committed without their accounts.
    """
    from psycopg import sql as psql

    rows = dest.execute(psql.SQL(
        "SELECT s.id::text, s.email, s.password_hash, s.name, s.avatar_url, a.id IS NOT NULL, "
        "a.encrypted_password FROM {stage} s LEFT JOIN auth.users a ON a.id = s.id "
        "WHERE s._disposition = 'loaded' AND {where} ORDER BY s.id"
    ).format(stage=stage, where=where)).fetchall()
    known = {r[0]: r[6] for r in rows if r[5]}
    result = sync_accounts_via_admin_api(client or client_from_airflow(), [AccountRow(*r[:5]) for r in rows],
                                         known_accounts=known)
    log.info("auth admin API: %s accounts in %.2f s (%.0f/s): %s", len(rows), result.seconds, result.rate,
             ", ".join(f"{k} {v}" for k, v in result.as_dict().items() if k != "seconds") or "none")
    if result.failed:
        raise AdminSyncFailed("users", result)
    return result


def delete_accounts(user_ids: list[str], client: Client | None = None) -> int:
    """Delete accounts through the API; the caller has committed (see ``load._delete_with_images``)."""
    if not user_ids:
        return 0
    result = delete_accounts_via_admin_api(client or client_from_airflow(), user_ids)
    log.info("auth admin API: %d accounts deleted (%d already gone) in %.2f s", result.count("deleted"),
             result.count("absent"), result.seconds)
    if result.failed:
        raise AdminSyncFailed("delete users", result)
    return result.count("deleted")


def set_emails(emails: Mapping[str, str], client: Client | None = None) -> None:
    """Give accounts new emails through the API (merged duplicates park theirs); raises on failures."""
    result = set_emails_via_admin_api(client or client_from_airflow(), emails)
    if result.failed:
        raise AdminSyncFailed("set emails", result)
