"""A local stand-in for SendGrid's v3 API: records every request, answers as scripted.

The real `sendgrid` SDK is pointed at it through its `host` argument, so tests exercise
the SDK's own request building and error classes, with no network.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 202
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int


class SendGridRecorder:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.arrived = threading.Event()  # set as soon as any request arrives
        self.arrivals = 0  # counted on arrival, before any scripted delay
        self.script: list[Reply] = []
        self.rule: Any = None  # optional callable(body) -> Reply | None
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
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
                recorder.arrived.set()
                reply = recorder._next_reply(body)
                if reply.delay:
                    time.sleep(reply.delay)
                with recorder._lock:
                    recorder.requests.append(
                        Recorded(self.command, self.path, dict(self.headers), body, reply.status)
                    )
                payload = json.dumps(reply.body).encode() if reply.body is not None else b""
                self.send_response(reply.status)
                headers = {"X-Message-Id": uuid.uuid4().hex[:22], **reply.headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                if payload:
                    self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _next_reply(self, body: Any) -> Reply:
        with self._lock:
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
        """Every address in a request SendGrid accepted (202)."""
        return [
            to["email"]
            for r in self.mail_requests
            if r.status == 202
            for p in r.body["personalizations"]
            for to in p["to"]
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    # Serve from a process of its own (benchmarks), until standard input closes.
    import sys

    server = SendGridRecorder()
    print(server.url, flush=True)
    sys.stdin.read()
    server.close()
