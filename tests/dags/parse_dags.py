"""Parse a DAG folder the way the DAG processor does, with every database out of reach.

Run as a script (a fresh interpreter, so nothing is cached):
``python parse_dags.py FOLDER`` prints JSON: the DAG ids, import errors, and
every attempt to open a database or network connection while parsing.
"""

from __future__ import annotations

import json
import os
import socket
import sys

attempts: list[str] = []


def _refuse(what: str):
    def refuse(*args, **kwargs):
        attempts.append(what)
        raise ConnectionRefusedError(f"{what} at DAG parse time")

    return refuse


def main(folder: str) -> None:
    for key in list(os.environ):
        if key.startswith("AIRFLOW_CONN_") or key.startswith("AIRFLOW_VAR_"):
            del os.environ[key]
    import psycopg
    import psycopg2

    psycopg.connect = _refuse("psycopg.connect")  # type: ignore[assignment]
    psycopg2.connect = _refuse("psycopg2.connect")  # type: ignore[assignment]
    real_connect = socket.socket.connect

    def guarded(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(f"socket.connect {address}")
            raise ConnectionRefusedError("network access at DAG parse time")
        return real_connect(self, address)

    socket.socket.connect = guarded  # type: ignore[method-assign]
    from airflow.dag_processing.dagbag import DagBag

    # Safe mode, as the DAG processor parses: a file must mention airflow and dag.
    bag = DagBag(dag_folder=folder)
    print(json.dumps({
        "dag_ids": sorted(bag.dag_ids),
        "import_errors": {os.path.basename(k): v.splitlines()[-1] for k, v in bag.import_errors.items()},
        "attempts": attempts,
    }))


if __name__ == "__main__":
    main(sys.argv[1])
