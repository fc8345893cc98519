"""The validation step: Great Expectations suites run on a destination table after each load.

This module owns turning a suite kept as data (``include/expectations/<entity>.json``) into a
Great Expectations 1.x run against the live destination table, and turning GX's results into a
short report an on-call engineer can read in a task log.

A suite file is a JSON list of expectation specs::

    {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "email"}, "notes": "why"}
    {"type": "unexpected_rows", "column": "user_id",
     "kwargs": {"unexpected_rows_query": "SELECT c.id, c.user_id FROM {batch} AS c ...",
                "description": "..."}, "notes": "why"}

``type`` is the snake_case name of a GX expectation, or ``unexpected_rows`` for a custom SQL
check (GX's ``UnexpectedRowsExpectation``: it fails when the query returns any row). In those
queries ``{batch}`` is the table being validated, ``{schema}`` is replaced by the quoted schema
name (so joins to parent tables follow ``schema``), and the query must select the key column
under its own name, because the sample keys in the report come from it. GX aliases ``{batch}``
itself unless the query contains a JOIN, so a query that joins aliases it (``{batch} AS c``).

Great Expectations is imported inside :func:`validate_table` only: DAG files import this
package at parse time, and importing GX takes seconds.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXPECTATIONS_DIR = Path(__file__).resolve().parent.parent / "expectations"
UNEXPECTED_ROWS = "unexpected_rows"
ROW_COUNT = "expect_table_row_count_to_equal"

# GX's own loggers: they log hundreds of INFO lines on import, and one sets its level explicitly,
# so the parent's level alone does not quiet it.
_GX_LOGGER = "great_expectations"


@dataclass
class ExpectationOutcome:
    """How one expectation fared. ``sample_keys`` are key-column values of failing rows."""

    expectation: str
    column: str | None
    success: bool
    unexpected_count: int
    sample_keys: list[str]
    notes: str
    # What the numbers alone do not say: the description of a SQL check, an observed value
    # ("table has 999 rows, expected 1000"), or the error GX raised evaluating the check (a
    # missing column, bad SQL), which counts as a failure.
    description: str = ""
    detail: str = ""
    error: str = ""

    @property
    def label(self) -> str:
        # A SQL check is named by what it asserts; its description already names the column.
        inner = self.description or self.column
        return f"{self.expectation}({inner})" if inner else self.expectation

    def line(self, key_column: str = "id") -> str:
        if self.success:
            return f"passed {self.label}"
        if self.error:
            return f"ERROR {self.label}: {self.error}"
        count = self.detail or f"{self.unexpected_count} row{'' if self.unexpected_count == 1 else 's'}"
        keys = ", ".join(f"{key_column}={k}" for k in self.sample_keys)
        return f"FAILED {self.label}: {count}" + (f", e.g. {keys}" if keys else "")


@dataclass
class ValidationReport:
    table: str
    success: bool
    outcomes: list[ExpectationOutcome]
    evaluated_rows: int
    key_column: str = "id"

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def summary_lines(self) -> list[str]:
        """One line per expectation, failing ones first, in suite order within each group."""
        ordered = sorted(self.outcomes, key=lambda o: o.success)  # stable: suite order kept
        return [o.line(self.key_column) for o in ordered]

    def failure_message(self) -> str:
        """What failed, how many rows, sample keys and why the check exists; empty on success."""
        if self.success:
            return ""
        failed = self.failed
        lines = [
            f"Validation of {self.table} failed: {len(failed)} of {len(self.outcomes)} "
            f"expectations failed on {self.evaluated_rows} rows."
        ]
        for outcome in failed:
            lines.append(outcome.line(self.key_column))
            if outcome.notes:
                lines.append(f"    why it matters: {outcome.notes}")
        return "\n".join(lines)


def load_suite(entity: str) -> list[dict]:
    """Read ``include/expectations/<entity>.json`` and check its shape (without importing GX)."""
    path = EXPECTATIONS_DIR / f"{entity}.json"
    if not path.is_file():
        known = sorted(p.stem for p in EXPECTATIONS_DIR.glob("*.json"))
        raise FileNotFoundError(f"no expectation suite for {entity!r} at {path}; suites exist for {known}")
    suite = json.loads(path.read_text())
    _check_suite(suite, source=str(path))
    return suite


def _check_suite(suite: Any, *, source: str) -> None:
    if not isinstance(suite, list):
        raise ValueError(f"{source}: a suite is a JSON list of expectations")
    for i, spec in enumerate(suite):
        where = f"{source}[{i}]"
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
            raise ValueError(f"{where}: each expectation needs a string 'type'")
        if not isinstance(spec.get("kwargs", {}), dict):
            raise ValueError(f"{where}: 'kwargs' must be an object")
        if spec["type"] == UNEXPECTED_ROWS:
            query = spec.get("kwargs", {}).get("unexpected_rows_query", "")
            # Without {batch} GX would query outside the table being validated (and print a warning).
            if "{batch}" not in query:
                raise ValueError(f"{where}: unexpected_rows_query must select FROM {{batch}}")


def validate_table(
    sqlalchemy_url: str,
    *,
    table: str,
    schema: str = "public",
    key_column: str = "id",
    suite: list[dict],
    expected_row_count: int | None = None,
    sample_size: int = 5,
) -> ValidationReport:
    """Run ``suite`` with GX against the whole of ``schema.table`` and report per expectation.

    All checks run as SQL in the database (GX's SQLAlchemy execution engine); only counts and
    at most ``sample_size`` failing keys per column check come back to Python. SQL checks
    (``unexpected_rows``) come back capped by GX at 200 rows, of which ``sample_size`` are kept.
    """
    _check_suite(suite, source="suite")
    specs = list(suite)
    if expected_row_count is not None:
        specs.append(
            {
                "type": ROW_COUNT,
                "kwargs": {"value": expected_row_count},
                "notes": "Every row the load reported writing is in the table, and no others.",
            }
        )
    _quiet_gx_logging()
    context, source = _gx_source(sqlalchemy_url)
    try:
        # Fails here, with GX's "ensure the table exists" message, when the table is missing.
        asset = source.add_table_asset(name=f"{schema}.{table}", table_name=table, schema_name=schema)
        batch_definition = asset.add_batch_definition_whole_table(name="whole_table")
        results = _run(context, batch_definition, specs, schema, key_column, sample_size)
        evaluated_rows = _evaluated_rows(results, specs, source, schema, table)
    finally:
        # GX keeps two engines per data source (one to inspect the table, one to run the
        # checks) and never closes their pools; Supabase counts every idle connection.
        source.get_engine().dispose()
        source.get_execution_engine().engine.dispose()
    outcomes = [_outcome(spec, results[i], key_column, sample_size) for i, spec in enumerate(specs)]
    return ValidationReport(
        table=table,
        success=all(o.success for o in outcomes),
        outcomes=outcomes,
        evaluated_rows=evaluated_rows,
        key_column=key_column,
    )


def _quiet_gx_logging() -> None:
    logging.getLogger(_GX_LOGGER).setLevel(logging.WARNING)
    import great_expectations  # noqa: F401  (import now, so the loggers it creates exist)

    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith(_GX_LOGGER + ".") and isinstance(logger, logging.Logger):
            if logger.level and logger.level < logging.WARNING:
                logger.setLevel(logging.WARNING)


def _gx_source(sqlalchemy_url: str) -> tuple[Any, Any]:
    """An ephemeral context (nothing written to disk) and its PostgreSQL data source."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # tqdm bars on stderr would land in the Airflow task log once per validation.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_postgres(name="destination", connection_string=sqlalchemy_url)
    return context, source


def _run(
    context: Any,
    batch_definition: Any,
    specs: list[dict],
    schema: str,
    key_column: str,
    sample_size: int,
) -> dict[int, Any]:
    """Run the specs; return GX's result for each, by its index in ``specs``.

    Two runs, because one result_format applies to a whole run: column checks use SUMMARY
    (counts, plus a LIMITed query for ``sample_size`` failing keys), while SQL checks need
    COMPLETE to return their rows at all (GX caps them at 200). COMPLETE on column checks
    would instead return every failing value of a million-row table.
    """
    import great_expectations as gx

    sql_checks = [i for i, s in enumerate(specs) if s["type"] == UNEXPECTED_ROWS]
    column_checks = [i for i, s in enumerate(specs) if s["type"] != UNEXPECTED_ROWS]
    summary = {
        "result_format": "SUMMARY",
        "unexpected_index_column_names": [key_column],
        "partial_unexpected_count": sample_size,
    }
    results: dict[int, Any] = {}
    for name, indices, result_format in (
        ("columns", column_checks, summary),
        ("sql", sql_checks, {"result_format": "COMPLETE"}),
    ):
        if not indices:
            continue
        expectations = [_expectation(specs[i], i, schema) for i in indices]
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch_definition, suite=suite)
        )
        run = definition.run(result_format=result_format)
        for result in run.results:
            results[int(result.expectation_config.meta["spec_index"])] = result
    return results


