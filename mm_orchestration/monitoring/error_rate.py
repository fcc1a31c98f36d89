"""Error-rate thresholds per job: the seed's "error rate thresholds configured per job".

A failed run alerts on its own, and N failures in a row once per streak; neither sees a
job that fails one run in three (the Mux replay every 5 minutes could fail 96 times a day
between successes). Here each inventory job with an `ErrorRate` is measured from
Dagster's run records, as the dashboard reads them (whatever started the run): the share
of its finished runs in the window that failed, skips and cancellations left out, and a
failed attempt Dagster retried counted as its retry (one run) and a person's request the
run coordinator refused not at all (monitoring/attempts.py). Above
the threshold (with at least `min_runs` runs) an `error_rate` episode opens and one alert
says so, naming the rate, the window and the last failures' one-line reasons; at or below
`recover_percent` it closes and one notice says so. While it is open, each single-failure
email of the job (and its streak notices) is folded into it instead of being sent:
`send_alert` checks, in the transaction that would queue the email (`fold_failure`).

`error_rate_sensor` measures every job every 30 seconds and sends what the episodes owe.
"""

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRecord,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from mm_orchestration.monitoring import episodes
from mm_orchestration.monitoring.alerts import alert_request, send_alert
from mm_orchestration.monitoring.job_health import job_of, outcome
from mm_orchestration.monitoring.run_status import ERROR_TAG, failure_summary
from mm_orchestration.platform import inventory
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.inventory import ErrorRate, JobSpec
from mm_orchestration.platform.job_settings import JobSettings
from mm_orchestration.platform.scheduling import JOB_TAG
from mm_orchestration.platform.text import one_line

KIND: episodes.Kind = "error_rate"
# The name Dagster gives the job of a materialisation launched from the asset graph (the
# UI's Materialize): such runs carry no mm/job tag but belong to the job owning the asset.
IMPLICIT_ASSET_JOB = "__ASSET_JOB"
# Dagster stores a run's creation time in the storage session's time zone, without the
# zone (see job_health): read a day more, then place runs by their own start time.
_QUERY_MARGIN = timedelta(days=1)
LAST_FAILURES = 3


@dataclass(frozen=True)
class Failure:
    run_id: str
    at: float  # when it ended (or was created), epoch seconds
    reason: str


@dataclass(frozen=True)
class Rate:
    """One job's finished runs in its window, at one moment."""

    job: str
    rule: ErrorRate
    runs: int
    failed: int
    failures: tuple[Failure, ...]  # the last few, newest first

    @property
    def percent(self) -> float:
        return 100.0 * self.failed / self.runs if self.runs else 0.0

    @property
    def crossed(self) -> bool:
        """Above the threshold, with enough runs to say so."""
        rule = self.rule
        return (
            self.runs >= rule.min_runs and self.failed * 100 > rule.max_failed_percent * self.runs
        )

    @property
    def recovered(self) -> bool:
        """Back at or below the recovery line, or no failure left in the window. A job with
        no run at all in its window has not recovered (its schedule may be stopped: that is
        said by the tick sensor), so its episode stays open."""
        rule = self.rule
        if self.runs == 0:
            return False
        if self.failed == 0:
            return True
        return self.runs >= rule.min_runs and self.failed * 100 <= rule.recover_percent * self.runs

    @property
    def window(self) -> str:
        hours = self.rule.window_hours
        return f"{hours // 24} days" if hours % 24 == 0 and hours > 24 else f"{hours} hours"

    def summary(self) -> str:
        return (
            f"{self.failed} of {self.runs} runs failed in the last {self.window} "
            f"({self.percent:.0f} %)"
        )

    def facts(self) -> dict[str, object]:
        return {
            "runs": self.runs,
            "failed": self.failed,
            "percent": round(self.percent, 1),
            "window_hours": self.rule.window_hours,
            "threshold_percent": self.rule.max_failed_percent,
            "min_runs": self.rule.min_runs,
            "recover_percent": self.rule.recover_percent,
            "last_failures": [
                {"run_id": f.run_id, "at": f.at, "reason": f.reason} for f in self.failures
            ],
        }


def _records(instance: DagsterInstance, spec: JobSpec, since: datetime) -> list[RunRecord]:
    finished = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE]
    found = {
        r.dagster_run.run_id: r
        for r in instance.get_run_records(
            filters=RunsFilter(tags={JOB_TAG: spec.name}, statuses=finished, created_after=since)
        )
    }
    if spec.assets:
        for r in instance.get_run_records(
            filters=RunsFilter(job_name=IMPLICIT_ASSET_JOB, statuses=finished, created_after=since)
        ):
            found.setdefault(r.dagster_run.run_id, r)
    return [r for r in found.values() if job_of(r.dagster_run) == spec.name]


def reason(instance: DagsterInstance, record: RunRecord) -> str:
    """The failed run's one-line reason: its mm/error tag (the failure sensor's), else read
    from its event log."""
    run = record.dagster_run
    return one_line(run.tags.get(ERROR_TAG) or failure_summary(instance, run.run_id), 200)


def measure(instance: DagsterInstance, spec: JobSpec, now: float) -> Rate | None:
    """The job's error rate over its window ending at `now`; None when it has no threshold."""
    rule = spec.error_rate
    if rule is None:
        return None
    start = now - rule.window_hours * 3600
    since = datetime.fromtimestamp(start, UTC) - _QUERY_MARGIN
    counted: list[tuple[float, RunRecord, str]] = []
    for record in _records(instance, spec, since):
        began = record.start_time or record.create_timestamp.timestamp()
        result = outcome(record)
        if began < start or began > now or result not in ("succeeded", "failed"):
            continue
        ended = record.end_time or began
        counted.append((ended, record, result))
    failed = sorted((c for c in counted if c[2] == "failed"), key=lambda c: c[0], reverse=True)
    failures = tuple(
        Failure(record.dagster_run.run_id, ended, reason(instance, record))
        for ended, record, _ in failed[:LAST_FAILURES]
    )
    return Rate(spec.name, rule, len(counted), len(failed), failures)


