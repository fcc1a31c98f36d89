"""notification-digest: every 15 minutes, each person's digest at their own local time.

Who: every user who opted in, is not deactivated, belongs to an active tenant and whose
address is not suppressed. When: their own choice (`portal.users.digest_frequency`:
daily, weekdays, weekly or off; `digest_time`, local; `digest_weekday` when weekly), in
their own `timezone`, once per period (their local day, or local ISO week). Existing
rows are daily at 08:00, each in the person's own zone. What: their open tasks due
before the end of their next local day, their overdue tasks, and the videos of their
tenant that became ready or errored since their previous digest (a weekly digest covers
the week). Nobody with nothing to report gets an email.

Each run settles the moments since the last run (`settle`): a digest due at most
MM_DIGEST_GRACE_HOURS (6) ago goes, late if the daemon was down; an older one is
recorded as missed, never sent stale. Keys `digest:<user id>:<period>` and one
`ops.digest_periods` row per person and period make reruns, overlapping runs, crashes
and retries send nothing twice; a person who changes zone or time mid-period gets at
most one. Delivery uses a SendGrid dynamic template, up to 1,000 personalizations per
request. Operators send one agency's or one person's digest now with run config
`tenant_id` or `user_id` (audited like every manual run). Three retries with
exponential backoff; after the last, the reliability partner is named to act.
"""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from dagster import Failure, OpExecutionContext, op
from pydantic import Field

from mm_orchestration.features.digests.settle import EMAIL_KIND, Settled, expire_stale, settle
from mm_orchestration.monitoring.joblog import log_event
from mm_orchestration.platform import inventory
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.job_settings import JobSettings
from mm_orchestration.platform.ledger import (
    WINDOW_TAG,
    WindowConfig,
    ledgered,
)
from mm_orchestration.platform.outbox import conclude, deliver_pending_templated, finished_runs
from mm_orchestration.platform.outbox.mailer import Mailer
from mm_orchestration.platform.scheduling import (
    inventory_job,
    parse_instant,
    retry_policy,
    tick_of,
)
from mm_orchestration.platform.text import NOT_SHOWN

SPEC = inventory.get("notification-digest")
BATCH_SIZE = 1000  # SendGrid's limit of personalizations per request
TABLES = (
    "portal.users",
    "portal.tenants",
    "portal.tasks",
    "portal.projects",
    "portal.media_assets",
    "portal.email_suppressions",
    "ops.digest_periods",
    "ops.digest_clock",
)


class DigestConfig(WindowConfig):
    """When the run is (blank: its schedule tick, or now), and whom an operator sends to."""

    now: str = Field(
        default="",
        description="The run's instant, ISO 8601 with its offset (2026-11-30T08:00:00+11:00), "
        "up to five years back or a day ahead; blank: the schedule's tick, or now",
    )
    tenant_id: str = Field(
        default="", description="Send this agency's digests now (a tenant id); blank: everyone due"
    )
    user_id: str = Field(
        default="", description="Send this person's digest now (a user id); blank: everyone due"
    )


# How far from now a run may say it is: five years back (the portal's history), and
# ahead only as far as two machines' clocks may differ: a run in the future would settle
# people's digests before their time (and record some as missed).
NOW_RANGE = (timedelta(days=5 * 366), timedelta(minutes=5))


def run_instant(config_now: str, window_key: str | None, clock: datetime) -> datetime:
    """The instant a run acts at: config first, then the schedule's tick, then `clock`.

    A `now` that is not an ISO 8601 instant with an offset, within NOW_RANGE of `clock`,
    fails the run at once, naming the field and what is accepted, never the value (a run
    config field may read an environment variable).
    """
    value, name = config_now.strip(), "now"
    if not value and window_key:
        try:
            return tick_of(window_key)
        except ValueError:  # a tag set by hand in the console: checked like the config
            value, name = window_key.strip(), "tag mm/window"
    if not value:
        return clock
    accepted = (
        f"accepted: an instant like 2026-11-30T08:00:00+11:00 or ...Z, from "
        f"{(clock - NOW_RANGE[0]).date()} to now (not in the future), or blank for now"
    )
    try:
        instant = parse_instant(value)
    except ValueError:
        raise Failure(
            description=f"{name} is not an instant with its offset; {accepted}; {NOT_SHOWN}",
            allow_retries=False,
        ) from None
    if not clock - NOW_RANGE[0] <= instant <= clock + NOW_RANGE[1]:
        raise Failure(
            description=f"{name} is out of range; {accepted}; {NOT_SHOWN}", allow_retries=False
        )
    return instant.astimezone(UTC)


def _id(name: str, value: str) -> uuid.UUID | None:
    if not value.strip():
        return None
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise Failure(
            description=f"{name} is not an id. Accepted: a UUID such as "
            f"3f2b6c1e-8d4a-4c2e-9f1a-2b3c4d5e6f70, or blank for everyone due; {NOT_SHOWN}",
            allow_retries=False,
        ) from None


