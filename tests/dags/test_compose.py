"""docker-compose.yaml, Dockerfile and .env.example: what a user's `docker compose up` relies on.

No Docker engine runs here, so these read the files: the services, the Airflow version
(the same pin as requirements.txt), the executor, the mounted code, where connections and
secrets come from, and that no secret is written into the compose file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)
# The connection ids the pipeline's code looks up.
CONN_IDS = {"legacy_db", "supabase_db", "supabase_api", "legacy_media"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_KEY$", re.IGNORECASE)
INTERPOLATION = re.compile(r"^\$\{[A-Za-z0-9_]+(:?[-?][^}]*)?\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _airflow_pin() -> str:
    text = (ROOT / "requirements.txt").read_text()
    match = re.search(r"^apache-airflow(?:\[[^\]]*\])?==([\w.]+)\s*$", text, re.MULTILINE)
    assert match, "requirements.txt pins no apache-airflow version"
    return match.group(1)


def _env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_every_service_is_there(services: dict[str, Any]) -> None:
    assert {"postgres", "redis", *AIRFLOW_SERVICES} <= set(services)


def test_image_is_the_pinned_airflow(services: dict[str, Any]) -> None:
    pin = _airflow_pin()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.findall(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE) == [f"apache/airflow:{pin}-python3.11"]
    for name in AIRFLOW_SERVICES:
        service = services[name]
        assert service["build"]["dockerfile"] == "Dockerfile", name
        assert f":{pin}-python3.11" in service["image"], name


def test_dependencies_are_baked_into_the_image_not_installed_at_start(compose: dict[str, Any]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    install = r"pip install .*-r \S*requirements\.txt\s*\\?\s*-c \S*constraints\.txt"
    assert re.search(install, dockerfile, re.S)
    assert "_PIP_ADDITIONAL_REQUIREMENTS" not in (ROOT / "docker-compose.yaml").read_text()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv/", ".local/", ".env"} <= set(ignored)


def test_celery_executor_with_redis(services: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:"), name
    assert services["airflow-worker"]["command"] == "celery worker"


def test_project_code_is_mounted_and_importable(services: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES:
        service = services[name]
        for folder in ("dags", "include", "plugins"):
            assert f"./{folder}:/opt/airflow/{folder}" in service["volumes"], (name, folder)
        assert service["environment"]["PYTHONPATH"] == "/opt/airflow", name


def test_connections_and_secrets_come_from_env_file(services: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES:
        service = services[name]
        assert ".env" in service["env_file"], name
        assert not [k for k in service["environment"] if k.startswith("AIRFLOW_CONN_")], name


def test_env_example_names_exactly_the_connections_the_code_uses() -> None:
    named = {k.removeprefix("AIRFLOW_CONN_").lower() for k in _env_example() if k.startswith("AIRFLOW_CONN_")}
    assert named == CONN_IDS


def test_env_example_keeps_supabase_off_the_transaction_pooler() -> None:
    supabase = _env_example()["AIRFLOW_CONN_SUPABASE_DB"]
    assert ":5432/" in supabase and ":6543" not in supabase


def test_env_example_covers_every_variable_compose_requires() -> None:
    text = (ROOT / "docker-compose.yaml").read_text()
    required = set(re.findall(r"\$\{([A-Za-z0-9_]+):\?", text))
    assert required <= set(_env_example())


def _secret_values(node: Any, path: str = "") -> list[tuple[str, str]]:
    """Every (where, value) in the compose file whose key names a secret."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}"
            if isinstance(value, (str, int)) and SECRET_NAME.search(str(key)):
                found.append((where, str(value)))
            found += _secret_values(value, where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _secret_values(value, f"{path}[{i}]")
    return found


def test_no_secret_is_written_in_the_compose_file(compose: dict[str, Any]) -> None:
    secrets = _secret_values(compose)
    assert secrets, "expected secret settings, all taken from .env"
    literal = [(where, v) for where, v in secrets if not INTERPOLATION.match(v) and not v.startswith("/")]
    assert literal == []
    # Passwords inside URLs too: user:password@host must be user:${VAR}@host.
    text = (ROOT / "docker-compose.yaml").read_text()
    for password in re.findall(r"://[^:/@\s]+:([^@\s]*)@", text):
        assert INTERPOLATION.match(password), password


def test_ports_only_on_loopback_and_workers_scale(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    worker = services["airflow-worker"]
    assert "container_name" not in worker and "ports" not in worker
