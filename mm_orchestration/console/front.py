"""The console's outermost layer (ASGI), in front of Dagster's webserver: a person for
every request, believed from the identity proxy (or, in development, the local OS user),
or a 401 page; a person without a role gets a 403 page; another site's request that may
change something, a development console addressed by another name, and paths that are
no path of the console's are refused. Every refusal is audited (within each person's
budget), and every answer carries the security headers. Only `/server_info` (versions,
for health checks such as the Helm chart's probes) answers without a person.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from mm_orchestration.console.access import (
    IDENTITY_SCOPE_KEY,
    ConsoleAccess,
    Identity,
    loopback_address,
)
from mm_orchestration.console.access_settings import origin_of
from mm_orchestration.console.audit_log import ConsoleAudit

PUBLIC_PATHS = frozenset({"/server_info"})


_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>{title} - mm-orchestration job console</title></head>
<body style="font:16px system-ui,sans-serif;max-width:40em;margin:4em auto;line-height:1.5">
<h1>{title}</h1><p>{message}</p>
<p style="color:#555">mm-orchestration job console. Sign-in is handled by the company's
identity proxy; this console stores no passwords.</p></body></html>
"""


def _local_host_problem(scope: Scope, headers: dict[str, str]) -> str | None:
    """Why a request may not reach the development console (None: it may). Its identity is
    whoever runs it, so only the loopback names may address it: a page of another site
    that points its own name at 127.0.0.1 (DNS rebinding) is same-origin to the browser,
    Origin and all, and only the Host it sends gives it away."""
    host = headers.get("host", "")
    parts = urlsplit(f"//{host}")
    try:
        name, port = parts.hostname or "", parts.port
    except ValueError:  # a port that is not one
        name, port = "", None
    server = scope.get("server")
    expected = server[1] if server and len(server) > 1 else None
    if port is None:
        port = 443 if scope.get("scheme") in ("https", "wss") else 80
    if not host or "@" in host or loopback_address(name) is None:
        return (
            f"the development console answers only to its loopback address (localhost, "
            f"127.0.0.1 or [::1]), not to {html.escape(host[:100]) or 'no Host'}: open it as "
            f"http://localhost:{expected or 'PORT'}/"
        )
    if expected is not None and port != expected:
        return (
            f"the development console listens on port {expected}, not {port}: open it as "
            f"http://localhost:{expected}/"
        )
    return None


def _cross_site(scope: Scope, headers: dict[str, str], access: ConsoleAccess) -> bool:
    """A request that changes or may change something (anything but GET, HEAD, OPTIONS; a
    websocket) sent by another site's page: browsers name the page's origin in `Origin`
    on every such request, `no-cors` fetches and form posts included. A request without
    Origin is no browser's cross-site request (curl, the proxy's health checks).

    Behind the proxy the page's origin must be the console's public address, as a full
    origin (scheme, host, port): what the proxy forwards as Host (its upstream's address,
    the browser's host without its port, ...) says nothing about where the page was. In
    development, where the Host has been checked to be a loopback name on our port, the
    origin must be that same host."""
    if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD", "OPTIONS"):
        return False
    origin = headers.get("origin")
    if origin is None:
        return False
    if access.public_origin is not None:
        return origin_of(origin) != access.public_origin or origin.strip().count("/") != 2
    host = headers.get("host") or ""
    return urlsplit(origin).netloc.lower() != host.strip().lower()


# What every answer carries (a security review's list): no framing by another site (the
# page could be laid under a decoy to take an admin's clicks; Dagster dropped its own on
# purpose, dagster#9332), no MIME sniffing, no full URL leaked in Referer.
SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


# Added to the policy Dagster gives its UI (scripts by nonce, inline styles), or the whole
# policy of anything else: pages of ours, GraphiQL's, downloads.
_CSP_ADDITIONS = ("frame-ancestors 'none'", "form-action 'self'")


_CSP_DEFAULT = "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"


