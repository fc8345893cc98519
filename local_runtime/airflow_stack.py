"""Airflow on this machine: the four components as background processes, and a REST client.

``start`` runs ``airflow db migrate`` and then ``api-server``, ``scheduler``,
``dag-processor`` and ``triggerer`` as separate processes with the
LocalExecutor, all bound to 127.0.0.1, each in its own process group, each
writing its own log under ``<state>/logs``. Every process we start carries the
marker variable ``MIGRATION_LOCAL_STACK=<state dir>`` and runs in a session
of its own whose id is recorded; ``stop`` ends the recorded process groups
first, and ``sweep`` then anything still in those sessions or carrying the
marker (a task process a crashed scheduler left behind), so nothing of ours
survives.

Login is the Simple auth manager's: one ``admin`` user whose password this
module writes, once, into the manager's passwords file, so the demo can print
it and use it for ``POST /auth/token``.

The same process helpers (``spawn``, ``stop_recorded``) start and stop the
Storage stand-in for the demo.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
MARKER = "MIGRATION_LOCAL_STACK"
ADMIN_USER = "admin"
TERMINAL_RUN_STATES = frozenset({"success", "failed"})


# --------------------------------------------------------------------------- processes


def _pid_file(state_dir: Path, name: str) -> Path:
    return state_dir / "run" / f"{name}.pid"


def spawn(name: str, args: list[str], *, state_dir: Path, env: Mapping[str, str]) -> psutil.Process:
    """Start ``args`` in a new session, log to ``<state>/logs/<name>.log``, record its pid."""
    state_dir = state_dir.resolve()
    log_path = state_dir / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _pid_file(state_dir, name).parent.mkdir(parents=True, exist_ok=True)
    full_env = {**env, MARKER: str(state_dir)}
    with open(log_path, "ab") as log:
        log.write(f"\n=== {datetime.now().isoformat(timespec='seconds')} {' '.join(args)}\n".encode())
        log.flush()
        popen = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            # Its own process group, so stop can signal the whole tree at once.
            start_new_session=True,
        )
    proc = psutil.Process(popen.pid)
    _pid_file(state_dir, name).write_text(
        json.dumps({"pid": popen.pid, "create_time": proc.create_time(), "args": args})
    )
    _remember_session(state_dir, popen.pid)
    return proc


def _sessions_file(state_dir: Path) -> Path:
    return state_dir / "run" / "sessions.json"


def _remember_session(state_dir: Path, sid: int) -> None:
    path = _sessions_file(state_dir)
    sessions = set(json.loads(path.read_text())) if path.exists() else set()
    path.write_text(json.dumps(sorted(sessions | {sid})))


def recorded(state_dir: Path, name: str) -> psutil.Process | None:
    """The live process recorded under ``name``, or None (a reused pid does not count)."""
    path = _pid_file(state_dir.resolve(), name)
    try:
        info = json.loads(path.read_text())
        proc = psutil.Process(info["pid"])
        if abs(proc.create_time() - info["create_time"]) > 1 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (FileNotFoundError, ValueError, KeyError, psutil.NoSuchProcess):
        return None


def stop_recorded(state_dir: Path, *names: str, grace: float = 20.0) -> list[str]:
    """Stop the recorded processes, their process groups and all their descendants.

    All are signalled first and then awaited together; returns the names that were running.
    """
    state_dir = state_dir.resolve()
    family: list[psutil.Process] = []
    stopped = []
    for name in names:
        proc = recorded(state_dir, name)
        _pid_file(state_dir, name).unlink(missing_ok=True)
        if proc is None:
            continue
        try:
            family += [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        stopped.append(name)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    _terminate(family, grace)
    return stopped


def _terminate(procs: list[psutil.Process], grace: float) -> None:
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def our_processes(state_dir: Path) -> list[psutil.Process]:
    """Every live process ``spawn`` started for this state dir, and their descendants.

    A process is ours when it is in one of the sessions ``spawn`` opened (a
    session id stays unused by others while any member lives, and children
    that move to a process group of their own stay in the session), or when
    it carries the marker variable. Both are needed: Airflow renames its
    api-server and executor workers with setproctitle, which overwrites the
    environment the marker is read from.
    """
    state_dir = state_dir.resolve()
    path = _sessions_file(state_dir)
    sessions = set(json.loads(path.read_text())) if path.exists() else set()
    marker = str(state_dir)
    found = []
    for p in psutil.process_iter():
        if p.pid == os.getpid():
            continue
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if os.getsid(p.pid) in sessions or p.environ().get(MARKER) == marker:
                found.append(p)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return found


def sweep(state_dir: Path, *, grace: float = 10.0) -> int:
    """End every process of ours still alive; return how many there were."""
    left = our_processes(state_dir)
    _terminate(left, grace)
    if not our_processes(state_dir):
        _sessions_file(state_dir.resolve()).unlink(missing_ok=True)
    return len(left)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(preferred: int, host: str = "127.0.0.1") -> int:
    """``preferred`` when nothing listens there, otherwise a port the OS picks."""
    if port_is_free(preferred, host):
        return preferred
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --------------------------------------------------------------------------- airflow


@dataclass(frozen=True)
class LocalAirflow:
    """Where and how the local Airflow runs; ``state_dir`` is the demo's ``.local``."""

    state_dir: Path
    sql_alchemy_conn: str
    dags_folder: Path
    plugins_folder: Path
    port: int = 8080
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.state_dir.resolve() / "airflow"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir.resolve() / "logs"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def passwords_file(self) -> Path:
        return self.home / "simple_auth_manager_passwords.json.generated"


