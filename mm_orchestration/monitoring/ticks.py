"""Ticks that never became runs: a schedule tick that failed, or whose run did not start in
time, alerts the job's escalation target once per episode, with the tick's own error.

No run-status sensor sees these: when a schedule function raises, or the code server is
down at the tick, the daemon records a failed tick (or, once it has noticed the location
is gone, no tick at all) and no run exists. `schedule_tick_sensor` reads the instance's
tick records (`instance.get_ticks`) of every running schedule and judges each scheduled
moment once, in order, when it is final:

- a FAILURE tick (or a skip that carries an error): failed, with the tick's error;
- a SUCCESS tick whose run started more than the job's margin after the tick (or has not
  started by then): late; the tick itself evaluated that late: the daemon or the code
  location was away (after downtime the daemon catches up up to 5 missed ticks, late);
- no tick at all, the margin gone: the daemon or the code location was down (the daemon
  notices a code server gone within seconds and then records no tick, and catches up
  only partitioned schedules when it is back). A schedule of another code location is
  read with the cron the daemon recorded and MM_TIMEZONE (its own zone is not known here);
- a skipped tick (the schedule's own SkipReason) or a run on time: fine;
- a schedule of an inventory job stopped by hand, once a tick has passed: nothing else
  would ever say its work is not done (a stopped asset job goes stale instead, and its
  freshness alert says so).

The margin is the inventory's `tick_margin_seconds` (5 minutes, Sentry Crons' check-in
margin), or half the interval of a schedule that ticks more often (at least a minute).
What the schedule itself did wrong (its function raised, its run queued too long) is an
episode of that schedule; what the location did (unreachable, no tick, a late tick) is
one episode per code location and contact, so an outage that stops ten schedules alerts
each contact once, listing them, not ten times. An episode closes after 15 minutes of good ticks.
"""

import functools
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from mm_orchestration.monitoring import episodes
from mm_orchestration.monitoring.alerts import alert_request, send_alert
from mm_orchestration.platform import cron as crons
from mm_orchestration.platform import inventory
from mm_orchestration.platform.audit import masked_text
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.inventory import JobSpec
from mm_orchestration.platform.job_settings import JobSettings
from mm_orchestration.platform.text import one_line

KIND: episodes.Kind = "ticks"
SETTLE = timedelta(minutes=15)
# A schedule first seen by this sensor is judged from this far back (its state's start).
LOOKBACK = timedelta(hours=2)
DEFAULT_MARGIN = 300
MINIMUM_MARGIN = 60
# Errors that say the code location could not be reached, not that the schedule failed.
LOCATION_ERRORS = (
    "DagsterUserCodeUnreachableError",
    "DagsterUserCodeUnreachableTimeoutError",
    "DagsterUserCodeProcessError",
    "DagsterCodeLocationLoadError",
)
_UNREACHABLE = ("Could not reach user code server", "code location", "UNAVAILABLE")
_NOT_STARTED = (
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.MANAGED,
)


@dataclass(frozen=True)
class RunFacts:
    run_id: str
    status: DagsterRunStatus
    start_time: float | None


