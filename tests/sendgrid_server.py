"""A local stand-in for SendGrid's v3 API: records every request, answers as scripted, and
enforces SendGrid's published limits the way SendGrid does (docs/sendgrid.md).

- A request is accepted or refused whole. A malformed address anywhere is a 400 naming
  each culprit (`personalizations.3.to.0.email`, "Does not contain a valid address."),
  as is an address repeated inside one personalization; so is any address in `refuse`
  (an address SendGrid refuses though it looks valid to us).
- A body of 30 MB or more is a 413; more than 1,000 personalizations, or more than
  1,000 recipients in total, a 400.
- Scripted replies (`then`, or a `rule` per body) for the rest: any status, a `delay`
  before answering (a stall: the client's read timeout fires first), or `drop`: read
  the whole request, then close the connection without a word (the answer is lost), or
  `trickle`: answer one byte at a time (no single read waits long; the whole does).

The real `sendgrid` SDK is pointed at it through its `host` argument, so tests exercise
the SDK's own request building and error classes, with no network.
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.background_server import serve_in_background

MAX_BODY_BYTES = 30_000_000  # "less than 30 MB"
MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000
# SendGrid's own check is looser than RFC 5322 and stricter than nothing: one @, no
# spaces, a dot in the domain.
_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass
class Reply:
    status: int = 202
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds of silence before answering (a stall)
    drop: bool = False  # read the request, then close the connection without an answer
    trickle: float = 0.0  # seconds between bytes of the answer (each read gets a byte)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int  # what SendGrid did with it (0: the connection was dropped unanswered)
    size: int = 0  # body bytes


def _error(status: int, errors: list[dict[str, Any]]) -> Reply:
    return Reply(status, {"errors": errors})


def sendgrid_verdict(body: Any, size: int, refuse: set[str]) -> Reply | None:
    """What SendGrid itself answers to this mail/send body, or None when it takes it."""
    if size >= MAX_BODY_BYTES:
        return _error(413, [{"message": "Payload Too Large", "field": None}])
    if not isinstance(body, dict) or not isinstance(body.get("personalizations"), list):
        return _error(400, [{"message": "The personalizations field is required.",
                             "field": "personalizations"}])  # fmt: skip
    people = body["personalizations"]
    if len(people) > MAX_PERSONALIZATIONS:
        return _error(400, [{"message": "The personalizations field must have 1,000 or fewer "
                             "items.", "field": "personalizations"}])  # fmt: skip
    recipients = sum(len(p.get(k) or []) for p in people for k in ("to", "cc", "bcc"))
    if recipients > MAX_RECIPIENTS:
        return _error(400, [{"message": "The total number of recipients must be 1000 or "
                             "fewer.", "field": "personalizations"}])  # fmt: skip
    errors = []
    for i, p in enumerate(people):
        seen: set[str] = set()
        for kind in ("to", "cc", "bcc"):
            for j, item in enumerate(p.get(kind) or []):
                address = str(item.get("email") or "")
                if not _ADDRESS.match(address) or address.lower() in refuse:
                    errors.append({"message": "Does not contain a valid address.",
                                   "field": f"personalizations.{i}.{kind}.{j}.email"})  # fmt: skip
                elif address.lower() in seen:
                    errors.append({"message": "Each email address in the personalization block "
                                   "should be unique between to, cc, and bcc. We found the "
                                   "first duplicate instance of [" + address + "] in the "
                                   f"personalizations.{i}.{kind} field.",
                                   "field": f"personalizations.{i}.{kind}"})  # fmt: skip
                seen.add(address.lower())
    return _error(400, errors) if errors else None


class SendGridRecorder:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.arrived = threading.Event()  # set as soon as any request arrives
        self.arrivals = 0  # counted on arrival, before any scripted delay
        self.script: list[Reply] = []
        self.rule: Any = None  # optional callable(body) -> Reply | None
        self.refuse: set[str] = set()  # addresses (lower case) SendGrid refuses as invalid
        self.enforce = True  # SendGrid's own limits and address checks
        # Keep each request's decoded body for the test to read. A benchmark's stand-in
        # keeps none: a million people's bodies kept would grow its heap, and its garbage
        # collector's pauses with it, until it answers slower than SendGrid ever does.
        self.keep_bodies = True
        self._closing = threading.Event()
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self._handle()

            def do_DELETE(self) -> None:
                self._handle()

            def do_GET(self) -> None:
                # /__stats: what a benchmark in another process needs to know.
                payload = json.dumps({"mail_requests": len(recorder.mail_requests)}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode()
                with recorder._lock:
                    recorder.arrivals += 1
                reply = recorder._next_reply(self.path, body, len(raw))
                with recorder._lock:
                    recorder.requests.append(
                        Recorded(
                            self.command,
                            self.path,
                            dict(self.headers),
                            body if recorder.keep_bodies else None,
                            0 if reply.drop else reply.status,
                            len(raw),
                        )
                    )
                recorder.arrived.set()
                if reply.drop:
                    # A reset: the answer is lost after SendGrid had the whole request.
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.close_connection = True
                    return
                if reply.delay and recorder._closing.wait(reply.delay):
                    self.close_connection = True
                    return
                payload = json.dumps(reply.body).encode() if reply.body is not None else b""
                if reply.trickle:
                    self._trickle(reply, payload)
                    return
                self.send_response(reply.status)
                headers = {"X-Message-Id": uuid.uuid4().hex[:22], **reply.headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                if payload:
                    self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload)

            def _trickle(self, reply: Reply, payload: bytes) -> None:
                head = (
                    f"HTTP/1.1 {reply.status} Accepted\r\nContent-Length: {len(payload)}\r\n"
                    "X-Message-Id: trickled\r\n\r\n"
                ).encode()
                self.close_connection = True
                try:
                    for byte in head + payload:
                        if recorder._closing.wait(reply.trickle):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                except OSError:
                    pass  # the client gave up: what the test wants

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that gave up (its read timeout) is what some tests want

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = serve_in_background(self.server)

    def _next_reply(self, path: str, body: Any, size: int) -> Reply:
        with self._lock:
            if self.enforce and path.endswith("/mail/send"):
                verdict = sendgrid_verdict(body, size, self.refuse)
                if verdict is not None:
                    return verdict
            if self.rule is not None:
                reply = self.rule(body)
                if reply is not None:
                    return reply
            if self.script:
                return self.script.pop(0)
        return Reply()

    def then(self, *replies: Reply) -> SendGridRecorder:
        self.script.extend(replies)
        return self

    @property
    def mail_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/mail/send")]

    def accepted_recipients(self) -> list[str]:
        """Every address in a request SendGrid accepted (202), answered or not."""
        return [
            to["email"]
            for r in self.mail_requests
            if r.status == 202
            for p in r.body["personalizations"]
            for to in p["to"]
        ]

    def accepted_keys(self) -> list[str]:
        """The outbox key of every personalization SendGrid accepted."""
        return [
            p["custom_args"]["idempotency_key"]
            for r in self.mail_requests
            if r.status == 202
            for p in r.body["personalizations"]
        ]

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    # Serve from a process of its own (benchmarks), until standard input closes.
    import sys

    server = SendGridRecorder()
    server.keep_bodies = False
    print(server.url, flush=True)
    sys.stdin.read()
    server.close()