def _secrets(home: Path) -> dict[str, str]:
    """Keys every component must share, generated once per AIRFLOW_HOME."""
    path = home / "secrets.json"
    values = json.loads(path.read_text()) if path.exists() else {}
    # 64 bytes at least: the JWT library warns about shorter HMAC keys.
    if len(values.get("jwt_secret", "")) < 64 or not values.get("fernet_key"):
        from cryptography.fernet import Fernet

        values = {
            "jwt_secret": secrets.token_urlsafe(64),
            "api_secret_key": secrets.token_urlsafe(32),
            "fernet_key": Fernet.generate_key().decode(),
        }
        path.write_text(json.dumps(values))
        path.chmod(0o600)
    return values


def admin_password(af: LocalAirflow) -> str:
    """The admin password, written into the Simple auth manager's file on first use.

    The manager only generates passwords for users missing from the file, so
    the one written here is the one it keeps.
    """
    af.home.mkdir(parents=True, exist_ok=True)
    path = af.passwords_file
    passwords: dict[str, str] = {}
    if path.exists() and path.read_text().strip():
        passwords = json.loads(path.read_text())
    if ADMIN_USER not in passwords:
        passwords[ADMIN_USER] = secrets.token_urlsafe(12)
        path.write_text(json.dumps(passwords) + "\n")
        path.chmod(0o600)
    return passwords[ADMIN_USER]


def airflow_env(af: LocalAirflow) -> dict[str, str]:
    """The environment of every Airflow process: inherited, then ours on top."""
    keys = _secrets(af.home)
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(af.home),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(af.passwords_file),
            "AIRFLOW__CORE__DAGS_FOLDER": str(af.dags_folder.resolve()),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(af.plugins_folder.resolve()),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__FERNET_KEY": keys["fernet_key"],
            # Task processes reach the Execution API here, not at the default localhost:8080.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{af.api_url}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": af.sql_alchemy_conn,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(af.port),
            "AIRFLOW__API__BASE_URL": af.ui_url,
            "AIRFLOW__API__SECRET_KEY": keys["api_secret_key"],
            # The scheduler signs task tokens and the api-server checks them: one secret for both.
            "AIRFLOW__API_AUTH__JWT_SECRET": keys["jwt_secret"],
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(af.logs_dir / "airflow"),
            # New DAG files show up within half a minute instead of five.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "20",
            # The LocalExecutor forks one worker per slot up front (~140 MB each); a
            # two-core machine gains nothing from the default 32.
            "AIRFLOW__CORE__PARALLELISM": os.environ.get("AIRFLOW__CORE__PARALLELISM", "8"),
        }
    )
    env.update(af.extra_env)
    return env


def _airflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "airflow", *args]


