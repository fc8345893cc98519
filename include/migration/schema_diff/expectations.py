"""What the mapping expects of each schema: the contracts the catalogs are compared with.

One :class:`LegacyContract` per legacy table an entity reads, one
:class:`DestinationContract` per destination table a load writes (the
entities' tables, from ``entities.py`` plus :data:`DESTINATION_EXPECTATIONS`,
and the Supabase Auth tables the users load writes, :data:`AUTH_WRITES`), each
naming the entities a difference there blocks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from include.migration.entities import ENTITIES, Entity

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- what the mapping expects


@dataclass(frozen=True)
class ForeignKey:
    column: str
    ref_table: str  # schema.table
    ref_column: str


@dataclass(frozen=True)
class Expectation:
    """What a destination table keeps beyond its entity's columns, key and parent foreign keys.

    entities.py does not describe these, so they live here, keyed by entity
    name, and mirror ``include/sql/destination/010_supabase.sql``.
    """

    unique: tuple[tuple[str, ...], ...] = ()
    checks: tuple[str, ...] = ()  # check constraints, by name
    foreign_keys: tuple[ForeignKey, ...] = ()  # beyond the entity's parents
    indexes: tuple[tuple[str, ...], ...] = ()  # plain indexes, by key columns
    # Written columns the transform may leave NULL (besides nullable parent
    # references); each takes the NULLs of the legacy column of the same name.
    nullable: tuple[str, ...] = ()


DESTINATION_EXPECTATIONS: dict[str, Expectation] = {
    "users": Expectation(
        unique=(("email",),),
        checks=("users_email_lowercase",),
        foreign_keys=(ForeignKey("id", "auth.users", "id"),),
        nullable=("avatar_url",),
    ),
    "agents": Expectation(indexes=(("owner_id",),), nullable=("description", "temperature")),
    "conversations": Expectation(indexes=(("user_id",), ("agent_id",))),
    "messages": Expectation(
        checks=("messages_role_check",),
        indexes=(("conversation_id",),),
        nullable=("token_count", "model"),
    ),
    "media": Expectation(
        unique=(("object_path",),),
        indexes=(("owner_id",), ("conversation_id",), ("message_id",)),
    ),
}

# What the users load writes into Supabase Auth (auth.py), and the keys its
# ON CONFLICT clauses need. Supabase owns these tables: only what the load
# relies on is checked, not every column or constraint Auth adds over time.
AUTH_WRITES: dict[str, tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]] = {
    "auth.users": (
        ("instance_id", "id", "aud", "role", "email", "encrypted_password", "email_confirmed_at",
         "raw_app_meta_data", "raw_user_meta_data", "created_at", "updated_at", "confirmation_token",
         "recovery_token", "email_change_token_new", "email_change", "is_sso_user", "is_anonymous"),
        (("id",),),
    ),
    "auth.identities": (
        ("provider_id", "user_id", "identity_data", "provider", "last_sign_in_at", "created_at",
         "updated_at"),
        (("provider_id", "provider"),),
    ),
}


@dataclass(frozen=True)
class LegacyContract:
    table: str
    columns: dict[str, str]
    key: str
    entities: tuple[str, ...]  # whose transforms read it


@dataclass(frozen=True)
class DestinationContract:
    table: str  # schema.table
    entities: tuple[str, ...]  # blocked when it breaks
    columns: dict[str, str | None]  # written columns -> expected type (None: not checked)
    primary_key: tuple[str, ...] | None = None
    unique: tuple[tuple[str, ...], ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = ()
    checks: tuple[str, ...] = ()
    indexes: tuple[tuple[str, ...], ...] = ()
    nullable: dict[str, str | None] = field(default_factory=dict)  # column -> legacy column (NULL counts)
    legacy_table: str | None = None
    # The application's own table: every column and constraint on it is the
    # mapping's business. Supabase's tables (auth) are not.
    owned: bool = True


def _ordered(names: Iterable[str]) -> tuple[str, ...]:
    wanted = set(names)
    return tuple(n for n in ENTITIES if n in wanted)


def with_descendants(entity: str) -> tuple[str, ...]:
    """The entity and every entity whose rows hang below it through parent references."""
    found = {entity}
    grew = True
    while grew:
        more = {e.name for e in ENTITIES.values() if e.name not in found and set(e.upstream) & found}
        found |= more
        grew = bool(more)
    return _ordered(found)


def legacy_readers(table: str) -> tuple[str, ...]:
    """The entities whose transform reads legacy ``table``.

    An entity reads its own source table and the fates of its direct parents;
    every fate joins the fate of the root entities (those without parents:
    the users), so their tables are read by every transform.
    """
    readers = set()
    for e in ENTITIES.values():
        read = {e.source_table} | {ENTITIES[p.parent].source_table for p in e.parents if p.parent in ENTITIES}
        read |= {r.source_table for r in ENTITIES.values() if not r.parents}
        if table in read:
            readers.add(e.name)
    return _ordered(readers)


def legacy_contracts() -> list[LegacyContract]:
    return [
        LegacyContract(e.source_table, dict(e.source_columns), e.key, legacy_readers(e.source_table))
        for e in ENTITIES.values()
    ]


def target_name(entity: Entity) -> str:
    return f"{entity.schema_name}.{entity.target_table}"


def _entity_contract(e: Entity) -> DestinationContract:
    x = DESTINATION_EXPECTATIONS.get(e.name, Expectation())
    parents = tuple(
        ForeignKey(p.column, target_name(ENTITIES[p.parent]), ENTITIES[p.parent].key)
        for p in e.parents if p.parent in ENTITIES
    )
    nullable = sorted({p.column for p in e.parents if p.nullable} | set(x.nullable))
    return DestinationContract(
        table=target_name(e),
        entities=with_descendants(e.name),
        columns=dict(e.columns),
        primary_key=(e.key,),
        unique=x.unique,
        foreign_keys=parents + x.foreign_keys,
        checks=x.checks,
        indexes=x.indexes,
        nullable={c: (c if c in e.source_columns else None) for c in nullable},
        legacy_table=e.source_table,
    )


def destination_contracts() -> list[DestinationContract]:
    contracts = [_entity_contract(e) for e in ENTITIES.values()]
    if "users" in ENTITIES:
        for table, (columns, unique) in AUTH_WRITES.items():
            contracts.append(DestinationContract(
                table=table, entities=with_descendants("users"), columns=dict.fromkeys(columns),
                unique=unique, owned=False,
            ))
    return contracts
