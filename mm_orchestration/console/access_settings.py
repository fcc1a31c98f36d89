"""The console's access settings (MM_CONSOLE_*), read and checked at start: the identity
proxy's header, addresses and secret, the public address, and who has which role.

Each setting that is wrong stops the console with a SettingsError naming it and saying
what to give instead; the secret's value is never shown.
"""

from __future__ import annotations

import getpass
import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from mm_orchestration.console.refusals import REFUSALS_PER_WINDOW
from mm_orchestration.platform.outbox.addresses import address_problem, domain_of
from mm_orchestration.platform.settings import SettingsError

ROLES = ("viewer", "compliance", "operator", "admin")
# How much each role may do, each including the ones below. `compliance` may do what a
# viewer may, and also download signed evidence bundles (EVIDENCE_ROLES), which an
# operator may not: it is a rank of its own beside viewer, not above it.
RANKS = {"viewer": 0, "compliance": 0, "operator": 1, "admin": 2}
EVIDENCE_ROLES = ("compliance", "admin")
AUTH_MODES = ("proxy", "local")
DEFAULT_HEADER = "X-Auth-Request-Email"
# The header the proxy proves itself with: a secret shared by the proxy and the console
# only, which no browser page and no other process on the proxy's machine can produce.
PROXY_SECRET_HEADER = "X-MM-Proxy-Secret"
MIN_SECRET_LENGTH = 32
_SECRET = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: it travels in an HTTP header

# A person as a proxy names them: an email address or a user name, printable ASCII
# without spaces or separators that would make the audit ambiguous.
PERSON = re.compile(r"^[A-Za-z0-9._%+\-@]{1,254}$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9\-]{1,100}$")
# Headers a browser or any client sets, or that proxies pass along from the client (HTTP's
# standard request headers, the forwarding ones, the browser's Sec-* family): a proxy
# that authenticates names the person in a header of its own, and one of these would let
# the person name themselves.
_CLIENT_HEADERS = frozenset(
    {
        "accept", "accept-charset", "accept-encoding", "accept-language", "authorization",
        "cache-control", "connection", "content-length", "content-type", "cookie", "date",
        "dnt", "expect", "forwarded", "from", "host", "if-match", "if-modified-since",
        "if-none-match", "if-range", "if-unmodified-since", "keep-alive", "max-forwards",
        "origin", "pragma", "priority", "proxy-authorization", "range", "referer", "te",
        "trailer", "transfer-encoding", "upgrade", "upgrade-insecure-requests", "user-agent",
        "via", "warning", "x-forwarded-for", "x-forwarded-host", "x-forwarded-port",
        "x-forwarded-proto", "x-forwarded-prefix", "x-real-ip", "x-requested-with",
        "x-csrf-token", "x-xsrf-token", "x-http-method-override", "true-client-ip",
        "x-client-ip", "x-original-url", "x-rewrite-url",
    }
)  # fmt: skip
_CLIENT_HEADER_PREFIXES = ("sec-", "proxy-", "content-", "access-control-")
# The widest network that is still one site's own: 10.0.0.0/8 and fc00::/7 are the widest
# private ranges; a wider one (0.0.0.0/0, ::/0) trusts the internet to say who you are.
_WIDEST = {4: 8, 6: 7}


