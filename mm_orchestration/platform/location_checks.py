"""The checks of the settings that say where something is: URLs and hosts, the Sentry DSN,
S3 bucket, prefix and region, the Neon project, and PostgreSQL connection strings (parsed
by libpq itself). Each raises SettingsError naming the setting and what is accepted, never
quoting the value: a URL or a connection string may hold a password.
"""

from __future__ import annotations

import ipaddress
import re
from functools import cache
from urllib.parse import urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from mm_orchestration.platform.setting_checks import SettingsError, unprintable
from mm_orchestration.platform.text import NOT_SHOWN, reason_without_value

# A DNS label: letters, digits and hyphens, not at either end (and the underscore that
# some internal names, e.g. Docker Compose services, carry; resolvers accept it).
_DNS_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def _host_problem(host: str) -> str | None:
    """Why `host` (as urlsplit gives it: lower case, IPv6 without brackets) is neither an IP
    address nor a DNS name, or None."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    # No top-level domain is all digits, so `999.1.1.1` is a bad address, not a name.
    if len(host) > 253 or not all(map(_DNS_LABEL.fullmatch, labels)) or labels[-1].isdigit():
        return "its host is neither a DNS name nor an IP address"
    return None


def _url_problem(value: str, path: bool) -> str | None:
    """Why `value` is not an http(s) URL of a host (with a path only when `path`), or None."""
    problem = unprintable(value)
    if problem:
        return problem
    # Before any parsing: a password holding an unencoded / would otherwise be read as a
    # port or a path, and show in the parser's message.
    if "@" in value:
        return "it has an @: credentials (user:password@) never go in a URL setting"
    # urlsplit's and .port's messages quote the value: never shown, our own words instead.
    try:
        parts = urlsplit(value)
    except ValueError:
        return "it does not parse as a URL (a [ or ] that does not enclose an IPv6 address?)"
    try:
        port = parts.port
    except ValueError:
        return "its port is not a number from 1 to 65535"
    if parts.scheme not in ("http", "https"):
        return (
            "its scheme is not http or https (write http://host:port)"
            if parts.scheme
            else "it has no scheme (http:// or https://)"
        )
    if not parts.hostname:
        return "it has no host"
    host = _host_problem(parts.hostname)
    if host:
        return host
    if port == 0:
        return "its port is 0"
    if parts.netloc.endswith(":"):
        return "it has a ':' with no port after it"
    if any(segment in (".", "..") for segment in parts.path.split("/")):
        return "its path has a '.' or '..' segment"
    # Literal ? and # always start a query and a fragment (RFC 3986), even empty ones.
    if "?" in value or "#" in value:
        return "it has a query or a fragment (? or #)"
    if not path and parts.path not in ("", "/"):
        return "it has a path; the client adds its own"
    return None


def check_http_url(name: str, value: str, example: str, *, path: bool = False) -> None:
    """Refuse, naming `name`, anything but an http(s) URL of a host and optional port (and
    path, when `path`): no user or password (a secret in a setting that is not secret), no
    query or fragment, no spaces or control characters. The value is never shown."""
    problem = _url_problem(value, path)
    if problem:
        parts = "a host, an optional port and a path" if path else "a host and optional port"
        raise SettingsError(
            f"{name} is refused: {problem}. Accepted: an http:// or https:// URL of "
            f"{parts}, with no user, password, query or fragment, e.g. {example}; "
            f"{NOT_SHOWN}"
        )


def check_sentry_dsn(value: str) -> None:
    """SENTRY_DSN as sentry_sdk itself reads it (sentry_sdk.utils.Dsn, what
    `sentry_sdk.init` parses), plus what Dsn lets through but a project's DSN never has:
    a project id in other digits than 0-9, a bad host, a query or fragment. The value (its
    keys, an old DSN's secret key among them, or a secret pasted here by mistake) never
    appears in the message: each reason is in our own words (Dsn's quote the value)."""
    problem = _sentry_dsn_problem(value)
    if problem:
        raise SettingsError(
            f"SENTRY_DSN is not a Sentry DSN: {problem}. Accepted: a Sentry project's DSN "
            "(Project Settings > Client Keys), https://<public key>@<host>/<project id>, "
            f"e.g. https://0123abcd@o1.ingest.us.sentry.io/42; {NOT_SHOWN}"
        )


def _sentry_dsn_problem(value: str) -> str | None:
    """Why sentry_sdk would refuse `value` as a DSN, or a project's DSN never looks so;
    None when it is one. Never quotes any part of `value`."""
    problem = unprintable(value)
    if problem:
        return problem
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return "it does not start with https:// (or http://)"
    if "@" not in rest:
        return "it has no public key (the part before the @)"
    keys = rest.rpartition("@")[0]
    if any(ch in keys for ch in "/?#@"):
        # A parser would end the keys at that character and read the rest of them as a
        # port or a path.
        return "its keys (before the @) hold a /, ?, # or @"
    if not keys.partition(":")[0]:
        return "it has no public key (the part before the @)"
    try:
        parts = urlsplit(value)
    except ValueError:
        return "it does not parse as a URL (a [ or ] that does not enclose an IPv6 address?)"
    if not parts.hostname:
        return "it has no host after the @"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        return "its port is not a number from 1 to 65535"
    if "?" in value or "#" in value:
        return "it has a query or a fragment (? or #)"
    project = parts.path.rsplit("/", 1)[-1]
    if not (project.isascii() and project.isdigit()):  # Dsn takes int(): " 1", "+1", "1_0"
        return "its project id (the last part of its path) is not a number in the digits 0-9"
    host = _host_problem(parts.hostname)
    if host:
        return host
    # Imported only when a DSN is set: a process without Sentry never loads the SDK.
    from sentry_sdk.utils import Dsn

    try:
        Dsn(value)
    except ValueError:  # BadDsn is a ValueError, and so is a malformed port
        return "sentry_sdk cannot read it"
    return None


# AWS's rules for general purpose bucket names; an S3-compatible service (MinIO, R2)
# takes a subset of them.
_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# Kept by AWS for its own kinds of bucket (access point aliases, S3 Express, tables, demos).
_S3_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_S3_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def check_s3_bucket(value: str) -> None:
    problem = None
    if not _S3_BUCKET.fullmatch(value):
        problem = "it is not 3 to 63 characters of a-z, 0-9, dots and hyphens"
    elif ".." in value:
        problem = "it has two dots in a row"
    elif value.startswith(_S3_RESERVED_PREFIXES) or value.endswith(_S3_RESERVED_SUFFIXES):
        problem = "AWS keeps names with that prefix or suffix for its own buckets"
    else:
        try:
            ipaddress.ip_address(value)
            problem = "it is written as an IP address"
        except ValueError:
            pass
    if problem:
        raise SettingsError(
            f"MM_REPORTS_S3_BUCKET is not an S3 bucket name: {problem}. Accepted: 3 to 63 "
            "lowercase letters, digits, dots and hyphens, starting and ending with a letter "
            "or digit, no two dots in a row, not an IP address, e.g. mm-compliance-reports; "
            f"{NOT_SHOWN}"
        )


def check_s3_prefix(value: str) -> None:
    """The reports' folder inside the bucket: keys are relative (a leading / would be part
    of every key), and a `.` or `..` segment or a control character would make a key that
    tools resolve or display as another one."""
    segments = value.removesuffix("/").split("/")
    problem = None
    if value.startswith("/"):
        problem = "it starts with /"
    elif any(not ch.isprintable() for ch in value):
        problem = "it has a control character"
    elif any(segment in ("", ".", "..") for segment in segments):
        problem = "it has an empty, . or .. segment"
    elif len(value.encode()) > 512:
        problem = "it is longer than 512 bytes (an S3 key is at most 1,024)"
    if problem:
        raise SettingsError(
            f"MM_REPORTS_S3_PREFIX is refused: {problem}. Accepted: a relative key prefix, "
            "segments of printable characters joined by /, none of them . or .., e.g. "
            f"reports or compliance/reports; {NOT_SHOWN}"
        )


@cache
def _aws_region_patterns() -> tuple[re.Pattern[str], ...]:
    """The region-name pattern of every AWS partition (aws, aws-cn, aws-us-gov, ...), from
    botocore's own partition data: a region AWS opens later matches without a change here."""
    from botocore.loaders import create_loader

    partitions = create_loader().load_data("partitions")["partitions"]
    # re.ASCII: the patterns' \w and \d must not take other scripts' letters and digits.
    return tuple(re.compile(p["regionRegex"], re.ASCII) for p in partitions)


# The `aws` partition's regionRegex in botocore's partitions.json.
_AWS_PARTITION = re.compile(r"^(us|eu|ap|sa|ca|me|af|il|mx)\-\w+\-\d+$", re.ASCII)
_CUSTOM_REGION = re.compile(r"[A-Za-z0-9_-]{1,63}")


def check_s3_region(value: str, custom_endpoint: bool) -> None:
    """An AWS region name (botocore's patterns), or with MM_REPORTS_S3_ENDPOINT set, the
    name an S3-compatible service asks for (R2's `auto`, MinIO's own)."""
    if custom_endpoint:
        if _CUSTOM_REGION.fullmatch(value):
            return
        accepted = "a region name of letters, digits, hyphens and underscores, e.g. auto"
    else:
        # AWS's own partition, by its own pattern, answers without loading botocore (half
        # a second of every process's start); other partitions are read from its data.
        lower = re.fullmatch(r"[a-z0-9-]+", value)
        if lower and (
            _AWS_PARTITION.fullmatch(value)
            or any(p.fullmatch(value) for p in _aws_region_patterns())
        ):
            return
        accepted = (
            "an AWS region name, e.g. ap-southeast-2 or us-gov-west-1 (with "
            "MM_REPORTS_S3_ENDPOINT set, the region the S3-compatible service asks for)"
        )
    raise SettingsError(
        f"MM_REPORTS_S3_REGION is not a region name. Accepted: {accepted}; {NOT_SHOWN}"
    )


# SendGrid's dynamic template ids are d- and 32 hex digits; letters, digits, - and _ are
# let through so that a stand-in id (tests, a deployment's placeholder) still loads,
# while a space, a control character or another script's letter does not.
TEMPLATE_ID = re.compile(r"d-[A-Za-z0-9_-]{1,64}")

# Neon names a project with generated words and a number, e.g. autumn-disk-484331.
_NEON_PROJECT_ID = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)+")


def check_neon_project_id(value: str) -> None:
    if len(value) > 60 or not _NEON_PROJECT_ID.fullmatch(value):
        raise SettingsError(
            "NEON_PROJECT_ID is not a Neon project id. Accepted: lowercase words and digits "
            "joined by hyphens, as the Neon console shows it under Settings > General, e.g. "
            f"autumn-disk-484331; {NOT_SHOWN}"
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
# Parameters whose values libpq checks only when it connects (libpq's documentation,
# "Parameter Key Words"): checked here so a typo stops the start, not a run 30 s later.
_CONNINFO_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": (
        "any",
        "read-write",
        "read-only",
        "primary",
        "standby",
        "prefer-standby",
    ),
    "load_balance_hosts": ("disable", "random"),
    "sslnegotiation": ("postgres", "direct"),
    "replication": ("true", "on", "yes", "1", "false", "off", "no", "0", "database"),
}
_CONNINFO_INTEGERS = (
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
)


