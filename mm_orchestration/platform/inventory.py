"""The seed's job table as data: one entry per background job of the portal.

Schedules, retry policies, SLAs, run limits and escalation targets are all generated
from here, so changing a job's cadence or its owner is a one-line edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Contact = Literal["reliability", "compliance", "admin"]
Kind = Literal["op", "asset"]
# in_process: every step in the run's own process. Our jobs are one or two short steps
# over the database; a process per step (multiprocess) costs 6-14 s each on two cores,
# which alone broke share-link expiry's 60 s SLA.
Executor = Literal["in_process", "multiprocess"]


@dataclass(frozen=True)
class PodResources:
    """What one run of a job asks of a Kubernetes node (requests) and may not exceed in
    memory (limit); the K8s run launcher reads it from the run's tags."""

    cpu: str = "250m"
    memory: str = "256Mi"
    memory_limit: str = "512Mi"


@dataclass(frozen=True)
class ErrorRate:
    """The seed's per-job error-rate threshold: the job is unhealthy once more than
    `max_failed_percent` of its finished runs in the last `window_hours` failed, counted
    only when there were at least `min_runs`; healthy again at `recover_percent` or below
    (lower than the threshold, so a rate hovering at the line does not alert each run).
    Skipped and canceled runs prove nothing either way and are not counted."""

    max_failed_percent: int = 20
    window_hours: int = 24
    min_runs: int = 5
    recover_percent: int = 10

    @property
    def window(self) -> str:
        hours = self.window_hours
        return f"{hours // 24}d" if hours > 24 and hours % 24 == 0 else f"{hours}h"

    def __str__(self) -> str:
        return f"<={self.max_failed_percent}% failed/{self.window} (>={self.min_runs} runs)"


# Daily jobs have one run a day: their rate is read over a week.
WEEKLY_RATE = ErrorRate(window_hours=7 * 24)


@dataclass(frozen=True)
class JobSpec:
    """One row of the seed's job inventory."""

    name: str  # the seed's name, e.g. "share-link-expiry"; also the ledger's job_name
    purpose: str
    cron: str
    staging_cron: str  # MM_ENV=staging: shortened so a tester sees it fire within minutes
    retries: int
    retry_delay_seconds: int
    sla_seconds: int
    max_runtime_seconds: int  # hard stop, below the interval, far above the SLA
    escalate_to: Contact = "reliability"
    failure_handling: str = ""
    consecutive_failures_alert: int = 2
    # None: the job keeps its own rules (the drill blocks the sign-off; the weekly report
    # is rerun by hand); a rate over a handful of runs a year would say nothing.
    error_rate: ErrorRate | None = ErrorRate()
    # How late a tick's run may start before it counts as missed (Sentry Crons' check-in
    # margin too); a schedule ticking more often uses half its interval (at least 60 s).
    tick_margin_seconds: int = 300
    manual_trigger: bool = False
    kind: Kind = "op"
    executor: Executor = "in_process"
    # An asset job's assets ("ops/analytics_hourly"): a run that materialises them from the
    # asset graph (Dagster's implicit asset job, no mm/job tag) still belongs to this job.
    assets: tuple[str, ...] = ()
    resources: PodResources = PodResources()
    # The folder of features/ that declares the job: a run worker builds only that
    # folder's definitions for an op job (mm_orchestration/definitions.py).
    feature: str = ""

    @property
    def dagster_name(self) -> str:
        return self.name.replace("-", "_")

    def cron_for(self, env: str) -> str:
        return self.staging_cron if env == "staging" else self.cron