def judge(
    conn: psycopg.Connection, spec: JobSpec, rate: Rate, now: float
) -> episodes.Episode | None:
    """Open or close the job's episode for `rate`; the episode that changed, if one did.
    Between the recovery line and the threshold nothing changes (an open episode stays
    open, no episode stays so)."""
    at = datetime.fromtimestamp(now, UTC)
    if rate.crossed:
        return episodes.problem(
            conn, KIND, spec.name, at, spec.escalate_to, spec.name, rate.facts()
        )
    if rate.recovered:
        return episodes.healthy(conn, KIND, spec.name, at, timedelta(0), rate.facts())
    return None


def fold_failure(
    instance: DagsterInstance,
    conn: psycopg.Connection,
    job: str,
    run_id: str | None,
    now: float | None = None,
) -> episodes.Episode | None:
    """The job's open error-rate episode after judging its rate now (this failure may be
    the one that crosses the line), with `run_id` counted into it; None when no episode is
    open, and the alert about the failure should go as usual."""
    try:
        spec = inventory.get(job)
    except inventory.UnknownJobError:
        return None
    now = time.time() if now is None else now
    rate = measure(instance, spec, now)
    if rate is None:
        return None
    judge(conn, spec, rate, now)
    if run_id:
        return episodes.fold(conn, KIND, spec.name, run_id)
    return episodes.current(conn, KIND, spec.name)


def _local(epoch: float, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(epoch, zone).strftime("%Y-%m-%d %H:%M %Z")


def _failures_text(facts: dict[str, object], zone: ZoneInfo) -> str:
    failures = facts.get("last_failures") or []
    assert isinstance(failures, list)
    return "\n".join(
        f"- {_local(float(f['at']), zone)}, run {str(f['run_id'])[:8]}: {f['reason']}"
        for f in failures
    )


def _window(hours: int) -> str:
    return f"{hours // 24} days" if hours % 24 == 0 and hours > 24 else f"{hours} hours"


def alert_for(episode: episodes.Episode, event: episodes.Event, timezone: str) -> RunRequest:
    """The send_alert run an episode's opening or closing owes."""
    zone = ZoneInfo(timezone)
    job = episode.subject
    spec = inventory.get(job)
    opening = episode.opening
    window = _window(int(opening["window_hours"]))
    if event == "opened":
        subject = (
            f"{job} is failing too often: {opening['failed']} of {opening['runs']} runs "
            f"in {window} ({opening['percent']:.0f} %)"
        )
        body = (
            f"{job}: {opening['failed']} of its {opening['runs']} finished runs in the last "
            f"{window} failed ({opening['percent']:.0f} %). Its threshold is at most "
            f"{opening['threshold_percent']} % failed, counted from {opening['min_runs']} runs.\n\n"
            f"The last failures:\n{_failures_text(opening, zone)}\n\n"
            f"Until the rate is back at or below {opening['recover_percent']} %, single "
            f"failures of {job} are folded into this alert instead of each sending an email; "
            "one notice will say when it is over.\n\n"
            f"What it does: {spec.purpose}. Failure handling: {spec.failure_handling}.\n"
            f"Open the job's runs in the job console (tag mm/job={job}) and look for what "
            "the failures share."
        )
        action = "job_error_rate_alert"
    else:
        closing = episode.closing
        folded = len(episode.folded)
        subject = (
            f"{job} recovered: {closing.get('failed', 0)} of {closing.get('runs', 0)} runs "
            f"failed in {window}"
        )
        body = (
            f"{job} is back at or below {opening['recover_percent']} % failed: "
            f"{closing.get('failed', 0)} of {closing.get('runs', 0)} runs in the last {window}. "
            f"It had been above its threshold since {_local(episode.opened_at.timestamp(), zone)}; "
            f"{folded} failure(s) in that time were folded into the alert instead of being "
            "emailed one by one."
        )
        action = "job_error_rate_recovered"
    return alert_request(
        key=episode.key(event),
        contact=episode.contact,
        subject=subject,
        body=body,
        action=action,
        source_job=job,
        details={"episode": episode.id, "event": event, **(episode.closing or opening)},
        tag=action,
    )


@sensor(
    name="error_rate_sensor",
    job=send_alert,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Each job's error rate against its inventory threshold: one alert when it "
    "crosses, one notice when it is back.",
)
def error_rate_sensor(
    context: SensorEvaluationContext, portal_db: PortalDatabase, job_settings: JobSettings
) -> SensorResult | SkipReason:
    now = time.time()
    seen = []
    with portal_db.connection() as conn:
        for spec in inventory.INVENTORY:
            rate = measure(context.instance, spec, now)
            if rate is None:
                continue
            judge(conn, spec, rate, now)
            seen.append(f"{spec.name} {rate.failed}/{rate.runs}")
        owed = episodes.unsent(conn, KIND, datetime.fromtimestamp(now, UTC))
    requests = [alert_for(e, event, job_settings.timezone) for e, event in owed]
    if not requests:
        return SkipReason("failed/finished runs in each job's window: " + ", ".join(seen))
    return SensorResult(run_requests=requests)
