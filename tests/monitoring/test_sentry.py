"""Sentry envelopes, captured by a transport of our own: no network."""

from __future__ import annotations

import pytest
from dagster import DagsterEventType, DagsterInstance, build_run_status_sensor_context
from sentry_sdk.transport import Transport

from mm_orchestration.features.invitations.job import invite_cleanup
from mm_orchestration.monitoring.resource import Monitoring
from mm_orchestration.monitoring.sentry_sensors import (
    sentry_run_failed_sensor,
    sentry_run_started_sensor,
    sentry_run_succeeded_sensor,
)
from mm_orchestration.platform.database import PortalDatabase
from tests.conftest import create_database, drop_database


class Capture(Transport):
    def __init__(self, options=None):
        super().__init__(options)
        self.items = []

    def capture_envelope(self, envelope):
        for item in envelope.items:
            self.items.append((item.type, item.payload.json))

    def of(self, kind):
        return [payload for t, payload in self.items if t == kind]


@pytest.fixture
def sentry():
    capture = Capture()
    monitoring = Monitoring(dsn="https://key@o1.ingest.sentry.io/1", environment="staging")
    monitoring.start(transport=capture)
    yield monitoring, capture
    import sentry_sdk

    from mm_orchestration.monitoring import resource as module

    sentry_sdk.init(dsn=None)  # the rest of the suite runs without Sentry
    module._initialised.clear()


def sensor_run(sensor, instance, run, event_type, monitoring):
    (record,) = instance.all_logs(run.run_id, of_type=event_type)
    with build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=record.dagster_event,
        resources={"monitoring": monitoring},
    ) as context:
        return sensor(context)


def test_failed_op_is_an_event_with_tags_and_the_run_a_transaction(pg_server, sentry):
    monitoring, capture = sentry
    empty = create_database(pg_server, template=None)
    db = PortalDatabase(url=pg_server.url(empty))
    try:
        with DagsterInstance.ephemeral() as instance:
            result = invite_cleanup.execute_in_process(
                instance=instance,
                resources={"portal_db": db},
                raise_on_error=False,
                tags={"dagster/schedule_name": "invite_cleanup_schedule"},
            )
            run = instance.get_run_by_id(result.run_id)
            sensor_run(
                sentry_run_started_sensor, instance, run, DagsterEventType.RUN_START, monitoring
            )
            sensor_run(
                sentry_run_failed_sensor, instance, run, DagsterEventType.RUN_FAILURE, monitoring
            )
    finally:
        db.close()
        drop_database(pg_server, empty)
    monitoring.flush()
    (event,) = capture.of("event")
    assert event["tags"]["jobName"] == "invite-cleanup"
    assert event["tags"]["runId"] == run.run_id
    assert event["tags"]["op"] == "expire_stale_invitations_op"
    assert "portal.invitations" in event["message"] or "portal.invitations" in str(event)
    (transaction,) = capture.of("transaction")
    assert transaction["transaction"] == "invite-cleanup"
    assert [s["description"] for s in transaction["spans"]] == ["expire_stale_invitations_op"]
    assert transaction["contexts"]["trace"]["status"] == "internal_error"
    checkins = capture.of("check_in")
    assert [c["status"] for c in checkins] == ["in_progress", "error"]
    config = checkins[0]["monitor_config"]
    assert config["schedule"] == {"type": "crontab", "value": "*/10 * * * *"}  # staging
    assert config["timezone"] == "Australia/Sydney" and config["max_runtime"] == 30


def test_successful_manual_run_is_a_transaction_without_check_ins(portal_db, sentry):
    monitoring, capture = sentry
    with DagsterInstance.ephemeral() as instance:
        result = invite_cleanup.execute_in_process(
            instance=instance, resources={"portal_db": portal_db}
        )
        run = instance.get_run_by_id(result.run_id)
        sensor_run(
            sentry_run_succeeded_sensor, instance, run, DagsterEventType.RUN_SUCCESS, monitoring
        )
    monitoring.flush()
    (transaction,) = capture.of("transaction")
    assert transaction["contexts"]["trace"]["status"] == "ok"
    assert capture.of("event") == [] and capture.of("check_in") == []


def test_without_a_dsn_nothing_is_sent(portal_db):
    monitoring = Monitoring()
    assert monitoring.start() is False
    with DagsterInstance.ephemeral() as instance:
        result = invite_cleanup.execute_in_process(
            instance=instance, resources={"portal_db": portal_db}
        )
        run = instance.get_run_by_id(result.run_id)
        skip = sensor_run(
            sentry_run_succeeded_sensor, instance, run, DagsterEventType.RUN_SUCCESS, monitoring
        )
    assert "SENTRY_DSN is not set" in skip.skip_message