INVENTORY: tuple[JobSpec, ...] = (
    JobSpec(
        name="share-link-expiry",
        feature="share_links",
        purpose="Expire share links, revoke their tokens, notify owners",
        cron="*/15 * * * *",
        staging_cron="*/5 * * * *",
        retries=1,
        retry_delay_seconds=10,
        sla_seconds=60,
        max_runtime_seconds=600,
        failure_handling="Retries once; failure alerts the reliability partner",
        manual_trigger=True,
    ),
    JobSpec(
        name="notification-digest",
        feature="digests",
        purpose="Send email digest of due tasks, asset updates",
        cron="*/15 * * * *",
        staging_cron="*/5 * * * *",
        retries=3,
        retry_delay_seconds=30,
        sla_seconds=900,
        max_runtime_seconds=3 * 3600,
        failure_handling="Retries 3 times; failure alerts the reliability partner",
        manual_trigger=True,
        resources=PodResources(cpu="500m", memory="512Mi", memory_limit="1Gi"),
    ),
    JobSpec(
        name="invite-cleanup",
        feature="invitations",
        purpose="Mark invitations expired after 72 h",
        cron="0 * * * *",
        staging_cron="*/10 * * * *",
        retries=0,
        retry_delay_seconds=0,
        sla_seconds=60,
        max_runtime_seconds=1800,
        failure_handling=(
            "No retries (low risk: a rerun is always safe); failure alerts the reliability partner"
        ),
    ),
    JobSpec(
        name="mux-webhook-retry",
        feature="mux_dlq",
        purpose="Replay failed Mux events from DLQ",
        cron="*/5 * * * *",
        staging_cron="*/2 * * * *",
        retries=0,  # each event has its own attempts (limit 5) in the DLQ row
        retry_delay_seconds=0,
        sla_seconds=120,
        max_runtime_seconds=240,
        failure_handling=(
            "No run retries: each event has 5 attempts, then is dead and escalated once; a "
            "failed run, or a DLQ above MM_DLQ_ALERT_THRESHOLD (10), alerts the reliability partner"
        ),
        resources=PodResources(cpu="500m", memory="384Mi", memory_limit="768Mi"),
    ),
    JobSpec(
        name="residency-report",
        feature="residency",
        purpose="Generate residency evidence, store report, email compliance",
        cron="0 7 * * 1",
        staging_cron="0 * * * *",
        retries=2,
        retry_delay_seconds=60,
        sla_seconds=900,
        max_runtime_seconds=4 * 3600,
        escalate_to="compliance",
        error_rate=None,
        failure_handling="Retries 2 times; failure alerts compliance to rerun it by hand",
        manual_trigger=True,
        kind="asset",
        assets=("ops/residency_report",),
        resources=PodResources(cpu="1", memory="1Gi", memory_limit="2Gi"),
    ),
    JobSpec(
        name="backup-verify",
        feature="restore_drill",
        purpose="Restore drill of the portal database into a scratch database (or a Neon branch)",
        # Days 1-7 at 09:00; the schedule skips all but the first Australian business day.
        cron="0 9 1-7 * *",
        staging_cron="0 */6 * * *",
        retries=0,
        retry_delay_seconds=0,
        sla_seconds=3600,
        max_runtime_seconds=6 * 3600,
        escalate_to="compliance",
        error_rate=None,
        failure_handling=(
            "No retries (manual oversight); failure alerts compliance and blocks the residency "
            "sign-off until a drill succeeds"
        ),
        resources=PodResources(cpu="1", memory="512Mi", memory_limit="1Gi"),
    ),
    JobSpec(
        name="analytics-rollup",
        feature="analytics",
        purpose="Aggregate events for dashboard metrics",
        cron="5 * * * *",
        staging_cron="*/15 * * * *",
        retries=1,
        retry_delay_seconds=30,
        sla_seconds=300,
        max_runtime_seconds=3000,
        failure_handling=(
            "Retries once; failure alerts the reliability partner, and the next tick redoes "
            "the hour it missed"
        ),
        kind="asset",
        assets=("ops/analytics_hourly",),
        resources=PodResources(cpu="500m", memory="512Mi", memory_limit="1Gi"),
    ),
    JobSpec(
        name="notification-suppression-cleanup",
        feature="suppressions",
        purpose="Remove bounce-suppressed addresses older than 30 days",
        cron="0 1 * * *",
        staging_cron="15 * * * *",
        retries=1,
        retry_delay_seconds=60,
        error_rate=WEEKLY_RATE,
        sla_seconds=300,
        max_runtime_seconds=3600,
        failure_handling="Retries once; failure alerts the reliability partner",
    ),
    JobSpec(
        name="storage-retention",
        feature="retention",
        purpose="Delete old Dagster run history and spent ops rows; keep compliance evidence",
        cron="30 2 * * *",
        staging_cron="45 * * * *",
        retries=1,
        retry_delay_seconds=60,
        error_rate=WEEKLY_RATE,
        sla_seconds=600,
        max_runtime_seconds=3 * 3600,
        failure_handling=(
            "Retries once; failure alerts the reliability partner; the next night catches up"
        ),
    ),
    JobSpec(
        name="tenant-health-check",
        feature="tenant_health",
        purpose="Generate tenant status summary (milestones at risk, share link usage)",
        cron="0 6 * * *",
        staging_cron="30 * * * *",
        retries=1,
        retry_delay_seconds=60,
        sla_seconds=600,
        max_runtime_seconds=3 * 3600,
        escalate_to="admin",
        error_rate=WEEKLY_RATE,
        failure_handling="Retries once; failure alerts the Admin",
        kind="asset",
        assets=("ops/tenant_health_daily",),
    ),
)

_BY_NAME = {spec.name: spec for spec in INVENTORY} | {spec.dagster_name: spec for spec in INVENTORY}


class UnknownJobError(KeyError):
    """A job name that is in neither the seed's nor Dagster's spelling."""

    def __str__(self) -> str:
        # The name asked for is not repeated: it is what someone typed or sent, and a
        # message is no place for whatever that was.
        known = ", ".join(spec.name for spec in INVENTORY)
        return f"unknown job (the name is not shown); known jobs: {known}"


def get(name: str) -> JobSpec:
    """Look a job up by the seed's name (`share-link-expiry`) or Dagster's (`share_link_expiry`)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UnknownJobError(name) from None


# Which job delivers each kind of email (its next run sends what `resend` requeued).
KIND_SENDERS = {
    "digest": "notification-digest",
    "share_link_expired": "share-link-expiry",
    "mux_dlq_dead": "mux-webhook-retry",
    "alert": "send_alert",
    "tenant_health_summary": "tenant-health-check",
    "residency_report": "residency-report",
}


def find(name: str) -> JobSpec | None:
    """The job of that name in either spelling, or None (a job outside the inventory: the
    alerts, the DLQ tools, the dashboard)."""
    return _BY_NAME.get(name)
