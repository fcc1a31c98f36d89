"""How many SendGrid requests a delivery makes: personalizations split, in order, into as
few requests as SendGrid's published limits allow together (personalizations, recipients
and bytes per request), so 100,000 digests cost about a hundred requests.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

# SendGrid's published limits for one v3 mail/send request.
MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000  # to, cc and bcc across every personalization
SENDGRID_MAX_BYTES = 30_000_000  # "less than 30 MB": 413 at or above
# How big we let a request grow: well under SendGrid's limit, so that a header or a
# different JSON spacing on the way can never tip a request over it.
DEFAULT_MAX_REQUEST_BYTES = 20_000_000


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
