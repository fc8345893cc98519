"""The schema check: both catalogs against what each entity's mapping expects.

This module owns the comparison behind the ``schema_diff`` DAG and the record
the load gate (``gate.py``) reads. ``run_schema_diff`` reads the legacy and the
destination catalogs (tables, columns, types, nullability, defaults, primary
keys, foreign keys, unique and check constraints, indexes, RLS), compares them
with the entities of ``entities.py`` plus the expectations below, classifies
every difference, and records the result three ways: a table in the log, a
JSON file under ``$MIGRATION_STATE_DIR/schema/`` (one per check, plus
``latest.json``) and a row in ``migration.schema_checks``.

Every difference has an id an operator can type, ``<side>.<table>[.<column or
constraint>]:<kind>`` (``legacy.users.display_name:missing_column``,
``supabase.public.messages.role:type_changed``,
``supabase.public.users:rls_disabled``, ``transform.messages:query_failed``),
and names the entities it affects. A breaking difference blocks those
entities' loads until the schema is fixed or an operator accepts it for one
run (see ``gate.py``).

What breaks and what does not:

=============  ==============================================================
breaking       a table or column the mapping reads or writes is missing; a
               mapped type changed in a way that is not a widening (see
               ``classify_type_change``); a destination column the mapping
               can leave NULL became NOT NULL while the legacy data has NULLs
               there; a new NOT NULL destination column without a default (the
               load does not write it); a written column became generated or
               GENERATED ALWAYS AS IDENTITY; a primary key, a parent foreign
               key, an expected unique or check constraint is gone; a
               constraint or unique index the mapping does not know was added
               to an application table (the load's rows were never checked
               against it, so it would fail halfway); RLS off on a public
               table and every other ``bootstrap.security_report`` finding; a
               transform query that no longer runs on the legacy schema or
               whose output no longer has the stage's types.
compatible     a new column the mapping ignores (nullable or with a default),
               a widened type, a NOT NULL that the data does not violate yet,
               a relaxed NOT NULL, an added or missing plain index.
informational  tables neither side of the mapping uses.
=============  ==============================================================

Which entities a difference blocks: every transform inlines the shared fates
(``_fates.sql``), so a legacy table is read by its own entity, by the entities
whose direct parent it is the source of, and the root fate (``users``) by
every entity. A destination table's difference blocks its entity and all its
descendants (their rows would lose their parent). A transform probe failure
blocks that entity. A security finding on an entity's table blocks it and its
descendants; any other finding blocks every entity.

Command line (exit 1 when the verdict is breaking)::

    python -m include.migration.schema_diff --legacy-dsn postgresql://... --dest-dsn postgresql://...

The package: ``catalog.py`` reads the catalogs, ``expectations.py`` says what
the mapping expects of them, ``classify.py`` finds and classifies every
difference, ``report.py`` compares, records and logs. What other modules use is
importable from here.
"""

from __future__ import annotations

from include.migration.schema_diff.catalog import read_catalog, schema_sql
from include.migration.schema_diff.classify import (
    BREAKING,
    COMPATIBLE,
    INFORMATIONAL,
    Difference,
    classify_type_change,
)
from include.migration.schema_diff.expectations import destination_contracts, legacy_contracts
from include.migration.schema_diff.report import (
    SchemaReport,
    breaking_message,
    compare,
    main,
    record,
    run_schema_diff,
)

__all__ = [
    "BREAKING",
    "COMPATIBLE",
    "INFORMATIONAL",
    "Difference",
    "SchemaReport",
    "breaking_message",
    "classify_type_change",
    "compare",
    "destination_contracts",
    "legacy_contracts",
    "main",
    "read_catalog",
    "record",
    "run_schema_diff",
    "schema_sql",
]
