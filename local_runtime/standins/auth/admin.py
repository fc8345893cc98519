"""GoTrue's admin API on users: the rules the Auth stand-in enforces, in GoTrue's order.

This module owns the service's behaviour (``internal/api/admin.go``,
``middleware.go``): ``requireAdminCredentials``, ``adminUserCreate`` with its
checks and its one transaction, ``adminUserUpdate``, ``adminUserDelete``,
``loadUser`` and ``adminUsers`` (paging, ``Link`` and ``X-Total-Count``).
:class:`AdminUsers` is a mixin of :class:`~local_runtime.standins.auth.server.AuthStandIn`,
which provides the configuration and the pool.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import psycopg
from psycopg.types.json import Jsonb

from local_runtime.standins.auth.db import (
    _SELECT_IDENTITIES,
    _SELECT_USER,
    _TOKEN_COLUMNS,
    USER_COLUMNS,
    _insert_identity,
    _password_reset_columns,
    _Pool,
    _user_json,
)
from local_runtime.standins.auth.errors import API_PREFIX, AuthError, NotReproduced, _bad_request, _internal
from local_runtime.standins.auth.hashes import HashError, check_password_hash
from local_runtime.standins.auth.params import (
    _BEARER,
    AdminUserParams,
    _decode_json,
    _generated_password,
    _hash_password,
    _json_kind,
    _merge,
    _Request,
    _Response,
    parse_admin_params,
    parse_go_duration,
    parse_go_uuid,
    validate_email,
    validate_phone,
)
from local_runtime.standins.base import check_api_key
from local_runtime.standins.tokens import JwtError, verify_jwt

NIL_UUID = "00000000-0000-0000-0000-000000000000"
DUPLICATE_EMAIL_MSG = "A user with this email address has already been registered"
DEFAULT_ADMIN_ROLES = ("service_role", "supabase_admin")
BCRYPT_DEFAULT_COST = 10  # golang.org/x/crypto/bcrypt DefaultCost, what GoTrue hashes with

_GOLANG_JWT_MESSAGES = {
    "jwt must be provided": "token is malformed: token contains an invalid number of segments",
    "jwt malformed": "token is malformed: token contains an invalid number of segments",
    "invalid token": "token is malformed: could not JSON decode header",
    "invalid algorithm": "token is unverifiable: signing method (alg) is unavailable",
    "invalid signature": "token signature is invalid: signature is invalid",
    "jwt expired": "token has invalid claims: token is expired",
    "jwt not active": "token has invalid claims: token is not valid yet",
}


class AdminUsers:
    """The admin routes; the server provides the settings and the database pool."""

    jwt_secret: str
    aud: str
    default_role: str
    admin_roles: tuple[str, ...]
    password_min_length: int
    hash_cost: int
    pool: _Pool

    # -- the admin API ------------------------------------------------------------
    def authenticate(self, request: _Request) -> dict[str, Any]:
        """The gateway's apikey check, then GoTrue's requireAdminCredentials; returns the claims."""
        check_api_key(request.headers.get("apikey", ""), self.jwt_secret)
        m = _BEARER.match(request.headers.get("authorization", ""))
        if m is None:
            raise AuthError(401, "no_authorization", "This endpoint requires a Bearer token")
        try:
            claims = verify_jwt(m.group(1), self.jwt_secret)
        except JwtError as err:
            raise AuthError(403, "bad_jwt", f"invalid JWT: unable to parse or verify signature, "
                                            f"{_GOLANG_JWT_MESSAGES.get(str(err), str(err))}") from err
        if claims.get("role") not in self.admin_roles:
            raise AuthError(403, "not_admin", "User not allowed")
        return claims

    def request_aud(self, request: _Request, claims: dict[str, Any]) -> str:
        """API.requestAud: the X-JWT-AUD header, the token's aud, else the configured one."""
        if request.headers.get("x-jwt-aud"):
            return request.headers["x-jwt-aud"]
        aud = claims.get("aud")
        if isinstance(aud, list):
            aud = aud[0] if aud else None
        return aud if isinstance(aud, str) and aud else self.aud

    def create_user(self, request: _Request, claims: dict[str, Any]) -> _Response:
        """adminUserCreate, its checks in GoTrue's order, then one transaction."""
        params = parse_admin_params(request.body)
        aud = params.aud or self.request_aud(request, claims)
        providers = self._check_contacts(params, aud)
        encrypted = self._initial_password(params)
        user_id = uuid.uuid4()
        if params.id:
            try:
                user_id = parse_go_uuid(params.id)
            except ValueError as err:
                raise _bad_request("ID must conform to the uuid v4 format") from err
            if user_id.int == 0:
                raise _bad_request("ID cannot be a nil uuid")
        row = self._new_user_row(params, aud, user_id, encrypted, providers)
        with self.pool.connection() as conn:
            try:
                with conn.transaction():
                    cols = ", ".join(USER_COLUMNS)
                    marks = ", ".join(f"%({c})s" for c in USER_COLUMNS)
                    conn.execute(f"INSERT INTO auth.users ({cols}) VALUES ({marks})", row)
                    for provider in providers:
                        value = params.email if provider == "email" else params.phone
                        data = {"sub": str(user_id), provider: value, "email_verified": False,
                                "phone_verified": False}
                        _insert_identity(conn, str(user_id), provider, data, row["created_at"])
            except psycopg.Error as err:
                raise _internal("Database error creating new user", err) from err
            user = self._load_user(conn, str(user_id))
        assert user is not None
        user.pop("confirmed_at", None)  # generated column: not read back by pop after Create
        return _Response(200, user)

    def _check_contacts(self, params: AdminUserParams, aud: str) -> list[str]:
        """Email and phone: present, well-formed, not taken. Returns the providers."""
        if not params.email and not params.phone:
            raise _bad_request("Cannot create a user without either an email or phone")
        providers: list[str] = []
        with self.pool.connection() as conn:
            if params.email:
                params.email = validate_email(params.email)
                if self._duplicated_email(conn, params.email, aud):
                    raise AuthError(422, "email_exists", DUPLICATE_EMAIL_MSG)
                providers.append("email")
            if params.phone:
                params.phone = validate_phone(params.phone)
                if conn.execute("SELECT 1 FROM auth.users WHERE phone = %s AND aud = %s "
                                "AND is_sso_user = false", (params.phone, aud)).fetchone():
                    raise AuthError(422, "phone_exists", "Phone number already registered by another user")
                providers.append("phone")
        return providers

    def _new_user_row(self, params: AdminUserParams, aud: str, user_id: uuid.UUID, encrypted: str,
                      providers: list[str]) -> dict[str, Any]:
        """Every column of the auth.users row, as pop inserts models.User and the tx updates it."""
        banned_until = self._ban(params.ban_duration)
        now = datetime.now(UTC)
        app_meta = {"provider": providers[0], "providers": providers}
        if params.app_metadata is not None:
            app_meta = _merge(app_meta, params.app_metadata)
        user_meta = params.user_metadata
        if params.password_hash == "" and user_meta is None:
            user_meta = {}  # models.NewUser defaults it; NewUserWithPasswordHash keeps nil (JSON null)
        if params.email_confirm:
            user_meta = _merge(user_meta, {"email_verified": True})
        row: dict[str, Any] = {c: None for c in USER_COLUMNS}
        row.update({c: "" for c in _TOKEN_COLUMNS})
        row.update(
            instance_id=NIL_UUID, id=user_id, aud=aud, role=(params.role or self.default_role).strip(),
            email=params.email or None, encrypted_password=encrypted,
            email_confirmed_at=now if params.email_confirm else None,
            raw_app_meta_data=Jsonb(app_meta), raw_user_meta_data=Jsonb(user_meta), is_super_admin=False,
            created_at=now, updated_at=now, phone=params.phone or None,
            phone_confirmed_at=now if params.phone_confirm else None, email_change_confirm_status=0,
            banned_until=banned_until, is_sso_user=False, is_anonymous=False,
        )
        return row

    def _initial_password(self, params: AdminUserParams) -> str:
        if params.password is not None and params.password_hash:
            raise _bad_request("Only a password or a password hash should be provided")
        if params.password:
            self._check_strength(params.password)
            return _hash_password(params.password, self.hash_cost)
        if params.password_hash:
            try:
                check_password_hash(params.password_hash)
            except HashError as err:
                raise _internal("Error creating user") from err
            return params.password_hash
        return _hash_password(_generated_password(), self.hash_cost)

    def _check_strength(self, password: str) -> None:
        if len(password) < self.password_min_length:
            raise AuthError(422, "weak_password",
                            f"Password should be at least {self.password_min_length} characters.")

    @staticmethod
    def _ban(duration: str) -> datetime | None:
        if not duration:
            return None
        try:
            delta = timedelta(0) if duration == "none" else parse_go_duration(duration)
        except ValueError as err:
            raise _bad_request(f"invalid format for ban duration: {err}") from err
        return None if delta == timedelta(0) else datetime.now(UTC) + delta

    @staticmethod
    def _duplicated_email(conn: psycopg.Connection, email: str, aud: str) -> bool:
        """models.IsDuplicatedEmail: an identity with the email (SSO ones aside), else a user."""
        found = conn.execute(
            "SELECT 1 FROM auth.identities i JOIN auth.users u ON u.id = i.user_id "
            "WHERE i.email = %s AND i.provider NOT LIKE 'sso:%%' AND u.aud = %s LIMIT 1",
            (email.lower(), aud)).fetchone()
        if found:
            return True
        return conn.execute(
            "SELECT 1 FROM auth.users WHERE instance_id = %s AND lower(email) = %s AND aud = %s "
            "AND is_sso_user = false LIMIT 1", (NIL_UUID, email.lower(), aud)).fetchone() is not None

    def get_user(self, request: _Request, user_id: str) -> _Response:
        with self.pool.connection() as conn:
            return _Response(200, self._existing_user(conn, user_id))

    def update_user(self, request: _Request, user_id: str) -> _Response:
        with self.pool.connection() as conn:
            current = self._existing_user(conn, user_id)
            params = parse_admin_params(request.body)
            if params.email:
                params.email = validate_email(params.email)
            if params.phone:
                params.phone = validate_phone(params.phone)
            banned_until = self._ban(params.ban_duration) if params.ban_duration else None
            new_hash = None
            if params.password is not None:
                self._check_strength(params.password)
                new_hash = _hash_password(params.password, self.hash_cost)
            try:
                with conn.transaction():
                    self._apply_update(conn, current, params, new_hash, banned_until)
            except psycopg.Error as err:
                raise _internal("Error updating user", err) from err
            return _Response(200, self._load_user(conn, current["id"]))

    def _apply_update(self, conn: psycopg.Connection, current: dict[str, Any], params: AdminUserParams,
                      new_hash: str | None, banned_until: datetime | None) -> None:
        """The transaction of adminUserUpdate, folded into one UPDATE of auth.users."""
        uid = current["id"]
        now = datetime.now(UTC)
        sets: dict[str, Any] = {}
        user_meta = current["user_metadata"]
        if params.role:
            sets["role"] = params.role.strip()
        if params.email_confirm:  # User.Confirm
            sets.update(confirmation_token="", email_confirmed_at=now)
            user_meta = _merge(user_meta, {"email_verified": True})
        if params.phone_confirm:
            sets.update(confirmation_token="", phone_confirmed_at=now)
        if new_hash is not None:  # User.UpdatePassword
            sets.update(_password_reset_columns(new_hash))
        sets.update(self._contact_changes(conn, uid, params))
        if params.app_metadata is not None:
            sets["raw_app_meta_data"] = Jsonb(_merge(current["app_metadata"], params.app_metadata))
        if params.user_metadata is not None:
            user_meta = _merge(user_meta, params.user_metadata)
        if user_meta is not current["user_metadata"]:
            sets["raw_user_meta_data"] = Jsonb(user_meta)
        if params.ban_duration:
            sets["banned_until"] = banned_until
        if sets:
            sets["updated_at"] = now
            assignments = ", ".join(f"{c} = %({c})s" for c in sets)
            conn.execute(f"UPDATE auth.users SET {assignments} WHERE id = %(uid)s", {**sets, "uid": uid})

    @staticmethod
    def _contact_changes(conn: psycopg.Connection, uid: str, params: AdminUserParams) -> dict[str, Any]:
        """A new email or phone: its identity updated or created, pending tokens cleared."""
        sets: dict[str, Any] = {}
        for provider, value, verified in (("email", params.email, params.email_confirm),
                                          ("phone", params.phone, params.phone_confirm)):
            if not value:
                continue
            flag = f"{provider}_verified"
            found = conn.execute("SELECT id, identity_data FROM auth.identities WHERE provider_id = %s "
                                 "AND provider = %s", (uid, provider)).fetchone()
            if found is None:
                data = {"sub": uid, provider: value, "email_verified": False, "phone_verified": False,
                        flag: verified}
                _insert_identity(conn, uid, provider, data, datetime.now(UTC))
            else:
                data = _merge(found[1], {provider: value, flag: verified})
                conn.execute("UPDATE auth.identities SET identity_data = %s WHERE id = %s",
                             (Jsonb(data), found[0]))
            sets[provider] = value
        if sets:  # User.ClearAllPendingTokens
            sets.update({c: "" for c in _TOKEN_COLUMNS})
        return sets

    def delete_user(self, request: _Request, user_id: str) -> _Response:
        with self.pool.connection() as conn:
            current = self._existing_user(conn, user_id)
            if request.body:
                pairs = _decode_json(request.body, "api.adminUserDeleteParams")
                soft = next((v for k, v in (pairs or []) if k.lower() == "should_soft_delete"), None)
                if soft is not None and not isinstance(soft, bool):
                    raise _bad_request(f"Could not parse request body as JSON: json: cannot unmarshal "
                                       f"{_json_kind(soft)} into Go struct field adminUserDeleteParams."
                                       "should_soft_delete of type bool", "bad_json")
                if soft:
                    raise NotReproduced("should_soft_delete is not reproduced by the auth stand-in")
            try:
                conn.execute("DELETE FROM auth.users WHERE id = %s", (current["id"],))
            except psycopg.Error as err:
                raise _internal("Database error deleting user", err) from err
        return _Response(200, {})

    def list_users(self, request: _Request, claims: dict[str, Any]) -> _Response:
        values = []
        for name, default in (("page", 1), ("per_page", 50)):
            text = request.arg(name)
            if text and not text.isdigit():
                raise _bad_request(
                    f'Bad Pagination Parameters: strconv.ParseUint: parsing "{text}": invalid syntax')
            values.append(int(text) if text else default)
        page, per_page = values
        page, per_page = max(page, 1), per_page or 50
        order = "desc"
        sort = request.arg("sort")
        if sort:
            name, _, direction = sort.partition(" ")
            if name != "created_at" or direction.lower() not in ("", "asc", "desc"):
                raise _bad_request(f"Bad Sort Parameters: bad field for sort '{name}'")
            order = direction.lower() or "desc"
        aud = self.request_aud(request, claims)
        cond, args = "instance_id = %s AND aud = %s", [NIL_UUID, aud]
        if request.arg("filter"):
            like = f"%{request.arg('filter')}%"
            cond += " AND (email LIKE %s OR raw_user_meta_data->>'full_name' ILIKE %s)"
            args += [like, like]
        with self.pool.connection() as conn:
            total = conn.execute(f"SELECT count(*) FROM auth.users WHERE {cond}", args).fetchone()[0]
            rows = conn.execute(f"{_SELECT_USER} WHERE {cond} ORDER BY created_at {order} LIMIT %s OFFSET %s",
                                [*args, per_page, (page - 1) * per_page]).fetchall()
        users = [_user_json(r, None) for r in rows]
        pages = -(-total // per_page)
        query = {k: v[0] for k, v in request.query.items()}
        link = ""
        if pages > page:
            link += f'<{API_PREFIX}{request.path}?{urlencode({**query, "page": page + 1})}>; rel="next", '
        link += f'<{API_PREFIX}{request.path}?{urlencode({**query, "page": pages})}>; rel="last"'
        return _Response(200, {"users": users, "aud": aud}, {"Link": link, "X-Total-Count": str(total)})

    def _existing_user(self, conn: psycopg.Connection, user_id: str) -> dict[str, Any]:
        """loadUser."""
        try:
            parsed = parse_go_uuid(user_id)
        except ValueError as err:
            raise AuthError(404, "validation_failed", "user_id must be an UUID") from err
        user = self._load_user(conn, str(parsed))
        if user is None:
            raise AuthError(404, "user_not_found", "User not found")
        return user

    @staticmethod
    def _load_user(conn: psycopg.Connection, user_id: str) -> dict[str, Any] | None:
        row = conn.execute(f"{_SELECT_USER} WHERE id = %s", (user_id,)).fetchone()
        if row is None:
            return None
        identities = conn.execute(_SELECT_IDENTITIES, ([row[0]],)).fetchall()
        return _user_json(row, identities)
