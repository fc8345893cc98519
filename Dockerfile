# The Airflow image docker-compose.yaml runs: the official image plus this project's pinned dependencies.
#
# The pins are installed here, once, at build time, with the same requirements.txt and
# constraints.txt the venv and CI use, so every container runs the versions the tests ran.
# (_PIP_ADDITIONAL_REQUIREMENTS would instead resolve and download them again at every
# container start, in every container, and the Airflow docs keep it for quick checks only.)
# The project's code (dags/, include/, plugins/) is not copied in: compose mounts it.
FROM apache/airflow:3.3.2-python3.11

COPY --chown=airflow:0 requirements.txt constraints.txt /opt/airflow/project-requirements/
RUN pip install --no-cache-dir \
        -r /opt/airflow/project-requirements/requirements.txt \
        -c /opt/airflow/project-requirements/constraints.txt
