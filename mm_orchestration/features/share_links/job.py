"""share-link-expiry: every 15 minutes, expire due share links and tell their owners.

A link is due when it is active and its `expires_at` has passed. In one transaction
the job marks every due link 'expired', revokes every token issued from it, and
writes one outbox email per link to its creator, naming the video and the expiry.
A second run finds nothing due and writes nothing; the outbox key
`share-link-expired:<link id>` makes the email impossible to send twice. SLA 60 s,
one retry with backoff (from the inventory).
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from dagster import MetadataValue, OpExecutionContext, op

from mm_orchestration.monitoring.joblog import log_event
from mm_orchestration.platform import inventory
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.ledger import WindowConfig, ledgered
from mm_orchestration.platform.outbox import conclude, deliver_pending, finished_runs
from mm_orchestration.platform.outbox.mailer import Email, Mailer
from mm_orchestration.platform.scheduling import inventory_job, retry_policy
from mm_orchestration.platform.settings import BUSINESS_TIMEZONE
from mm_orchestration.platform.sql_files import query
from mm_orchestration.platform.zones import place_zone

SPEC = inventory.get("share-link-expiry")
FALLBACK_TZ = BUSINESS_TIMEZONE
EMAIL_KIND = "share_link_expired"
TABLES = (
    "portal.share_links",
    "portal.share_link_tokens",
    "portal.users",
    "portal.media_assets",
    "portal.email_suppressions",
)

EXPIRE_DUE_LINKS = query(__package__, "expire_due_links")


@dataclass(frozen=True)
class ExpiryCounts:
    links_expired: int
    tokens_revoked: int
    emails_queued: int
    tenants: int


def expire_due_links(conn: psycopg.Connection) -> ExpiryCounts:
    """The job's database work, in the caller's transaction."""
    row = conn.execute(EXPIRE_DUE_LINKS, {"kind": EMAIL_KIND}).fetchone()
    assert row is not None
    return ExpiryCounts(*(int(v) for v in row))


def render_expiry_email(key: str, row: dict[str, Any], fallbacks: list[str] | None = None) -> Email:
    """The owner's notice: which video, and when (in the owner's own time zone).

    `timezone` is whatever the portal stored, read by `zones.place_zone` (any case; a
    name that is no zone, such as `Etc/Unknown` or the folder `Australia`, falls back to
    Sydney time), and the owner's user id is added to `fallbacks` (counted
    and logged by the op), so one bad row never costs its owner the notice."""
    expires = datetime.fromisoformat(str(row["expires_at"]))
    zone = place_zone(row.get("timezone") or FALLBACK_TZ)
    if zone is None:
        zone = ZoneInfo(FALLBACK_TZ)
        if fallbacks is not None:
            fallbacks.append(str(row.get("user_id") or row.get("link_id")))
    expires = expires.astimezone(zone)
    when = expires.strftime("%-d %b %Y, %-I:%M %p %Z")
    title = row["asset_title"]
    greeting = f"Hi {row['display_name']}," if row.get("display_name") else "Hi,"
    return Email(
        key=key,
        recipient=row["recipient"],
        subject=f"Share link expired: {title}",
        text=(
            f"{greeting}\n\n"
            f'The share link you created for "{title}" expired at {when}. '
            "Viewers can no longer open it.\n\n"
            "If they still need access, create a new share link from the video's page "
            "in the Motion Mavericks Portal.\n"
        ),
        categories=("share-link-expiry",),
    )


@op(retry_policy=retry_policy(SPEC), tags={"kind": "postgres"})
def expire_due_share_links(
    context: OpExecutionContext, config: WindowConfig, portal_db: PortalDatabase
) -> int:
    """Expire every due share link, revoke its tokens and queue its owner's email."""
    with ledgered(context, portal_db, SPEC.name, TABLES, config.force) as run:
        if run.skipped:
            return 0
        with portal_db.connection() as conn:
            counts = expire_due_links(conn)
        run.rows_affected = counts.links_expired
        run.details = counts.__dict__
    context.add_output_metadata(
        {
            "links_expired": counts.links_expired,
            "tokens_revoked": counts.tokens_revoked,
            "emails_queued": counts.emails_queued,
            "tenants": counts.tenants,
        }
    )
    return counts.links_expired


@op(retry_policy=retry_policy(SPEC), tags={"kind": "sendgrid"})
def send_share_link_expiry_emails(
    context: OpExecutionContext, links_expired: int, portal_db: PortalDatabase, mailer: Mailer
) -> None:
    """Deliver the owners' notices still waiting in the outbox, this run's and any earlier."""
    fallbacks: list[str] = []
    report = deliver_pending(
        portal_db,
        mailer,
        [EMAIL_KIND],
        lambda key, row: render_expiry_email(key, row, fallbacks),
        context.run_id,
        finished_runs(context.instance),
    )
    if fallbacks:
        log_event(
            "share_link_expiry.timezone_fallback",
            level=30,
            runId=context.run_id,
            count=len(fallbacks),
            fallback=FALLBACK_TZ,
            userIds=fallbacks[:100],
        )
    metadata = conclude(portal_db, report, [EMAIL_KIND], context.run_id, "expiry email")
    metadata["timezone_fallbacks"] = len(fallbacks)
    context.add_output_metadata(
        {
            **metadata,
            "transport": MetadataValue.text(
                "sendgrid" if mailer.uses_sendgrid else f"files in {mailer.mail_dir}"
            ),
        }
    )


@inventory_job(SPEC, __doc__)
def share_link_expiry() -> None:
    send_share_link_expiry_emails(expire_due_share_links())
