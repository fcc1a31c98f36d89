"""The non-secret settings ops need at run time: time zone, contacts, template ids."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from mm_orchestration.platform.config_models import QUIET
from mm_orchestration.platform.settings import DEFAULTS, DIGEST_GRACE_HOURS_RANGE, Settings


class JobSettings(ConfigurableResource):
    """Settings shared by the jobs, shown in the UI (nothing secret lives here)."""

    model_config = QUIET  # a refused field's value never shows in pydantic's error

    env: str = Field(default=DEFAULTS.env, description="MM_ENV")
    timezone: str = Field(default=DEFAULTS.timezone, description="MM_TIMEZONE")
    reliability_email: str = Field(default=DEFAULTS.reliability_email)
    compliance_email: str = Field(default=DEFAULTS.compliance_email)
    admin_email: str = Field(default=DEFAULTS.admin_email)
    digest_template_id: str = Field(
        default="", description="SENDGRID_DIGEST_TEMPLATE_ID: the digest's dynamic template"
    )
    digest_grace_hours: int = Field(
        default=DEFAULTS.digest_grace_hours,
        ge=DIGEST_GRACE_HOURS_RANGE[0],
        le=DIGEST_GRACE_HOURS_RANGE[1],
        description="MM_DIGEST_GRACE_HOURS: how late a digest may still go (after downtime)",
    )
    reports_url: str = Field(
        default=DEFAULTS.reports_url, description="MM_REPORTS_URL: the download endpoint"
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> JobSettings:
        return cls(
            env=settings.env,
            timezone=settings.timezone,
            reliability_email=settings.reliability_email,
            compliance_email=settings.compliance_email,
            admin_email=settings.admin_email,
            digest_template_id=settings.digest_template_id or "",
            digest_grace_hours=settings.digest_grace_hours,
            reports_url=settings.reports_url,
        )

    def contact(self, role: str) -> str:
        return {
            "reliability": self.reliability_email,
            "compliance": self.compliance_email,
            "admin": self.admin_email,
        }[role]
