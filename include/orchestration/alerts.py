"""Alerts: what an on-call engineer receives when a task fails or cutover says NO-GO.

Every alert is logged. When the Airflow connection ``migration_alerts``
exists, it is also posted there: a Slack incoming webhook (conn_type
``slack`` or a host on hooks.slack.com: ``{"text": ...}``) or any other HTTP
endpoint (``{"text": ..., "event": ..., ...}`` as JSON). The webhook URL may
hold a secret; it comes only from the connection and is never logged.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

log = logging.getLogger(__name__)

ALERT_CONN_ID = "migration_alerts"


def failure_message(context: Any) -> str:
    """One paragraph: what failed, where, and the error's first line."""
    ti = context["task_instance"]
    exc = context.get("exception")
    first = str(exc).strip().splitlines()[0] if exc else "no exception recorded"
    try_number = getattr(ti, "try_number", "?")
    return (f"[migration] {ti.dag_id}.{ti.task_id} FAILED (run {context['run_id']}, try {try_number}): "
            f"{first}")


def nogo_message(lines: list[str], report_path: str | None) -> str:
    where = f" Report: {report_path}" if report_path else ""
    return "[migration] cutover verdict NO-GO:\n" + "\n".join(f"- {line}" for line in lines) + where


def _webhook() -> tuple[str, str] | None:
    """(url, kind) of the alert connection, or None when it is not configured."""
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(ALERT_CONN_ID)
    except Exception:  # noqa: BLE001 - not configured is the normal case
        return None
    url = conn.host or ""
    if not url.startswith("http"):
        schema = "https" if (conn.schema or "https") == "https" else "http"
        url = f"{schema}://{url}" + (f":{conn.port}" if conn.port else "")
    if conn.password:  # e.g. a Slack webhook path kept as the secret
        url = url.rstrip("/") + "/" + conn.password.lstrip("/")
    kind = "slack" if conn.conn_type == "slack" or "hooks.slack.com" in url else "generic"
    return url, kind


def send(text: str, *, event: str, details: dict[str, Any] | None = None) -> bool:
    """Log the alert and post it to the configured webhook. Returns whether it was posted."""
    log.error(text)
    target = _webhook()
    if target is None:
        return False
    url, kind = target
    body = {"text": text} if kind == "slack" else {"text": text, "event": event, **(details or {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - URL from a connection
            return 200 <= response.status < 300
    except OSError as exc:
        # The alert is in the log already; a dead webhook must not hide the original failure.
        log.warning("alert webhook %s did not accept the alert: %s", kind, exc)
        return False


def on_task_failure(context: Any) -> None:
    """``on_failure_callback`` for every migration task."""
    ti = context["task_instance"]
    send(failure_message(context), event="task_failed",
         details={"dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": context["run_id"]})
