"""Alert messages, and their delivery to a webhook connection (a local HTTP endpoint)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest

from include.orchestration import alerts


@pytest.fixture
def webhook(monkeypatch):
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AIRFLOW_CONN_MIGRATION_ALERTS", f"http://127.0.0.1:{server.server_port}/hook")
    yield received
    server.shutdown()


def context(exc: Exception) -> dict:
    ti = SimpleNamespace(dag_id="migrate_users", task_id="load", try_number=3)
    return {"task_instance": ti, "run_id": "scheduled__2026-11-25T02:00:00+00:00", "exception": exc}


def test_failure_message_says_what_where_and_why():
    msg = alerts.failure_message(context(RuntimeError("users: the accounting does not balance: x\nmore")))
    assert msg == ("[migration] migrate_users.load FAILED (run scheduled__2026-11-25T02:00:00+00:00, try 3): "
                   "users: the accounting does not balance: x")


def test_nogo_message_lists_each_cause():
    msg = alerts.nogo_message(["zero reconciliation differences: messages: 1 missing"], "/r/latest.json")
    assert msg == ("[migration] cutover verdict NO-GO:\n- zero reconciliation differences: messages: 1 missing "
                   "Report: /r/latest.json")


def test_task_failure_is_posted_to_the_webhook(webhook):
    alerts.on_task_failure(context(RuntimeError("schema gate closed")))
    assert webhook == [{"text": "[migration] migrate_users.load FAILED (run scheduled__2026-11-25T02:00:00+00:00, "
                                "try 3): schema gate closed", "event": "task_failed", "dag_id": "migrate_users",
                        "task_id": "load", "run_id": "scheduled__2026-11-25T02:00:00+00:00"}]


def test_without_a_connection_the_alert_is_only_logged(monkeypatch, caplog):
    monkeypatch.delenv("AIRFLOW_CONN_MIGRATION_ALERTS", raising=False)
    assert alerts.send("[migration] test", event="x") is False
    assert "[migration] test" in caplog.text
