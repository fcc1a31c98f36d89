"""What the Mux dead-letter queue declares: the replay job and its schedule, the operators'
requeue and discard jobs, the depth sensor, and the Mux resource only it uses."""

import dagster as dg

from mm_orchestration.features.mux_dlq.depth_sensor import dlq_depth_sensor
from mm_orchestration.features.mux_dlq.job import mux_webhook_retry
from mm_orchestration.features.mux_dlq.operator_jobs import dlq_discard, dlq_requeue
from mm_orchestration.features.mux_dlq.resource import MuxWebhooks
from mm_orchestration.platform.scheduling import scheduled_job
from mm_orchestration.platform.settings import Settings


def defs(settings: Settings) -> dg.Definitions:
    mux = MuxWebhooks(
        signing_secret=dg.EnvVar("MUX_WEBHOOK_SECRET") if settings.mux_webhook_secret else None,
        alert_threshold=settings.dlq_alert_threshold,
    )
    return dg.Definitions.merge(
        scheduled_job(settings, "mux-webhook-retry", mux_webhook_retry),
        dg.Definitions(
            jobs=[dlq_requeue, dlq_discard], sensors=[dlq_depth_sensor], resources={"mux": mux}
        ),
    )
