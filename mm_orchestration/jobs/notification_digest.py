"""notification-digest: daily at 08:00, one email per person with what needs them.

Who: every user who opted in, is not deactivated, belongs to an active tenant and
whose address is not suppressed. What: their open tasks due before the end of their
next local day (by `users.timezone`), their overdue tasks, and the videos of their
tenant that became ready or errored since the previous digest (the 24 hours before
this one). Nobody with nothing to report gets an email.

The run covers one date (the schedule's local date, or `date` in the run config);
each person's email has the key `digest:<user id>:<their local date>`, so a rerun,
a retry after a crash or two runs at once never send a second one. Delivery uses a
SendGrid dynamic template, up to 1,000 personalizations per request. Three retries
with exponential backoff; after the last, the reliability partner is named to act.
"""

import re
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import psycopg
from dagster import Failure, OpExecutionContext, job, op
from pydantic import Field

from mm_orchestration import inventory
from mm_orchestration.joblog import log_event
from mm_orchestration.ledger import WINDOW_TAG, WindowConfig, claim, report_skip, window_for
from mm_orchestration.outbox import conclude, deliver_pending_templated, finished_runs
from mm_orchestration.resources import JobSettings, Mailer, PortalDatabase
from mm_orchestration.scheduling import executor_for, job_tags, retry_policy

SPEC = inventory.get("notification-digest")
EMAIL_KIND = "digest"
BATCH_SIZE = 1000  # SendGrid's limit of personalizations per request
TABLES = (
    "portal.users",
    "portal.tenants",
    "portal.tasks",
    "portal.projects",
    "portal.media_assets",
    "portal.email_suppressions",
)

# One statement: choose recipients, gather each one's items, queue the emails. Items are
# gathered per recipient through LATERAL index lookups, so the plan stays linear in the
# number of recipients whatever the planner's statistics say.
#
# Per-row trust: `users.timezone` is whatever the portal stored, and `AT TIME ZONE` with
# a name PostgreSQL does not know raises for the whole statement (one 'Etc/Unknown' would
# cost everyone their digest). Each zone is checked against pg_timezone_names first; an
# unknown one falls back to the default zone (MM_TIMEZONE: portal.tenants has no zone of
# its own), and the users who fell back are returned to be counted and logged.
QUEUE_DIGESTS = """
WITH zones AS MATERIALIZED (
    SELECT DISTINCT ON (lower(name)) lower(name) AS key, name
      FROM pg_timezone_names ORDER BY lower(name), name
), candidates AS MATERIALIZED (
    SELECT u.id, u.tenant_id, u.email, u.display_name, t.name AS tenant_name,
           coalesce(z.name, %(fallback_tz)s) AS timezone,
           z.name IS NULL AS tz_fallback
      FROM portal.users u
      JOIN portal.tenants t ON t.id = u.tenant_id AND t.status = 'active'
      LEFT JOIN zones z ON z.key = lower(u.timezone)
     WHERE u.digest_opt_in AND u.deactivated_at IS NULL
       -- A cheap first cut (same spelling but ASCII case): delivery screens every row by
       -- the full rule (outbox.screening: any case, internationalised domains).
       AND NOT EXISTS (SELECT 1 FROM portal.email_suppressions s
                        WHERE lower(btrim(s.email)) = lower(btrim(u.email)))
), recipients AS MATERIALIZED (
    SELECT c.*,
           (%(ref)s::timestamptz AT TIME ZONE c.timezone)::date AS local_date,
           (((%(ref)s::timestamptz AT TIME ZONE c.timezone)::date + 2)::timestamp
               AT TIME ZONE c.timezone) AS due_before
      FROM candidates c
), digests AS (
    SELECT r.*, t.due_soon, t.overdue, a.updates
      FROM recipients r
      LEFT JOIN LATERAL (
          SELECT jsonb_agg(item ORDER BY k.due_at, k.title)
                     FILTER (WHERE k.due_at >= %(ref)s) AS due_soon,
                 jsonb_agg(item ORDER BY k.due_at, k.title)
                     FILTER (WHERE k.due_at < %(ref)s) AS overdue
            FROM portal.tasks k
            LEFT JOIN portal.projects p ON p.id = k.project_id
           CROSS JOIN LATERAL (SELECT jsonb_build_object(
                   'title', k.title, 'project', p.name, 'due_at', k.due_at,
                   'due_local', to_char(k.due_at AT TIME ZONE r.timezone,
                                        'Dy DD Mon YYYY HH24:MI')) AS item) i
           WHERE k.assignee_id = r.id AND k.completed_at IS NULL AND k.due_at < r.due_before
      ) t ON true
      LEFT JOIN LATERAL (
          SELECT jsonb_agg(jsonb_build_object('title', m.title, 'status', m.status,
                                              'changed_at', m.status_changed_at)
                           ORDER BY m.status_changed_at, m.title) AS updates
            FROM portal.media_assets m
           WHERE m.tenant_id = r.tenant_id AND m.status IN ('ready', 'errored')
             AND m.status_changed_at >= %(since)s AND m.status_changed_at < %(ref)s
      ) a ON true
), queued AS (
    INSERT INTO ops.notification_outbox
        (idempotency_key, kind, tenant_id, recipient, payload, user_id)
    SELECT 'digest:' || d.id || ':' || d.local_date, %(kind)s, d.tenant_id, d.email,
           jsonb_build_object(
               'display_name', d.display_name,
               'tenant_name', d.tenant_name,
               'date', d.local_date,
               'due_soon', coalesce(d.due_soon, '[]'::jsonb),
               'overdue', coalesce(d.overdue, '[]'::jsonb),
               'asset_updates', coalesce(d.updates, '[]'::jsonb),
               'counts', jsonb_build_object(
                   'due_soon', coalesce(jsonb_array_length(d.due_soon), 0),
                   'overdue', coalesce(jsonb_array_length(d.overdue), 0),
                   'asset_updates', coalesce(jsonb_array_length(d.updates), 0))),
           d.id
      FROM digests d
     WHERE d.due_soon IS NOT NULL OR d.overdue IS NOT NULL OR d.updates IS NOT NULL
        ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM recipients),
       (SELECT count(*) FROM queued),
       (SELECT count(*) FROM candidates WHERE tz_fallback),
       (SELECT coalesce(array_agg(id::text ORDER BY id), '{}')
          FROM (SELECT id FROM candidates WHERE tz_fallback LIMIT 100) f)
"""