@op(retry_policy=retry_policy(SPEC), tags={"kind": "postgres"})
def queue_due_digests(
    context: OpExecutionContext,
    config: DigestConfig,
    portal_db: PortalDatabase,
    job_settings: JobSettings,
) -> dict[str, Any]:
    """Settle every digest whose moment has come: queue, skip (nothing to say), or record
    as missed; or, for an operator, one agency's or one person's digest now. Returns the
    run's instant and how many digests it queued ({"now": ISO 8601, "queued": n})."""
    tenant, user = _id("tenant_id", config.tenant_id), _id("user_id", config.user_id)
    now = run_instant(config.now, context.run.tags.get(WINDOW_TAG), datetime.now(UTC))
    with ledgered(context, portal_db, SPEC.name, TABLES, config.force) as run:
        if run.skipped:
            return {"now": now.isoformat(), "queued": 0}
        with portal_db.connection() as conn:
            settled = settle(
                conn,
                now,
                context.run_id,
                timedelta(hours=job_settings.digest_grace_hours),
                job_settings.timezone,
                tenant,
                user,
            )
        run.rows_affected = settled.queued
        run.details = {"now": now.isoformat(), **settled.as_metadata()}
    _report(context, settled, now, job_settings)
    return {"now": now.isoformat(), "queued": settled.queued}


def _report(
    context: OpExecutionContext, settled: Settled, now: datetime, job_settings: JobSettings
) -> None:
    if settled.fallbacks:
        # Logged by user id (never the address), so the portal team can fix the rows.
        log_event(
            "digest.choice_fallback",
            level=30,
            runId=context.run_id,
            count=settled.fallbacks,
            fallback=job_settings.timezone,
            userIds=settled.fallback_ids,
        )
        context.log.warning(
            f"{settled.fallbacks} person(s) have a time zone or digest choice that cannot be "
            f"read as stored; they get a digest by the defaults ({job_settings.timezone}, "
            "daily, 08:00). User ids: " + ", ".join(settled.fallback_ids)
        )
    if settled.missed:
        log_event("digest.missed", level=30, runId=context.run_id, count=settled.missed)
    if settled.moved or settled.merged:
        log_event(
            "digest.clock_change", runId=context.run_id, moved=settled.moved,
            merged=settled.merged,
        )  # fmt: skip
    if settled.rules_differ:
        # Our digests follow our rules; SQL elsewhere that asks PostgreSQL may not.
        log_event("digest.zone_rules_differ", level=30, runId=context.run_id)
        context.log.warning(settled.rules_differ)
    if settled.window_start is None and not settled.due:
        # An operator's send that reached nobody: say why it may be, and where to look.
        context.log.warning(
            "Nobody was sent a digest: the person or agency gets none (opted out, frequency "
            "off, deactivated, agency suspended, no such id), or this period's digest has "
            "gone already. `mm-jobs digest preview USER` says which."
        )
    context.add_output_metadata(
        {
            "now": now.isoformat(),
            "window_start": settled.window_start.isoformat() if settled.window_start else "",
            **settled.as_metadata(),
            **({"zone_rules_differ": settled.rules_differ} if settled.rules_differ else {}),
        }
    )


@op(retry_policy=retry_policy(SPEC), tags={"kind": "sendgrid"})
def send_digests(
    context: OpExecutionContext,
    queued: dict[str, Any],
    portal_db: PortalDatabase,
    mailer: Mailer,
    job_settings: JobSettings,
) -> None:
    """Deliver waiting digests through the dynamic template, 1,000 people per request.
    A digest that waited longer than the grace (held by an outage, say) is expired, never
    sent stale, and its period recorded as missed."""
    now = datetime.fromisoformat(queued["now"])
    with portal_db.connection() as conn:
        expired = expire_stale(conn, now - timedelta(hours=job_settings.digest_grace_hours))
    if expired:
        log_event("digest.missed", level=30, runId=context.run_id, count=expired, reason="stale")
    report = deliver_pending_templated(
        portal_db,
        mailer,
        EMAIL_KIND,
        job_settings.digest_template_id or "d-digest",
        None,  # the payload is the template's data as queued (counts included)
        context.run_id,
        batch_size=BATCH_SIZE,
        finished=finished_runs(context.instance),
    )

    def escalate(error: str) -> None:
        # Say who acts (the failure sensor routes the alert itself).
        log_event(
            "job.escalate",
            level=40,
            jobName=SPEC.name,
            runId=context.run_id,
            escalateTo=SPEC.escalate_to,
            contact=job_settings.contact(SPEC.escalate_to),
            error=error,
        )
        context.log.error(
            f"{SPEC.name} could not deliver every digest in run {context.run_id}: {error}. "
            f"The reliability partner ({job_settings.reliability_email}) should check "
            "SendGrid and the failed rows (`mm-jobs outbox list --kind digest`)."
        )

    metadata = conclude(
        portal_db,
        report,
        [EMAIL_KIND],
        context.run_id,
        "digest",
        escalate=escalate,
        final_attempt=context.retry_number >= SPEC.retries,
    )
    context.add_output_metadata({**metadata, "digests_expired_stale": expired})


@inventory_job(SPEC, __doc__)
def notification_digest() -> None:
    send_digests(queue_due_digests())