def with_security_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`headers` (an ASGI response's) with SECURITY_HEADERS set and the content security
    policy refusing framing; a policy already there (Dagster's, with its nonce) is kept
    and extended."""
    kept = [(k, v) for k, v in headers if k.lower().decode("latin-1") not in SECURITY_HEADERS]
    kept += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
    csp = [i for i, (k, _) in enumerate(kept) if k.lower() == b"content-security-policy"]
    if not csp:
        return [*kept, (b"content-security-policy", _CSP_DEFAULT.encode())]
    for i in csp:
        name, value = kept[i]
        policy = value.decode("latin-1").strip().rstrip(";")
        missing = [d for d in _CSP_ADDITIONS if d.split()[0] not in policy]
        kept[i] = (name, "; ".join([policy, *missing]).encode("latin-1"))
    return kept


def _public_locations(
    headers: list[tuple[bytes, bytes]], scope: Scope, public_origin: str
) -> list[tuple[bytes, bytes]]:
    """`headers` with a redirect to the console itself at its public address. Starlette
    builds an absolute `Location` from what reached it (`/jobs` -> `http://<Host>/jobs/`):
    the proxy's scheme to us (http behind TLS), and whatever it forwards as Host (our
    127.0.0.1:3000, or a rewritten name); the browser must be sent where it opened us."""
    own = {v.decode("latin-1").strip().lower() for k, v in scope.get("headers", []) if k == b"host"}
    server = scope.get("server")
    if server and len(server) > 1:
        host = f"[{server[0]}]" if ":" in str(server[0]) else str(server[0])
        own |= {f"{host}:{server[1]}".lower(), host.lower()}
    out = []
    for name, value in headers:
        if name.lower() == b"location":
            parts = urlsplit(value.decode("latin-1"))
            if parts.scheme in ("http", "https", "ws", "wss") and parts.netloc.lower() in own:
                rest = parts.path + (f"?{parts.query}" if parts.query else "")
                value = (public_origin + rest).encode("latin-1")
        out.append((name, value))
    return out


def _path_problem(path: str) -> str | None:
    """Why a request path is no path of the console's (None: it may be): dot segments
    (`/logs/../..`, which a proxy or a client should have resolved), NUL or backslashes.
    Dagster's handlers would answer those with a 500, or read outside what they serve."""
    segments = path.split("/")
    if any(s in (".", "..") for s in segments) or "\x00" in path or "\\" in path:
        return "the path has dot segments, a backslash or a NUL character"
    return None


# Dagster's notebook viewer reads any `.ipynb` file the code server can reach by a path the
# request names; this project has no notebooks.
_NO_SUCH_PATHS = ("/notebook", "/dagit/notebook")


class IdentityFront:
    """ASGI: a person for every request (or 401/403), put in the scope for the app; every
    refusal audited (within each person's budget); security headers on every answer."""

    def __init__(self, app: ASGIApp, access: ConsoleAccess, audit_log: ConsoleAudit | None = None):
        self.app = app
        self.access = access
        self.audit_log = audit_log
        prefix = access.path_prefix
        self.public_paths = frozenset(prefix + p for p in PUBLIC_PATHS)
        self.missing_paths = frozenset(prefix + p for p in _NO_SUCH_PATHS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan
            return

        async def send_secured(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = with_security_headers(message.get("headers", []))
                origin = self.access.public_origin
                if origin is not None:
                    headers = _public_locations(headers, scope, origin)
                message = {**message, "headers": headers}
            await send(message)

        await self._serve(scope, receive, send_secured)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope = self._under_prefix(scope)
        path = scope.get("path", "")
        if scope["type"] == "http" and path in self.public_paths:
            await self.app(scope, receive, send)
            return
        raw = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        headers = dict(raw)
        client = scope.get("client")
        peer = client[0] if client else None
        identity, refusal = self._judge(scope, headers, raw, peer)
        if refusal is not None:
            await self._refuse(scope, receive, send, identity, peer, *refusal)
            return
        assert identity is not None  # judged: a person with a role
        problem = _path_problem(path)
        if problem or path in self.missing_paths:
            status = 400 if problem else 404
            response = PlainTextResponse(problem or "Not Found", status_code=status)
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 4000 + status})
            else:
                await response(scope, receive, send)
            return
        await self.app({**scope, IDENTITY_SCOPE_KEY: identity}, receive, send)

    def _judge(
        self, scope: Scope, headers: dict[str, str], raw: list[tuple[str, str]], peer: str | None
    ) -> tuple[Identity | None, tuple[int, str, str] | None]:
        """The person behind a request, and why it is refused (status, title, message of
        its page), or None: a development console addressed by another name, nobody to
        believe, another site's page, a person without a role."""
        if self.access.mode == "local":
            problem = _local_host_problem(scope, headers)
            if problem:
                return None, (421, "Refused: not this console", problem)
        identity = self.access.identify(peer, raw)
        if identity is None:
            return None, (
                401,
                "Sign-in required",
                "This request carries no identity the console can believe. Open the console "
                "through the company's sign-in (the identity proxy); a request straight to the "
                "console, or one whose identity header did not come from the proxy, is refused.",
            )
        if _cross_site(scope, headers, self.access):
            return identity, (
                403,
                "Refused: another site",
                "This request came from a page of another site (its Origin is not this "
                "console's address). The console acts only on requests from its own pages.",
            )
        if identity.role is None:
            return identity, (
                403,
                "No access",
                f"You are signed in as {html.escape(identity.person)}, but you have no role in "
                "the job console. Ask an admin to add you (viewer, operator or admin) to "
                "MM_CONSOLE_ROLES or MM_CONSOLE_ROLES_FILE.",
            )
        return identity, None

    def _under_prefix(self, scope: Scope) -> Scope:
        """The request with the path the console serves it at: a proxy that serves the
        console under a path (`location /jobs/`) may pass that path on or strip it
        (`proxy_pass http://127.0.0.1:3000/;`); either way the same page answers."""
        prefix = self.access.path_prefix
        path = scope.get("path", "")
        if not prefix or path == prefix or path.startswith(prefix + "/"):
            return scope
        raw = scope.get("raw_path") or path.encode()
        return {**scope, "path": prefix + path, "raw_path": prefix.encode() + raw}

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        identity: Identity | None,
        peer: str | None,
        status: int,
        title: str,
        message: str,
    ) -> None:
        """Refuse with a page (or a refused handshake), the refusal audited first; past
        the person's budget of refusals, 429 without an entry."""
        if self.audit_log is not None:
            unwritten = await run_in_threadpool(
                self.audit_log.refuse,
                identity,
                "console_request",
                f"{scope.get('method', 'WEBSOCKET')} {scope.get('path', '')[:500]}",
                {"status": status, "refusal": title, "via": scope["type"]},
                peer,
            )
            if unwritten:
                status, title, message = unwritten.status, "Refused", html.escape(str(unwritten))
        if scope["type"] == "websocket":
            # Close before accepting: the browser sees the handshake refused.
            await send({"type": "websocket.close", "code": 4000 + status})
            return
        response = HTMLResponse(
            _PAGE.format(title=title, message=message),
            status_code=status,
            headers={"Cache-Control": "no-store"},
        )
        await response(scope, receive, send)
