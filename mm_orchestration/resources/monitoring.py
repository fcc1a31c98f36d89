"""Sentry, initialised once per process from SENTRY_DSN; nothing at all without one."""

from __future__ import annotations

import logging
from typing import Any

import sentry_sdk
from dagster import ConfigurableResource
from pydantic import Field
from sentry_sdk.integrations.logging import LoggingIntegration

_initialised: dict[str, Any] = {}


class Monitoring(ConfigurableResource):
    """Where errors, run transactions and Crons check-ins go."""

    dsn: str | None = Field(default=None, description="EnvVar('SENTRY_DSN'); unset: disabled")
    environment: str = Field(default="development", description="MM_ENV")
    timezone: str = Field(default="Australia/Sydney", description="MM_TIMEZONE (check-ins)")
    crons: dict[str, str] = Field(
        default_factory=dict, description="Each job's cron here (MM_ENV, MM_SCHEDULE_OVERRIDES)"
    )

    def start(self, transport: Any = None) -> bool:
        """Initialise the SDK once for this process; False when monitoring is off."""
        if not self.dsn:
            return False
        if _initialised.get("dsn") != self.dsn or transport is not None:
            sentry_sdk.init(
                dsn=self.dsn,
                environment=self.environment,
                traces_sample_rate=1.0,
                send_default_pii=False,
                transport=transport,
                # Errors are reported once, by the run sensors, with their tags; log
                # records stay breadcrumbs instead of becoming events of their own.
                integrations=[LoggingIntegration(level=logging.INFO, event_level=None)],
            )
            _initialised["dsn"] = self.dsn
        return True

    def flush(self) -> None:
        sentry_sdk.flush(timeout=5)
