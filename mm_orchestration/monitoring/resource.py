"""Sentry, initialised once per process from SENTRY_DSN; nothing at all without one.

The SDK (with urllib3) is imported only when a DSN is set: a run or a sensor of a
deployment without Sentry never loads it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from dagster import ConfigurableResource
from pydantic import Field

from mm_orchestration.platform.config_models import QUIET
from mm_orchestration.platform.settings import DEFAULTS

if TYPE_CHECKING:
    from sentry_sdk.transport import HttpTransport

_initialised: dict[str, Any] = {}


def bounded_transport(connect: float, read: float) -> type[HttpTransport]:
    """Sentry's HTTP transport with our connect and read timeouts (the SDK's default is
    one 30 s total). It sends from a background thread; `flush` waits at most 5 s."""
    import urllib3
    from sentry_sdk.transport import HttpTransport

    class BoundedHttpTransport(HttpTransport):
        def _get_pool_options(self) -> dict[str, Any]:
            options = super()._get_pool_options()
            options["timeout"] = urllib3.Timeout(connect=connect, read=read)
            return options

    return BoundedHttpTransport


class Monitoring(ConfigurableResource):
    """Where errors, run transactions and Crons check-ins go."""

    model_config = QUIET  # a refused field's value never shows in pydantic's error

    dsn: str | None = Field(default=None, description="EnvVar('SENTRY_DSN'); unset: disabled")
    environment: str = Field(default=DEFAULTS.env, description="MM_ENV")
    timezone: str = Field(default=DEFAULTS.timezone, description="MM_TIMEZONE (check-ins)")
    crons: dict[str, str] = Field(
        default_factory=dict, description="Each job's cron here (MM_ENV, MM_SCHEDULE_OVERRIDES)"
    )
    http_connect_timeout: float = Field(
        default=DEFAULTS.http_connect_timeout, gt=0, description="MM_HTTP_CONNECT_TIMEOUT"
    )
    http_read_timeout: float = Field(
        default=DEFAULTS.http_read_timeout, gt=0, description="MM_HTTP_READ_TIMEOUT"
    )

    def start(self, transport: Any = None) -> bool:
        """Initialise the SDK once for this process; False when monitoring is off."""
        if not self.dsn:
            return False
        if _initialised.get("dsn") != self.dsn or transport is not None:
            import sentry_sdk
            from sentry_sdk.integrations.logging import LoggingIntegration

            sentry_sdk.init(
                dsn=self.dsn,
                environment=self.environment,
                traces_sample_rate=1.0,
                send_default_pii=False,
                transport=transport
                or bounded_transport(self.http_connect_timeout, self.http_read_timeout),
                # Errors are reported once, by the run sensors, with their tags; log
                # records stay breadcrumbs instead of becoming events of their own.
                integrations=[LoggingIntegration(level=logging.INFO, event_level=None)],
            )
            _initialised["dsn"] = self.dsn
        return True

    def flush(self) -> None:
        if _initialised:
            import sentry_sdk

            sentry_sdk.flush(timeout=5)