@dataclass(frozen=True)
class TickFacts:
    """What the instance recorded for one scheduled moment."""

    status: str  # STARTED, SKIPPED, SUCCESS, FAILURE
    error: str = ""  # the tick's own error, one line
    error_class: str = ""
    end_timestamp: float | None = None
    runs: tuple[RunFacts, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """One scheduled moment, judged."""

    at: float
    problem: str = ""  # "": fine
    error: str = ""
    location_wide: bool = False

    @property
    def ok(self) -> bool:
        return not self.problem


def _location_error(facts: TickFacts) -> bool:
    return facts.error_class in LOCATION_ERRORS or any(s in facts.error for s in _UNREACHABLE)


def judge_moment(at: float, facts: TickFacts | None, now: float, margin: float) -> Verdict | None:
    """The verdict on the moment `at`, or None while it is not final yet (its margin has not
    passed and nothing has settled it)."""
    due = now - at > margin
    if facts is None:
        if not due:
            return None
        return Verdict(
            at,
            "no tick was recorded",
            "the daemon did not evaluate the schedule: the daemon or the code location was down",
            location_wide=True,
        )
    if facts.status == "FAILURE" or (facts.status == "SKIPPED" and facts.error):
        return Verdict(at, "the tick failed", facts.error, _location_error(facts))
    if facts.status == "SKIPPED":
        return Verdict(at)
    if facts.status == "STARTED":
        if not due:
            return None
        return Verdict(
            at,
            "the tick never finished",
            "the daemon started evaluating it and never ended: the code location hung or "
            "the daemon stopped",
            location_wide=True,
        )
    # SUCCESS
    if facts.end_timestamp is not None and facts.end_timestamp - at > margin:
        late = facts.end_timestamp - at
        return Verdict(
            at,
            f"the tick was evaluated {late:.0f} s late",
            "the daemon or the code location was away at the tick (it caught up afterwards)",
            location_wide=True,
        )
    for run in facts.runs:
        if run.start_time is not None:
            if run.start_time - at > margin:
                return Verdict(
                    at,
                    f"its run started {run.start_time - at:.0f} s after the tick",
                    f"run {run.run_id} waited in the run queue (another run of the job, or the "
                    "queue's limit) or the run launcher was slow",
                )
            continue
        if run.status in _NOT_STARTED:
            if not due:
                return None
            return Verdict(
                at,
                f"its run had not started {now - at:.0f} s after the tick",
                f"run {run.run_id} is {run.status.value.lower()}: the run queue or the run "
                "launcher is stuck",
            )
        # Ended without starting (a launch failure): the failure alert covers it.
    return Verdict(at)


@dataclass
class Watched:
    """A running schedule of the instance, with what is needed to judge its ticks."""

    origin_id: str
    selector_id: str
    name: str
    location: str
    started: float
    cron: str | Sequence[str]
    timezone: str | None  # None: no tick is expected (only recorded ticks are judged)
    spec: JobSpec | None
    running: bool = True

    @property
    def contact(self) -> str:
        return self.spec.escalate_to if self.spec else "reliability"

    @property
    def margin(self) -> float:
        """The job's tick margin; for a schedule ticking more often, half its interval,
        though never under a minute (a run of an every-minute schedule that starts 40 s
        late on a busy machine is no alert)."""
        wanted = self.spec.tick_margin_seconds if self.spec else DEFAULT_MARGIN
        if isinstance(self.cron, str):
            interval = _interval(self.cron, self.timezone or "UTC")
            return min(wanted, max(interval / 2, MINIMUM_MARGIN))
        return wanted

    def expected(self, after: float, until: float) -> list[float]:
        """The moments the daemon should have ticked in (after, until]."""
        if self.timezone is None:
            return []
        found = []
        for tick in crons.ticks(self.cron, self.timezone, datetime.fromtimestamp(after, UTC)):
            if tick.timestamp() > until:
                break
            found.append(tick.timestamp())
        return found


@functools.lru_cache(maxsize=256)
def _interval(cron: str, timezone: str) -> int:
    return crons.shortest_interval(cron, timezone)


def _spec_for(job_name: str | None, schedule: str) -> JobSpec | None:
    for name in (job_name, schedule.removesuffix("_schedule")):
        if name:
            try:
                return inventory.get(name)
            except inventory.UnknownJobError:
                continue
    return None


def watched_schedules(context: SensorEvaluationContext, default_timezone: str) -> list[Watched]:
    """Every running schedule the instance knows: this location's as defined here; another
    location's (whose definition this process cannot see) with the cron the daemon
    recorded and `default_timezone` (MM_TIMEZONE) assumed, so that a location that is down
    at its ticks, which the daemon then neither ticks nor catches up, is still noticed."""
    repo = context.repository_def
    own_location = (
        context.code_location_origin.location_name if context.code_location_origin else None
    )
    defined = {s.name: s for s in repo.schedule_defs} if repo is not None else {}
    found = []
    for state in context.instance.all_instigator_state():
        if state.instigator_type.value != "SCHEDULE":
            continue
        data = state.instigator_data
        location = state.repository_selector.location_name
        ours = state.instigator_name in defined and own_location in (None, location)
        definition = defined.get(state.instigator_name) if ours else None
        if not state.is_running and not (definition and stopped_matters(definition.job_name)):
            continue
        cron = definition.cron_schedule if definition else getattr(data, "cron_schedule", None)
        if not cron:
            continue
        found.append(
            Watched(
                origin_id=state.instigator_origin_id,
                selector_id=state.selector_id,
                name=state.instigator_name,
                location=location,
                started=getattr(data, "start_timestamp", None) or 0.0,
                cron=cron,
                timezone=(definition.execution_timezone or "UTC")
                if definition
                else default_timezone,
                spec=_spec_for(definition.job_name if definition else None, state.instigator_name),
                running=state.is_running,
            )
        )
    return found


def stopped_matters(job_name: str) -> bool:
    """A stopped schedule is an alert when nothing else would say its work is not done: an
    inventory job with no asset (a stopped rollup, tenant health or report goes stale, and
    its freshness alert says so)."""
    spec = _spec_for(job_name, "")
    return spec is not None and not spec.assets


def judge_stopped(schedule: Watched, judged_until: dict[str, float], now: float) -> list[Verdict]:
    """A stopped schedule of ours: a problem once a tick has passed (beyond its margin)
    since this sensor first saw it stopped. Meanwhile its ticks count as judged, so when it
    is started again only the ticks from then on are."""
    key = f"stopped:{schedule.selector_id}"
    since = judged_until.setdefault(key, now)
    judged_until[schedule.selector_id] = now
    missed = schedule.expected(since, now - schedule.margin)
    if not missed:
        return []
    return [
        Verdict(
            missed[0],
            "the schedule is stopped",
            "it was stopped by hand (in the console, or `dagster schedule stop`): none of "
            f"its ticks run until it is started again, and nothing else reports {schedule.name}",
        )
    ]


def tick_error(error: Any) -> tuple[str, str]:
    """(one line, class) of what went wrong in a tick: the innermost error (the schedule
    function's own exception, under Dagster's ScheduleExecutionError and the gRPC error
    that carried it), its class being the outermost's when that says the location could
    not be reached."""
    outer = error
    while error.cause is not None or error.context is not None:
        error = error.cause if error.cause is not None else error.context
    lines = (error.message or "").strip().splitlines()
    text = lines[0] if lines else (error.cls_name or "")
    name = outer.cls_name if outer.cls_name in LOCATION_ERRORS else (error.cls_name or "")
    return one_line(masked_text(text), 300), name


def tick_facts(instance: DagsterInstance, tick: Any) -> TickFacts:
    runs = []
    for run_id in tick.run_ids:
        record = instance.get_run_record_by_id(run_id)
        if record is not None:
            runs.append(RunFacts(run_id, record.dagster_run.status, record.start_time))
    error, error_class = tick_error(tick.error) if tick.error is not None else ("", "")
    return TickFacts(
        status=tick.status.value,
        error=error,
        error_class=error_class,
        end_timestamp=tick.end_timestamp,
        runs=tuple(runs),
    )


def judge_schedule(
    instance: DagsterInstance, schedule: Watched, since: float, now: float
) -> list[Verdict]:
    """The verdicts on the schedule's moments after `since`, in order, up to the first one
    that is not final yet."""
    margin = schedule.margin
    records = {
        tick.timestamp: tick
        for tick in instance.get_ticks(schedule.origin_id, schedule.selector_id, after=since)
        if tick.timestamp > since
    }
    moments = sorted(set(records) | set(schedule.expected(since, now - margin)))
    verdicts = []
    for at in moments:
        tick = records.get(at)
        verdict = judge_moment(at, tick_facts(instance, tick) if tick else None, now, margin)
        if verdict is None:
            break
        verdicts.append(verdict)
    return verdicts


@dataclass
class Findings:
    """One evaluation's verdicts, grouped into the episodes they speak to."""

    schedule_problems: dict[str, tuple[Watched, Verdict]] = field(default_factory=dict)
    schedule_good: set[str] = field(default_factory=set)
    location_problems: dict[str, list[tuple[Watched, Verdict]]] = field(default_factory=dict)
    location_good: set[str] = field(default_factory=set)
    contacts: dict[str, tuple[str, str]] = field(default_factory=dict)  # subject: (loc, who)


def schedule_subject(schedule: Watched) -> str:
    return f"schedule:{schedule.location}:{schedule.name}"


def location_subject(location: str, contact: str) -> str:
    return f"location:{location}:{contact}"


def group(judged: Iterable[tuple[Watched, list[Verdict]]]) -> Findings:
    findings = Findings()
    for schedule, verdicts in judged:
        own = schedule_subject(schedule)
        where = location_subject(schedule.location, schedule.contact)
        findings.contacts[where] = (schedule.location, schedule.contact)
        for verdict in verdicts:
            if verdict.ok:
                findings.schedule_good.add(own)
                findings.location_good.add(where)
            elif verdict.location_wide:
                findings.location_problems.setdefault(where, []).append((schedule, verdict))
            else:
                findings.schedule_problems.setdefault(own, (schedule, verdict))
    return findings


def _moment(epoch: float, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(epoch, zone).strftime("%Y-%m-%d %H:%M %Z")


def _facts(schedule: Watched, verdict: Verdict) -> dict[str, Any]:
    return {
        "schedule": schedule.name,
        "location": schedule.location,
        "job": schedule.spec.name if schedule.spec else None,
        "tick": verdict.at,
        "problem": verdict.problem,
        "error": verdict.error,
    }


def record_findings(conn: psycopg.Connection, findings: Findings, now: float) -> None:
    at = datetime.fromtimestamp(now, UTC)
    for subject, (schedule, verdict) in findings.schedule_problems.items():
        episodes.problem(
            conn, KIND, subject, at, schedule.contact,
            schedule.spec.name if schedule.spec else None, _facts(schedule, verdict),
        )  # fmt: skip
    for subject in findings.schedule_good - set(findings.schedule_problems):
        episodes.healthy(conn, KIND, subject, at, SETTLE, {"at": now})
    for subject, problems in findings.location_problems.items():
        _, contact = findings.contacts[subject]
        episodes.problem(
            conn, KIND, subject, at, contact, None,
            {"location": problems[0][0].location, "ticks": [_facts(s, v) for s, v in problems]},
        )  # fmt: skip
    for subject in findings.location_good - set(findings.location_problems):
        episodes.healthy(conn, KIND, subject, at, SETTLE, {"at": now})


def alert_for(episode: episodes.Episode, event: episodes.Event, timezone: str) -> RunRequest:
    """The send_alert run an episode's opening or closing owes."""
    zone = ZoneInfo(timezone)
    opening = episode.opening
    if episode.subject.startswith("schedule:"):
        name = opening["schedule"]
        job = opening.get("job")
        when = _moment(float(opening["tick"]), zone)
        if event == "opened":
            subject = f"{name}: the tick at {when}: {opening['problem']}"
            rerun = (
                f" Rerun the missed window with `mm-jobs run {job} --window "
                f"{datetime.fromtimestamp(float(opening['tick']), UTC):%Y-%m-%dT%H:%M:%SZ}`."
                if job
                else ""
            )
            body = (
                f"The schedule {name} (code location {opening['location']}) did not become a "
                f"run as it should at {when}: {opening['problem']}.\n\n"
                f"The tick's error: {opening['error']}\n\n"
                "Open the schedule's ticks in the job console (Overview > Schedules) and fix "
                f"the cause; the schedule resumes by itself at its next tick.{rerun} Further "
                "failed ticks of this schedule are not alerted until it has ticked well for "
                f"{int(SETTLE.total_seconds() // 60)} minutes."
            )
            action = "schedule_tick_alert"
        else:
            subject = f"{name} is ticking again"
            body = (
                f"The schedule {name} has ticked well for "
                f"{int(SETTLE.total_seconds() // 60)} minutes (since "
                f"{_moment(episode.opened_at.timestamp(), zone)} it had failed or late ticks)."
            )
            action = "schedule_ticks_resumed"
        details: dict[str, Any] = {"episode": episode.id, "event": event, **opening}
        return alert_request(
            episode.key(event), episode.contact, subject, body, action, job or "",
            details, tag=action,
        )  # fmt: skip
    location = opening["location"]
    ticks = opening["ticks"]
    lines = "\n".join(
        f"- {t['schedule']} at {_moment(float(t['tick']), zone)}: {t['problem']} ({t['error']})"
        for t in ticks
    )
    if event == "opened":
        subject = f"Code location {location}: scheduled ticks did not run ({len(ticks)} so far)"
        body = (
            f"Schedules of the code location {location} did not become runs at their ticks:\n"
            f"{lines}\n\n"
            "The code server or the daemon was down or unreachable. Check them "
            "(`systemctl status mm-code-server mm-daemon`, or `kubectl get pods`) and the "
            "location's status in the job console. Once it is back the daemon catches up "
            "at most 5 missed ticks per schedule; rerun any other missed window with "
            "`mm-jobs run <job> --window <tick>`. Other schedules it stops are not "
            "alerted one by one: this is one alert for the outage."
        )
        action = "schedule_tick_alert"
    else:
        subject = f"Code location {location}: schedules ticking again"
        body = (
            f"The schedules of {location} have ticked well for "
            f"{int(SETTLE.total_seconds() // 60)} minutes (the trouble began "
            f"{_moment(episode.opened_at.timestamp(), zone)})."
        )
        action = "schedule_ticks_resumed"
    return alert_request(
        episode.key(event), episode.contact, subject, body, action, "",
        {"episode": episode.id, "event": event, "location": location, "ticks": ticks},
        tag=action,
    )  # fmt: skip


def load_cursor(cursor: str | None) -> dict[str, float]:
    try:
        value = json.loads(cursor or "{}")
    except json.JSONDecodeError:
        return {}
    return {str(k): float(v) for k, v in value.items()} if isinstance(value, dict) else {}


@sensor(
    name="schedule_tick_sensor",
    job=send_alert,
    minimum_interval_seconds=15,
    default_status=DefaultSensorStatus.RUNNING,
    description="Schedule ticks that failed or did not become runs within the job's margin: "
    "one alert per episode, with the tick's own error.",
)
def schedule_tick_sensor(
    context: SensorEvaluationContext, portal_db: PortalDatabase, job_settings: JobSettings
) -> SensorResult | SkipReason:
    now = time.time()
    judged_until = load_cursor(context.cursor)
    judged = []
    for schedule in watched_schedules(context, job_settings.timezone):
        if not schedule.running:
            judged.append((schedule, judge_stopped(schedule, judged_until, now)))
            continue
        judged_until.pop(f"stopped:{schedule.selector_id}", None)
        # A schedule stopped and started again is judged from its new start only.
        since = max(
            judged_until.get(schedule.selector_id) or now - LOOKBACK.total_seconds(),
            schedule.started,
        )
        verdicts = judge_schedule(context.instance, schedule, since, now)
        judged.append((schedule, verdicts))
        judged_until[schedule.selector_id] = verdicts[-1].at if verdicts else since
    findings = group(judged)
    with portal_db.connection() as conn:
        record_findings(conn, findings, now)
        owed = episodes.unsent(conn, KIND, datetime.fromtimestamp(now, UTC))
    requests = [alert_for(e, event, job_settings.timezone) for e, event in owed]
    cursor = json.dumps(judged_until, sort_keys=True)
    if not requests:
        problems = len(findings.schedule_problems) + len(findings.location_problems)
        context.update_cursor(cursor)
        return SkipReason(
            f"{sum(len(v) for _, v in judged)} tick(s) of {len(judged)} schedule(s) judged; "
            f"{problems} problem(s), nothing new to send"
        )
    return SensorResult(run_requests=requests, cursor=cursor)
