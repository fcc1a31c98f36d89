"""send_alert: the one path every escalation takes, as a normal, retried, visible run.

Sensors (the DLQ depth sensor today; run failures and SLAs later) do not send email
themselves: they request a run of this job with what to say and to whom. The run
writes the alert to the outbox (its key makes a repeated request harmless), records
it in `ops.audit_log`, and delivers it.
"""

import json
from typing import Any, Literal

from dagster import Backoff, OpExecutionContext, RetryPolicy, RunRequest, job, op
from pydantic import Field, field_validator

from mm_orchestration.monitoring.joblog import log_event
from mm_orchestration.platform import audit
from mm_orchestration.platform.config_models import OpConfig
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.job_settings import JobSettings
from mm_orchestration.platform.outbox import conclude, deliver_pending, enqueue, finished_runs
from mm_orchestration.platform.outbox.mailer import Email, Mailer
from mm_orchestration.platform.scheduling import JOB_TAG, RUN_LOGS
from mm_orchestration.platform.text import NOT_SHOWN

# Dagster's run-queue priority (higher is dequeued first); every other run has 0.
PRIORITY_TAG = "dagster/priority"
ALERT_PRIORITY = "100"

ALERT_KIND = "alert"


class AlertConfig(OpConfig):
    """One alert. `key` makes it idempotent: the same key is sent at most once."""

    key: str = Field(description="Idempotency key, e.g. dlq-depth:alert:<episode start>")
    contact: Literal["reliability", "compliance", "admin"] = Field(
        default="reliability", description="reliability, compliance or admin"
    )
    subject: str = Field(description="The email's subject")
    body: str = Field(description="What happened and what to do next")
    action: str = Field(default="alert", description="The audit log's action")
    source_job: str = Field(default="", description="The job the alert is about")
    details_json: str = Field(default="{}", description="Extra facts for the audit log (JSON)")
    fold_into: Literal["", "error_rate", "sla"] = Field(
        default="",
        description="error_rate: not sent while source_job has an open error-rate episode "
        "(counted into it instead); sla: not sent while the job's runs are still slow since "
        "its last SLA alert",
    )
    failed_run: str = Field(default="", description="The failed run the alert is about")
    streak_since: float = Field(
        default=-1.0,
        description="A single failure inside an announced streak: the end of the job's last "
        "success (epoch seconds, 0 if none is known); folded into the streak's alert when one "
        "was queued since then. -1: not folded into a streak",
    )

    @field_validator("details_json")
    @classmethod
    def _a_json_object(cls, value: str) -> str:
        """Named, never quoted (the field may read an environment variable); json's own
        message says only where it stopped (line and column), which is kept."""
        try:
            parsed = json.loads(value or "{}")
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"details_json is not JSON ({exc.msg} at line {exc.lineno} column "
                f"{exc.colno}); {NOT_SHOWN}"
            ) from None
        except ValueError:
            raise ValueError(f"details_json is not JSON; {NOT_SHOWN}") from None
        if not isinstance(parsed, dict):
            raise ValueError(f"details_json must be a JSON object ({{...}}); {NOT_SHOWN}")
        return value


def render_alert(key: str, row: dict[str, Any]) -> Email:
    return Email(
        key=key,
        recipient=row["recipient"],
        subject=row["subject"],
        text=row["body"],
        categories=("mm-alert",),
    )


@op(tags={"kind": "postgres"})
def record_alert(
    context: OpExecutionContext,
    config: AlertConfig,
    portal_db: PortalDatabase,
    job_settings: JobSettings,
) -> str:
    """Queue the alert email and write its audit entry, in one transaction."""
    details = json.loads(config.details_json or "{}")
    recipient = job_settings.contact(config.contact)
    with portal_db.connection() as conn:
        if config.fold_into and folded(context, conn, config, details):
            return config.key
        queued = enqueue(
            conn,
            config.key,
            ALERT_KIND,
            recipient,
            {"subject": config.subject, "body": config.body, **details},
        )
        if queued:
            audit.record(
                conn,
                "alerting",
                config.action,
                config.source_job or None,
                context.run_id,
                {
                    "key": config.key,
                    "contact": config.contact,
                    "subject": config.subject,
                    **details,
                },
            )
    log_event(
        "alert.queued" if queued else "alert.duplicate",
        # The job the alert is about; jobName would claim this line for it.
        sourceJob=config.source_job,
        runId=context.run_id,
        key=config.key,
        contact=config.contact,
    )
    return config.key


