"""The job_health dashboard from real Dagster runs on a PostgreSQL-backed instance."""

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from dagster import (
    AssetKey,
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    Definitions,
    Failure,
    Field,
    OpExecutionContext,
    TableMetadataValue,
    asset,
    job,
    materialize,
    op,
)

from mm_orchestration.monitoring.job_health import collect, digest_delivery, job_health
from mm_orchestration.platform import inventory
from mm_orchestration.platform.job_settings import JobSettings
from tests.conftest import create_database, drop_database

# SQL or PostgreSQL tools that may differ by server version: CI runs these on 15 and 16.
pytestmark = pytest.mark.pg_versions

ROOT = Path(__file__).resolve().parents[2]


@op(
    config_schema={
        "sleep": Field(float, default_value=0.0),
        "fail": Field(bool, default_value=False),
        "skip": Field(bool, default_value=False),
    }
)
def work(context: OpExecutionContext) -> None:
    time.sleep(context.op_config["sleep"])
    if context.op_config["fail"]:
        raise Failure("planned failure")
    if context.op_config["skip"]:  # what ledger.report_skip does for a window already done
        context.instance.add_run_tags(context.run_id, {"mm/outcome": "skipped"})


@job
def tiny() -> None:
    work()


@asset(key=AssetKey(["ops", "analytics_hourly"]))
def rollup_stand_in() -> None:
    """Has analytics-rollup's asset key."""


@dataclass
class History:
    instance: DagsterInstance
    slow_run: str  # invite-cleanup's, 1.2 s


def run(instance: DagsterInstance, job_name: str | None, sleep=0.0, fail=False, skip=False):
    result = tiny.execute_in_process(
        instance=instance,
        tags={"mm/job": job_name} if job_name else {},
        run_config={"ops": {"work": {"config": {"sleep": sleep, "fail": fail, "skip": skip}}}},
        raise_on_error=False,
    )
    return result.run_id


def event(instance: DagsterInstance, run_id: str, kind: DagsterEventType, at: float) -> None:
    instance.report_dagster_event(
        DagsterEvent(event_type_value=kind.value, job_name="tiny"), run_id=run_id, timestamp=at
    )