class DigestConfig(WindowConfig):
    """Which day to send; blank means the scheduled day, or today for a manual run."""

    date: str = Field(
        default="",
        description="YYYY-MM-DD in MM_TIMEZONE, up to five years back or a day ahead; blank: today",
    )


# How far from today a manual run may ask for: five years back (the portal's history), a
# day ahead (a time zone already in tomorrow); anything else is a typo, not a wish.
DATE_RANGE_DAYS = (5 * 366, 1)
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def digest_date(config_date: str, window_key: str | None, tz: str, now: datetime) -> date:
    """The local date a run covers: config first, then the schedule's window, then today.

    A `date` in the run config that is not a real YYYY-MM-DD date within DATE_RANGE_DAYS of
    today fails the run at once, naming the field, the value and what is accepted: it is
    never silently replaced by today (which would mark today's window done).
    """
    today = now.astimezone(ZoneInfo(tz)).date()
    if config_date.strip():
        return _config_date(config_date.strip(), today, "config date")
    if window_key:  # the schedule's, or an `mm/window` tag set by hand: checked the same way
        try:  # a staging tick's window is the tick itself: its local date
            tick = datetime.strptime(window_key, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            return tick.astimezone(ZoneInfo(tz)).date()
        except ValueError:
            return _config_date(window_key.strip(), today, "tag mm/window")
    return today


def _config_date(value: str, today: date, name: str) -> date:
    earliest = today - timedelta(days=DATE_RANGE_DAYS[0])
    latest = today + timedelta(days=DATE_RANGE_DAYS[1])
    accepted = f"accepted: a date as YYYY-MM-DD from {earliest} to {latest}, or blank for today"
    try:
        if not _ISO_DATE.match(value):
            raise ValueError
        day = date.fromisoformat(value)
    except ValueError:
        raise Failure(
            description=f"{name}={value!r} is not a calendar date; {accepted}",
            allow_retries=False,
        ) from None
    if not earliest <= day <= latest:
        raise Failure(
            description=f"{name}={value!r} is out of range; {accepted}",
            allow_retries=False,
        )
    return day


def reference_time(day: date, tz: str, hour: int) -> datetime:
    """The moment a day's digest describes: the digest hour of that day, locally."""
    return datetime.combine(day, time(hour), ZoneInfo(tz))


@dataclass(frozen=True)
class Queued:
    """What queueing a day's digests did."""

    eligible: int
    queued: int
    timezone_fallbacks: int  # users whose stored zone PostgreSQL does not know
    fallback_user_ids: list[str]  # the first 100 of them


def queue_digests(
    conn: psycopg.Connection, ref: datetime, fallback_tz: str = "Australia/Sydney"
) -> Queued:
    """Queue the digests for `ref` in the caller's transaction."""
    row = conn.execute(
        QUEUE_DIGESTS,
        {
            "ref": ref,
            "since": ref - timedelta(days=1),
            "kind": EMAIL_KIND,
            "fallback_tz": fallback_tz,
        },
    ).fetchone()
    assert row is not None
    return Queued(int(row[0]), int(row[1]), int(row[2]), list(row[3]))


@op(retry_policy=retry_policy(SPEC), tags={"kind": "postgres"})
def queue_daily_digests(
    context: OpExecutionContext,
    config: DigestConfig,
    portal_db: PortalDatabase,
    job_settings: JobSettings,
) -> int:
    """Queue one digest email per person with something to report for the day."""
    portal_db.require(*TABLES)
    window = window_for(context, SPEC.name)
    day = digest_date(
        config.date,
        context.run.tags.get(WINDOW_TAG),
        job_settings.timezone,
        datetime.now(ZoneInfo(job_settings.timezone)),
    )
    ref = reference_time(day, job_settings.timezone, job_settings.digest_hour)
    with claim(portal_db, replace(window, key=day.isoformat()), force=config.force) as run:
        if run.skipped:
            report_skip(context, run)
            return 0
        with portal_db.connection() as conn:
            result = queue_digests(conn, ref, job_settings.timezone)
        run.rows_affected = result.queued
        run.details = {
            "date": day.isoformat(),
            "eligible_users": result.eligible,
            "timezone_fallbacks": result.timezone_fallbacks,
        }
    if result.timezone_fallbacks:
        # Logged by user id (never the address), so the portal team can fix the rows.
        log_event(
            "digest.timezone_fallback",
            level=30,
            runId=context.run_id,
            count=result.timezone_fallbacks,
            fallback=job_settings.timezone,
            userIds=result.fallback_user_ids,
        )
        context.log.warning(
            f"{result.timezone_fallbacks} user(s) have a time zone PostgreSQL does not know; "
            f"their digest uses {job_settings.timezone}. User ids: "
            + ", ".join(result.fallback_user_ids)
        )
    context.add_output_metadata(
        {
            "date": day.isoformat(),
            "eligible_users": result.eligible,
            "digests_queued": result.queued,
            "timezone_fallbacks": result.timezone_fallbacks,
        }
    )
    return result.queued


@op(retry_policy=retry_policy(SPEC), tags={"kind": "sendgrid"})
def send_daily_digests(
    context: OpExecutionContext,
    queued: int,
    portal_db: PortalDatabase,
    mailer: Mailer,
    job_settings: JobSettings,
) -> None:
    """Deliver waiting digests through the dynamic template, 1,000 people per request."""
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

    context.add_output_metadata(
        conclude(
            portal_db,
            report,
            [EMAIL_KIND],
            context.run_id,
            "digest",
            escalate=escalate,
            final_attempt=context.retry_number >= SPEC.retries,
        )
    )


@job(
    name=SPEC.dagster_name,
    description=__doc__,
    tags=job_tags(SPEC),
    executor_def=executor_for(SPEC),
)
def notification_digest() -> None:
    send_daily_digests(queue_daily_digests())
