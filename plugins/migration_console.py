"""The "Migration" entry of the Airflow UI: the operator's console, served by the api-server.

An Airflow 3 plugin: a FastAPI app mounted at ``/migration`` (the page and its JSON API,
``include/orchestration/console.py``) and an external view that puts it in the UI's
navigation. Nothing here touches a database: connections are resolved per request.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from include.orchestration.console import URL_PREFIX, create_app


class MigrationConsolePlugin(AirflowPlugin):
    name = "migration_console"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Migration console"}]
    external_views = [{
        "name": "Migration",
        "href": URL_PREFIX.lstrip("/") + "/",
        "destination": "nav",
        "url_route": "migration",
        "category": "browse",
    }]
