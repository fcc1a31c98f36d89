"""Bounded, honest outbound HTTP for every provider call (SendGrid, Neon).

Two promises. *Bounded*: connecting (TLS included) has its own timeout, and the answer
has another, both for each read and for the whole answer once the request is written, so
a provider that accepts the connection and says nothing, or trickles its answer a byte
at a time, costs at most the read timeout, never a hung run. *Honest*: a failure says whether
the request provably never left (no connection, DNS, a failure while it was still
being written: `NotSent`, safe to retry) or may have reached the provider (it was
written whole, then the answer timed out or the connection dropped: `OutcomeUnknown`,
never to be repeated blindly for a call that is not idempotent, such as sending email).

urllib's own `timeout` is one number for both phases and does not tell the phases
apart, so the connection classes here apply the two timeouts and record the moment the
request was written in full.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import socket
import ssl
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 30.0


@dataclass(frozen=True)
class Timeouts:
    """Seconds to connect (TCP and TLS), and to wait for the answer: for each read, and
    for the whole answer from the moment the request was written."""

    connect: float = DEFAULT_CONNECT_TIMEOUT
    read: float = DEFAULT_READ_TIMEOUT


class NotSent(OSError):
    """The request never reached the provider whole (no connection, DNS, a failure while
    writing it): nothing can have happened there, so trying again is safe."""


class OutcomeUnknown(OSError):
    """The request was written in full, then no answer came (a read timeout, a reset, a
    closed connection): the provider may have acted on it."""


class _Written:
    """When the request was written in full, and the deadline for its whole answer."""

    def __init__(self) -> None:
        self.done = False
        self.expired = False
        self._timer: threading.Timer | None = None

    def start_deadline(self, seconds: float, sock: socket.socket) -> None:
        # A provider trickling its answer a byte at a time never trips a per-read timeout;
        # shutting the socket at the deadline ends any read, wherever it is waiting.
        def expire() -> None:
            self.expired = True
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

        self._timer = threading.Timer(seconds, expire)
        self._timer.daemon = True
        self._timer.start()

    def stop_deadline(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _bounded(base: type[http.client.HTTPConnection], timeouts: Timeouts, written: _Written) -> Any:
    class Bounded(base):  # type: ignore[valid-type,misc]
        def __init__(self, host: str, **kwargs: Any) -> None:
            kwargs["timeout"] = timeouts.connect  # urllib's single timeout is replaced
            super().__init__(host, **kwargs)

        def connect(self) -> None:
            super().connect()  # TCP, and for HTTPS the TLS handshake, under `connect`
            assert self.sock is not None
            self.sock.settimeout(timeouts.read)

        def request(self, *args: Any, **kwargs: Any) -> None:
            super().request(*args, **kwargs)
            written.done = True  # headers and body handed to the kernel in full
            assert self.sock is not None
            written.start_deadline(timeouts.read, self.sock)

    return Bounded


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, never followed: urllib would repeat the call elsewhere (a
    POST as a GET, its body dropped) carrying the Authorization header to whatever host
    the Location names, and report that host's answer as the provider's."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _HTTP(urllib.request.HTTPHandler):
    def __init__(self, connection: Any) -> None:
        super().__init__()
        self._connection = connection

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(self._connection, req)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Loading the system's certificates takes ~40 ms: once per process, not per request.
    return ssl.create_default_context()


class _HTTPS(urllib.request.HTTPSHandler):
    def __init__(self, connection: Any) -> None:
        super().__init__(context=_tls_context())
        self._connection = connection

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(self._connection, req, context=self._context)  # type: ignore[attr-defined]


@dataclass
class Answer:
    """A whole answer: read inside the timeouts, so nothing is read lazily later."""

    status: int
    body: bytes
    headers: Any

    # The interface python_http_client's Response reads.
    def getcode(self) -> int:
        return self.status

    def read(self) -> bytes:
        return self.body

    def info(self) -> Any:
        return self.headers


def send(request: urllib.request.Request, timeouts: Timeouts) -> Answer:
    """Send `request` and read its whole answer, any status (3xx, 4xx and 5xx are answers
    too: redirects are not followed).

    Raises NotSent when the request provably never left (whatever stopped it: a refused
    connection, DNS, TLS, a header http.client refuses), OutcomeUnknown when it was
    written and no whole answer came back.
    """
    written = _Written()
    opener = urllib.request.build_opener(
        _NoRedirects(),
        _HTTP(_bounded(http.client.HTTPConnection, timeouts, written)),
        _HTTPS(_bounded(http.client.HTTPSConnection, timeouts, written)),
    )
    where = f"{request.get_method()} {request.full_url}"
    try:
        try:
            with opener.open(request) as response:
                return Answer(response.getcode(), response.read(), response.info())
        except urllib.error.HTTPError as err:
            with err:
                return Answer(err.code, err.read(), err.headers)
        finally:
            written.stop_deadline()
    except Exception as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        # Only network errors are quoted: anything else (http.client's ValueError for a
        # header it refuses, say) may quote the request itself, API key included.
        known = isinstance(reason, (OSError, http.client.HTTPException))
        what = (
            f"{type(reason).__name__}: {reason}".rstrip(": ")
            if known
            else (f"{type(reason).__name__} (details withheld: they may quote the request)")
        )
        what = what.replace("\x00", "?")
        if written.expired:
            what = f"no whole answer within {timeouts.read:g} s (the read timeout)"
        if written.done:
            raise OutcomeUnknown(
                f"{where}: the request was sent, then {what} before the answer"
            ) from exc
        raise NotSent(f"{where}: not sent ({what})") from exc
