"""Email delivery: SendGrid's v3 API through the `sendgrid` SDK, or `.eml` files in development.

SendGrid has no idempotency key, so this resource never decides *whether* to send:
the outbox does. This resource only delivers what it is handed, retrying what
SendGrid says is transient (429, 5xx, no connection) and reporting the rest.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource
from pydantic import Field

from mm_orchestration.joblog import log_event
from mm_orchestration.text import one_line


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
    """SendGrid refused the request; `transient` says whether a later try may succeed."""

    def __init__(self, message: str, status: int | None, transient: bool) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient


class Mailer(ConfigurableResource):
    """Sends email through SendGrid when `api_key` is set, else writes `.eml` files."""

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

    @property
    def uses_sendgrid(self) -> bool:
        return bool(self.api_key)

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

    def send_template_batch(self, template_id: str, recipients: list[TemplateRecipient]) -> str:
        """One API request carrying up to 1,000 personalizations of a dynamic template."""
        if len(recipients) > 1000:
            raise ValueError("SendGrid accepts at most 1,000 personalizations per request")
        if not self.uses_sendgrid:
            ids = [
                self._write_eml(
                    Email(
                        key=r.key,
                        recipient=r.recipient,
                        subject=f"[template {template_id}]",
                        text=json.dumps(r.data, indent=2, default=str),
                    )
                )
                for r in recipients
            ]
            return ids[0] if ids else ""
        body = {
            "from": {"email": self.mail_from},
            "template_id": template_id,
            "personalizations": [
                {
                    "to": [{"email": r.recipient}],
                    "dynamic_template_data": r.data,
                    "custom_args": {"idempotency_key": r.key},
                }
                for r in recipients
            ],
        }
        return self._post(body)

    # -- transport --------------------------------------------------------------

    def _client(self) -> Any:
        from sendgrid import SendGridAPIClient

        return SendGridAPIClient(api_key=self.api_key, host=self.api_host.rstrip("/"))

    # -- suppressions ----------------------------------------------------------

    def delete_bounces(self, emails: list[str], batch_size: int = 500) -> int:
        """Remove addresses from SendGrid's bounce list, in batches. Returns requests made."""
        if not self.uses_sendgrid:
            return 0
        client = self._client()
        requests = 0
        for start in range(0, len(emails), batch_size):
            batch = emails[start : start + batch_size]
            self._call(
                lambda batch=batch: client.client.suppression.bounces.delete(
                    request_body={"emails": batch}
                )
            )
            requests += 1
        return requests

    def _post(self, body: dict[str, Any]) -> str:
        client = self._client()
        response = self._call(lambda: client.send(body))
        headers = response.headers
        return str(headers.get("X-Message-Id", "") if headers else "")

    def _call(self, request: Any) -> Any:
        """One SendGrid request, retried on 429 (until X-RateLimit-Reset), 5xx and no link."""
        from python_http_client.exceptions import HTTPError

        backoff = self.backoff_seconds
        last: SendError | None = None
        for attempt in range(1, self.max_attempts + 1):
            try:
                return request()
            except HTTPError as exc:
                status = int(exc.status_code)
                message = _sendgrid_message(exc.body)
                if status == 429:
                    last = SendError(f"SendGrid 429 rate limited: {message}", status, True)
                    wait = _rate_limit_wait(exc.headers, self.max_rate_limit_wait_seconds)
                elif status >= 500:
                    last = SendError(f"SendGrid {status}: {message}", status, True)
                    wait = backoff
                    backoff *= 2
                else:
                    raise SendError(f"SendGrid {status}: {message}", status, False) from exc
            except (urllib.error.URLError, OSError) as exc:
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


def _sendgrid_message(body: Any) -> str:
    """SendGrid's own error text (`errors[].message`), else the raw body, trimmed."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        errors = json.loads(body).get("errors", [])
        text = "; ".join(str(e.get("message", e)) for e in errors)
        if text:
            return text
    except (ValueError, AttributeError, TypeError):
        pass
    return str(body)[:500]


def _rate_limit_wait(headers: Any, cap: float) -> float:
    """Seconds until X-RateLimit-Reset (a Unix time), bounded by `cap`."""
    try:
        reset = float(headers.get("X-RateLimit-Reset"))
    except (TypeError, ValueError, AttributeError):
        return min(1.0, cap)
    return max(0.0, min(reset - time.time(), cap))
