"""Email delivery: SendGrid's v3 API through the `sendgrid` SDK, or `.eml` files in development.

SendGrid has no idempotency key, so this resource never decides *whether* to send:
the outbox does. This resource delivers what it is handed and says exactly what
happened: accepted; refused (and which personalization SendGrid named); not taken
yet (429, 5xx, no connection: retried here, with backoff, because the request provably
never took effect); or *outcome unknown* (the request was written, then the answer
was lost): never retried, since SendGrid may have sent it. Every call has a connect
and a read timeout (`mm_orchestration.platform.http`), so a stalled SendGrid costs seconds,
not a hung run. The request itself and how its answer is read: `sendgrid_client`; how
many requests a delivery takes: `request_plan`. What we assume of SendGrid and why:
docs/sendgrid.md.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Callable
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
from mm_orchestration.platform.outbox.request_plan import (
    DEFAULT_MAX_REQUEST_BYTES,
    MAX_PERSONALIZATIONS,
    SENDGRID_MAX_BYTES,
)
from mm_orchestration.platform.outbox.sendgrid_client import SendError, call, sdk_client
from mm_orchestration.platform.text import one_line


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
        return sdk_client(self.api_key, self.api_host, self.timeouts)

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
        """One SendGrid request, retried as `sendgrid_client.call` says."""
        return call(
            request, self.max_attempts, self.backoff_seconds, self.max_rate_limit_wait_seconds
        )

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
