"""A local stand-in for Supabase Auth's admin API (GoTrue), as the gateway exposes it under ``/auth/v1``.

This package owns the fake: a threaded HTTP server answering the admin routes
the ``supabase`` Python client (``supabase_auth``) calls, writing the rows
GoTrue writes into a PostgreSQL database that has the destination
bootstrap's ``auth`` schema, so the admin-API path of the users migration can
be developed and tested without a Supabase project.

Routes (``supabase_auth/_sync/gotrue_admin_api.py``): ``POST /admin/users``
(create_user), ``GET /admin/users?page=&per_page=`` (list_users),
``GET|PUT|DELETE /admin/users/{id}`` (get_user_by_id, update_user_by_id,
delete_user).

What it reproduces, and where it comes from (supabase/auth source):

* The gateway (Kong) answers 401 ``{"message": "No API key found in
  request"}`` / ``{"message": "Invalid API key"}`` when ``apikey`` is missing
  or not signed with the project secret.
* ``requireAdminCredentials`` (``internal/api/middleware.go``, ``auth.go``):
  no ``Authorization: Bearer`` -> 401 ``no_authorization``; a token that does
  not verify (HS256, the project secret, ``exp``) -> 403 ``bad_jwt``; a role
  outside ``service_role`` / ``supabase_admin`` (the anon key) -> 403
  ``not_admin`` "User not allowed".
* Errors (``internal/api/errors.go``): with ``X-Supabase-Api-Version:
  2024-01-01`` (supabase-py always sends it) the body is ``{"code": <error
  code>, "message": ...}`` and the version is echoed; without it the legacy
  ``{"code": <status>, "error_code": ..., "msg": ...}``, where a database
  constraint error is rendered as ``{"code": "23505", "message", "detail"}``.
  ``x-sb-error-code`` carries the code either way.
* ``adminUserCreate`` (``internal/api/admin.go``), in GoTrue's order: body
  must decode into ``AdminUserParams`` (Go ``encoding/json``: unknown keys
  ignored, keys matched case-insensitively, a wrong JSON type is 400
  ``bad_json``); no email and no phone -> 400; the email format
  (``checkmail``'s regex, at most 255 bytes, lower-cased) -> 400
  ``validation_failed``; an email already held by an identity or user of the
  audience -> 422 ``email_exists`` "A user with this email address has
  already been registered"; ``password`` and ``password_hash`` together ->
  400; a plaintext password shorter than 6 -> 422 ``weak_password``; no
  password at all -> a random 64-character one, bcrypt cost 10.
  ``password_hash`` goes through ``models.NewUserWithPasswordHash``:
  ``$argon2...`` must parse as argon2i/argon2id v=19 PHC,
  ``$fbscrypt$...`` as Firebase scrypt, anything else must pass Go's
  ``bcrypt.Cost`` (``$2a$``/``$2b$``/``$2y$``, cost 4..31, 59+ bytes).
  A hash that fails is **HTTP 500 ``unexpected_failure`` "Error creating
  user"** -- GoTrue maps only ``ErrPasswordTooLong`` to 400, so an unsupported
  prefix is a 500, not a 4xx. ``id`` must parse as a UUID and not be nil
  (400). A custom ``id`` that already exists passes every check and fails on
  ``users_pkey`` inside the transaction: 500 "Database error creating new
  user".
* The rows (``internal/models/user.go``, ``identity.go``): every column of
  ``auth.users`` is written: ``instance_id`` the nil UUID, ``aud`` and
  ``role`` ``authenticated``, the email lower-cased, ``encrypted_password``
  the hash unchanged, every token column ``''``, ``is_super_admin`` /
  ``is_sso_user`` / ``is_anonymous`` false, ``raw_app_meta_data``
  ``{"provider": "email", "providers": ["email"]}`` merged with
  ``app_metadata``; ``email_confirm`` sets ``email_confirmed_at`` and adds
  ``"email_verified": true`` to ``raw_user_meta_data`` (``User.Confirm``).
  The email identity has ``provider_id`` = the user id and ``identity_data``
  ``{"sub", "email", "email_verified": false, "phone_verified": false}``
  (``provider.Claims`` through ``structs.Map``: the two flags have no
  ``omitempty``; create does not pass ``email_confirm`` to it). With
  ``password_hash`` and no ``user_metadata``, ``raw_user_meta_data`` is JSON
  ``null`` (``NewUserWithPasswordHash``, unlike ``NewUser``, does not default
  it), which supabase-py's ``User`` model cannot parse: send
  ``user_metadata``.
* ``adminUserUpdate``: ``password_hash`` and ``id`` are read and ignored
  (only a plaintext ``password`` can change the password); ``email`` is not
  checked for duplicates, so another account's email fails on the unique
  index: 500 "Error updating user"; ``user_metadata`` / ``app_metadata`` are
  merged key by key, a ``null`` value deletes the key; a new email updates
  the email identity (``email_verified`` = ``email_confirm``) or creates it.
* ``loadUser``: a malformed id is 404 ``validation_failed`` "user_id must be
  an UUID", an unknown one 404 ``user_not_found`` "User not found".
* ``adminUserDelete``: hard delete (the row and, through the foreign keys,
  its identities and the application's ``public.users`` row), 200 ``{}``.
* ``adminUsers``: ``page`` (default 1) / ``per_page`` (default 50), newest
  first, ``Link`` and ``X-Total-Count`` headers, identities not loaded.

Not reproduced: phone OTP, MFA factors, sessions and audit log tables (the
bootstrap schema has none), the ``filter`` on ``full_name`` only, soft delete
(``should_soft_delete: true`` is answered 501 rather than approximated),
rate limits (use :meth:`AuthStandIn.inject_fault` for 429/5xx), and response
bodies of PUT are re-read from the database after the change.

For tests, :meth:`AuthStandIn.inject_fault` makes the next N matching
requests fail with a status or wait first; :attr:`AuthStandIn.requests`
records every request answered. Both are Python-only, never HTTP routes.

Command line (runs until SIGTERM)::

    python -m local_runtime.standins.auth --port 54331 --dsn postgresql://... --jwt-secret SECRET
Modules: ``server`` (the stand-in and its command line), ``admin`` (the admin
API's rules), ``handler`` (routing and error rendering), ``params`` (request
parsing and GoTrue's validation helpers), ``hashes`` (imported password
hashes), ``db`` (the ``auth`` rows), ``errors``.
"""

