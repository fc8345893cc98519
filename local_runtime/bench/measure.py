"""How the benchmark measures a step: in its own spawned child process, with its memory and CPU.

This module owns the measuring: :class:`Bench` (the run's databases and
settings) runs a step function in a spawned child after a ``CHECKPOINT``, so
its wall time excludes interpreter start-up and its peak RSS is its own, and
samples the server's memory meanwhile; the child reports seconds, peak RSS,
CPU, and the step's own figures.
"""

from __future__ import annotations

import cProfile
import logging
import multiprocessing as mp
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local_runtime.bench.report import MB, _fmt_num, step_label
from local_runtime.bench.server import checkpoint


def say(message: str) -> None:
    print(message, flush=True)


def _rss_mb(field: str) -> float:
    """This process's resident memory now (VmRSS) or at its peak (VmHWM), in MB.

    Not ``ru_maxrss``: Linux carries it across exec, so a spawned child would
    report its parent's peak whenever that is higher than its own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # KiB on Linux


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child_main(pipe: Any, func: Callable[..., dict], kwargs: dict, log_path: str,
                profile_path: str | None) -> None:
    logging.basicConfig(filename=log_path, level=logging.INFO,
                        format="%(asctime)s %(processName)s %(name)s %(levelname)s %(message)s")
    baseline = _rss_mb("VmRSS")
    cpu_before = _cpu_seconds()
    profiler = cProfile.Profile() if profile_path else None
    out: dict[str, Any] = {"error": None, "result": {}}
    started = time.perf_counter()
    try:
        if profiler:
            profiler.enable()
        out["result"] = func(**kwargs)
    except Exception as err:  # reported in the table; the benchmark goes on
        logging.getLogger("bench").exception("%s failed", func.__name__)
        out["error"] = f"{type(err).__name__}: {err}"
    finally:
        if profiler:
            profiler.disable()
            profiler.dump_stats(profile_path)
    out["seconds"] = time.perf_counter() - started
    out["peak_rss_mb"] = _rss_mb("VmHWM")
    out["cpu_seconds"] = _cpu_seconds() - cpu_before
    out["baseline_rss_mb"] = baseline
    pipe.send(out)
    pipe.close()


class ServerMemory:
    """Samples the embedded server's private memory (sum of USS of its processes)."""

    def __init__(self, postmaster_pid: int | None, interval: float = 0.5):
        self.pid, self.interval = postmaster_pid, interval

    def _sample(self) -> float | None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None
        total = 0
        for proc in procs:
            try:
                total += proc.memory_full_info().uss
            except psutil.Error:
                continue
        return total / MB

    @contextmanager
    def window(self) -> Iterator[dict]:
        peak: dict[str, float | None] = {"mb": None}
        if self.pid is None:
            yield peak
            return
        stop = threading.Event()

        def run() -> None:
            while not stop.is_set():
                value = self._sample()
                if value is not None and (peak["mb"] is None or value > peak["mb"]):
                    peak["mb"] = value
                stop.wait(self.interval)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield peak
        finally:
            stop.set()
            thread.join()


@dataclass
class Bench:
    legacy: str
    dest: str
    scale: str
    stamp: str
    log_path: Path
    memory: ServerMemory
    base_uri: str

    def measure(self, step: str, entity: str, func: Callable[..., dict], /, *,
                profile_path: Path | None = None, **kwargs: Any) -> dict:
        """Run ``func(**kwargs)`` in a spawned child; return its figures as a step row.

        ``func`` is a module-level function (the child imports it by name),
        returning a dict with ``rows`` and, for a pipeline step, ``written``.
        """
        checkpoint(self.base_uri)
        ctx = mp.get_context("spawn")
        receive, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child_main, name=f"bench-{step}-{entity}",
                           args=(send, func, kwargs, str(self.log_path),
                                 str(profile_path) if profile_path else None))
        load_before = os.getloadavg()[0]
        with self.memory.window() as server:
            proc.start()
            send.close()
            try:
                out = receive.recv()
            except EOFError:
                out = {"error": "the child process died", "result": {}, "seconds": None, "peak_rss_mb": None}
            proc.join()
        result = out.get("result") or {}
        row = {"step": step, "entity": entity, "seconds": out.get("seconds"), "rows": result.get("rows"),
               "peak_rss_mb": out.get("peak_rss_mb"), "baseline_rss_mb": out.get("baseline_rss_mb"),
               "server_peak_mb": server["mb"], "written": result.get("written"), "error": out.get("error"),
               "cpu_seconds": out.get("cpu_seconds"), "load_1m": max(load_before, os.getloadavg()[0]),
               "detail": {k: v for k, v in result.items() if k not in ("rows", "written")}}
        say(f"  {step_label(step):<31} {entity:<13} " + (
            f"FAILED: {row['error']}" if row["error"] else
            f"{_fmt_num(row['rows'])} rows in {row['seconds']:.2f} s, peak RSS {row['peak_rss_mb']:.0f} MB"))
        return row