def check_conninfo(name: str, value: str) -> None:
    """Accept every connection string libpq accepts (a URL or key=value pairs; a socket
    folder, an IPv6 address, several hosts or no host at all), parsed by libpq itself
    through psycopg; refuse what libpq would refuse, naming the setting and never showing
    the value, which may hold a password."""
    try:
        params = conninfo_to_dict(value)
    except psycopg.ProgrammingError as exc:
        scheme = _SCHEME.match(value)
        if scheme and scheme.group(1) not in ("postgres", "postgresql"):
            # Not which scheme it has: that is part of the value too.
            hint = "a URL must start postgresql:// or postgres://"
        else:
            # Keep libpq's reason, without the parts of the value it quotes, and only when
            # nothing of the value is left in it.
            hint = reason_without_value(
                _QUOTED.sub(lambda m: m[0] if m[0] == '"="' else '"..."', str(exc).strip()),
                value,
                "libpq cannot parse it",
            )
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
    elif bad := [k for k, ok in _CONNINFO_CHOICES.items() if k in params and params[k] not in ok]:
        key = bad[0]
        problem = f"its {key} is not one of {', '.join(_CONNINFO_CHOICES[key])}"
    elif bad := [
        k
        for k in _CONNINFO_INTEGERS
        if k in params and not re.fullmatch(r"-?[0-9]{1,9}", str(params[k]))
    ]:
        problem = f"its {bad[0]} is not a whole number"
    else:
        return
    raise SettingsError(
        f"{name} (value hidden) would be refused by PostgreSQL: {problem}; {_CONNINFO_FORMS}"
    )
