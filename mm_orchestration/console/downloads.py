"""The compliance team's download endpoint for stored reports.

A small standalone HTTP server (bound to 127.0.0.1 unless told otherwise) that serves
`/reports/<key>` from the ReportStore behind HTTP Basic authentication (user name
`compliance`, the password from MM_REPORTS_PASSWORD), for a deployment without the job
console's front; behind the front (mm_orchestration.console) the same reports are served
to signed-in people as themselves, each download audited, with no shared password. A request's
key is a report's place in the store; `ops.residency_reports` records the absolute
URI the store gives that key (`file:///...`, `s3://bucket/key`), so the key is
served only when a weekly report recorded that URI (or, for a row written before
the rows held URIs and not yet rewritten, the key itself). It refuses paths outside
the store, keys that no weekly report recorded, and any file whose SHA-256 no longer
matches the recorded one. The links in the UI carry no secret: the browser asks for
the password.
"""

from __future__ import annotations

import base64
import hmac
import mimetypes
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import psycopg

from mm_orchestration.monitoring.joblog import log_event
from mm_orchestration.platform.db import connect
from mm_orchestration.platform.report_store import (
    ReportStore,
    ReportStoreError,
    ReportStoreUnavailable,
)

# How long a connection may stay silent (between any two reads or writes) before the
# server drops it, so that a client that connects and says nothing, or stops half way
# through its request, does not hold a thread for ever.
REQUEST_TIMEOUT_SECONDS = 30.0
# How long a client may take to send its whole request (line and headers): the timeout
# above is per read, so a client trickling a byte every 29 s would otherwise hold its
# thread for ever. The answer itself (a large report on a slow link) is not limited.
REQUEST_DEADLINE_SECONDS = 60.0

# The one user name of the standalone endpoint's HTTP Basic sign-in (docs/cli.md: serve-reports).
REPORTS_USER = "compliance"
UNAUTHORISED = (
    "401 Unauthorized: sign in with the user name compliance and the password in "
    "MM_REPORTS_PASSWORD (ask the platform team). Behind the job console (mm-jobs console) "
    "reports need no password: open the link from the console as yourself.\n"
)

RECORDED_HASH = """
SELECT sha256 FROM ops.residency_reports WHERE storage_uri = ANY(%(refs)s)
UNION ALL
SELECT html_sha256 FROM ops.residency_reports WHERE html_uri = ANY(%(refs)s)
"""


# The report a stored object is, for the audit trail: the residency report of which week.
REPORT_OF = """
SELECT week_start, CASE WHEN storage_uri = ANY(%(refs)s) THEN 'csv' ELSE 'html' END
  FROM ops.residency_reports
 WHERE storage_uri = ANY(%(refs)s) OR html_uri = ANY(%(refs)s)
 LIMIT 1
"""


def report_of(store: ReportStore, database_url: str, key: str) -> dict[str, str] | None:
    """Which report `key` holds, as compliance names it (`residency`, the week's partition,
    the format), or None when no report was recorded under it."""
    try:
        refs = [store.uri(key), key]
        with connect(database_url) as conn:
            row = conn.execute(REPORT_OF, {"refs": refs}).fetchone()
    except (ReportStoreError, ValueError, psycopg.Error):
        return None  # the name is a nicety: the key is recorded in any case
    if row is None:
        return None
    return {"report": "residency", "partition": row[0].isoformat(), "format": row[1]}


@dataclass(frozen=True)
class Found:
    """A report (status 200) or why not (another status, the reason as the body)."""

    status: int
    body: bytes
    key: str = ""

    def headers(self) -> dict[str, str]:
        """HTML opens in the browser (sandboxed: a report is data, never a program); CSV
        and anything else downloads."""
        kind = mimetypes.guess_type(self.key)[0] or "application/octet-stream"
        name = self.key.rsplit("/", 1)[-1].replace('"', "")
        inline = kind == "text/html"
        headers = {
            "Content-Type": f"{kind}; charset=utf-8" if kind.startswith("text/") else kind,
            "Content-Length": str(len(self.body)),
            "Content-Disposition": f'{"inline" if inline else "attachment"}; filename="{name}"',
            "X-Content-Type-Options": "nosniff",
        }
        if inline:
            headers["Content-Security-Policy"] = (
                "sandbox; default-src 'none'; style-src 'unsafe-inline'"
            )
        return headers


