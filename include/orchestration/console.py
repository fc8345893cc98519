"""The operator's console: a FastAPI app the api-server mounts under ``/migration/`` (see ``plugins/``).

``/migration/`` is the page, ``/migration/api/...`` the same facts as JSON for scripts and
alerting. Every route goes through Airflow's own authentication and authorization (the
``requires_access_dag`` dependency of the api-server: a user who may read DAG runs may
read the migration's state); an unauthenticated request gets 401 / 403 and no data.

The connections (``supabase_db``, and ``legacy_db`` for the watermark's lag) are resolved
per request, never at import; an unreachable destination is a clear message (JSON 503,
or the page saying so), not a stack trace. Everything is read-only: the queries live in
``include/migration/status.py``.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse

from include.migration import db, status
from include.orchestration import console_page

log = logging.getLogger(__name__)

URL_PREFIX = "/migration"


def _access() -> Any:
    """Airflow's own check: authenticated (JWT header or the UI's cookie) and allowed to read DAG runs."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag("GET", DagAccessEntity.RUN))


def _ui_base() -> str:
    """The path the Airflow UI is served under ('' at the root), for links to DAG runs."""
    try:
        from airflow.configuration import conf

        return urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
    except Exception:  # noqa: BLE001 - a link prefix is not worth a failed page
        return ""


class NotConfigured(RuntimeError):
    pass


def _dsn(conn_id: str) -> str:
    try:
        return db.dsn_for(conn_id)
    except Exception as exc:  # Airflow's "connection not defined" is not one exception type across versions
        raise NotConfigured(f"the Airflow connection '{conn_id}' is not defined ({type(exc).__name__}); "
                            "define it (AIRFLOW_CONN_* env, a secrets backend or the UI)") from None


def _legacy_dsn() -> str | None:
    try:
        return _dsn(db.LEGACY_CONN_ID)
    except NotConfigured:
        return None


def airflow_run_states(runs: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The Airflow DAG run state of each (dag_id, run_id), from the metadata DB; {} when it cannot be read."""
    if not runs:
        return {}
    try:
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session
        from sqlalchemy import select, tuple_

        with create_session() as session:
            rows = session.execute(select(DagRun.dag_id, DagRun.run_id, DagRun.state).where(
                tuple_(DagRun.dag_id, DagRun.run_id).in_(runs))).all()
        return {(d, r): str(getattr(s, "value", s)) for d, r, s in rows}
    except Exception as exc:  # noqa: BLE001 - the migration's own record still says how the run went
        log.warning("migration console: Airflow's DAG run states could not be read: %s", exc)
        return {}


def overview() -> dict[str, Any]:
    """Everything the page shows; raises ``status.DestinationUnreachable`` / ``NotConfigured``."""
    data = status.overview(_dsn(db.DEST_CONN_ID), legacy_dsn=_legacy_dsn(), ui_base=_ui_base())
    runs = [(e["last_run"]["dag_id"], e["last_run"]["dag_run_id"]) for e in data.get("entities", [])
            if e["last_run"] and e["last_run"]["dag_run_id"]]
    states = airflow_run_states(runs)
    for e in data.get("entities", []):
        if e["last_run"]:
            e["last_run"]["airflow_state"] = states.get((e["last_run"]["dag_id"], e["last_run"]["dag_run_id"]))
    return data


def _with_destination(fn, *args: Any, **kwargs: Any) -> Any:
    """Run a read on the destination with a fresh read-only session."""
    dsn = _dsn(db.DEST_CONN_ID)
    with status.connect(dsn) as conn:
        if not status.has_migration_schema(conn):
            return {"state": "empty", "message": "the destination has no migration schema yet"}
        return fn(conn, *args, **kwargs)


def _unavailable(exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=503, content={"error": "destination_unavailable", "message": str(exc)})


async def _on_unavailable(request: Request, exc: Exception) -> JSONResponse:
    return _unavailable(exc)


async def _on_http(request: Request, exc: Exception) -> Any:
    """The page answers a refused login with a page that says how to sign in; the API with JSON."""
    assert isinstance(exc, HTTPException)
    if exc.status_code in (401, 403) and "/api/" not in request.url.path:
        return HTMLResponse(console_page.refused(exc.status_code), status_code=exc.status_code)
    return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail},
                        headers=getattr(exc, "headers", None))


router = APIRouter()
PageSize = Query(status.DEFAULT_PAGE_SIZE, ge=1, le=status.MAX_PAGE_SIZE)
Runs = Query(status.DEFAULT_RUNS, ge=1, le=100)


@router.get("/", response_class=HTMLResponse, summary="The console page")
def page(entity: str | None = None, reason: str | None = None, after: str = "",
         page_size: int = PageSize) -> HTMLResponse:
    try:
        data = overview()
    except (status.DestinationUnreachable, NotConfigured) as exc:
        return HTMLResponse(console_page.unreachable(str(exc)), status_code=503)
    samples = None
    if entity and reason and data.get("state") != "empty":
        samples = _quarantine_page(entity, reason, after, page_size)
    return HTMLResponse(console_page.render(data, samples))


@router.get("/api/overview", summary="Everything the page shows")
def api_overview() -> dict[str, Any]:
    return overview()


@router.get("/api/entities", summary="One row per entity: last run, counts, reconciliation, watermark, gate")
def api_entities() -> Any:
    data = overview()
    return {"state": data["state"], "message": data.get("message"), "entities": data.get("entities", [])}


@router.get("/api/quarantine", summary="Quarantined rows per entity and reason, and the trend over the last runs")
def api_quarantine(runs: int = Runs) -> Any:
    return _with_destination(status.quarantine, runs=runs)


def _quarantine_page(entity: str, reason: str, after: str, page_size: int) -> Any:
    try:
        return _with_destination(status.quarantine_page, entity, reason, after=after, page_size=page_size)
    except ValueError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None


@router.get("/api/quarantine/{entity}/{reason}", summary="A page of quarantined rows (masked), by key")
def api_quarantine_page(entity: str, reason: str, after: str = "", page_size: int = PageSize) -> Any:
    return _quarantine_page(entity, reason, after, page_size)


@router.get("/api/schema", summary="The latest schema verdict and the accept-override history")
def api_schema() -> Any:
    return _with_destination(status.schema)


@router.get("/api/cutover", summary="The latest GO / NO-GO with each criterion")
def api_cutover() -> Any:
    return {"cutover": status.cutover()}


@router.get("/api/throughput", summary="Rows/s per entity over the last runs, and the benchmark history")
def api_throughput(runs: int = Runs) -> Any:
    return _with_destination(status.throughput, runs=runs)


@router.get("/api/assessment", summary="The latest assess_legacy summary")
def api_assessment() -> Any:
    return {"assessment": _with_destination(status.latest_assessment)}


def create_app() -> FastAPI:
    """The console's app; every route behind Airflow's auth (``_access``)."""
    app = FastAPI(title="Migration console", description="Where the Supabase migration stands (read-only).",
                  dependencies=[_access()])
    app.include_router(router)
    app.add_exception_handler(status.DestinationUnreachable, _on_unavailable)
    app.add_exception_handler(NotConfigured, _on_unavailable)
    app.add_exception_handler(HTTPException, _on_http)
    return app