def _expectation(spec: dict, index: int, schema: str) -> Any:
    """Build the GX expectation object; its meta carries the spec's index to match results."""
    from great_expectations.expectations import UnexpectedRowsExpectation
    from great_expectations.expectations.registry import get_expectation_impl

    kwargs = dict(spec.get("kwargs", {}))
    if spec["type"] == UNEXPECTED_ROWS:
        from psycopg import sql

        kwargs["unexpected_rows_query"] = kwargs["unexpected_rows_query"].replace(
            "{schema}", sql.Identifier(schema).as_string()
        )
        cls = UnexpectedRowsExpectation
    else:
        try:
            cls = get_expectation_impl(spec["type"])
        except Exception as err:  # GX raises its own ExpectationNotFoundError
            raise ValueError(f"unknown expectation type {spec['type']!r}") from err
    return cls(**kwargs, meta={"spec_index": index})


def _outcome(spec: dict, result: Any, key_column: str, sample_size: int) -> ExpectationOutcome:
    kwargs = spec.get("kwargs", {})
    column = kwargs.get("column") or spec.get("column")
    if "column_A" in kwargs:
        column = f"{kwargs['column_A']}, {kwargs['column_B']}"
    outcome = ExpectationOutcome(
        expectation=spec["type"],
        column=column,
        success=bool(result.success),
        unexpected_count=0,
        sample_keys=[],
        notes=spec.get("notes", ""),
        description=kwargs.get("description", "") if spec["type"] == UNEXPECTED_ROWS else "",
    )
    error = _error(result.exception_info or {})
    if error:
        outcome.success = False
        outcome.error = error
        return outcome
    details = result.result or {}
    if spec["type"] == UNEXPECTED_ROWS:
        outcome.unexpected_count = int(details.get("observed_value") or 0)
        rows = (details.get("details") or {}).get("unexpected_rows") or []
        outcome.sample_keys = [_key(row, key_column) for row in rows[:sample_size]]
    elif spec["type"] == ROW_COUNT:
        observed = int(details.get("observed_value") or 0)
        outcome.unexpected_count = abs(observed - int(kwargs["value"]))
        if not outcome.success:
            gap = "missing" if observed < int(kwargs["value"]) else "extra"
            outcome.detail = (
                f"table has {observed} rows, expected {kwargs['value']} ({outcome.unexpected_count} {gap})"
            )
    elif "unexpected_count" in details:
        # GX reports None, not 0, for an empty table.
        outcome.unexpected_count = int(details["unexpected_count"] or 0)
        indexed = details.get("partial_unexpected_index_list") or []
        outcome.sample_keys = [_key(row, key_column) for row in indexed[:sample_size]]
    elif not outcome.success:
        outcome.detail = f"observed {details.get('observed_value')}"
    return outcome