def _commands(af: LocalAirflow) -> dict[str, list[str]]:
    return {
        "api-server": _airflow("api-server", "--host", "127.0.0.1", "--port", str(af.port)),
        # The api-server reads task logs from the shared local folder, so no log
        # server (which would listen on every interface) is needed.
        "scheduler": _airflow("scheduler", "--skip-serve-logs"),
        "dag-processor": _airflow("dag-processor"),
        "triggerer": _airflow("triggerer", "--skip-serve-logs"),
    }


def migrate_db(af: LocalAirflow) -> None:
    """``airflow db migrate``: creates or upgrades the metadata schema."""
    env = airflow_env(af)
    af.logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = af.logs_dir / "airflow-db-migrate.log"
    with open(log_path, "ab") as log:
        done = subprocess.run(_airflow("db", "migrate"), stdout=log, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed (exit {done.returncode}):\n{log_tail(log_path)}")


def start(af: LocalAirflow, *, timeout: float = 180.0) -> AirflowClient:
    """Migrate the metadata DB, start the four components, wait until the API answers.

    Components already running for this state dir are stopped first, so a
    second start picks up new settings and connections.
    """
    stop(af.state_dir)
    if not port_is_free(af.port):
        raise RuntimeError(f"port {af.port} is already in use; set another API port")
    af.home.mkdir(parents=True, exist_ok=True)
    password = admin_password(af)
    migrate_db(af)
    env = airflow_env(af)
    for name, args in _commands(af).items():
        spawn(f"airflow-{name}", args, state_dir=af.state_dir, env=env)
    client = AirflowClient(af.api_url, ADMIN_USER, password)
    try:
        _wait_healthy(af, client, timeout)
    except BaseException:
        stop(af.state_dir)
        raise
    return client


def _wait_healthy(af: LocalAirflow, client: AirflowClient, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        for name in COMPONENTS:
            if recorded(af.state_dir, f"airflow-{name}") is None:
                log = af.logs_dir / f"airflow-{name}.log"
                raise RuntimeError(f"airflow {name} exited during start; see {log}:\n{log_tail(log)}")
        try:
            last = client.health()
            if all(last.get(k, {}).get("status") == "healthy" for k in ("metadatabase", "scheduler")):
                client.warm_up_execution_api(max(30.0, deadline - time.monotonic()))
                return
        except httpx.HTTPError as err:
            last = err
        time.sleep(1)
    raise RuntimeError(f"Airflow did not become healthy within {timeout:.0f}s (last answer: {last})")


def running(state_dir: Path) -> dict[str, int]:
    """Components of this state dir that are alive, with their pids."""
    return {
        name: proc.pid
        for name in COMPONENTS
        if (proc := recorded(state_dir, f"airflow-{name}")) is not None
    }


def stop(state_dir: Path) -> list[str]:
    """Stop the components; returns the ones that were running."""
    names = [f"airflow-{name}" for name in COMPONENTS]
    return [name.removeprefix("airflow-") for name in stop_recorded(state_dir, *names)]


# --------------------------------------------------------------------------- REST client


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


class AirflowClient:
    """The few calls of Airflow's public REST API (``/api/v2``) the demo makes.

    The token comes from the Simple auth manager's ``POST /auth/token`` and is
    renewed once when a call answers 401.
    """

    def __init__(self, base_url: str, username: str, password: str, *, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._credentials = {"username": username, "password": password}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)
        self._token: str | None = None

    def close(self) -> None:
        self._http.close()

    def token(self) -> str:
        if self._token is None:
            answer = self._http.post("/auth/token", json=self._credentials)
            answer.raise_for_status()
            self._token = answer.json()["access_token"]
        return self._token

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in (1, 2, 3):
            headers = {"Authorization": f"Bearer {self.token()}", "Accept": "application/json"}
            try:
                answer = self._http.request(method, f"/api/v2{path}", headers=headers, **kwargs)
            except httpx.TransportError:
                # A busy api-server can be slow to answer; reading again is harmless, writing is not.
                if method != "GET" or attempt == 3:
                    raise
                continue
            if answer.status_code == 401 and attempt == 1:
                self._token = None
                continue
            if answer.is_error:
                raise ApiError(method, path, answer.status_code, answer.text)
            return answer.json() if answer.content else None
        raise AssertionError("unreachable")

    def warm_up_execution_api(self, timeout: float) -> None:
        """Make the api-server build its Execution API app now rather than on the first task.

        The first request under ``/execution`` takes seconds (half a minute on a
        busy two-core machine) and stalls the server meanwhile; a task whose
        first call waits that long is killed by its supervisor and retried.
        """
        self._http.get("/execution/health", timeout=timeout).raise_for_status()

    def health(self) -> dict[str, Any]:
        answer = self._http.get("/api/v2/monitor/health")
        answer.raise_for_status()
        return answer.json()

    def version(self) -> dict[str, Any]:
        return self._call("GET", "/version")

    def _pages(self, path: str, key: str, **params: Any) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            page = self._call("GET", path, params={**params, "limit": 100, "offset": offset})
            items = page[key]
            yield from items
            offset += len(items)
            if not items or offset >= (page.get("total_entries") or 0):
                return

    def dags(self) -> list[dict[str, Any]]:
        return list(self._pages("/dags", "dags"))

    def import_errors(self) -> list[dict[str, Any]]:
        return list(self._pages("/importErrors", "import_errors"))

    def dag(self, dag_id: str) -> dict[str, Any]:
        return self._call("GET", f"/dags/{dag_id}")

    def unpause(self, dag_id: str) -> dict[str, Any]:
        return self._call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any], *, logical_date: datetime | None = None) -> dict:
        body = {"logical_date": _iso(logical_date or datetime.now(UTC)), "conf": conf}
        return self._call("POST", f"/dags/{dag_id}/dagRuns", json=body)

    def dag_runs(self, dag_id: str, *, since: datetime | None = None) -> list[dict[str, Any]]:
        """Runs of ``dag_id``, oldest first, optionally only those due at or after ``since``."""
        params: dict[str, Any] = {"order_by": "run_after"}
        if since is not None:
            params["run_after_gte"] = _iso(since)
        return list(self._pages(f"/dags/{dag_id}/dagRuns", "dag_runs", **params))

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def upstream_asset_events(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The asset events that started an asset-triggered run (with their source DAG run)."""
        return self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/upstreamAssetEvents")["asset_events"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return list(self._pages(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", "task_instances"))

    def task_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1
    ) -> list[str]:
        """The task attempt's log as text lines."""
        answer = self._call(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"full_content": "true", "map_index": map_index},
        )
        return _log_lines(answer.get("content", []))

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        *,
        timeout: float = 1800.0,
        poll: float = 2.0,
        on_poll: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the run is finished; ``on_poll`` sees every observed run state."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.dag_run(dag_id, run_id)
            if on_poll:
                on_poll(run)
            if run["state"] in TERMINAL_RUN_STATES:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id} run {run_id} still {run['state']} after {timeout:.0f}s")
            time.sleep(poll)