def fields_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """MM_CONSOLE_AUTH, MM_CONSOLE_IDENTITY_HEADER, MM_CONSOLE_TRUSTED_PROXIES,
    MM_CONSOLE_ROLES, MM_CONSOLE_ROLES_FILE, MM_CONSOLE_PUBLIC_URL, MM_CONSOLE_PROXY_SECRET
    and MM_CONSOLE_REFUSALS_PER_MINUTE as access.ConsoleAccess's fields; SettingsError
    naming the first bad one."""

    def get(name: str) -> str:
        return (env.get(name) or "").strip()

    mode = get("MM_CONSOLE_AUTH") or "proxy"
    if mode not in AUTH_MODES:
        raise SettingsError(
            f"MM_CONSOLE_AUTH={mode!r} is not one of {', '.join(AUTH_MODES)} (proxy: "
            "the identity proxy's header; local: development, the local OS user)"
        )
    header = get("MM_CONSOLE_IDENTITY_HEADER") or DEFAULT_HEADER
    if not _HEADER_NAME.fullmatch(header):
        raise SettingsError(
            f"MM_CONSOLE_IDENTITY_HEADER={header[:100]!r} is not an HTTP header name "
            "(letters, digits and hyphens, e.g. X-Auth-Request-Email)"
        )
    if header.lower() in _CLIENT_HEADERS or header.lower().startswith(_CLIENT_HEADER_PREFIXES):
        raise SettingsError(
            f"MM_CONSOLE_IDENTITY_HEADER={header} is a header browsers and clients set "
            "themselves, so anyone could name themselves in it; give the header your "
            "identity proxy adds (e.g. X-Auth-Request-Email for oauth2-proxy, "
            "Cf-Access-Authenticated-User-Email for Cloudflare Access)"
        )
    proxies = _networks(get("MM_CONSOLE_TRUSTED_PROXIES"))
    if mode == "proxy" and not proxies:
        raise SettingsError(
            "MM_CONSOLE_TRUSTED_PROXIES is not set: with MM_CONSOLE_AUTH=proxy the console "
            "believes the identity header only from the proxy's addresses (e.g. 127.0.0.1, "
            "or 10.0.0.0/24); give them, or use MM_CONSOLE_AUTH=local for development"
        )
    roles = dict(_roles_file(get("MM_CONSOLE_ROLES_FILE")))
    for person, role in _roles_text("MM_CONSOLE_ROLES", get("MM_CONSOLE_ROLES")).items():
        if roles.get(person, role) != role:
            raise SettingsError(
                f"MM_CONSOLE_ROLES gives {person} the role {role}, but "
                f"MM_CONSOLE_ROLES_FILE gives them {roles[person]}: name a person once"
            )
        roles[person] = role
    local_user = _os_user() if mode == "local" else ""
    public_url = _public_url(get("MM_CONSOLE_PUBLIC_URL"))
    secret = get("MM_CONSOLE_PROXY_SECRET")
    if mode == "proxy":
        if not public_url:
            raise SettingsError(
                "MM_CONSOLE_PUBLIC_URL is not set: with MM_CONSOLE_AUTH=proxy the console "
                "judges where requests come from against the address people open (e.g. "
                "https://jobs.example.com), not against what a proxy forwards as Host"
            )
        _check_secret(secret)
    limit = get("MM_CONSOLE_REFUSALS_PER_MINUTE") or str(REFUSALS_PER_WINDOW)
    if not limit.isdigit() or not 1 <= int(limit) <= 100_000:
        raise SettingsError(
            "MM_CONSOLE_REFUSALS_PER_MINUTE is a whole number from 1 to 100000 (refusals "
            f"of one person audited one by one each minute; default {REFUSALS_PER_WINDOW})"
        )
    return {
        "mode": mode,
        "header": header,
        "trusted_proxies": proxies,
        "roles": roles,
        "local_user": local_user,
        "public_url": public_url,
        "proxy_secret": secret,
        "refusals_per_minute": int(limit),
    }


