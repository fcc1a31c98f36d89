"""One validated settings object, read from the environment when definitions load.

A typed pydantic model: each field is one environment variable (its alias),
each default is written here once, and the domain checks (libpq strings, S3 names, Sentry
DSNs, URLs: `setting_checks`) are its validators. A bad value fails at load with the name
of the setting, instead of in the middle of a 2 a.m. run. The message says what is wrong
and what is accepted, never the value: any setting may hold a secret pasted into the wrong
variable (a DSN's key in MM_ENV), so no refusal quotes one, secret or not.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mm_orchestration.platform import location_checks as where
from mm_orchestration.platform import setting_checks as checks
from mm_orchestration.platform.inventory import JobSpec
from mm_orchestration.platform.outbox.addresses import address_problem
from mm_orchestration.platform.setting_checks import (
    PG_CLIENT_TOOLS,
    SettingsError,
    ascii_integer,
    bounded_integer,
)
from mm_orchestration.platform.text import NOT_SHOWN, reason_without_value

__all__ = [
    "BUSINESS_TIMEZONE",
    "PG_CLIENT_TOOLS",
    "PORT_RANGE",
    "Settings",
    "SettingsError",
    "ascii_integer",
    "bounded_integer",
]

# The business's own calendar (Sydney): the default for MM_TIMEZONE, and the zone of the
# calendars compliance reads in (the residency week, the audit-trail day, the first
# business day of the drill), whatever zone the schedules run in.
BUSINESS_TIMEZONE = "Australia/Sydney"
ENVIRONMENTS = ("development", "staging", "production")
RUN_LAUNCHERS = ("local", "k8s")
DRILL_METHODS = ("local", "neon")
# MM_DLQ_ALERT_THRESHOLD: 0 would page on every dead letter, and a threshold above what
# the queue could ever hold (the replay benchmark's 100,000) would never page at all.
DLQ_ALERT_THRESHOLD_RANGE = (1, 1_000_000)
# A digest later than this after its moment is recorded as missed, never sent stale.
DIGEST_GRACE_HOURS_RANGE = (0, 48)
PORT_RANGE = (1, 65_535)

_INTEGERS = {
    "dlq_alert_threshold": ("MM_DLQ_ALERT_THRESHOLD", DLQ_ALERT_THRESHOLD_RANGE),
    "digest_grace_hours": ("MM_DIGEST_GRACE_HOURS", DIGEST_GRACE_HOURS_RANGE),
}
_SECONDS = {
    "http_connect_timeout": "MM_HTTP_CONNECT_TIMEOUT",
    "http_read_timeout": "MM_HTTP_READ_TIMEOUT",
}


def _env(name: str, default: Any = None, *, secret: bool = False, doc: str = "") -> Any:
    """A field read from the environment variable `name` (secrets kept out of repr)."""
    return Field(default, validation_alias=name, repr=not secret, description=doc)


class Settings(BaseModel):
    """Everything the jobs take from the environment. Secrets are kept out of repr.

    `Settings.from_env()` reads the process's environment (or a mapping given, for a
    stack starting processes of its own); `Settings(env="staging")` builds one by field
    name, for tests. Either way every value passes the same checks.
    """

    # pydantic's own model, not pydantic-settings' BaseSettings: the environment is read in
    # one place (`from_env`, from the mapping it is given, so a stack can hand its children
    # theirs), which leaves nothing for BaseSettings' sources to do, and importing it costs
    # every process, each light run included, 0.3 s.
    model_config = ConfigDict(
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
        hide_input_in_errors=True,
        extra="ignore",
    )

    database_url: str | None = _env("DATABASE_URL", secret=True)
    database_direct_url: str | None = _env(
        "DATABASE_DIRECT_URL",
        secret=True,
        doc="The unpooled host, for what needs a whole session: the ledger's advisory lock, "
        "migrations and pg_dump. Unset: DATABASE_URL serves for everything.",
    )
    dagster_database_url: str | None = _env(
        "DAGSTER_DATABASE_URL",
        secret=True,
        doc="Dagster's storage; read by Dagster itself from dagster.yaml, checked here.",
    )
    dagster_home: str | None = _env("DAGSTER_HOME")
    env: str = _env("MM_ENV", "development")
    timezone: str = _env("MM_TIMEZONE", BUSINESS_TIMEZONE)
    sendgrid_api_key: str | None = _env("SENDGRID_API_KEY", secret=True)
    sendgrid_api_host: str = _env("SENDGRID_API_HOST", "https://api.sendgrid.com")
    digest_template_id: str | None = _env("SENDGRID_DIGEST_TEMPLATE_ID")
    mail_from: str = _env("MAIL_FROM", "jobs@motionmavericks.com.au")
    compliance_email: str = _env("COMPLIANCE_EMAIL", "compliance@motionmavericks.com.au")
    reliability_email: str = _env("RELIABILITY_EMAIL", "reliability@motionmavericks.com.au")
    admin_email: str = _env("ADMIN_EMAIL", "admin@motionmavericks.com.au")
    sentry_dsn: str | None = _env("SENTRY_DSN", secret=True)
    data_dir: str = _env("MM_DATA_DIR", ".mm")
    mux_webhook_secret: str | None = _env("MUX_WEBHOOK_SECRET", secret=True)
    dlq_alert_threshold: int = _env("MM_DLQ_ALERT_THRESHOLD", 10)
    digest_grace_hours: int = _env("MM_DIGEST_GRACE_HOURS", 6)
    reports_url: str = _env("MM_REPORTS_URL", "http://127.0.0.1:3001")
    reports_password: str | None = _env("MM_REPORTS_PASSWORD", secret=True)
    drill_method: str = _env("MM_DRILL_METHOD", "local")
    pg_bin_dir: str = _env(
        "MM_PG_BIN_DIR",
        "",
        doc="The restore drill's pg_dump/pg_restore/psql, searched first for the server's "
        "major version; blank: Debian's /usr/lib/postgresql/N/bin, then the bundled wheel's.",
    )
    reports_s3_bucket: str = _env("MM_REPORTS_S3_BUCKET", "")
    reports_s3_prefix: str = _env("MM_REPORTS_S3_PREFIX", "reports")
    reports_s3_endpoint: str = _env("MM_REPORTS_S3_ENDPOINT", "")
    reports_s3_region: str = _env("MM_REPORTS_S3_REGION", "ap-southeast-2")
    neon_api_key: str | None = _env("NEON_API_KEY", secret=True)
    neon_project_id: str | None = _env("NEON_PROJECT_ID")
    neon_api_host: str = _env("NEON_API_HOST", "https://console.neon.tech")
    run_launcher: str = _env(
        "MM_RUN_LAUNCHER",
        "local",
        doc="`local` (a process beside the code server) or `k8s` (a pod per run, "
        "deploy/dagster.k8s.yaml); only `k8s` gives jobs their pod sizes as run tags.",
    )
    schedule_overrides: tuple[tuple[str, str], ...] = _env(
        "MM_SCHEDULE_OVERRIDES",
        (),
        doc="Per-job cron replacing the inventory's, e.g. for a load test in staging.",
    )
    # Every outbound provider call (SendGrid, Neon, S3, Sentry): seconds to connect (TLS
    # included) and to wait for each read of the answer. A stalled provider costs this
    # much, never a hung run.
    http_connect_timeout: float = _env("MM_HTTP_CONNECT_TIMEOUT", 10.0)
    http_read_timeout: float = _env("MM_HTTP_READ_TIMEOUT", 30.0)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings `environ` (default: the process's environment) holds, validated;
        SettingsError naming the first bad one. Blank values count as unset."""
        env = os.environ if environ is None else environ
        given = {
            name: value.strip()
            for name in cls.variable_names()
            if (value := env.get(name)) is not None and value.strip()
        }
        try:
            return cls.model_validate(given)
        except ValidationError as exc:
            raise _settings_error(exc) from None

    @classmethod
    def variable_names(cls) -> list[str]:
        """Every environment variable the settings read, in field order."""
        return [str(field.validation_alias) for field in cls.model_fields.values()]

    def cron_for(self, spec: JobSpec) -> str:
        """The cron a job's schedule uses here: an override, else the inventory's for MM_ENV."""
        return dict(self.schedule_overrides).get(spec.name) or spec.cron_for(self.env)

    @field_validator(*_INTEGERS, mode="before")
    @classmethod
    def _whole_number(cls, value: Any, info: Any) -> Any:
        name, bounds = _INTEGERS[info.field_name]
        return bounded_integer(name, value, *bounds) if isinstance(value, str) else value

    @field_validator(*_SECONDS, mode="before")
    @classmethod
    def _timeout(cls, value: Any, info: Any) -> Any:
        if not isinstance(value, str):
            return value
        default = cls.model_fields[info.field_name].default
        return checks.seconds(_SECONDS[info.field_name], value, default)

    @field_validator("schedule_overrides", mode="before")
    @classmethod
    def _overrides(cls, value: Any) -> Any:
        return checks.schedule_overrides(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _accepted(self) -> Settings:
        """The checks, in the order an operator fixes them, naming the first bad setting
        and what is accepted (never its value); some read two settings together."""
        if self.env not in ENVIRONMENTS:
            raise SettingsError(f"MM_ENV is not one of {', '.join(ENVIRONMENTS)}; {NOT_SHOWN}")
        checks.check_time_zone(self.timezone)
        checks.check_data_dir(self.data_dir)
        # Secrets sent as HTTP header values: a control character would put the key in the
        # HTTP library's error (and so in the run's event log), and only Latin-1 text can
        # travel in a header at all.
        for name, secret in (
            ("SENDGRID_API_KEY", self.sendgrid_api_key),
            ("NEON_API_KEY", self.neon_api_key),
            ("MM_REPORTS_PASSWORD", self.reports_password),
        ):
            if secret is not None:
                checks.check_header_secret(name, secret)
        for name, conninfo in (
            ("DATABASE_URL", self.database_url),
            ("DATABASE_DIRECT_URL", self.database_direct_url),
            ("DAGSTER_DATABASE_URL", self.dagster_database_url),
        ):
            if conninfo is not None:
                where.check_conninfo(name, conninfo)
        # Each client appends its own API path (SendGrid /v3/..., Neon /api/v2/..., boto3
        # the bucket), so these are a scheme, a host and a port, nothing more; the report
        # links may sit under a path of the proxy in front of the download endpoint.
        where.check_http_url(
            "SENDGRID_API_HOST", self.sendgrid_api_host, "https://api.sendgrid.com"
        )
        where.check_http_url("NEON_API_HOST", self.neon_api_host, "https://console.neon.tech")
        where.check_http_url(
            "MM_REPORTS_URL", self.reports_url, "https://jobs.example.com/reports", path=True
        )
        if self.reports_s3_endpoint:
            where.check_http_url(
                "MM_REPORTS_S3_ENDPOINT", self.reports_s3_endpoint, "https://s3.example.com:9000"
            )
        if self.reports_s3_bucket:
            where.check_s3_bucket(self.reports_s3_bucket)
        where.check_s3_prefix(self.reports_s3_prefix)
        where.check_s3_region(
            self.reports_s3_region, custom_endpoint=bool(self.reports_s3_endpoint)
        )
        if self.neon_project_id is not None:
            where.check_neon_project_id(self.neon_project_id)
        if self.run_launcher not in RUN_LAUNCHERS:
            raise SettingsError(
                f"MM_RUN_LAUNCHER is not one of {', '.join(RUN_LAUNCHERS)}; {NOT_SHOWN}"
            )
        if self.drill_method not in DRILL_METHODS:
            raise SettingsError(f"MM_DRILL_METHOD is not local or neon; {NOT_SHOWN}")
        if self.drill_method == "neon" and not (self.neon_api_key and self.neon_project_id):
            raise SettingsError(
                "MM_DRILL_METHOD=neon needs NEON_API_KEY and NEON_PROJECT_ID to be set"
            )
        if self.pg_bin_dir:
            checks.check_pg_bin_dir(self.pg_bin_dir)
        if self.sentry_dsn is not None:
            where.check_sentry_dsn(self.sentry_dsn)
        self._check_addresses()
        self._check_sendgrid()
        return self

    def _check_addresses(self) -> None:
        for name, value in (
            ("MAIL_FROM", self.mail_from),
            ("COMPLIANCE_EMAIL", self.compliance_email),
            ("RELIABILITY_EMAIL", self.reliability_email),
            ("ADMIN_EMAIL", self.admin_email),
        ):
            problem = address_problem(value)
            if problem:
                # email-validator's reason may quote the address (its domain): kept only
                # when it quotes none of it.
                fallback = "it is not one email address"
                reason = reason_without_value(problem, value, fallback).rstrip(".")
                raise SettingsError(
                    f"{name} is not an address SendGrid takes: {reason}. Accepted: one "
                    f"address, name@domain.example, without a display name; {NOT_SHOWN}"
                )

    def _check_sendgrid(self) -> None:
        if self.sendgrid_api_key is not None and not self.sendgrid_api_key.startswith("SG."):
            raise SettingsError(
                "SENDGRID_API_KEY does not look like a SendGrid key: it does not start SG. "
                "(copy the key again from SendGrid, Settings > API Keys); "
                f"{NOT_SHOWN}"
            )
        if self.digest_template_id is not None and not where.TEMPLATE_ID.fullmatch(
            self.digest_template_id
        ):
            raise SettingsError(
                "SENDGRID_DIGEST_TEMPLATE_ID is not a dynamic template id. Accepted: d- and "
                "the id's letters and digits, as SendGrid shows it under Email API > Dynamic "
                f"Templates, e.g. d-f43daeeaef504760851f727007e0b5d0; {NOT_SHOWN}"
            )
        if self.sendgrid_api_key is not None and self.digest_template_id is None:
            raise SettingsError(
                "SENDGRID_DIGEST_TEMPLATE_ID is required when SENDGRID_API_KEY is set: the "
                "notification digest is sent with a SendGrid dynamic template"
            )


def _settings_error(exc: ValidationError) -> SettingsError:
    """The first refusal as SettingsError: our own check's message when one refused, else
    pydantic's reason with the setting's name (never the value: inputs are hidden)."""
    first = exc.errors(include_input=False, include_url=False)[0]
    raised = (first.get("ctx") or {}).get("error")
    if isinstance(raised, SettingsError):
        return raised
    loc = first.get("loc") or ()
    name = str(loc[0]) if loc else "a setting"
    return SettingsError(f"{name} is refused: {first['msg']}; {NOT_SHOWN}")


# Each default, as the settings have it: resources built without settings use these.
DEFAULTS = Settings()