# Keys every task log line repeats; the tail is easier to read without them.
_LOG_CONTEXT_KEYS = frozenset(
    {"timestamp", "event", "level", "logger", "dag_id", "task_id", "run_id", "map_index",
     "try_number", "ti_id", "filename", "lineno", "chan", "error_detail"}
)


def _log_lines(content: list[Any]) -> list[str]:
    """Task log events as text; an exception becomes ``Type: message (file:line)``."""
    lines = []
    for item in content:
        if isinstance(item, str):
            lines.append(item)
            continue
        if str(item.get("event", "")).startswith(("::group::", "::endgroup::")):
            continue
        extras = " ".join(f"{k}={v}" for k, v in item.items() if k not in _LOG_CONTEXT_KEYS)
        when, level = str(item.get("timestamp") or "")[:19], str(item.get("level") or "").upper()
        head = [when, level, item.get("event", "")]
        lines.append(" ".join(p for p in (*head, extras) if p))
        lines += [f"    {_exception_line(e)}" for e in item.get("error_detail") or []]
    return lines


def _exception_line(error: dict[str, Any]) -> str:
    frames = error.get("frames") or [{}]
    where = f"{frames[-1].get('filename', '?')}:{frames[-1].get('lineno', '?')}"
    return f"{error.get('exc_type')}: {error.get('exc_value')} ({where})"


class ApiError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} /api/v2{path} answered {status}: {body[:500]}")
        self.status = status