def _error(info: dict) -> str:
    """The first line of each error GX caught, or "". GX reports a failed metric as a dict of
    per-metric infos, and an error in the expectation itself as one flat info."""
    infos = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    messages: list[str] = []
    for item in infos:
        if item.get("raised_exception"):
            first_line = str(item.get("exception_message") or "error").strip().splitlines()[0]
            if first_line not in messages:
                messages.append(first_line)
    return "; ".join(messages)


def _key(row: Any, key_column: str) -> str:
    value = row.get(key_column, next(iter(row.values()), None)) if isinstance(row, dict) else row
    return "NULL" if value is None else str(value)


def _evaluated_rows(results: dict[int, Any], specs: list[dict], source: Any, schema: str, table: str) -> int:
    """The table's row count: GX already counted it for any column check or row-count check."""
    for i, result in results.items():
        details = result.result or {}
        if "element_count" in details:
            return int(details["element_count"] or 0)
        if specs[i]["type"] == ROW_COUNT and "observed_value" in details:
            return int(details["observed_value"])
    # Only SQL checks ran: count once more rather than report a made-up number.
    import sqlalchemy as sa
    from psycopg import sql

    count = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    with source.get_engine().connect() as connection:
        return int(connection.execute(sa.text(count.as_string())).scalar_one())
