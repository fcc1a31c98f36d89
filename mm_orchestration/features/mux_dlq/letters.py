"""A dead letter as the replay claims it: due rows taken in bounded batches, never the
same row by two runs, the envelope's few fields picked out of the payload in SQL (never
decoded in Python), and, with a signing secret set, proof that Mux sent it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import sql

from mm_orchestration.features.mux_dlq.events import (
    ENVELOPE_FIELDS,
    BadSignature,
    envelope_fields_sql,
)
from mm_orchestration.features.mux_dlq.events import verify_signature as check_signature
from mm_orchestration.platform.sql_files import query

CLAIM_DUE = sql.SQL(query(__package__, "claim_due")).format(
    fields=envelope_fields_sql(sql.Identifier("payload"))
)
CLAIM_NOW = 8  # the position of now() in CLAIM_DUE's select-list


@dataclass(frozen=True)
class Letter:
    """One claimed dead letter: its columns and its envelope's fields (never the payload)."""

    id: int
    event_id: str
    event_type: str | None
    attempts: int
    raw_body: str | None
    signature: str | None
    body_is_json: bool | None  # None unless a signing secret is set
    payload_is_body: bool | None
    fields: dict[str, str | None]

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Letter:
        dlq_id, event_id, event_type, attempts, body, signature, is_json, is_body = row[:CLAIM_NOW]
        fields = dict(zip(ENVELOPE_FIELDS, row[CLAIM_NOW + 1 :], strict=True))
        return cls(
            dlq_id, event_id, event_type, attempts, body, signature, is_json, is_body, fields
        )


def verify(letter: Letter, secret: str) -> None:
    """With a signing secret set, apply only what Mux provably sent: the stored
    Mux-Signature must match the stored body, and the payload must be that body.

    Raises BadSignature (the letter is dead at once) when the row has no body or no
    signature (a request that came without one is exactly what signing rules out), when
    the signature does not match, or when the payload differs from the signed body."""
    if letter.raw_body is None or letter.signature is None:
        missing = " and ".join(
            name
            for name, v in (("raw_body", letter.raw_body), ("signature", letter.signature))
            if v is None
        )
        raise BadSignature(
            f"unverifiable: no stored {missing}; with MUX_WEBHOOK_SECRET set only events "
            "whose Mux-Signature matches their body are applied"
        )
    check_signature(secret, letter.raw_body, letter.signature)
    if not letter.body_is_json:
        raise BadSignature("signed raw_body is not a JSON document, so nothing can be applied")
    if not letter.payload_is_body:
        raise BadSignature(
            "payload differs from the signed raw_body; only the signed body is applied"
        )
