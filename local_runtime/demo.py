"""The demo: the whole migration on this machine, driven the way an operator would drive it.

``run`` starts the embedded PostgreSQL (unless all three databases are given
in the environment), seeds the legacy world, bootstraps the destination,
starts the Storage stand-in and Airflow, then triggers ``schema_diff`` through
the REST API and follows the asset-triggered chain of migration DAGs in the
terminal; then it changes the legacy world and runs the chain again in
incremental mode, and prints the per-entity report. Everything it starts keeps
running (browse the UI) until ``stop``. ``env`` prints the addresses again.

Command line (used by the Makefile)::

    python -m local_runtime.demo run --scale small --port 54329
    python -m local_runtime.demo env --port 54329
    python -m local_runtime.demo stop --port 54329
    python -m local_runtime.demo run --executor celery   # Redis + two Celery workers (local_runtime.cluster)

Environment it honours: ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``,
``AIRFLOW_CONN_LEGACY_DB``, ``AIRFLOW_CONN_SUPABASE_DB`` (databases to use
instead of the embedded ones), ``AIRFLOW_CONN_SUPABASE_API`` (a real Supabase
instead of the Storage stand-in), ``AIRFLOW_CONN_LEGACY_MEDIA``,
``AIRFLOW_API_PORT`` (default 8080; a busy port is replaced by a free one),
``DEMO_RUN_TIMEOUT`` (seconds one DAG run may take, default 1800) and
``DEMO_SEED_EXTERNAL=1`` (allow seeding a legacy database given in the
environment: seeding replaces its contents).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shutil
import socket
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from local_runtime import airflow_stack as local_airflow
from local_runtime import postgres as local_pg
from local_runtime.airflow_stack import AirflowClient, LocalAirflow
from local_runtime.demo_runs import (
    CHAIN,
    REPORTS,
    ROOT,
    STATE,
    DemoError,
    assess_first,
    cutover_verdict,
    run_chain,
    say,
    unpause,
    wait_for_dags,
)

PG_DIR = STATE / "pg"
MEDIA = STATE / "media"
STORAGE = STATE / "storage"
DEMO_FILE = STATE / "demo.json"
STANDIN_SECRET = STATE / "storage-jwt-secret"
STANDIN_KEY = STATE / "storage-service-role-key"
STANDIN = "storage-standin"
STANDIN_PORT = 54330


# Modules other parts of the project provide, imported lazily: module -> what it is.
REQUIRED = {
    "local_runtime.world": "the legacy data generator (seed, apply_changes)",
    "include.migration.bootstrap": "the destination bootstrap",
    "local_runtime.standins.storage": "the Storage stand-in",
}




# --------------------------------------------------------------------------- where things are


@dataclass(frozen=True)
class Databases:
    """The three databases, as psycopg DSNs, and whether the embedded server holds them."""

    airflow_sqlalchemy: str
    legacy: str
    supabase: str
    embedded: frozenset[str]
    pg_port: int


def _dsn_from_conn(value: str) -> str:
    """A libpq URI from an Airflow connection given as URI or JSON."""
    if not value.lstrip().startswith("{"):
        return value.split("?__extra__", 1)[0]
    conn = json.loads(value)
    auth = quote(conn.get("login") or "", safe="")
    if conn.get("password"):
        auth += ":" + quote(conn["password"], safe="")
    host = f"{conn.get('host', '127.0.0.1')}:{conn.get('port') or 5432}"
    return f"postgresql://{auth + '@' if auth else ''}{host}/{conn.get('schema') or 'postgres'}"


def databases(pg_port: int, *, start_embedded: bool) -> Databases:
    env = os.environ
    configured = {
        "airflow": env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"),
        "legacy": env.get("AIRFLOW_CONN_LEGACY_DB"),
        "supabase": env.get("AIRFLOW_CONN_SUPABASE_DB"),
    }
    embedded = frozenset(name for name, value in configured.items() if not value)
    base = local_pg.base_uri(pg_port)
    if embedded and start_embedded:
        if not local_pg.is_running(PG_DIR.resolve()) and not local_airflow.port_is_free(pg_port):
            raise DemoError(f"port {pg_port} is taken by another program; run with PG_PORT=<free port>")
        base = local_pg.start(PG_DIR, pg_port)
    server = base.split("://", 1)[1]
    return Databases(
        airflow_sqlalchemy=configured["airflow"] or f"postgresql+psycopg2://{server}/airflow",
        legacy=_dsn_from_conn(configured["legacy"]) if configured["legacy"] else f"{base}/legacy",
        supabase=_dsn_from_conn(configured["supabase"]) if configured["supabase"] else f"{base}/supabase",
        embedded=embedded,
        pg_port=pg_port,
    )


def _api_port() -> int:
    wanted = int(os.environ.get("AIRFLOW_API_PORT", "8080"))
    port = local_airflow.free_port(wanted)
    if port != wanted:
        say(f"  port {wanted} is busy; the Airflow UI and API use {port} instead")
    return port


# --------------------------------------------------------------------------- run steps


def check_modules() -> None:
    missing = [f"{mod} ({what})" for mod, what in REQUIRED.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise DemoError("not written yet: " + "; ".join(missing))


def reset_embedded(dbs: Databases, pg_port: int) -> None:
    """A fresh legacy and destination world on the embedded server, so every demo tells the same story."""
    import psycopg
    from psycopg import sql

    fresh = [name for name in ("legacy", "supabase") if name in dbs.embedded]
    with psycopg.connect(f"{local_pg.base_uri(pg_port)}/postgres", autocommit=True) as conn:
        for name in fresh:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    if "supabase" in fresh:
        shutil.rmtree(STORAGE, ignore_errors=True)
        shutil.rmtree(REPORTS, ignore_errors=True)
    if fresh:
        say(f"  fresh databases: {', '.join(fresh)}")


def seed_legacy(dbs: Databases, scale: str) -> None:
    if "legacy" not in dbs.embedded and os.environ.get("DEMO_SEED_EXTERNAL") != "1":
        raise DemoError(
            "AIRFLOW_CONN_LEGACY_DB points at your own database and seeding replaces its contents; "
            "set DEMO_SEED_EXTERNAL=1 to allow it"
        )
    from local_runtime.world import seed

    started = time.monotonic()
    report = seed(dbs.legacy, scale=scale, media_root=MEDIA)
    counts = dict(getattr(report, "counts", {}) or {})
    say(f"  seeded scale={scale} in {time.monotonic() - started:.1f}s")
    for table, rows in counts.items():
        say(f"    {table:<28} {rows:>10,}")


def bootstrap_destination(dbs: Databases) -> None:
    from include.migration.bootstrap import bootstrap

    applied = bootstrap(dbs.supabase)
    say(f"  destination ready ({len(applied or [])} files applied)")


def _standin_secret() -> str:
    if not STANDIN_SECRET.exists():
        STANDIN_SECRET.parent.mkdir(parents=True, exist_ok=True)
        STANDIN_SECRET.write_text(secrets.token_urlsafe(32))
        STANDIN_SECRET.chmod(0o600)
    return STANDIN_SECRET.read_text().strip()


def start_standin(catalog_dsn: str | None = None) -> dict[str, str]:
    """Start the Storage stand-in; returns its URL and service-role key.

    With ``catalog_dsn`` (the destination) it keeps ``storage.objects`` there, as
    Supabase does, so the media checks read it instead of listing the bucket.
    """
    from local_runtime.standins.storage import make_jwt

    local_airflow.stop_recorded(STATE, STANDIN)
    secret = _standin_secret()
    port = local_airflow.free_port(STANDIN_PORT)
    STORAGE.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "local_runtime.standins.storage", "--host", "127.0.0.1",
            "--port", str(port), "--data", str(STORAGE), "--jwt-secret", secret]
    if catalog_dsn:
        args += ["--catalog-dsn", catalog_dsn]
    local_airflow.spawn(STANDIN, args, state_dir=STATE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    _wait_listening(port, STANDIN, STATE / "logs" / f"{STANDIN}.log")
    url = f"http://127.0.0.1:{port}"
    key = make_jwt(secret, "service_role")
    STANDIN_KEY.write_text(key)
    STANDIN_KEY.chmod(0o600)
    say(f"  Storage stand-in at {url}")
    return {"url": url, "service_role_key": key}


def _wait_listening(port: int, name: str, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if local_airflow.recorded(STATE, name) is None:
            raise DemoError(f"{name} exited at start; see {log}: {local_airflow.log_tail(log, 5)}")
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise DemoError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s; see {log}")


def connections(dbs: Databases, standin: dict[str, str] | None) -> dict[str, str]:
    """The connections every Airflow process gets, as ``AIRFLOW_CONN_*`` variables."""
    env = os.environ
    conns = {
        "AIRFLOW_CONN_LEGACY_DB": env.get("AIRFLOW_CONN_LEGACY_DB") or dbs.legacy,
        "AIRFLOW_CONN_SUPABASE_DB": env.get("AIRFLOW_CONN_SUPABASE_DB") or dbs.supabase,
        "AIRFLOW_CONN_LEGACY_MEDIA": env.get("AIRFLOW_CONN_LEGACY_MEDIA")
        or json.dumps({"conn_type": "fs", "extra": {"path": str(MEDIA.resolve())}}),
    }
    if standin is not None:
        conns["AIRFLOW_CONN_SUPABASE_API"] = json.dumps(
            {"conn_type": "http", "host": standin["url"], "password": standin["service_role_key"]}
        )
    else:
        conns["AIRFLOW_CONN_SUPABASE_API"] = env["AIRFLOW_CONN_SUPABASE_API"]
    return conns


def airflow_settings(dbs: Databases, conns: dict[str, str], port: int) -> LocalAirflow:
    return LocalAirflow(
        state_dir=STATE,
        sql_alchemy_conn=dbs.airflow_sqlalchemy,
        dags_folder=ROOT / "dags",
        plugins_folder=ROOT / "plugins",
        port=port,
        extra_env={
            **conns,
            "PYTHONPATH": str(ROOT),
            "MIGRATION_STATE_DIR": str(REPORTS),
        },
    )


# --------------------------------------------------------------------------- following runs




# --------------------------------------------------------------------------- commands


def _save(info: dict[str, Any]) -> None:
    DEMO_FILE.write_text(json.dumps(info, indent=2))


def _load() -> dict[str, Any] | None:
    return json.loads(DEMO_FILE.read_text()) if DEMO_FILE.exists() else None


def cmd_run(args: argparse.Namespace) -> int:
    check_modules()
    started_at = datetime.now(UTC)
    started = time.monotonic()
    STATE.mkdir(exist_ok=True)
    say("== 1. databases")
    if previous := _stop_services():
        say(f"  stopped the previous demo's {', '.join(previous)}")
    dbs = databases(args.port, start_embedded=True)
    held = ", ".join(sorted(dbs.embedded))
    say(f"  embedded PostgreSQL: {f'127.0.0.1:{args.port} ({held})' if held else 'not needed'}")
    reset_embedded(dbs, args.port)
    say("== 2. legacy world")
    seed_legacy(dbs, args.scale)
    say("== 3. destination")
    bootstrap_destination(dbs)
    say("== 4. Storage")
    # storage.objects in the embedded destination only: never stand-in tables (or a DSN with its
    # password on a command line) for a database of yours
    catalog = dbs.supabase if "supabase" in dbs.embedded else None
    standin = None if os.environ.get("AIRFLOW_CONN_SUPABASE_API") else start_standin(catalog)
    say("== 5. Airflow")
    airflow_started = time.monotonic()
    client = start_airflow(dbs, standin, args.executor)
    say(f"  Airflow answered after {time.monotonic() - airflow_started:.0f}s")
    timeout = float(os.environ.get("DEMO_RUN_TIMEOUT", "1800"))
    served = wait_for_dags(client, ROOT / "dags", CHAIN)
    unpause(client, served)
    assessed = assess_first(client, served, timeout)
    say("== 6. full migration")
    # On the cluster the backfill splits each extract in two, one partition per worker.
    backfill = {"partitions": 2} if args.executor == "celery" else None
    outcomes = [assessed, *run_chain(client, served, "full", timeout, backfill).values()]
    say("== 7. changes in the legacy world, then an incremental migration")
    apply_legacy_changes(dbs)
    outcomes += run_chain(client, served, "incremental", timeout).values()
    say("== 8. report")
    if not print_report(dbs):
        outcomes.append("report failed")
    outcomes.append(cutover_verdict(client, served, timeout))
    if args.executor == "celery" and not print_workers(dbs, started_at):
        outcomes.append("cluster proof failed")
    counts = Counter(outcomes)
    say(f"\ndemo finished in {time.monotonic() - started:.0f}s: "
        + ", ".join(f"{n} {state}" for state, n in counts.most_common()))
    print_env(_load() or {})
    return 0 if set(counts) == {"success"} else 1


def start_airflow(dbs: Databases, standin: dict[str, str] | None, executor: str = "local") -> AirflowClient:
    conns = connections(dbs, standin)
    af = airflow_settings(dbs, conns, _api_port())
    if executor == "celery":
        from local_runtime import cluster

        local_cluster, af = cluster.for_demo(af, STATE)
        cluster.start_redis(local_cluster)
        say(f"  Redis (redis-server {cluster.redis_server_binary()}) at {local_cluster.broker_url}")
    info = {
        "pg_port": dbs.pg_port if dbs.embedded else None,
        "embedded": sorted(dbs.embedded),
        "api_port": af.port,
        "standin_url": standin["url"] if standin else None,
    }
    _save(info)
    client = local_airflow.start(af)
    say(f"  api-server, scheduler, dag-processor, triggerer running; UI {af.ui_url}; logs in {af.logs_dir}")
    if executor == "celery":
        cluster.start_workers(local_cluster, af)
        say(f"  CeleryExecutor: workers {', '.join(local_cluster.workers)} "
            f"(concurrency {local_cluster.concurrency} each, queue {cluster.DEFAULT_QUEUE}) answer on the "
            "broker")
    return client


def print_workers(dbs: Databases, since: datetime) -> bool:
    """How many task attempts each Celery worker ran in this demo (from the Airflow metadata DB)."""
    from local_runtime import cluster

    say("== 9. workers")
    lines, ok = cluster.demo_summary(dbs.airflow_sqlalchemy, CHAIN, since)
    for line in lines:
        say(line)
    return ok


def apply_legacy_changes(dbs: Databases) -> None:
    from local_runtime.world import apply_changes

    result = apply_changes(dbs.legacy, media_root=MEDIA)
    counts = getattr(result, "counts", None) or {}
    changed = ", ".join(f"{kind} {n}" for kind, n in counts.items() if n)
    say(f"  legacy changes applied: {changed or 'none'}")


def print_report(dbs: Databases) -> bool:
    """Print the per-entity report; a report that fails is shown, and the demo goes on to the addresses."""
    if importlib.util.find_spec("local_runtime.report") is None:
        say("  (local_runtime.report is not written yet: no per-entity report)")
        return True
    from local_runtime.report import demo_report

    # The seed leaves the legacy world's report (known passwords) beside the media folder;
    # with it the report also proves migrated users sign in with their old passwords.
    world = MEDIA.parent / "world-report.json"
    try:
        say(demo_report(dbs.supabase, world_report=world) if world.exists() else demo_report(dbs.supabase))
    except Exception:  # the report is the last step: the addresses must still print
        traceback.print_exc()
        say("  the report failed (traceback above)")
        return False
    return True


def print_env(info: dict[str, Any]) -> None:
    port = info.get("pg_port")
    pg = local_pg.base_uri(port) if port else None
    api_port = info.get("api_port", 8080)
    embedded = info.get("embedded", [])
    legacy = f"{pg}/legacy" if pg and "legacy" in embedded else "(your AIRFLOW_CONN_LEGACY_DB)"
    supabase = f"{pg}/supabase" if pg and "supabase" in embedded else "(your AIRFLOW_CONN_SUPABASE_DB)"
    passwords = STATE / "airflow" / "simple_auth_manager_passwords.json.generated"
    password = json.loads(passwords.read_text()).get(local_airflow.ADMIN_USER) if passwords.exists() else "?"
    say(f"\nAirflow UI     http://localhost:{api_port}   login: {local_airflow.ADMIN_USER} / {password}")
    say(f"Migration      http://localhost:{api_port}/migration/   the console (in the UI: Browse > Migration); "
        f"JSON under /migration/api/")
    say(f"legacy         psql {legacy}")
    say(f"supabase       psql {supabase}")
    if info.get("standin_url"):
        # The key itself stays out of the terminal (and out of anything that captures it).
        say(f"Storage        {info['standin_url']}  (service-role key in {STANDIN_KEY})")
    say(f"logs           {STATE / 'logs'}")
    say("stop it all    make stop")


def cmd_env(args: argparse.Namespace) -> int:
    info = _load()
    if info is None:
        say("nothing started yet: run `make demo`")
        return 1
    alive = local_airflow.running(STATE)
    say("running: " + (", ".join(alive) if alive else "no Airflow component (run `make demo`)"))
    print_env(info)
    return 0


def _stop_services() -> list[str]:
    """Stop Airflow and the stand-in, then whatever else of ours outlived them."""
    stopped = [f"airflow {name}" for name in local_airflow.stop(STATE)]
    stopped += local_airflow.stop_recorded(STATE, STANDIN)
    from local_runtime import cluster

    stopped += cluster.stop_all(STATE)
    if left := local_airflow.sweep(STATE):
        stopped.append(f"{left} leftover process(es)")
    return stopped


def cmd_stop(args: argparse.Namespace) -> int:
    stopped = _stop_services()
    if PG_DIR.exists() and local_pg.stop(PG_DIR):
        stopped.append("embedded PostgreSQL")
    say("stopped: " + ", ".join(stopped) if stopped else "nothing was running")
    return 0


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m local_runtime.demo", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("command", choices=("run", "stop", "env"))
    parser.add_argument("--scale", default="small", help="size of the legacy world (run only)")
    parser.add_argument("--port", type=int, default=54329, help="port of the embedded PostgreSQL")
    parser.add_argument("--executor", choices=("local", "celery"), default="local",
                        help="celery: a Redis broker and two Celery workers (run only)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    command = {"run": cmd_run, "stop": cmd_stop, "env": cmd_env}[args.command]
    try:
        return command(args)
    except (DemoError, RuntimeError, httpx.HTTPError) as err:
        # DemoError, the start helpers' RuntimeErrors and ApiError all say what went wrong.
        what = f"{type(err).__name__}: {err}" if isinstance(err, httpx.HTTPError) else str(err)
        print(f"demo: {what}", file=sys.stderr)
        if args.command == "run":
            print("demo: what was started keeps running (make env shows it; make stop ends it)",
                  file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo: interrupted; what was started keeps running (make stop ends it)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
