"""One validated settings object, read from the environment when definitions load.

A bad value fails here, at load, with the name of the setting, instead of in the
middle of a 2 a.m. run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg
from psycopg.conninfo import conninfo_to_dict

from mm_orchestration import cron as dagster_cron
from mm_orchestration.inventory import INVENTORY, JobSpec
from mm_orchestration.processes import missing_executables

NAMES = tuple(spec.name for spec in INVENTORY)

ENVIRONMENTS = ("development", "staging", "production")
RUN_LAUNCHERS = ("local", "k8s")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# The PostgreSQL client tools that MM_PG_BIN_DIR must hold (the restore drill's).
PG_CLIENT_TOOLS = ("pg_dump", "pg_restore", "psql")


class SettingsError(ValueError):
    """A setting in the environment is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Settings:
    """Everything the jobs take from the environment. Secrets are kept out of repr."""

    database_url: str | None = field(default=None, repr=False)
    # The unpooled host, for what needs a whole session: the ledger's advisory lock,
    # migrations and pg_dump. Unset: DATABASE_URL serves for everything.
    database_direct_url: str | None = field(default=None, repr=False)
    dagster_home: str | None = None
    env: str = "development"
    timezone: str = "Australia/Sydney"
    sendgrid_api_key: str | None = field(default=None, repr=False)
    sendgrid_api_host: str = "https://api.sendgrid.com"
    digest_template_id: str | None = None
    mail_from: str = "jobs@motionmavericks.com.au"
    compliance_email: str = "compliance@motionmavericks.com.au"
    reliability_email: str = "reliability@motionmavericks.com.au"
    admin_email: str = "admin@motionmavericks.com.au"
    sentry_dsn: str | None = field(default=None, repr=False)
    data_dir: str = ".mm"
    mux_webhook_secret: str | None = field(default=None, repr=False)
    dlq_alert_threshold: int = 10
    reports_url: str = "http://127.0.0.1:3001"
    reports_password: str | None = field(default=None, repr=False)
    drill_method: str = "local"
    # The restore drill's pg_dump/pg_restore/psql, searched first for the server's major
    # version; blank: Debian's /usr/lib/postgresql/N/bin, then the bundled wheel's.
    pg_bin_dir: str = ""
    reports_s3_bucket: str = ""
    reports_s3_prefix: str = "reports"
    reports_s3_endpoint: str = ""
    reports_s3_region: str = "ap-southeast-2"
    neon_api_key: str | None = field(default=None, repr=False)
    neon_project_id: str | None = None
    neon_api_host: str = "https://console.neon.tech"
    # Where runs are launched: `local` (a process beside the code server) or `k8s` (a pod
    # per run, deploy/dagster.k8s.yaml); only `k8s` gives jobs their pod sizes as run tags.
    run_launcher: str = "local"
    # Per-job cron replacing the inventory's, e.g. for a load test in staging.
    schedule_overrides: tuple[tuple[str, str], ...] = ()
    # Every outbound provider call (SendGrid, Neon, S3, Sentry): seconds to connect (TLS
    # included) and to wait for each read of the answer. A stalled provider costs this
    # much, never a hung run.
    http_connect_timeout: float = 10.0
    http_read_timeout: float = 30.0

    def cron_for(self, spec: JobSpec) -> str:
        """The cron a job's schedule uses here: an override, else the inventory's for MM_ENV."""
        return dict(self.schedule_overrides).get(spec.name) or spec.cron_for(self.env)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value is not None and value.strip() else None

        defaults = cls()
        settings = cls(
            database_url=get("DATABASE_URL"),
            database_direct_url=get("DATABASE_DIRECT_URL"),
            dagster_home=get("DAGSTER_HOME"),
            env=get("MM_ENV") or defaults.env,
            timezone=get("MM_TIMEZONE") or defaults.timezone,
            sendgrid_api_key=get("SENDGRID_API_KEY"),
            sendgrid_api_host=get("SENDGRID_API_HOST") or defaults.sendgrid_api_host,
            digest_template_id=get("SENDGRID_DIGEST_TEMPLATE_ID"),
            mail_from=get("MAIL_FROM") or defaults.mail_from,
            compliance_email=get("COMPLIANCE_EMAIL") or defaults.compliance_email,
            reliability_email=get("RELIABILITY_EMAIL") or defaults.reliability_email,
            admin_email=get("ADMIN_EMAIL") or defaults.admin_email,
            sentry_dsn=get("SENTRY_DSN"),
            data_dir=get("MM_DATA_DIR") or defaults.data_dir,
            mux_webhook_secret=get("MUX_WEBHOOK_SECRET"),
            reports_url=get("MM_REPORTS_URL") or defaults.reports_url,
            reports_password=get("MM_REPORTS_PASSWORD"),
            drill_method=get("MM_DRILL_METHOD") or defaults.drill_method,
            pg_bin_dir=get("MM_PG_BIN_DIR") or "",
            reports_s3_bucket=get("MM_REPORTS_S3_BUCKET") or "",
            reports_s3_prefix=get("MM_REPORTS_S3_PREFIX") or defaults.reports_s3_prefix,
            reports_s3_endpoint=get("MM_REPORTS_S3_ENDPOINT") or "",
            reports_s3_region=get("MM_REPORTS_S3_REGION") or defaults.reports_s3_region,
            neon_api_key=get("NEON_API_KEY"),
            neon_project_id=get("NEON_PROJECT_ID"),
            neon_api_host=get("NEON_API_HOST") or defaults.neon_api_host,
            dlq_alert_threshold=_int("MM_DLQ_ALERT_THRESHOLD", get("MM_DLQ_ALERT_THRESHOLD"), 10),
            schedule_overrides=_schedule_overrides(get("MM_SCHEDULE_OVERRIDES")),
            run_launcher=get("MM_RUN_LAUNCHER") or defaults.run_launcher,
            http_connect_timeout=_seconds(
                "MM_HTTP_CONNECT_TIMEOUT", get("MM_HTTP_CONNECT_TIMEOUT"), 10.0
            ),
            http_read_timeout=_seconds("MM_HTTP_READ_TIMEOUT", get("MM_HTTP_READ_TIMEOUT"), 30.0),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.env not in ENVIRONMENTS:
            raise SettingsError(f"MM_ENV={self.env!r} is not one of {', '.join(ENVIRONMENTS)}")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise SettingsError(
                f"MM_TIMEZONE={self.timezone!r} is not an IANA time zone "
                "(for example Australia/Sydney)"
            ) from exc
        if self.database_url is not None:
            _check_conninfo("DATABASE_URL", self.database_url)
        if self.database_direct_url is not None:
            _check_conninfo("DATABASE_DIRECT_URL", self.database_direct_url)
        _check_url("SENDGRID_API_HOST", self.sendgrid_api_host, ("http", "https"), secret=False)
        _check_url("MM_REPORTS_URL", self.reports_url, ("http", "https"), secret=False)
        _check_url("NEON_API_HOST", self.neon_api_host, ("http", "https"), secret=False)
        if self.reports_s3_endpoint:
            _check_url(
                "MM_REPORTS_S3_ENDPOINT", self.reports_s3_endpoint, ("http", "https"), secret=False
            )
        if self.run_launcher not in RUN_LAUNCHERS:
            raise SettingsError(
                f"MM_RUN_LAUNCHER={self.run_launcher!r} is not one of {', '.join(RUN_LAUNCHERS)}"
            )
        if self.drill_method not in ("local", "neon"):
            raise SettingsError(f"MM_DRILL_METHOD={self.drill_method!r} is not local or neon")
        if self.drill_method == "neon" and not (self.neon_api_key and self.neon_project_id):
            raise SettingsError(
                "MM_DRILL_METHOD=neon needs NEON_API_KEY and NEON_PROJECT_ID to be set"
            )
        if self.pg_bin_dir:
            _check_pg_bin_dir(self.pg_bin_dir)
        if self.sentry_dsn is not None:
            _check_url("SENTRY_DSN", self.sentry_dsn, ("http", "https"))
        for name, value in (
            ("MAIL_FROM", self.mail_from),
            ("COMPLIANCE_EMAIL", self.compliance_email),
            ("RELIABILITY_EMAIL", self.reliability_email),
            ("ADMIN_EMAIL", self.admin_email),
        ):
            if not _EMAIL.match(value):
                raise SettingsError(f"{name}={value!r} is not an email address")
        if self.sendgrid_api_key is not None and not self.sendgrid_api_key.startswith("SG."):
            raise SettingsError("SENDGRID_API_KEY does not look like a SendGrid key (SG....)")
        if self.digest_template_id is not None and not self.digest_template_id.startswith("d-"):
            raise SettingsError(
                f"SENDGRID_DIGEST_TEMPLATE_ID={self.digest_template_id!r} is not a dynamic "
                "template id (d-...)"
            )
        if self.sendgrid_api_key is not None and self.digest_template_id is None:
            raise SettingsError(
                "SENDGRID_DIGEST_TEMPLATE_ID is required when SENDGRID_API_KEY is set: the "
                "notification digest is sent with a SendGrid dynamic template"
            )


def _check_url(name: str, value: str, schemes: tuple[str, ...], secret: bool = True) -> None:
    shown = "(value hidden)" if secret else repr(value)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise SettingsError(f"{name} {shown} is not a valid URL: {exc}") from exc
    scheme = parts.scheme.split("+")[0]
    if scheme not in schemes or not parts.hostname:
        raise SettingsError(
            f"{name} {shown} must be a {'/'.join(schemes)} URL with a host, "
            f"e.g. {schemes[0]}://host/..."
        )


_CONNINFO_FORMS = (
    "give a URL, postgresql://user:password@host:port/dbname?sslmode=require (in the user "
    "and password, write @ as %40, : as %3A, / as %2F, ? as %3F), or key=value pairs, "
    "host=... port=... dbname=... user=... password=..."
)
# Fragments libpq quotes in its messages: parts of the value, so possibly of the password.
_QUOTED = re.compile(r'"[^"]*"')
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_PORT = re.compile(r"[0-9]{1,5}")


def _check_conninfo(name: str, value: str) -> None:
    """Accept every connection string libpq accepts (a URL or key=value pairs; a socket
    folder, an IPv6 address, several hosts or no host at all), parsed by libpq itself
    through psycopg; refuse what libpq would refuse, naming the setting and never showing
    the value, which may hold a password."""
    try:
        params = conninfo_to_dict(value)
    except psycopg.ProgrammingError as exc:
        scheme = _SCHEME.match(value)
        if scheme and scheme.group(1) not in ("postgres", "postgresql"):
            hint = f"a URL must start postgresql:// or postgres://, not {scheme.group(1)}://"
        else:
            # Keep libpq's reason, without the parts of the value it quotes.
            hint = _QUOTED.sub(lambda m: m[0] if m[0] == '"="' else '"..."', str(exc).strip())
        raise SettingsError(
            f"{name} (value hidden) is not a connection string PostgreSQL accepts: {hint}; "
            f"{_CONNINFO_FORMS}"
        ) from None
    hosts, addrs, ports = (
        str(params.get(k) or "").split(",") for k in ("host", "hostaddr", "port")
    )
    # libpq tries one address per hostaddr when there are any, else one per host.
    targets = len(addrs) if params.get("hostaddr") else len(hosts)
    if not all(_PORT.fullmatch(p.strip()) and 0 < int(p) < 65536 for p in ports if p.strip()):
        problem = "its port is not a number from 1 to 65535"
    elif any("@" in h and not h.startswith(("/", "@")) for h in hosts):
        problem = "its host has an @ in it (an @ of the password not written as %40?)"
    elif params.get("host") and params.get("hostaddr") and len(hosts) != len(addrs):
        problem = f"it has {len(hosts)} host names for {len(addrs)} hostaddr values"
    elif len(ports) > 1 and len(ports) != targets:
        problem = f"it has {len(ports)} ports for {targets} hosts"
    else:
        return
    raise SettingsError(
        f"{name} (value hidden) would be refused by PostgreSQL: {problem}; {_CONNINFO_FORMS}"
    )


def _check_pg_bin_dir(value: str) -> None:
    folder = Path(value)
    if not folder.is_absolute() or not folder.is_dir():
        raise SettingsError(
            f"MM_PG_BIN_DIR={value!r} is not an absolute path to a folder: name the bin folder "
            "of the PostgreSQL client tools of the server's major version, e.g. "
            "/usr/lib/postgresql/17/bin (Debian's postgresql-client-17)"
        )
    missing = missing_executables(folder, PG_CLIENT_TOOLS)
    if missing:
        raise SettingsError(
            f"MM_PG_BIN_DIR={value!r} has no {', '.join(missing)}: name the bin folder of the "
            "PostgreSQL client tools of the server's major version, e.g. /usr/lib/postgresql/17/bin"
        )


def _schedule_overrides(value: str | None) -> tuple[tuple[str, str], ...]:
    """`MM_SCHEDULE_OVERRIDES="share-link-expiry=* * * * *; invite-cleanup=0 3 * * *"`.

    Each cron is checked here the way Dagster will read it (Dagster's own validity rule,
    and at least one tick within a year by Dagster's iteration), so a bad one fails the
    load naming this setting and the job, not later inside Dagster.
    """
    if value is None:
        return ()
    overrides = []
    for item in filter(None, (part.strip() for part in value.split(";"))):
        job, sep, cron = (text.strip() for text in item.partition("="))
        if not sep or job not in NAMES:
            raise SettingsError(
                f"MM_SCHEDULE_OVERRIDES: {item!r} must be <job>=<cron> with a job of the "
                f"inventory ({', '.join(NAMES)})"
            )
        try:
            dagster_cron.check(cron)
        except ValueError as exc:
            raise SettingsError(
                f"MM_SCHEDULE_OVERRIDES: {job}={cron!r} is refused: {exc}. "
                f"Accepted: {dagster_cron.ACCEPTED}"
            ) from None
        overrides.append((job, cron))
    return tuple(overrides)


def _int(name: str, value: str | None, default: int) -> int:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r} is not a whole number") from None
    if number < 0:
        raise SettingsError(f"{name}={value!r} must be 0 or more")
    return number


# Above this a "timeout" stops bounding anything: a run would wait minutes on one call.
MAX_TIMEOUT_SECONDS = 300.0


def _seconds(name: str, value: str | None, default: float) -> float:
    """A timeout in seconds: a number above 0 and at most MAX_TIMEOUT_SECONDS."""
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise SettingsError(
            f"{name}={value!r} is not a number of seconds (e.g. {default:g})"
        ) from None
    if not 0 < number <= MAX_TIMEOUT_SECONDS:  # also refuses nan and inf
        raise SettingsError(
            f"{name}={value!r} must be more than 0 and at most {MAX_TIMEOUT_SECONDS:g} seconds"
        )
    return number
