"""The DLQ depth sensor: when Mux dead letters pile up, tell the reliability partner once.

Every minute it counts the rows that need attention (pending, plus dead ones nobody
has discarded) with one indexed count. Above the threshold (10 unless
MM_DLQ_ALERT_THRESHOLD says otherwise) it opens an episode and requests one
`send_alert` run; while the episode lasts, later ticks say so and request nothing;
when the queue drains back to the threshold it requests one recovery notice and
closes the episode. Its state lives in the sensor's cursor, which the daemon keeps
in Dagster's storage, so a restart neither repeats nor forgets an alert.
"""

import json
from datetime import UTC, datetime

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from mm_orchestration.features.mux_dlq.resource import MuxWebhooks
from mm_orchestration.monitoring.alerts import alert_request, send_alert
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.sql_files import query


def queue_depth(portal_db: PortalDatabase) -> int:
    with portal_db.connection() as conn:
        row = conn.execute(query(__package__, "depth")).fetchone()
    return int(row[0]) if row else 0


def _alert(kind: str, depth: int, threshold: int, episode: str) -> RunRequest:
    if kind == "alert":
        subject = f"Mux dead-letter queue above {threshold}: {depth} events waiting"
        body = (
            f"{depth} Mux webhook events are waiting in portal.mux_webhook_dlq (pending or "
            f"dead), above the threshold of {threshold}, since {episode}.\n\n"
            "Videos stay stuck until they are replayed. Check the mux_webhook_retry runs in "
            "the job console, then `mm-jobs dlq list --status dead` and `mm-jobs dlq show ID`."
        )
    else:
        subject = f"Mux dead-letter queue recovered: {depth} events waiting"
        body = (
            f"The Mux dead-letter queue is back to {depth} events (threshold {threshold}); "
            f"the episode that began at {episode} is over."
        )
    return alert_request(
        key=f"dlq-depth:{kind}:{episode}",
        contact="reliability",
        subject=subject,
        body=body,
        action=f"dlq_depth_{kind}",
        source_job="mux-webhook-retry",
        details={"depth": depth, "threshold": threshold, "episode": episode},
        tag=f"dlq-depth-{kind}",
    )


@sensor(
    job=send_alert,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description=__doc__,
)
def dlq_depth_sensor(
    context: SensorEvaluationContext, portal_db: PortalDatabase, mux: MuxWebhooks
) -> SensorResult | SkipReason:
    state = json.loads(context.cursor) if context.cursor else {"episode": None}
    depth = queue_depth(portal_db)
    threshold = mux.alert_threshold
    episode = state.get("episode")
    if depth > threshold and episode is None:
        episode = datetime.now(UTC).isoformat(timespec="seconds")
        return SensorResult(
            run_requests=[_alert("alert", depth, threshold, episode)],
            cursor=json.dumps({"episode": episode, "depth": depth}),
        )
    if depth <= threshold and episode is not None:
        return SensorResult(
            run_requests=[_alert("recovery", depth, threshold, episode)],
            cursor=json.dumps({"episode": None, "depth": depth}),
        )
    context.update_cursor(json.dumps({"episode": episode, "depth": depth}))
    if episode is not None:
        return SkipReason(
            f"DLQ depth {depth} > {threshold}: already alerted for the episode since {episode}"
        )
    return SkipReason(f"DLQ depth {depth} <= threshold {threshold}: nothing to escalate")