from __future__ import annotations

from local_runtime.standins.auth.admin import BCRYPT_DEFAULT_COST, DEFAULT_ADMIN_ROLES, NIL_UUID
from local_runtime.standins.auth.db import USER_COLUMNS
from local_runtime.standins.auth.errors import API_PREFIX, AuthError, NotReproduced
from local_runtime.standins.auth.hashes import HashError, bcrypt_cost, check_password_hash
from local_runtime.standins.auth.params import (
    AdminUserParams,
    parse_admin_params,
    parse_go_duration,
    parse_go_uuid,
    validate_email,
    validate_phone,
)
from local_runtime.standins.auth.server import AuthStandIn, main
from local_runtime.standins.base import Fault, GatewayError, RequestRecord
from local_runtime.standins.tokens import JwtError, make_jwt, verify_jwt

__all__ = [
    "API_PREFIX",
    "BCRYPT_DEFAULT_COST",
    "DEFAULT_ADMIN_ROLES",
    "NIL_UUID",
    "USER_COLUMNS",
    "AdminUserParams",
    "AuthError",
    "AuthStandIn",
    "Fault",
    "GatewayError",
    "HashError",
    "JwtError",
    "NotReproduced",
    "RequestRecord",
    "bcrypt_cost",
    "check_password_hash",
    "main",
    "make_jwt",
    "parse_admin_params",
    "parse_go_duration",
    "parse_go_uuid",
    "validate_email",
    "validate_phone",
    "verify_jwt",
]
