"""A Dagster instance on PostgreSQL for each test that wants one (sensors are evaluated
against a real instance: `build_sensor_context` refuses an ephemeral one), and running
the alerts a sensor asks for through the real `send_alert` job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, RunRequest

from mm_orchestration.local.embedded_pg import EmbeddedPostgres
from mm_orchestration.monitoring.alerts import send_alert
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.job_settings import JobSettings
from mm_orchestration.platform.outbox.mailer import Mailer
from tests.conftest import create_database, drop_database

ROOT = Path(__file__).resolve().parents[2]


def _home(server: EmbeddedPostgres, name: str, folder: Path) -> Path:
    config = (ROOT / "dagster.yaml").read_text()
    (folder / "dagster.yaml").write_text(
        config.replace("{env: DAGSTER_DATABASE_URL}", server.url(name))
    )
    return folder


@pytest.fixture
def pg_instance(
    pg_server: EmbeddedPostgres, dagster_template: str, tmp_path: Path
) -> Iterator[DagsterInstance]:
    """A fresh instance with the project's dagster.yaml, on a database of its own."""
    name = create_database(pg_server, template=dagster_template)
    folder = tmp_path / "dagster_home"
    folder.mkdir()
    try:
        with DagsterInstance.from_config(str(_home(pg_server, name, folder))) as instance:
            yield instance
    finally:
        drop_database(pg_server, name)


@pytest.fixture
def alert_resources(portal_db: PortalDatabase, tmp_path: Path) -> dict[str, Any]:
    """What send_alert needs: the test's portal database, mail written to a folder."""
    return {
        "portal_db": portal_db,
        "job_settings": JobSettings(),
        "mailer": Mailer(mail_dir=str(tmp_path / "mail")),
    }


def send(instance: DagsterInstance, resources: dict[str, Any], requests: Any) -> list[str]:
    """Run each requested alert through the real send_alert job (as the daemon would, once
    per run key); the keys run."""
    ran = []
    for request in requests or []:
        assert isinstance(request, RunRequest)
        result = send_alert.execute_in_process(
            run_config=request.run_config,
            instance=instance,
            resources=resources,
            tags=request.tags,
        )
        assert result.success
        ran.append(request.run_key or "")
    return ran