def folded(
    context: OpExecutionContext, conn: Any, config: AlertConfig, details: dict[str, Any]
) -> bool:
    """A single-failure (or streak) alert about a job inside an open error-rate episode is
    not sent: it is counted into the episode, whose own alert already says the job is
    failing too often, and audited as folded. Decided here, in the transaction that would
    queue the email, after judging the job's rate now (this failure may cross the line).
    Outside one, a single failure of a streak already announced is folded into the
    streak's alert (`announced_streak`). Likewise an SLA alert about a run of a job that
    is still slow since its last one."""
    from mm_orchestration.monitoring.error_rate import fold_failure
    from mm_orchestration.monitoring.sla import slow_stretch

    if config.fold_into == "sla":
        alerted = slow_stretch(context.instance, conn, config.source_job, config.failed_run)
        if alerted is None:
            return False
        into = f"sla:{alerted}"
    else:
        episode = fold_failure(context.instance, conn, config.source_job, config.failed_run or None)
        if episode is not None:
            into = episode.key("opened")
        else:
            streak = announced_streak(conn, config.source_job, config.streak_since)
            if streak is None:
                return False
            into = streak
    audit.record(
        conn,
        "alerting",
        "alert_folded",
        config.source_job or None,
        context.run_id,
        {
            "key": config.key,
            "contact": config.contact,
            "subject": config.subject,
            "folded_into": into,
            "alert": config.action,
            **details,
        },
    )
    log_event(
        "alert.folded",
        sourceJob=config.source_job,
        runId=context.run_id,
        key=config.key,
        into=into,
    )
    return True


# How far back a streak's alert is looked for when the job's last success is not known
# (none in its last runs): by then its error-rate episode has long taken over.
STREAK_LOOKBACK_DAYS = 30


def announced_streak(conn: Any, job: str, since: float) -> str | None:
    """The key of the job's consecutive-failures alert queued since `since` (the end of its
    last success), or None. A job failing every run of an outage (an every-minute job:
    hundreds before its 24-hour error rate crosses) is said once by that alert and once by
    its recovery, not once per failed run."""
    if since < 0:
        return None
    row = conn.execute(
        """SELECT details->>'key' FROM ops.audit_log
            WHERE action = 'job_consecutive_failures' AND job_name = %s
              AND occurred_at >= greatest(to_timestamp(%s), now() - make_interval(days => %s))
            ORDER BY occurred_at DESC LIMIT 1""",
        [job, since, STREAK_LOOKBACK_DAYS],
    ).fetchone()
    return str(row[0]) if row and row[0] else None


@op(
    retry_policy=RetryPolicy(max_retries=3, delay=30, backoff=Backoff.EXPONENTIAL),
    tags={"kind": "sendgrid"},
)
def deliver_alerts(
    context: OpExecutionContext, key: str, portal_db: PortalDatabase, mailer: Mailer
) -> None:
    """Deliver every alert still waiting in the outbox."""
    report = deliver_pending(
        portal_db, mailer, [ALERT_KIND], render_alert, context.run_id,
        finished_runs(context.instance), must_reach=True,
    )  # fmt: skip
    context.add_output_metadata(conclude(portal_db, report, [ALERT_KIND], context.run_id, "alert"))


@job(description=__doc__, tags={JOB_TAG: "send-alert"})
def send_alert() -> None:
    deliver_alerts(record_alert())


def alert_request(
    key: str,
    contact: str,
    subject: str,
    body: str,
    action: str,
    source_job: str,
    details: dict[str, Any],
    tag: str,
    fold_into: str = "",
    failed_run: str = "",
    streak_since: float | None = None,
) -> RunRequest:
    """What a sensor returns to send one alert: a send_alert run, keyed so it runs once.
    `fold_into="error_rate"`: not sent while the job's error-rate episode is open, nor
    (`streak_since` given) once the streak it belongs to has been announced."""
    config: dict[str, Any] = {
        "key": key,
        "contact": contact,
        "subject": subject,
        "body": body,
        "action": action,
        "source_job": source_job,
        "details_json": json.dumps(details),
    }
    if fold_into:
        config |= {"fold_into": fold_into, "failed_run": failed_run}
    if streak_since is not None:
        config["streak_since"] = streak_since
    return RunRequest(
        run_key=key,
        run_config={"ops": {"record_alert": {"config": config}}, **RUN_LOGS},
        # Alerts jump the run queue (Dagster's priority tag): behind a backlog of runs an
        # alert would otherwise wait its turn (benchmarks/scale.py at 100x today's rate).
        tags={"mm/trigger": "sensor", "mm/alert": tag, PRIORITY_TAG: ALERT_PRIORITY},
    )
