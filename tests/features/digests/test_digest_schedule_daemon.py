"""The digest's 15-minute schedule, proven with the real daemon: ticks (every minute here,
MM_SCHEDULE_OVERRIDES) launch the job through the run queue, each run acts at its tick,
the person whose local time has come gets their digest once, and the person whose time
is still to come gets nothing yet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from mm_orchestration.local.topology import Topology
from mm_orchestration.platform.ledger import WINDOW_TAG
from tests import factories
from tests.local_stack import wait_for
from tests.sendgrid_server import SendGridRecorder

pytestmark = pytest.mark.stack

KATHMANDU = ZoneInfo("Asia/Kathmandu")  # a 45-minute offset, for good measure


def _scheduled(instance: DagsterInstance, finished: int) -> list[Any] | None:
    runs = [
        r
        for r in instance.get_runs(filters=RunsFilter(job_name="notification_digest"))
        if r.tags.get("mm/trigger") == "schedule"
    ]
    done = [r for r in runs if r.status == DagsterRunStatus.SUCCESS]
    assert not [r for r in runs if r.status == DagsterRunStatus.FAILURE], runs
    return done if len(done) >= finished else None


@pytest.mark.parametrize("topology", ["notification-digest"], indirect=True)
def test_the_daemon_sends_each_person_their_digest_at_their_time_once(
    topology: Topology, conn: Any, sendgrid: SendGridRecorder
) -> None:
    tenant = factories.tenant(conn)
    now = datetime.now(UTC)
    for email, at in (
        ("due@agency.example", now - timedelta(minutes=5)),
        ("later@agency.example", now + timedelta(hours=2)),
    ):
        user = factories.user(
            conn, tenant, email=email, timezone="Asia/Kathmandu",
            digest_time=at.astimezone(KATHMANDU).time().replace(second=0, microsecond=0),
        )  # fmt: skip
        conn.execute(
            "INSERT INTO portal.tasks (tenant_id, assignee_id, title, due_at) "
            "VALUES (%s, %s, 'Approve the grade', now() - interval '1 day')",
            [tenant, user],
        )
    topology.start_all()
    instance = DagsterInstance.from_config(str(topology.dagster_home))
    runs = wait_for(
        "two scheduled digest runs", lambda: _scheduled(instance, 2), 300, topology.log_dir
    )
    assert sendgrid.accepted_recipients() == ["due@agency.example"]
    ticks = [r.tags[WINDOW_TAG] for r in runs]
    assert len(set(ticks)) == len(ticks)
    periods = conn.execute(
        "SELECT u.email, p.outcome, p.run_id FROM ops.digest_periods p "
        "JOIN portal.users u ON u.id = p.user_id"
    ).fetchall()
    assert [(e, o) for e, o, _ in periods] == [("due@agency.example", "queued")]
    assert periods[0][2] in {r.run_id for r in runs}  # settled by a scheduled run
