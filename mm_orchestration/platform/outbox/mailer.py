"""Email delivery: SendGrid's v3 API through the `sendgrid` SDK, or `.eml` files in development.

SendGrid has no idempotency key, so this resource never decides *whether* to send:
the outbox does. This resource delivers what it is handed and says exactly what
happened: accepted; refused (and which personalization SendGrid named); not taken
yet (429, 5xx, no connection: retried here, with backoff, because the request provably
never took effect); or *outcome unknown* (the request was written, then the answer
was lost): never retried, since SendGrid may have sent it. Every call has a connect
and a read timeout (`mm_orchestration.platform.http`), so a stalled SendGrid costs seconds,
not a hung run. What we assume of SendGrid and why: docs/sendgrid.md.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import math
import re
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource
from pydantic import Field

from mm_orchestration.monitoring.joblog import log_event
from mm_orchestration.platform import http
from mm_orchestration.platform.config_models import QUIET
from mm_orchestration.platform.text import one_line

# SendGrid's published limits for one v3 mail/send request.
MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000  # to, cc and bcc across every personalization
SENDGRID_MAX_BYTES = 30_000_000  # "less than 30 MB": 413 at or above
# How big we let a request grow: well under SendGrid's limit, so that a header or a
# different JSON spacing on the way can never tip a request over it.
DEFAULT_MAX_REQUEST_BYTES = 20_000_000

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


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    mime_type: str = "application/octet-stream"


@dataclass(frozen=True)
class Email:
    """One message, identified by its outbox idempotency key.

    The subject is made one line of visible text (at most 200 characters) here, where
    every email is built, since subjects carry titles and names typed by portal users."""

    key: str
    recipient: str
    subject: str
    text: str
    attachments: tuple[Attachment, ...] = ()
    categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "subject", one_line(self.subject, SUBJECT_LIMIT))


SUBJECT_LIMIT = 200


@dataclass(frozen=True)
class TemplateRecipient:
    """One personalization of a dynamic-template batch."""

    key: str
    recipient: str
    data: dict[str, Any] = field(default_factory=dict)


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


def request_bytes(envelope: dict[str, Any], personalizations: Sequence[str]) -> int:
    """The exact size of the JSON body the SDK sends for `envelope` with these
    personalizations (each already serialised the SDK's way, `json.dumps` defaults)."""
    base = len(json.dumps({**envelope, "personalizations": []}).encode())
    joined = sum(len(p) for p in personalizations) + 2 * max(len(personalizations) - 1, 0)
    return base + joined


def plan_requests(
    sizes: Sequence[tuple[int, int]],
    base_bytes: int,
    max_personalizations: int = MAX_PERSONALIZATIONS,
    max_recipients: int = MAX_RECIPIENTS,
    max_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> list[range]:
    """Split personalizations, in order, into as few requests as SendGrid's limits allow
    together: at most `max_personalizations`, `max_recipients` recipients in total and
    `max_bytes` of body each. `sizes` are (recipients, serialised bytes) per
    personalization; one too big for any request still gets a request of its own (SendGrid
    refuses it with 413, and only that row fails)."""
    plans: list[range] = []
    start, recipients, size = 0, 0, base_bytes
    for i, (people, length) in enumerate(sizes):
        grown = length + (2 if i > start else 0)
        if i > start and (
            i - start >= max_personalizations
            or recipients + people > max_recipients
            or size + grown > max_bytes
        ):
            plans.append(range(start, i))
            start, recipients, size, grown = i, 0, base_bytes, length
        recipients += people
        size += grown
    if start < len(sizes):
        plans.append(range(start, len(sizes)))
    return plans


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


class Mailer(ConfigurableResource):
    """Sends email through SendGrid when `api_key` is set, else writes `.eml` files."""

    model_config = QUIET  # a refused field's value never shows in pydantic's error

    api_key: str | None = Field(
        default=None, description="EnvVar('SENDGRID_API_KEY'); unset: files"
    )
    api_host: str = Field(default="https://api.sendgrid.com", description="SENDGRID_API_HOST")
    mail_from: str = Field(default="jobs@motionmavericks.com.au", description="MAIL_FROM")
    mail_dir: str = Field(default=".mm/mail", description="Where .eml files go without a key")
    max_attempts: int = Field(default=4, ge=1, description="Tries per request for 429/5xx")
    backoff_seconds: float = Field(default=1.0, ge=0, description="First 5xx backoff; doubles")
    max_rate_limit_wait_seconds: float = Field(
        default=60.0, ge=0, description="Longest wait honoured for X-RateLimit-Reset"
    )
    connect_timeout_seconds: float = Field(
        default=http.DEFAULT_CONNECT_TIMEOUT, gt=0, description="MM_HTTP_CONNECT_TIMEOUT"
    )
    read_timeout_seconds: float = Field(
        default=http.DEFAULT_READ_TIMEOUT, gt=0, description="MM_HTTP_READ_TIMEOUT"
    )
    max_request_bytes: int = Field(
        default=DEFAULT_MAX_REQUEST_BYTES,
        gt=0,
        description="Largest request body we build (SendGrid refuses 30 MB and more)",
    )

    @property
    def uses_sendgrid(self) -> bool:
        return bool(self.api_key)

    @property
    def timeouts(self) -> http.Timeouts:
        return http.Timeouts(self.connect_timeout_seconds, self.read_timeout_seconds)

    # -- single messages --------------------------------------------------------

    def send(self, email: Email) -> str:
        """Deliver one message; returns the provider's message id. Raises SendError."""
        if not self.uses_sendgrid:
            return self._write_eml(email)
        body: dict[str, Any] = {
            "from": {"email": self.mail_from},
            "personalizations": [
                {"to": [{"email": email.recipient}], "custom_args": {"idempotency_key": email.key}}
            ],
            "subject": email.subject,
            "content": [{"type": "text/plain", "value": email.text}],
        }
        if email.categories:
            body["categories"] = list(email.categories)
        if email.attachments:
            body["attachments"] = [
                {
                    "content": base64.b64encode(a.content).decode(),
                    "filename": a.filename,
                    "type": a.mime_type,
                    "disposition": "attachment",
                }
                for a in email.attachments
            ]
        return self._post(body)

    # -- dynamic-template batches -----------------------------------------------

    def template_envelope(self, template_id: str) -> dict[str, Any]:
        """Everything of a template request but its personalizations."""
        return {"from": {"email": self.mail_from}, "template_id": template_id}

    @staticmethod
    def personalization(recipient: TemplateRecipient) -> dict[str, Any]:
        """One person's part of a template request; the outbox key rides along in
        `custom_args`, so SendGrid's activity log and webhooks can be searched by it."""
        return {
            "to": [{"email": recipient.recipient}],
            "dynamic_template_data": recipient.data,
            "custom_args": {"idempotency_key": recipient.key},
        }

    @staticmethod
    def raw_personalization(key: str, recipient: str, data_json: str) -> str:
        """`personalization` as JSON, with template data that is JSON text already (as the
        database stored it): the same object, never decoded and encoded again."""
        return (
            '{"to": [{"email": '
            + _json_string(recipient)
            + '}], "dynamic_template_data": '
            + data_json
            + ', "custom_args": {"idempotency_key": '
            + _json_string(key)
            + "}}"
        )

    def send_template(self, template_id: str, personalizations: list[str]) -> str:
        """One API request carrying `personalizations` (each a `personalization` as JSON,
        e.g. `json.dumps(personalization(r))`) of a dynamic template. The body is joined from
        those very strings, so its size is exactly what the caller measured and nothing is
        serialised twice. Raises SendError."""
        if len(personalizations) > MAX_PERSONALIZATIONS:
            raise ValueError("SendGrid accepts at most 1,000 personalizations per request")
        if not self.uses_sendgrid:
            ids = []
            for text in personalizations:
                part = json.loads(text)
                ids.append(
                    self._write_eml(
                        Email(
                            key=part["custom_args"]["idempotency_key"],
                            recipient=part["to"][0]["email"],
                            subject=f"[template {template_id}]",
                            text=json.dumps(part["dynamic_template_data"], indent=2, default=str),
                        )
                    )
                )
            return ids[0] if ids else ""
        envelope = json.dumps({**self.template_envelope(template_id), "personalizations": []})
        return self._post(envelope[:-2] + ", ".join(personalizations) + "]}")  # [...]}

    def send_template_batch(self, template_id: str, recipients: list[TemplateRecipient]) -> str:
        """One API request with these recipients (callers that size batches themselves)."""
        return self.send_template(
            template_id, [json.dumps(self.personalization(r)) for r in recipients]
        )

    # -- transport --------------------------------------------------------------

    def _client(self) -> Any:
        from sendgrid import SendGridAPIClient

        client = SendGridAPIClient(api_key=self.api_key, host=self.api_host.rstrip("/"))
        # The SDK's own client has no timeout at all; ours has both (and tells a request
        # that never left from one whose answer was lost).
        client.client = _BoundedClient.make(client.host, client._default_headers, self.timeouts)
        return client

    # -- suppressions ----------------------------------------------------------

    def delete_bounces(
        self, emails: list[str], batch_size: int = 500
    ) -> tuple[int, list[tuple[str, str]]]:
        """Remove addresses from SendGrid's bounce list, in batches. Returns the requests
        made and the addresses SendGrid refused (each with its message): a 400 naming
        `emails.N` refuses that address, and the rest of its batch goes again without it,
        so one address SendGrid will not take never blocks the others.

        Deleting is idempotent, so a lost answer is reported (SendError, unknown) and the
        caller's retry simply deletes again. Any other refusal raises SendError."""
        if not self.uses_sendgrid:
            return 0, []
        client = self._client()
        requests, refused = 0, []
        for start in range(0, len(emails), batch_size):
            batch = emails[start : start + batch_size]
            while batch:
                requests += 1
                try:
                    self._call(
                        functools.partial(
                            client.client.suppression.bounces.delete,
                            request_body={"emails": batch},
                        )
                    )
                    break
                except SendError as exc:
                    named = exc.named_entries("emails") if exc.status == 400 else {}
                    named = {i: m for i, m in named.items() if i < len(batch)}
                    if not named:
                        raise
                    refused += [(batch[i], m) for i, m in sorted(named.items())]
                    batch = [e for i, e in enumerate(batch) if i not in named]
        return requests, refused

    def _post(self, body: dict[str, Any] | str) -> str:
        """POST /v3/mail/send through the SDK's client, the body as JSON text (a str is sent
        as it is under a non-default content type). A body SendGrid would refuse for its
        size (30 MB or more) is refused here, before a byte goes: SendGrid may cut such an
        upload short, which would look like a request that never left and be retried."""
        text = body if isinstance(body, str) else json.dumps(body)
        size = len(text.encode())
        if size >= SENDGRID_MAX_BYTES:
            raise SendError(
                f"SendGrid 413: the request is {size:,} bytes; SendGrid takes less than 30 MB",
                413,
                False,
            )
        client = self._client()
        response = self._call(
            lambda: client.client.mail.send.post(
                request_body=text,
                request_headers={"Content-Type": "application/json; charset=utf-8"},
            )
        )
        headers = response.headers
        return str(headers.get("X-Message-Id", "") if headers else "")

    def _call(self, request: Callable[[], Any]) -> Any:
        """One SendGrid request. Retried only when it provably never took effect: 429
        (until X-RateLimit-Reset, when that is within `max_rate_limit_wait_seconds`; a
        later reset is a transient SendError at once), 408, 425 and 5xx with an answer, and
        no connection (refused, DNS, connect timeout). A lost answer is never retried:
        SendError(unknown=True)."""
        from python_http_client.exceptions import HTTPError

        backoff = self.backoff_seconds
        last: SendError | None = None
        for attempt in range(1, self.max_attempts + 1):
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
                    elif reset > self.max_rate_limit_wait_seconds:
                        # Waiting would hold the run for longer than we allow: the rows
                        # stay pending for the op's retry or the next run, at once.
                        raise SendError(
                            f"SendGrid 429 rate limited for {reset:.0f} s more (longer than "
                            f"the {self.max_rate_limit_wait_seconds:.0f} s a run waits; "
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
                raise SendError(
                    f"SendGrid outcome unknown: {exc}", None, False, unknown=True
                ) from exc
            except http.NotSent as exc:
                last = SendError(f"SendGrid unreachable: {exc}", None, True)
                wait = backoff
                backoff *= 2
            log_event(
                "sendgrid.retry", attempt=attempt, status=last.status, waitSeconds=round(wait, 2)
            )
            if attempt < self.max_attempts:
                time.sleep(wait)
        assert last is not None
        raise last

    def _write_eml(self, email: Email) -> str:
        folder = Path(self.mail_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (re.sub(r"[^A-Za-z0-9._-]+", "_", email.key) + ".eml")
        message = EmailMessage()
        message["From"] = self.mail_from
        message["To"] = email.recipient
        message["Subject"] = email.subject
        message["Message-ID"] = make_msgid(domain="mm-orchestration.local")
        message["X-Idempotency-Key"] = email.key
        message.set_content(email.text)
        for a in email.attachments:
            maintype, _, subtype = a.mime_type.partition("/")
            message.add_attachment(
                a.content, maintype=maintype, subtype=subtype or "octet-stream", filename=a.filename
            )
        path.write_bytes(bytes(message))
        log_event("email.written", key=email.key, path=str(path))
        return f"file:{path}"


# Text JSON writes as it is, between quotes (no escapes needed): addresses and keys.
_PLAIN_JSON_TEXT = re.compile(r"[A-Za-z0-9 _.+@:/-]*")


def _json_string(text: str) -> str:
    """`json.dumps(text)`, without its cost for the plain text nearly every value is."""
    return f'"{text}"' if _PLAIN_JSON_TEXT.fullmatch(text) else json.dumps(text)


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