def lookup(store: ReportStore, database_url: str, key: str) -> Found:
    """The stored report under `key`, if a weekly report recorded it and its SHA-256 still
    matches; else the status and reason to answer with."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        return Found(400, b"a report name has no control characters")
    try:
        store.check_key(key)  # refuses anything outside the store
        refs = [store.uri(key), key]  # the URI recorded now; a legacy row's key
        with connect(database_url) as conn:
            row = conn.execute(RECORDED_HASH, {"refs": refs}).fetchone()
        if row is None or row[0] is None:
            return Found(404, b"no report recorded under that name")
        return Found(200, store.get(key, sha256=row[0]), key)
    except ReportStoreUnavailable as exc:  # the store's fault, not the report's: try later
        return Found(503, str(exc).encode())
    except ReportStoreError as exc:
        status = 409 if "SHA-256" in str(exc) else 404
        if "outside" in str(exc):
            status = 403
        return Found(status, str(exc).encode())


def make_server(
    store: ReportStore,
    database_url: str,
    password: str,
    host: str = "127.0.0.1",
    port: int = 3001,
    timeout: float = REQUEST_TIMEOUT_SECONDS,
    deadline: float = REQUEST_DEADLINE_SECONDS,
) -> ThreadingHTTPServer:
    """The download endpoint on `host:port` (not yet serving: see serve_in_background).
    `timeout`: seconds a connection may stay silent before it is dropped; `deadline`:
    seconds a client has to send its whole request."""
    if not password:
        raise ValueError("MM_REPORTS_PASSWORD is required to serve reports")
    request_timeout = timeout  # a class body cannot read an enclosing name it assigns

    class Handler(BaseHTTPRequestHandler):
        raw_requestline: bytes  # set by handle_one_request; typeshed does not declare it
        # StreamRequestHandler.setup() gives each connection's socket this timeout; a read
        # or write that waits longer ends the connection (handle_one_request's TimeoutError).
        timeout = request_timeout
        # http.server's default is HTTP/0.9, whose answers have no status line: a malformed
        # request line would get a bare HTML page no HTTP/1.x client can read as an error.
        default_request_version = "HTTP/1.0"

        def setup(self) -> None:
            super().setup()
            # Shutting the socket down ends a read that is still waiting for the request.
            self._deadline = threading.Timer(deadline, self._too_slow)
            self._deadline.daemon = True
            self._deadline.start()

        def _too_slow(self) -> None:
            log_event("report.protocol_error", detail=f"request not complete in {deadline} s")
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed

        def finish(self) -> None:
            self._deadline.cancel()
            super().finish()

        def parse_request(self) -> bool:
            """Refuse with a 400 (status line and all) a request line without an HTTP
            version: HTTP/0.9's `GET /path`, a lone word or a blank line. http.server
            would serve `GET /path` as HTTP/0.9 (a body with no status line, after
            waiting for headers such a client never sends) and answer the others with
            a bare body or nothing at all. Every other line is parsed as http.server
            does, its errors now with a status line too (default_request_version)."""
            # The same reading as BaseHTTPRequestHandler.parse_request's, to agree on
            # the number of words with it.
            line = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
            if len(line.split()) >= 3:
                return super().parse_request()
            self.command, self.requestline = "", line
            self.request_version = self.default_request_version  # send_error reads it
            self.close_connection = True
            self.send_error(400, "Bad request line", "Expected: METHOD /path HTTP/1.1")
            return False

        def do_HEAD(self) -> None:
            """As GET, without the body (a client checking a link, a proxy's health check)."""
            self.do_GET()

        def do_GET(self) -> None:
            self._deadline.cancel()  # the request is in; its answer may take its time
            try:
                if not self._authorised():
                    body = UNAUTHORISED.encode()
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="mm-orchestration reports"')
                    self.send_header("Content-Type", "text/plain; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(body)
                    return
                self._serve()
            except Exception as exc:  # every request gets an answer, whatever it holds
                log_event("report.error", error=type(exc).__name__)
                self._refuse(500, "the report could not be read; the server log says why")

        def _serve(self) -> None:
            try:
                path = unquote(urlsplit(self.path).path, errors="strict")
            except (UnicodeDecodeError, ValueError):
                return self._refuse(400, "that is not a valid report name (bad %-encoding)")
            if not path.startswith("/reports/"):
                return self._refuse(404, "not found")
            key = path[len("/reports/") :]
            found = lookup(store, database_url, key)
            if found.status != 200:
                return self._refuse(found.status, found.body.decode())
            self.send_response(200)
            for name, value in found.headers().items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(found.body)
            log_event("report.downloaded", key=key)

        def _authorised(self) -> bool:
            header = self.headers.get("Authorization", "")
            if not header.startswith("Basic "):
                return False
            try:
                user, _, given = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return False
            # Both compared in constant time, and both always (no early exit on the name).
            right_user = hmac.compare_digest(user.encode(), REPORTS_USER.encode())
            right_password = hmac.compare_digest(given.encode(), password.encode())
            return right_user and right_password

        def _refuse(self, status: int, reason: str) -> None:
            body = reason.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            log_event("report.refused", status=status, reason=reason)

        def log_error(self, format: str, *args: object) -> None:
            # http.server's protocol errors (a malformed request line, a timeout) as job
            # log events; the request line is the client's text, so it is cut short.
            log_event("report.protocol_error", detail=(format % args)[:300])

        def log_message(self, *args: object) -> None:
            pass

    return ThreadingHTTPServer((host, port), Handler)


def serve_in_background(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="reports")
    thread.start()
    return thread
