"""How Mux dead letters are replayed: the signing secret and the retry limits."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from mm_orchestration.platform.config_models import QUIET
from mm_orchestration.platform.settings import DEFAULTS, DLQ_ALERT_THRESHOLD_RANGE


class MuxWebhooks(ConfigurableResource):
    """Replay settings for `portal.mux_webhook_dlq`. The secret comes as an EnvVar."""

    model_config = QUIET  # a refused field's value never shows in pydantic's error

    signing_secret: str | None = Field(
        default=None, description="EnvVar('MUX_WEBHOOK_SECRET'); unset: signatures not checked"
    )
    max_attempts: int = Field(default=5, ge=1, description="Failed attempts before 'dead'")
    backoff_seconds: float = Field(default=60.0, ge=0, description="First retry delay; doubles")
    batch_size: int = Field(default=200, ge=1, le=5000, description="Rows claimed per transaction")
    alert_threshold: int = Field(
        default=DEFAULTS.dlq_alert_threshold,
        ge=DLQ_ALERT_THRESHOLD_RANGE[0],
        le=DLQ_ALERT_THRESHOLD_RANGE[1],
        description="MM_DLQ_ALERT_THRESHOLD: pending + dead rows that escalate",
    )