def origin_of(url: str) -> str | None:
    """`scheme://host[:port]` of a URL as browsers write it in `Origin` (lower case, the
    default port left out), or None when it is not an http(s) URL with a host."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def _public_url(text: str) -> str:
    """MM_CONSOLE_PUBLIC_URL, checked: an http(s) URL with a host, no credentials, query
    or fragment; its path (if any) is where the proxy serves the console."""
    if not text:
        return ""
    problem = None
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a port that is not one
    except ValueError:
        problem = "its port is not a number from 0 to 65535"
    else:
        if origin_of(text) is None:
            problem = "it is not an http:// or https:// address with a host name"
        elif parts.username is not None or parts.password is not None:
            problem = "it carries a user name or password"
        elif parts.query or parts.fragment or "?" in text or "#" in text:
            problem = "it has a query or a fragment"
        elif not re.fullmatch(r"(/[A-Za-z0-9._~\-]+)*/?", parts.path):
            problem = "its path is not plain segments such as /console"
    if problem:
        raise SettingsError(
            f"MM_CONSOLE_PUBLIC_URL is not the console's public address: {problem} "
            "(e.g. https://jobs.example.com or https://intranet.example.com/jobs)"
        )
    return text.rstrip("/")


def _check_secret(secret: str) -> None:
    """MM_CONSOLE_PROXY_SECRET: long enough not to be guessed, and fit for a header. The
    value is never shown."""
    if not secret:
        raise SettingsError(
            "MM_CONSOLE_PROXY_SECRET is not set: with MM_CONSOLE_AUTH=proxy the proxy proves "
            f"itself with this secret in the {PROXY_SECRET_HEADER} header (otherwise any "
            "process on its machine, or a browser there through DNS rebinding, could name "
            "anyone); generate one with `openssl rand -hex 32` and give it to both"
        )
    if len(secret) < MIN_SECRET_LENGTH or not _SECRET.fullmatch(secret):
        raise SettingsError(
            f"MM_CONSOLE_PROXY_SECRET must be at least {MIN_SECRET_LENGTH} visible ASCII "
            "characters without spaces (the value is not shown); generate one with "
            "`openssl rand -hex 32`"
        )


def _networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise SettingsError(
                f"MM_CONSOLE_TRUSTED_PROXIES: {item[:60]!r} is not an IP address or network "
                "(e.g. 127.0.0.1, 10.0.0.0/24, ::1), separated by commas"
            ) from None
        if _too_wide(network):
            raise SettingsError(
                f"MM_CONSOLE_TRUSTED_PROXIES: {item} trusts far more than a proxy (whoever "
                "connects from there may name themselves anyone); give the proxy's own "
                "addresses or its subnet, at most a /8 (IPv4) or /7 (IPv6)"
            )
        networks.append(network)
    return tuple(networks)


# IPv6 ranges that stand for IPv4 addresses, each with where its IPv4 part starts: an entry
# there is judged as the IPv4 network it covers (64:ff9b::/96 is all of IPv4 via NAT64).
_IPV4_IN_IPV6 = (
    (ipaddress.IPv6Network("::ffff:0:0/96"), 96),  # IPv4-mapped
    (ipaddress.IPv6Network("::/96"), 96),  # IPv4-compatible (deprecated, still parsed)
    (ipaddress.IPv6Network("64:ff9b::/96"), 96),  # NAT64, well-known prefix
    (ipaddress.IPv6Network("64:ff9b:1::/48"), 96),  # NAT64, local-use
    (ipaddress.IPv6Network("2002::/16"), 16),  # 6to4: the IPv4 address follows the prefix
)


def _too_wide(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Wider than any one site's own network; IPv4 written as IPv6 (mapped, compatible,
    NAT64, 6to4) is judged as the IPv4 network it covers."""
    if isinstance(network, ipaddress.IPv6Network):
        for embedding, offset in _IPV4_IN_IPV6:
            if network.overlaps(embedding) and network.prefixlen < offset + _WIDEST[4]:
                return True
    return network.prefixlen < _WIDEST[network.version]


