"""The report download endpoint at the protocol level, over raw sockets: every request
line gets an HTTP/1.x answer with a status line, and a silent client is dropped.

No database: every request here is answered before a report would be looked up.
"""

from __future__ import annotations

import base64
import socket
import threading
import time

import pytest

from mm_orchestration.console.downloads import (
    REQUEST_TIMEOUT_SECONDS,
    make_server,
    serve_in_background,
)
from mm_orchestration.platform.report_store import ReportStore

# Never contacted: nothing in these tests reaches a lookup.
UNUSED_DATABASE = "postgresql://nobody@127.0.0.1:1/none"
AUTH = b"Authorization: Basic " + base64.b64encode(b"compliance:s3cret") + b"\r\n"


@pytest.fixture
def serve(tmp_path):
    """Start a download server (with the given socket timeout); yield its port."""
    servers = []

    def start(timeout: float = REQUEST_TIMEOUT_SECONDS, deadline: float = 60.0) -> int:
        store = ReportStore(root=str(tmp_path / "reports"))
        server = make_server(
            store, UNUSED_DATABASE, "s3cret", port=0, timeout=timeout, deadline=deadline
        )
        serve_in_background(server)
        servers.append(server)
        return server.server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def exchange(port: int, data: bytes, wait: float = 10.0) -> bytes:
    """Send `data`, then read until the server closes the connection (at most `wait` s
    of silence: a server that never answers fails the test with a timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(reply: bytes) -> tuple[bytes, int]:
    version, code, _ = reply.split(b"\r\n", 1)[0].split(b" ", 2)
    return version, int(code)


@pytest.mark.parametrize("line", [b"GET /reports/x.csv\r\n", b"GET /\n", b"GET /reports/x.csv"])
def test_an_http_0_9_request_gets_a_real_http_1_400_at_once(serve, line):
    """http.server would take `GET /path` for HTTP/0.9: wait for headers such a client
    never sends, then answer with a bare body and no status line."""
    port = serve()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(line)
        if not line.endswith(b"\n"):
            sock.shutdown(socket.SHUT_WR)  # the line ends with the connection
        reply = sock.makefile("rb").read()
    assert status_of(reply) == (b"HTTP/1.0", 400), reply
    assert b"Bad request line" in reply and b"METHOD /path HTTP/1.1" in reply
    assert time.monotonic() - started < REQUEST_TIMEOUT_SECONDS / 3  # not after a timeout


@pytest.mark.parametrize(
    "request_line",
    [
        b"\r\n",  # a blank line
        b"GET\r\n",
        b"HELLO\r\n",
        b"POST /reports/x.csv\r\n",  # HTTP/0.9 had only GET
        b"\x00\xff\xfe\r\n",
        b"GET / FOO\r\n\r\n",  # a version that is not HTTP/x.y
        b"GET / HTTP/1.x\r\n\r\n",
        b"GET / HTTP/\xd9\xa1.1\r\n\r\n",  # an Arabic-Indic 1 in the version
        b"GET /reports/a b HTTP/1.1\r\n\r\n",  # a space in the path: four words
        b"GET /reports/x HTTP/1.1 extra\r\n\r\n",
    ],
)
def test_every_malformed_request_line_gets_a_4xx_with_a_status_line(serve, request_line):
    reply = exchange(serve(), request_line)
    version, code = status_of(reply)
    assert version in (b"HTTP/1.0", b"HTTP/1.1") and 400 <= code < 500, reply


def test_well_formed_requests_are_answered_as_before(serve):
    port = serve()
    reply = exchange(port, b"GET /reports/x.csv HTTP/1.1\r\nHost: h\r\n\r\n")
    assert status_of(reply) == (b"HTTP/1.0", 401) and b"WWW-Authenticate: Basic" in reply
    # The refusal says how to sign in (the user name is compliance), never the password.
    assert b"user name compliance" in reply and b"s3cret" not in reply
    wrong_user = b"Authorization: Basic " + base64.b64encode(b"someone:s3cret") + b"\r\n"
    reply = exchange(port, b"GET /reports/x.csv HTTP/1.0\r\n" + wrong_user + b"\r\n")
    assert status_of(reply) == (b"HTTP/1.0", 401)
    reply = exchange(port, b"GET /elsewhere HTTP/1.0\r\n" + AUTH + b"\r\n")
    assert status_of(reply) == (b"HTTP/1.0", 404)
    reply = exchange(port, b"GET /reports/%FF HTTP/1.0\r\n" + AUTH + b"\r\n")
    assert status_of(reply) == (b"HTTP/1.0", 400)
    reply = exchange(port, b"DELETE /reports/x.csv HTTP/1.1\r\n\r\n")
    assert status_of(reply) == (b"HTTP/1.0", 501)


def test_each_connection_has_a_socket_timeout_by_default(serve):
    port = serve()
    assert REQUEST_TIMEOUT_SECONDS == 30
    seen: list[float | None] = []
    original = socket.socket.settimeout

    def spy(sock, value):
        if sock.getsockname()[1] == port:  # the server's side of a connection
            seen.append(value)
        return original(sock, value)

    socket.socket.settimeout = spy  # type: ignore[method-assign]
    try:
        exchange(port, b"GET /elsewhere HTTP/1.0\r\n\r\n")
    finally:
        socket.socket.settimeout = original  # type: ignore[method-assign]
    assert REQUEST_TIMEOUT_SECONDS in seen


@pytest.mark.parametrize(
    "said",
    [
        b"",  # connects and says nothing
        b"GET /reports/x.csv HT",  # stops in the request line
        b"GET /reports/x.csv HTTP/1.1\r\nHost: h\r\n",  # stops before the blank line
    ],
)
def test_a_silent_client_is_dropped_and_frees_its_thread(serve, said):
    port = serve(timeout=0.5)
    before = threading.active_count()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
        silent.sendall(said)
        # Meanwhile other clients are served.
        reply = exchange(port, b"GET /elsewhere HTTP/1.0\r\n" + AUTH + b"\r\n")
        assert status_of(reply) == (b"HTTP/1.0", 404)
        started = time.monotonic()
        assert silent.recv(65536) == b""  # the server hung up; no 10 s socket.timeout here
        assert time.monotonic() - started < 5
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before


def test_a_trickling_client_is_dropped_at_the_request_deadline(serve):
    """A byte every 0.3 s never trips the 1 s per-read timeout; the 2 s deadline for the
    whole request ends it all the same."""
    port = serve(timeout=1.0, deadline=2.0)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
        try:
            for byte in b"GET /reports/x.csv HTTP/1.1\r\nHost: hhhhhhhhhhhhhhhhhhhhhhhhhhhh":
                slow.sendall(bytes([byte]))
                time.sleep(0.3)
        except OSError:
            pass  # the server hung up mid-trickle
        try:
            assert slow.recv(65536) == b""
        except ConnectionResetError:
            pass
    assert time.monotonic() - started < 8


def test_head_is_answered_like_get_without_a_body(serve):
    port = serve()
    reply = exchange(port, b"HEAD /elsewhere HTTP/1.0\r\n" + AUTH + b"\r\n")
    assert status_of(reply) == (b"HTTP/1.0", 404)
    assert reply.endswith(b"\r\n\r\n") and b"Content-Length: 9" in reply
