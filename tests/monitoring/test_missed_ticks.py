"""Missed ticks, judged moment by moment: a failed tick, a late run, no tick at all; grouped
into one episode per schedule (its own fault) or per code location and contact (an
outage), each alerting once. The daemon test (test_alerting_daemon.py) proves it on real
ticks; these are the rules' many cases, without one."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from dagster import DagsterRunStatus, build_sensor_context

from mm_orchestration.monitoring import episodes
from mm_orchestration.monitoring.ticks import (
    RunFacts,
    TickFacts,
    Verdict,
    Watched,
    alert_for,
    group,
    judge_moment,
    judge_stopped,
    record_findings,
    schedule_tick_sensor,
    stopped_matters,
    watched_schedules,
)
from mm_orchestration.platform import inventory

AT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC).timestamp()
MARGIN = 300.0


def started(after: float, status: DagsterRunStatus = DagsterRunStatus.SUCCESS) -> RunFacts:
    return RunFacts("r-1", status, AT + after)


def never(status: DagsterRunStatus) -> RunFacts:
    """A run that has not started (queued) or never will (its launch failed)."""
    return RunFacts("r-1", status, None)


@pytest.mark.parametrize(
    ("facts", "now", "expected"),
    [
        # A run on time, however long ago: fine.
        (TickFacts("SUCCESS", end_timestamp=AT + 2, runs=(started(5),)), AT + 10, ""),
        # The schedule's own SkipReason: fine.
        (TickFacts("SKIPPED"), AT + 1, ""),
        # The schedule function raised: failed at once, no margin to wait for.
        (TickFacts("FAILURE", "ZeroDivisionError: division by zero"), AT + 1, "the tick failed"),
        # A skip that carries an error is a failure.
        (TickFacts("SKIPPED", "boom"), AT + 1, "the tick failed"),
        # A run that started after the margin: late.
        (
            TickFacts("SUCCESS", end_timestamp=AT + 1, runs=(started(400),)),
            AT + 500,
            "its run started 400 s after the tick",
        ),
        # A run still queued inside the margin: not final yet; past it: late.
        (
            TickFacts("SUCCESS", end_timestamp=AT + 1, runs=(never(DagsterRunStatus.QUEUED),)),
            AT + 200,
            None,
        ),
        (
            TickFacts("SUCCESS", end_timestamp=AT + 1, runs=(never(DagsterRunStatus.QUEUED),)),
            AT + 400,
            "its run had not started 400 s after the tick",
        ),
        # The tick itself came late (the daemon caught up after downtime).
        (
            TickFacts("SUCCESS", end_timestamp=AT + 900, runs=(started(905),)),
            AT + 1000,
            "the tick was evaluated 900 s late",
        ),
        # A tick the daemon began and never ended.
        (TickFacts("STARTED"), AT + 100, None),
        (TickFacts("STARTED"), AT + 400, "the tick never finished"),
        # No tick at all: nothing to say inside the margin, missed after it.
        (None, AT + 100, None),
        (None, AT + 301, "no tick was recorded"),
        # A run that failed to launch (never started): the failure alert says so.
        (
            TickFacts("SUCCESS", end_timestamp=AT + 1, runs=(never(DagsterRunStatus.FAILURE),)),
            AT + 400,
            "",
        ),
    ],
)  # fmt: skip
def test_each_moment_is_judged_when_it_is_final(
    facts: TickFacts | None, now: float, expected: str | None
) -> None:
    verdict = judge_moment(AT, facts, now, MARGIN)
    if expected is None:
        assert verdict is None
    else:
        assert verdict is not None and verdict.problem == expected


def test_an_unreachable_code_location_is_the_locations_fault_not_the_schedules() -> None:
    unreachable = TickFacts(
        "FAILURE",
        "Could not reach user code server. gRPC Error code: UNAVAILABLE",
        "DagsterUserCodeUnreachableError",
    )
    raised = TickFacts("FAILURE", "ValueError: no partition for 2026-12-01", "ValueError")
    verdict = judge_moment(AT, unreachable, AT + 1, MARGIN)
    assert verdict is not None and verdict.location_wide
    verdict = judge_moment(AT, raised, AT + 1, MARGIN)
    assert verdict is not None and not verdict.location_wide


def schedule(name: str, job: str | None, location: str = "mm_orchestration") -> Watched:
    return Watched(
        origin_id=f"o-{name}",
        selector_id=f"s-{name}",
        name=name,
        location=location,
        started=0.0,
        cron="*/15 * * * *",
        timezone="Australia/Sydney",
        spec=inventory.get(job) if job else None,
    )


def owed(conn: Any, now: float) -> list[tuple[episodes.Episode, str]]:
    return episodes.unsent(conn, "ticks", datetime.fromtimestamp(now, UTC))


def test_an_outage_alerts_each_contact_once_not_each_schedule(conn) -> None:
    missed = Verdict(AT, "no tick was recorded", "the daemon ...", location_wide=True)
    judged = [
        (schedule("share_link_expiry_schedule", "share-link-expiry"), [missed]),
        (schedule("notification_digest_schedule", "notification-digest"), [missed]),
        (schedule("mux_webhook_retry_schedule", "mux-webhook-retry"), [missed, missed]),
        (schedule("tenant_health_check_schedule", "tenant-health-check"), [missed]),
        (schedule("job_health_schedule", None), [missed]),
    ]
    record_findings(conn, group(judged), AT + 400)
    # Still down at the next evaluation: the same episodes, nothing new owed.
    record_findings(conn, group(judged), AT + 430)
    due = owed(conn, AT + 430)
    assert sorted((e.subject, e.contact, event) for e, event in due) == [
        ("location:mm_orchestration:admin", "admin", "opened"),
        ("location:mm_orchestration:reliability", "reliability", "opened"),
    ]
    reliability = next(e for e, _ in due if e.contact == "reliability")
    request = alert_for(reliability, "opened", "Australia/Sydney")
    config = request.run_config["ops"]["record_alert"]["config"]
    assert config["subject"] == (
        "Code location mm_orchestration: scheduled ticks did not run (5 so far)"
    )
    for name in ("share_link_expiry_schedule", "mux_webhook_retry_schedule", "job_health_schedule"):
        assert name in config["body"]
    assert "20:00 AEDT" in config["body"]  # the tick, in the operators' zone


def test_a_schedule_that_raises_alerts_once_with_its_own_error_and_resumes_once(conn) -> None:
    raising = schedule("tenant_health_check_schedule", "tenant-health-check")
    error = "ZeroDivisionError: division by zero"
    failed = Verdict(AT, "the tick failed", error)
    for minute in range(0, 45, 15):  # it fails at every tick for 45 minutes
        at = AT + 60 * minute
        record_findings(conn, group([(raising, [Verdict(at, failed.problem, error)])]), at + 1)
    ((episode, event),) = owed(conn, AT + 3000)
    config = alert_for(episode, event, "Australia/Sydney").run_config["ops"]["record_alert"]
    config = config["config"]
    assert config["contact"] == "admin" and config["source_job"] == "tenant-health-check"
    assert config["subject"] == (
        "tenant_health_check_schedule: the tick at 2026-12-01 20:00 AEDT: the tick failed"
    )
    assert f"The tick's error: {error}" in config["body"]
    assert "--window 2026-12-01T09:00:00Z" in config["body"]
    # Fixed: a good tick, then another 15 minutes later closes it (one notice).
    good = AT + 3600
    record_findings(conn, group([(raising, [Verdict(good)])]), good + 1)
    assert episodes.current(conn, "ticks", "schedule:mm_orchestration:tenant_health_check_schedule")
    record_findings(conn, group([(raising, [Verdict(good + 900)])]), good + 901)
    closed = [(e.subject, ev) for e, ev in owed(conn, good + 901) if ev == "closed"]
    assert closed == [("schedule:mm_orchestration:tenant_health_check_schedule", "closed")]


def test_a_schedule_failing_every_other_tick_stays_one_episode(conn) -> None:
    flapping = schedule("mux_webhook_retry_schedule", "mux-webhook-retry")
    for i in range(12):  # an hour of */5 ticks, every other one failing
        at = AT + 300 * i
        verdict = Verdict(at, "the tick failed", "boom") if i % 2 else Verdict(at)
        record_findings(conn, group([(flapping, [verdict])]), at + 1)
    assert [event for _, event in owed(conn, AT + 3600)] == ["opened"]


def test_the_sensor_watches_the_schedules_the_instance_runs(pg_instance, portal_db) -> None:
    """With no schedule state yet (no daemon has run), nothing is watched or judged."""
    from mm_orchestration.definitions import build_definitions
    from mm_orchestration.platform.job_settings import JobSettings
    from mm_orchestration.platform.settings import Settings

    definitions = build_definitions(Settings())
    with build_sensor_context(
        instance=pg_instance,
        definitions=definitions,
        resources={"portal_db": portal_db, "job_settings": JobSettings()},
    ) as context:
        assert watched_schedules(context, "Australia/Sydney") == []
        result = schedule_tick_sensor(context)
    assert "0 tick(s) of 0 schedule(s) judged" in str(result.skip_message)


def test_a_stopped_schedule_of_a_job_without_an_asset_alerts_once(conn) -> None:
    """Share-link expiry stopped by hand: no run, no failure, no asset going stale; once
    its next tick (and margin) has passed, its owner hears it once."""
    expiry = schedule("share_link_expiry_schedule", "share-link-expiry")
    expiry.running = False
    cursor: dict[str, float] = {}
    seen = AT + 60  # first seen stopped at 09:01 UTC; the next tick is 09:15
    assert judge_stopped(expiry, cursor, seen) == []
    assert judge_stopped(expiry, cursor, AT + 15 * 60 + 100) == []  # inside the margin
    for minutes in (21, 40, 90):
        now = AT + minutes * 60
        verdicts = judge_stopped(expiry, cursor, now)
        assert [(v.at, v.problem) for v in verdicts] == [(AT + 900, "the schedule is stopped")]
        record_findings(conn, group([(expiry, verdicts)]), now)
    ((episode, event),) = owed(conn, AT + 5400)
    config = alert_for(episode, event, "Australia/Sydney").run_config["ops"]["record_alert"]
    assert config["config"]["subject"] == (
        "share_link_expiry_schedule: the tick at 2026-12-01 20:15 AEDT: the schedule is stopped"
    )
    assert config["config"]["contact"] == "reliability"
    # While it is stopped its ticks count as judged: started again, only new ones are.
    assert cursor["s-share_link_expiry_schedule"] == AT + 5400
    # A stopped rollup says nothing here: its freshness alert does.
    assert not stopped_matters("analytics_rollup") and stopped_matters("share_link_expiry")