def _check_entry(setting: str, person: str, role: str) -> tuple[str, str]:
    """One `person: role` entry, checked: the person is an email address (as the address
    checker reads it), a user name without `@`, or a whole domain (`*@example.com`)."""
    person, role = person.strip().lower(), role.strip().lower()
    if role not in ROLES:
        raise SettingsError(
            f"{setting}: {person[:100]!r} has the role {role[:30]!r}; roles are {', '.join(ROLES)}"
        )
    if person.startswith("*@"):
        valid = domain_of(f"someone{person[1:]}") == person[2:]
    elif "@" in person:
        valid = PERSON.fullmatch(person) is not None and address_problem(person) is None
    else:
        valid = PERSON.fullmatch(person) is not None
    if not valid:
        raise SettingsError(
            f"{setting}: {person[:100]!r} is not a person as the proxy names them (an email "
            "address or a user name) or a whole domain (*@example.com)"
        )
    return person, role


def _roles_text(setting: str, text: str) -> dict[str, str]:
    """`person=role` pairs separated by `;` or `,` (e.g. `ann@x.com=admin; *@x.com=viewer`)."""
    roles: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in re.split(r"[;,]", text))):
        person, sep, role = item.partition("=")
        if not sep:
            raise SettingsError(
                f"{setting}: {item[:100]!r} is not person=role "
                "(e.g. ann@example.com=admin; *@example.com=viewer)"
            )
        person, role = _check_entry(setting, person, role)
        if roles.get(person, role) != role:
            raise SettingsError(f"{setting}: {person} is given two roles ({roles[person]}, {role})")
        roles[person] = role
    return roles


def _roles_file(path: str) -> dict[str, str]:
    """The YAML file: each role a list of people (`admin: [ann@example.com]`)."""
    if not path:
        return {}
    setting = "MM_CONSOLE_ROLES_FILE"
    try:
        data = yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader
    except OSError as exc:
        raise SettingsError(f"{setting}={path}: cannot be read ({exc.strerror})") from None
    except _DuplicateKey as exc:
        raise SettingsError(
            f"{setting}={path}: {exc}; YAML would keep only the last: merge them into one"
        ) from None
    except _ComplexKey as exc:
        raise SettingsError(f"{setting}={path}: {exc} ({', '.join(ROLES)})") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"{setting}={path}: is not YAML ({str(exc)[:300]})") from None
    if isinstance(data, dict):
        unknown = [r for r in data if not isinstance(r, str) or r.strip().lower() not in ROLES]
        if unknown:
            raise SettingsError(
                f"{setting}={path}: {str(unknown[0])[:60]!r} is not a role; the roles are "
                f"{', '.join(ROLES)} (each with a list of people)"
            )
    if not isinstance(data, dict) or not all(
        isinstance(v, list | type(None)) for v in data.values()
    ):
        raise SettingsError(
            f"{setting}={path}: expected each role with a list of people, e.g.\n"
            "admin: [ann@example.com]\noperator: [ben@example.com]\nviewer: ['*@example.com']"
        )
    roles: dict[str, str] = {}
    for role, people in data.items():
        for person in people or []:
            # YAML reads `yes` as true, `null` as nothing and `123` as a number: none of
            # them is anybody, and quietly making them "True" would grant a role to a name.
            if not isinstance(person, str) or not isinstance(role, str):
                raise SettingsError(
                    f"{setting}={path}: under {role!r}, {person!r} is not a person: list email "
                    "addresses, user names or '*@example.com' (quote anything YAML could read "
                    "as something else)"
                )
            key, value = _check_entry(setting, person, role)
            if roles.get(key, value) != value:
                raise SettingsError(f"{setting}: {key} is listed under {roles[key]} and {value}")
            roles[key] = value
    return roles


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that names a key twice: with two `admin:`
    lists it would keep the last and silently drop the people of the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                # `? [a, b]`: a list or mapping as a key names no role (and no person).
                raise _ComplexKey(
                    f"line {key_node.start_mark.line + 1} has a list or mapping as a key; "
                    "keys are role names"
                )
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(f"{key!r} is given twice (lines {seen[key]} and {line})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(yaml.YAMLError):
    pass


class _ComplexKey(yaml.YAMLError):
    pass


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
