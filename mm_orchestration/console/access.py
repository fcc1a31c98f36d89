"""Who may use the job console, and what each role may do.

The console never stores a password. In production a person is whoever the company's
authenticating proxy (oauth2-proxy, Cloudflare Access, an ALB with OIDC) says they are, in
one request header, believed only when the request comes from one of the proxy's
addresses. In development (`mm-jobs dev`) the person is the local operating-system user,
and the console says so on every page. A person's role comes from a small configuration
(MM_CONSOLE_ROLES and/or the YAML file MM_CONSOLE_ROLES_FILE); somebody it does not name
gets nothing at all.

Roles, each including what the ones before it may do (but for compliance's bundles):

- `viewer`: read everything, download reports and the audit trail;
- `compliance`: what a viewer may, and download the signed evidence bundles (as admins
  may; operators may not);
- `operator`: also launch and re-execute the seed's manual jobs (share-link expiry,
  notification digest, residency report) and the DLQ tools;
- `admin`: everything else too (the restore drill and every other job, backfills,
  terminate, delete, schedule and sensor switches, cursors, asset wipes and reports).

The settings are read and checked in access_settings; what each role may do is policy's.
A request's person travels with it in its ASGI scope (IDENTITY_SCOPE_KEY, set by the
front).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from mm_orchestration.console.access_settings import (
    DEFAULT_HEADER,
    PERSON,
    PROXY_SECRET_HEADER,
    RANKS,
    fields_from_env,
    origin_of,
)
from mm_orchestration.console.refusals import REFUSALS_PER_WINDOW
from mm_orchestration.platform.outbox.addresses import domain_of

# Where a request's person travels with it, in its ASGI scope (set by front.IdentityFront).
IDENTITY_SCOPE_KEY = "mm.identity"


@dataclass(frozen=True)
class Identity:
    """The person behind one request and their role (None: they get nothing)."""

    person: str
    role: str | None
    # How we know: "proxy" (the trusted proxy's header) or "local" (development: the OS user).
    source: str

    def at_least(self, role: str) -> bool:
        return self.role is not None and RANKS[self.role] >= RANKS[role]

    @property
    def label(self) -> str:
        """How the console names the person on its pages."""
        role = self.role or "no role"
        if self.source == "local":
            return f"{self.person} ({role}) - development: the local OS user, no sign-in"
        return f"{self.person} ({role})"


@dataclass(frozen=True)
class ConsoleAccess:
    """The console's identity and role settings, validated at start."""

    mode: str = "proxy"
    header: str = DEFAULT_HEADER
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    roles: Mapping[str, str] = field(default_factory=dict)
    local_user: str = ""
    # Where people open the console (scheme://host[:port][/path]); proxy mode only.
    public_url: str = ""
    proxy_secret: str = field(default="", repr=False)
    # How many refusals of one person are audited one by one each minute (refusals.py).
    refusals_per_minute: int = REFUSALS_PER_WINDOW

    @property
    def public_origin(self) -> str | None:
        """The public address as a browser names it in `Origin` (scheme://host[:port],
        the port left out when it is the scheme's default), or None in development."""
        return origin_of(self.public_url) if self.public_url else None

    @property
    def path_prefix(self) -> str:
        """The path the proxy serves the console under (`/console`), or ""."""
        return urlsplit(self.public_url).path.rstrip("/") if self.public_url else ""

    def proxy_proven(self, values: list[str]) -> bool:
        """Whether a request's proxy-secret header values (all of them) prove it came
        through the proxy: exactly one, equal to the secret (compared in constant time)."""
        if len(values) != 1 or not self.proxy_secret:
            return False
        return hmac.compare_digest(values[0].encode("latin-1"), self.proxy_secret.encode())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ConsoleAccess:
        """MM_CONSOLE_AUTH, MM_CONSOLE_IDENTITY_HEADER, MM_CONSOLE_TRUSTED_PROXIES,
        MM_CONSOLE_ROLES and MM_CONSOLE_ROLES_FILE; SettingsError naming the first bad one."""
        return cls(**fields_from_env(os.environ if environ is None else environ))

    def role_of(self, person: str) -> str | None:
        """The person's role: their own entry, else their email domain's (`*@example.com`);
        in development the local OS user is an admin unless the roles say otherwise."""
        key = person.lower()
        if key in self.roles:
            return self.roles[key]
        # The domain as the address checker reads it: `a@evil.example@x.com` is no address,
        # so no `*@x.com` entry covers it.
        domain = domain_of(key) if "@" in key else None
        if domain is not None and f"*@{domain}" in self.roles:
            return self.roles[f"*@{domain}"]
        if self.mode == "local" and key == self.local_user.lower():
            return "admin"
        return None

    def identify(
        self, peer: str | None, headers: Mapping[str, str] | Sequence[tuple[str, str]]
    ) -> Identity | None:
        """The person behind a request from `peer` with `headers` (lower-case names; the
        raw pairs when a name may repeat), or None when there is none to believe: a
        request that does not prove it came through the proxy (its address is not the
        proxy's, or the proxy secret is missing or wrong), no identity header, a malformed
        one, or two of them (one the browser sent and one the proxy added: whichever is
        meant, the request names nobody for certain)."""
        if self.mode == "local":
            return Identity(self.local_user, self.role_of(self.local_user), "local")
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        if peer is None or not self.trusted(peer):
            return None
        if not self.proxy_proven([v for k, v in pairs if k == PROXY_SECRET_HEADER.lower()]):
            return None
        named = [v for k, v in pairs if k == self.header.lower()]
        person = named[0].strip() if len(named) == 1 else ""
        if not PERSON.fullmatch(person):
            return None
        return Identity(person.lower(), self.role_of(person), "proxy")

    def trusted(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_proxies)


def identity_in(scope: Mapping[str, Any]) -> Identity | None:
    """The person the front found behind a request, from its ASGI scope (None: nobody)."""
    return scope.get(IDENTITY_SCOPE_KEY)


def loopback_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The loopback address `host` spells, in any spelling the system's resolver takes
    for an address (`127.1`, `0x7f.0.0.1`, `[::1]`, `::ffff:127.0.0.1`), or None when it
    is not one. `localhost` is the loopback address 127.0.0.1."""
    name = host.strip().lower().removeprefix("[").removesuffix("]")
    if name.rstrip(".") == "localhost":
        return ipaddress.IPv4Address("127.0.0.1")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(name)
    except ValueError:
        try:
            # The classic forms inet_aton (and so the resolver) takes: 127.1, 0x7f.1, 2130706433.
            address = ipaddress.IPv4Address(socket.inet_aton(name))
        except (OSError, ValueError):
            return None
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return address if address.is_loopback else None
