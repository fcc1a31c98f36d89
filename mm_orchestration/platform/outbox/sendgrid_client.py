"""The SendGrid client: one v3 API request through the `sendgrid` SDK, with both timeouts,
retried only when it provably never took effect, and its answer read as exactly what it
means for the rows it carries (accepted; refused, and whose fault; not taken yet; or
outcome unknown, never retried since SendGrid may have sent it).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from mm_orchestration.monitoring.joblog import log_event
from mm_orchestration.platform import http

# python_http_client logs every request's headers (the API key among them) and body at
# DEBUG: those lines must never be written, whatever level the process logs at.
logging.getLogger("python_http_client.client").setLevel(logging.INFO)

# Fields of a request that are the same in every request we make (the sender, the
# template, the categories): SendGrid refusing one of them refuses every request alike.
# The others (personalizations, subject, content, attachments) belong to the message.
ENVELOPE_FIELDS = frozenset(
    {"from", "reply_to", "reply_to_list", "template_id", "categories", "asm",
     "mail_settings", "tracking_settings", "ip_pool_name", "batch_id", "headers"}
)  # fmt: skip
_FIELD_ROOT = re.compile(r"^[A-Za-z_]+")
# A 4xx that says "not now", not "no": the request was not processed, so it may go again.
RETRYABLE_4XX = frozenset({408, 425, 429})


class SendError(Exception):
    """SendGrid did not take the request, and what that means for its rows.

    `transient`: not taken yet, nothing happened at SendGrid (429, 5xx, no connection
    after our own retries): the rows may go again later. `unknown`: the request was
    written and its answer lost: SendGrid may have sent it, so its rows must never go
    again automatically. Otherwise a refusal (4xx) with SendGrid's `errors`, each a
    (field, message) pair, the field naming the culprit where SendGrid says.
    """

    def __init__(
        self,
        message: str,
        status: int | None,
        transient: bool,
        *,
        unknown: bool = False,
        errors: Sequence[tuple[str | None, str]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient
        self.unknown = unknown
        self.errors = tuple(errors)

    def named_personalizations(self) -> dict[int, str]:
        """SendGrid's message per personalization index it named (`personalizations.3...`)."""
        return self.named_entries("personalizations")

    def named_entries(self, array: str) -> dict[int, str]:
        """SendGrid's message per index of `array` it named (`emails.3`, `emails[3]`)."""
        pattern = re.compile(rf"^{re.escape(array)}(?:\.(\d+)|\[(\d+)\])(?:[.\[]|$)")
        named: dict[int, str] = {}
        for name, message in self.errors:
            found = pattern.match((name or "").strip())
            if found:
                index = int(found.group(1) or found.group(2))
                named[index] = "; ".join(filter(None, [named.get(index), message]))
        return named

    @property
    def refuses_every_request(self) -> bool:
        """A refusal that every other request of this delivery would get too, so delivery
        stops and leaves the rest pending: a revoked key (401), a refused sender (403), a
        4xx naming a field of the envelope (`from.email`, `template_id`: ENVELOPE_FIELDS),
        or a 4xx that is about the call itself (404, 405, 415...). A 400 or 413 naming a
        personalization, the subject or the content, or nothing, is the message's own. A
        redirect (3xx) means SENDGRID_API_HOST is not SendGrid's API: every request alike."""
        if self.status is not None and 300 <= self.status < 400:
            return True
        if self.status is None or not 400 <= self.status < 500 or self.transient:
            return False
        if self.status in (400, 413):
            return any(
                (root := _FIELD_ROOT.match(name.strip())) and root.group(0) in ENVELOPE_FIELDS
                for name, _ in self.errors
                if name
            )
        return True


class _BoundedClient:
    """python_http_client's Client with our transport: both timeouts, and the honest split
    between "never left" and "outcome unknown" (mm_orchestration.platform.http). The SDK builds the
    request and the error classes as usual; only the final open is ours."""

    @staticmethod
    def make(host: str, headers: dict[str, str], timeouts: http.Timeouts) -> Any:
        import python_http_client
        from python_http_client.exceptions import HTTPError, err_dict

        class Client(python_http_client.Client):
            def _build_client(self, name: str | None = None) -> Any:
                url_path = self._url_path + [name] if name else self._url_path
                return Client(
                    host=self.host,
                    version=self._version,
                    request_headers=self.request_headers,
                    url_path=url_path,
                    append_slash=self.append_slash,
                    timeout=self.timeout,
                )

            def _make_request(
                self, opener: Any, request: urllib.request.Request, timeout: Any = None
            ) -> Any:
                answer = http.send(request, timeouts)
                if not 200 <= answer.status < 300:  # a redirect is no acceptance either
                    error_class = err_dict.get(answer.status, HTTPError)
                    raise error_class(answer.status, "", answer.body, answer.headers)
                return answer

        return Client(host=host, request_headers=headers, version=3)


