"""Freshness: the assets people read (the analytics rollup, tenant health, the residency
report, the job-health dashboard) say how fresh they must be, and staleness alerts once.

Each declares a Dagster `FreshnessPolicy.time_window` computed from the schedule that
refreshes it here (MM_ENV, MM_SCHEDULE_OVERRIDES): the longest gap between its ticks, plus
the job's tick margin and SLA (together at most half that gap), so an hourly rollup must
be at most 70 minutes old and the weekly report 7 days and 20 minutes. Dagster's
freshness daemon (on by default in 1.13, every 30 s) evaluates these policies and shows
the state on each asset's page, but open-source Dagster sends nothing when an asset goes
stale (alert policies are Dagster+'s): `freshness_sensor` evaluates the same policy from
the asset's latest materialisation and opens a `freshness` episode, which alerts the
owning job's escalation target once, and says once when the asset is fresh again (after
15 minutes fresh). An asset never materialised is stale once the window has passed
since this sensor first saw it (a schedule stopped from day one is not silent).
"""

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from dagster import (
    AssetKey,
    AssetsDefinition,
    DefaultSensorStatus,
    FreshnessPolicy,
    RunRequest,
    ScheduleDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from mm_orchestration.monitoring import episodes
from mm_orchestration.monitoring.alerts import alert_request, send_alert
from mm_orchestration.platform import cron as crons
from mm_orchestration.platform import inventory
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.inventory import JobSpec
from mm_orchestration.platform.job_settings import JobSettings

KIND: episodes.Kind = "freshness"
SETTLE = timedelta(minutes=15)
# Dagster refuses a freshness window under a minute.
_MINIMUM = 60.0


def longest_interval(cron: str, timezone: str, after: datetime | None = None) -> float:
    """Seconds of the longest gap between the next ticks of `cron`, sampled over 40 days
    (a weekly or first-days-of-the-month cron shows its real gap) or 400 ticks, whichever
    comes first (a cron ticking every minute of one hour a day still shows its day)."""
    start = after or datetime.now(UTC)
    horizon = start + timedelta(days=40)
    previous: datetime | None = None
    longest = 0.0
    for count, tick in enumerate(crons.ticks(cron, timezone, start)):
        if previous is not None:
            longest = max(longest, tick.timestamp() - previous.timestamp())
        previous = tick
        if count >= 400 or tick > horizon:
            break
    return longest


def freshness_window(
    cron: str,
    timezone: str,
    margin_seconds: int,
    sla_seconds: int,
    after: datetime | None = None,
) -> tuple[timedelta, timedelta]:
    """(warn, fail) windows for an asset refreshed by `cron`: the longest gap between
    ticks, plus the margin and the SLA (at most half the gap together); warn halfway."""
    interval = longest_interval(cron, timezone, after)
    slack = min(margin_seconds + sla_seconds, interval / 2)
    fail = max(interval + slack, _MINIMUM + 1)
    warn = max(interval + slack / 2, _MINIMUM)
    return timedelta(seconds=warn), timedelta(seconds=fail)


def policy(cron: str, timezone: str, spec: JobSpec | None) -> FreshnessPolicy:
    margin = spec.tick_margin_seconds if spec else 300
    sla = spec.sla_seconds if spec else 300
    warn, fail = freshness_window(cron, timezone, margin, sla)
    return FreshnessPolicy.time_window(fail_window=fail, warn_window=warn)


def with_freshness(
    assets: AssetsDefinition, cron: str, timezone: str, job: str | None = None
) -> AssetsDefinition:
    """`assets` with the freshness policy of the schedule (`cron` in `timezone`) that
    refreshes them, by the job `job` of the inventory (its margin and SLA)."""
    spec = inventory.get(job) if job else None
    fresh = policy(cron, timezone, spec)
    return assets.map_asset_specs(lambda s: s.replace_attributes(freshness_policy=fresh))


def fresh_as_scheduled(
    assets: AssetsDefinition, schedule: ScheduleDefinition, job: str | None = None
) -> AssetsDefinition:
    """`assets` as fresh as `schedule` (as built here: MM_ENV, overrides) keeps them."""
    cron = schedule.cron_schedule
    crons_ = [cron] if isinstance(cron, str) else list(cron)
    # Several crons: the one with the longest gap rules (the policy must hold for all).
    longest = max(crons_, key=lambda c: longest_interval(c, schedule.execution_timezone or "UTC"))
    return with_freshness(assets, longest, schedule.execution_timezone or "UTC", job)


def owner(key: AssetKey) -> JobSpec | None:
    name = key.to_user_string()
    return next((spec for spec in inventory.INVENTORY if name in spec.assets), None)


def watched_assets(context: SensorEvaluationContext) -> list[tuple[AssetKey, float]]:
    """(asset key, fail window in seconds) of every asset of this location with a
    time-window freshness policy."""
    repo = context.repository_def
    if repo is None:
        return []
    found = []
    for node in repo.asset_graph.asset_nodes:
        window = getattr(node.freshness_policy, "fail_window", None)
        if window is not None:
            found.append((node.key, window.to_timedelta().total_seconds()))
    return found


def _ago(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 60:.0f} minutes"


def judge(
    conn: psycopg.Connection,
    key: AssetKey,
    fail_window: float,
    last: float | None,
    first_seen: float,
    now: float,
) -> bool:
    """Record whether the asset is stale at `now`; returns whether it is."""
    reference = last if last is not None else first_seen
    age = now - reference
    stale = age >= fail_window
    spec = owner(key)
    facts: dict[str, Any] = {
        "asset": key.to_user_string(),
        "job": spec.name if spec else None,
        "last_materialized": last,
        "age_seconds": round(age),
        "fail_window_seconds": round(fail_window),
    }
    at = datetime.fromtimestamp(now, UTC)
    subject = f"asset:{key.to_user_string()}"
    if stale:
        contact = spec.escalate_to if spec else "reliability"
        episodes.problem(conn, KIND, subject, at, contact, spec.name if spec else None, facts)
    else:
        episodes.healthy(conn, KIND, subject, at, SETTLE, facts)
    return stale


def alert_for(episode: episodes.Episode, event: episodes.Event, timezone: str) -> RunRequest:
    zone = ZoneInfo(timezone)
    opening = episode.opening
    asset = opening["asset"]
    job = opening.get("job")
    window = _ago(float(opening["fail_window_seconds"]))
    last = opening.get("last_materialized")
    if event == "opened":
        when = (
            f"last materialised {datetime.fromtimestamp(float(last), zone):%Y-%m-%d %H:%M %Z} "
            f"({_ago(float(opening['age_seconds']))} ago)"
            if last is not None
            else f"never materialised in {_ago(float(opening['age_seconds']))}"
        )
        subject = f"{asset} is stale: {when.split(' (')[0]}"
        refresh = (
            f"It is refreshed by {job}: check that its schedule is running (a schedule "
            f"stopped by hand stays stopped) and read its latest runs; `mm-jobs run {job}` "
            "refreshes it now."
            if job
            else "It is refreshed by its own hourly schedule (job_health_schedule)."
        )
        body = (
            f"{asset} must be at most {window} old (its freshness policy, from the schedule "
            f"that refreshes it); it was {when}. Whatever reads it (the dashboard, the "
            f"portal's metrics, compliance) is reading old data.\n\n{refresh}"
        )
        action = "asset_stale_alert"
    else:
        subject = f"{asset} is fresh again"
        body = (
            f"{asset} has been materialised again and stayed within its {window} for "
            f"{int(SETTLE.total_seconds() // 60)} minutes (stale since "
            f"{episode.opened_at.astimezone(zone):%Y-%m-%d %H:%M %Z})."
        )
        action = "asset_fresh_again"
    return alert_request(
        episode.key(event), episode.contact, subject, body, action, job or "",
        {"episode": episode.id, "event": event, **opening}, tag=action,
    )  # fmt: skip


@sensor(
    name="freshness_sensor",
    job=send_alert,
    minimum_interval_seconds=15,
    default_status=DefaultSensorStatus.RUNNING,
    description="Assets past their freshness policy: one alert per episode, to the owning "
    "job's escalation target.",
)
def freshness_sensor(
    context: SensorEvaluationContext, portal_db: PortalDatabase, job_settings: JobSettings
) -> SensorResult | SkipReason:
    now = time.time()
    try:
        first_seen = {str(k): float(v) for k, v in json.loads(context.cursor or "{}").items()}
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        first_seen = {}
    stale = []
    watched = watched_assets(context)
    with portal_db.connection() as conn:
        for key, window in watched:
            name = key.to_user_string()
            first_seen.setdefault(name, now)
            event = context.instance.get_latest_materialization_event(key)
            last = event.timestamp if event is not None else None
            if judge(conn, key, window, last, first_seen[name], now):
                stale.append(name)
        owed = episodes.unsent(conn, KIND, datetime.fromtimestamp(now, UTC))
    requests = [alert_for(e, event, job_settings.timezone) for e, event in owed]
    cursor = json.dumps(first_seen, sort_keys=True)
    if not requests:
        context.update_cursor(cursor)
        return SkipReason(
            f"{len(watched)} asset(s) with a freshness policy; stale: "
            + (", ".join(stale) or "none")
        )
    return SensorResult(run_requests=requests, cursor=cursor)