@pytest.fixture(scope="module")
def history(pg_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    """Dagster's storage in a PostgreSQL database of its own (the project's dagster.yaml),
    holding these runs:

    - analytics-rollup: a success, a failure and a skip of a job that only carries the
      tag (as the asset jobs' runs do), and a success of the UI's Materialize (Dagster's
      implicit asset job, the asset selected, no tag);
    - invite-cleanup: a success that sleeps 1.2 s;
    - share-link-expiry: a success whose start and end events are 69 s apart, one canceled
      before it started, one not started yet, one started 90 s ago and still running;
    - two runs that no inventory job owns.
    """
    name = create_database(pg_server, template=None)
    folder = tmp_path_factory.mktemp("dagster_home")
    config = (ROOT / "dagster.yaml").read_text()
    config = config.replace("{env: DAGSTER_DATABASE_URL}", pg_server.url(name))
    (folder / "dagster.yaml").write_text(config)
    try:
        with DagsterInstance.from_config(str(folder)) as instance:
            run(instance, "analytics-rollup")
            run(instance, "analytics-rollup", fail=True)
            run(instance, "analytics-rollup", skip=True)
            # The run record the UI's Materialize button leaves.
            graph_job = Definitions(
                assets=[rollup_stand_in]
            ).resolve_implicit_global_asset_job_def()
            from_ui = instance.create_run_for_job(
                graph_job, asset_selection=frozenset({rollup_stand_in.key})
            ).run_id
            event(instance, from_ui, DagsterEventType.RUN_START, time.time() - 3)
            event(instance, from_ui, DagsterEventType.RUN_SUCCESS, time.time() - 1)
            slow = run(instance, "invite-cleanup", sleep=1.2)
            run(instance, "job-health")  # not an inventory job
            run(instance, None)

            tags = {"mm/job": "share-link-expiry"}
            now = time.time()
            late = instance.create_run_for_job(tiny, tags=tags).run_id
            event(instance, late, DagsterEventType.RUN_START, now - 70)
            event(instance, late, DagsterEventType.RUN_SUCCESS, now - 1)
            canceled = instance.create_run_for_job(tiny, tags=tags)
            instance.report_run_canceled(canceled)
            # Created, not yet started. (A QUEUED run needs a code location's origin,
            # which only Dagster's private API builds outside a running webserver.)
            instance.create_run_for_job(tiny, tags=tags)
            running = instance.create_run_for_job(tiny, tags=tags).run_id
            event(instance, running, DagsterEventType.RUN_START, now - 90)
            yield History(instance, slow_run=slow)
    finally:
        drop_database(pg_server, name)


def rows_of(value: TableMetadataValue) -> dict[tuple[str, str], dict]:
    return {(r.data["job"], r.data["window"]): dict(r.data) for r in value.records}


def test_dashboard_from_run_records(history: History, conn, portal_db) -> None:
    conn.execute(
        "INSERT INTO portal.mux_webhook_dlq (event_id, status) VALUES ('a', 'pending'),"
        " ('b', 'dead'), ('c', 'replayed')"
    )
    now = datetime.now(UTC)
    sent(conn, now - timedelta(minutes=1), now - timedelta(minutes=2), now - timedelta(days=2))
    missed(conn, now - timedelta(hours=1))
    instance = history.instance
    result = materialize(
        [job_health],
        instance=instance,
        resources={"portal_db": portal_db, "job_settings": JobSettings()},
    )
    (mat,) = result.asset_materializations_for_node("ops__job_health")
    meta = mat.metadata
    # 4 analytics-rollup + 1 invite-cleanup + 4 share-link-expiry.
    assert meta["runs_24h"].value == 9
    assert meta["failures_24h"].value == 1
    # The 69 s and the still-running 90 s share-link-expiry runs, against its 60 s SLA.
    assert meta["runs_over_sla_24h"].value == 2
    assert meta["jobs_over_sla"].value == 1
    assert meta["runs_queued"].value == 0
    assert meta["runs_started"].value == 1  # the 90 s one; this materialisation not counted
    assert meta["dlq_depth"].value == 2
    assert (meta["digests_sent_24h"].value, meta["digests_sent_7d"].value) == (2, 3)
    assert (meta["digests_missed_24h"].value, meta["digests_missed_7d"].value) == (1, 1)
    hours = meta["digests_per_hour"]
    assert isinstance(hours, TableMetadataValue) and len(hours.records) == 24
    assert sum(r.data["digests_sent"] for r in hours.records) == 2
    assert abs(meta["as_of"].value - time.time()) < 60

    assert isinstance(meta["jobs"], TableMetadataValue)
    rows = rows_of(meta["jobs"])
    assert len(rows) == 2 * len(inventory.INVENTORY)
    rollup = rows[("analytics-rollup", "24h")]
    assert {k: rollup[k] for k in ("runs", "succeeded", "failed", "skipped", "canceled")} == {
        "runs": 4,
        "succeeded": 2,
        "failed": 1,
        "skipped": 1,
        "canceled": 0,
    }
    assert rollup["sla_s"] == 300 and rollup["over_sla"] == 0
    assert rows[("analytics-rollup", "7d")]["runs"] == 4

    invite = rows[("invite-cleanup", "24h")]
    assert invite["runs"] == invite["succeeded"] == 1
    assert invite["p50_s"] >= 1.2 and invite["p95_s"] >= 1.2  # the run, not its queries
    assert invite["over_sla"] == 0

    links = rows[("share-link-expiry", "24h")]
    assert (links["runs"], links["succeeded"], links["canceled"], links["in_progress"]) == (
        4,
        1,
        1,
        2,
    )
    assert links["p50_s"] == pytest.approx(69, abs=0.01)  # the one finished run with a start
    assert links["over_sla"] == 2 and links["sla_s"] == 60

    # Last success: text in the configured zone, with its offset.
    record = instance.get_run_record_by_id(history.slow_run)
    assert record is not None and record.end_time is not None
    shown = datetime.fromisoformat(invite["last_success"])
    assert (
        shown.utcoffset()
        == datetime.fromtimestamp(record.end_time, ZoneInfo("Australia/Sydney")).utcoffset()
    )
    assert abs(shown.timestamp() - record.end_time) < 1

    quiet = rows[("tenant-health-check", "24h")]
    assert (quiet["runs"], quiet["p50_s"], quiet["last_success"]) == (0, None, None)


def test_windows_and_injected_sla(history: History) -> None:
    instance = history.instance
    # A tighter SLA for invite-cleanup: its 1.2 s run is now over.
    specs = [replace(inventory.get("invite-cleanup"), sla_seconds=1)]
    (day, week) = collect(instance, specs).windows
    assert (day.window, day.over_sla, week.over_sla) == ("24h", 1, 1)
    # Two days later the same runs have left the 24 h window but are still in the 7 d one.
    later = collect(instance, [inventory.get("analytics-rollup")], now=time.time() + 2 * 86400)
    day, week = later.windows
    assert (day.runs, week.runs) == (0, 4)
    assert week.counts == {
        "succeeded": 2,
        "failed": 1,
        "canceled": 0,
        "skipped": 1,
        "in_progress": 0,
        "retried": 0,
        "refused": 0,
    }


# -- the digest's delivery ---------------------------------------------------------------


def sent(conn, *moments: datetime, kind: str = "digest", status: str = "sent") -> None:
    for at in moments:
        conn.execute(
            "INSERT INTO ops.notification_outbox (idempotency_key, kind, recipient, status,"
            " sent_at) VALUES (%s, %s, 'a@kangaroo.example', %s, %s)",
            [f"{kind}:{uuid.uuid4()}", kind, status, at],
        )


def missed(conn, *moments: datetime, outcome: str = "missed") -> None:
    for at in moments:
        conn.execute(
            "INSERT INTO ops.digest_periods (user_id, period, moment, outcome, settled_at)"
            " VALUES (%s, '2026-11-30', %s, %s, %s)",
            [uuid.uuid4(), at - timedelta(hours=7), outcome, at],
        )


def test_digests_sent_per_local_hour_and_missed_per_window(conn) -> None:
    syd = ZoneInfo("Australia/Sydney")
    now = datetime(2026, 11, 30, 10, 20, tzinfo=syd)
    sent(conn, now - timedelta(minutes=5), now - timedelta(minutes=20))  # 10:00-10:20
    sent(conn, datetime(2026, 11, 30, 8, 0, tzinfo=syd), datetime(2026, 11, 30, 8, 59, tzinfo=syd))
    sent(conn, datetime(2026, 11, 29, 11, 0, tzinfo=syd))  # the first hour shown
    sent(conn, datetime(2026, 11, 29, 10, 59, tzinfo=syd))  # before it, in the last 24 h
    sent(conn, now - timedelta(days=6), now - timedelta(days=8))  # 7 days; neither
    sent(conn, now + timedelta(minutes=1))  # after now (a clock ahead): not yet
    sent(conn, now - timedelta(minutes=3), status="failed")  # not sent
    sent(conn, now - timedelta(minutes=3), kind="share_link_expired")  # not a digest
    missed(conn, now - timedelta(hours=1), now - timedelta(hours=23))
    missed(conn, now - timedelta(days=3))
    missed(conn, now - timedelta(days=7, minutes=1))  # out of both windows
    missed(conn, now - timedelta(hours=2), outcome="skipped")  # not missed

    delivery = digest_delivery(conn, now, "Australia/Sydney")

    hours = [(h.astimezone(syd).strftime("%d %H:%M"), n) for h, n in delivery.per_hour]
    assert len(hours) == 24
    assert hours[0] == ("29 11:00", 1) and hours[-1] == ("30 10:00", 2)
    assert dict(hours)["30 08:00"] == 2
    assert sum(n for _, n in hours) == 5
    assert delivery.sent == {"24h": 6, "7d": 7}
    assert delivery.missed == {"24h": 2, "7d": 3}


def test_hours_stay_whole_across_a_daylight_saving_change(conn) -> None:
    """Sydney's clocks go back at 03:00 on 5 April 2026: 02:00-03:00 happens twice, and
    each is its own hour; Adelaide's hours start on its own half-hour offset."""
    syd = ZoneInfo("Australia/Sydney")
    first = datetime(2026, 4, 5, 2, 30, tzinfo=syd)  # 02:30 AEDT (15:30Z)
    second = datetime(2026, 4, 5, 2, 30, fold=1, tzinfo=syd)  # 02:30 AEST (16:30Z)
    sent(conn, first, second, second.astimezone(UTC) + timedelta(minutes=10))
    now = datetime(2026, 4, 5, 12, 0, tzinfo=syd)

    per_hour = digest_delivery(conn, now, "Australia/Sydney").per_hour

    assert len(per_hour) == 24
    assert all(
        b - a == timedelta(hours=1) for (a, _), (b, _) in zip(per_hour, per_hour[1:], strict=False)
    )
    at_two = [(h.astimezone(syd).isoformat(), n) for h, n in per_hour if n]
    assert at_two == [("2026-04-05T02:00:00+11:00", 1), ("2026-04-05T02:00:00+10:00", 2)]

    adelaide = ZoneInfo("Australia/Adelaide")
    for hour, _ in digest_delivery(conn, now, "Australia/Adelaide").per_hour:
        assert hour.astimezone(adelaide).minute == 0