def sdk_client(api_key: str | None, host: str, timeouts: http.Timeouts) -> Any:
    """The SDK's client for `host`, with our transport (both timeouts)."""
    from sendgrid import SendGridAPIClient

    client = SendGridAPIClient(api_key=api_key, host=host.rstrip("/"))
    # The SDK's own client has no timeout at all; ours has both (and tells a request
    # that never left from one whose answer was lost).
    client.client = _BoundedClient.make(client.host, client._default_headers, timeouts)
    return client


def call(
    request: Callable[[], Any],
    max_attempts: int,
    backoff_seconds: float,
    max_rate_limit_wait_seconds: float,
) -> Any:
    """One SendGrid request. Retried only when it provably never took effect: 429
    (until X-RateLimit-Reset, when that is within `max_rate_limit_wait_seconds`; a
    later reset is a transient SendError at once), 408, 425 and 5xx with an answer, and
    no connection (refused, DNS, connect timeout). A lost answer is never retried:
    SendError(unknown=True)."""
    from python_http_client.exceptions import HTTPError

    backoff = backoff_seconds
    last: SendError | None = None
    for attempt in range(1, max_attempts + 1):
        try:
            return request()
        except HTTPError as exc:
            status = int(exc.status_code)
            errors = _sendgrid_errors(exc.body)
            message = "; ".join(m for _, m in errors) or _raw(exc.body)
            if status == 429:
                last = SendError(f"SendGrid 429 rate limited: {message}", status, True)
                reset = _rate_limit_wait(exc.headers)
                if reset is None or reset <= 0:  # no usable reset, or one just past
                    wait = backoff
                    backoff *= 2
                elif reset > max_rate_limit_wait_seconds:
                    # Waiting would hold the run for longer than we allow: the rows
                    # stay pending for the op's retry or the next run, at once.
                    raise SendError(
                        f"SendGrid 429 rate limited for {reset:.0f} s more (longer than "
                        f"the {max_rate_limit_wait_seconds:.0f} s a run waits; "
                        f"the rest waits for the next try): {message}",
                        status,
                        True,
                    ) from exc
                else:
                    wait = reset
            elif status in RETRYABLE_4XX or status >= 500:
                last = SendError(f"SendGrid {status}: {message}", status, True)
                wait = backoff
                backoff *= 2
            else:
                if status < 400:
                    where = exc.headers.get("Location", "?") if exc.headers else "?"
                    message = (
                        f"a redirect to {where[:200]}, not an answer (is "
                        "SENDGRID_API_HOST SendGrid's API, https://api.sendgrid.com?)"
                    )
                raise SendError(
                    f"SendGrid {status}: {message or '(no error message)'}",
                    status,
                    False,
                    errors=errors,
                ) from exc
        except http.OutcomeUnknown as exc:
            raise SendError(f"SendGrid outcome unknown: {exc}", None, False, unknown=True) from exc
        except http.NotSent as exc:
            last = SendError(f"SendGrid unreachable: {exc}", None, True)
            wait = backoff
            backoff *= 2
        log_event("sendgrid.retry", attempt=attempt, status=last.status, waitSeconds=round(wait, 2))
        if attempt < max_attempts:
            time.sleep(wait)
    assert last is not None
    raise last


def _raw(body: Any) -> str:
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    return str(body)[:500]


def _sendgrid_errors(body: Any) -> list[tuple[str | None, str]]:
    """SendGrid's `errors[]` as (field, message) pairs; [] when the body has none."""
    try:
        errors = json.loads(body).get("errors") or []
    except (ValueError, AttributeError, TypeError):
        return []
    found: list[tuple[str | None, str]] = []
    for error in errors if isinstance(errors, list) else []:
        if isinstance(error, dict):
            name = error.get("field")
            found.append((str(name) if name else None, str(error.get("message", error))))
        else:
            found.append((None, str(error)))
    return found


def _rate_limit_wait(headers: Any) -> float | None:
    """Seconds until X-RateLimit-Reset (a Unix time in seconds); None when SendGrid gave
    none, or one that is no time within the next day (not a number, infinite, or in
    milliseconds)."""
    try:
        reset = float(headers.get("X-RateLimit-Reset"))
    except (TypeError, ValueError, AttributeError, OverflowError):
        return None
    wait = reset - time.time()
    return wait if math.isfinite(wait) and wait <= 86_400 else None
