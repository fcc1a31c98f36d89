"""Mux envelopes and dead-letter rows, shaped as the contract describes."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb


def envelope(
    kind: str, asset_id: str, created_at: datetime, upload_id: str | None = None, **data: Any
) -> dict[str, Any]:
    if kind == "video.upload.asset_created":
        return {
            "type": kind,
            "id": str(uuid.uuid4()),
            "created_at": _ts(created_at),
            "object": {"type": "upload", "id": upload_id},
            "environment": {"name": "Production", "id": "env"},
            "data": {"id": upload_id, "asset_id": asset_id, "status": "asset_created"},
        }
    return {
        "type": kind,
        "id": str(uuid.uuid4()),
        "created_at": _ts(created_at),
        "object": {"type": "asset", "id": asset_id},
        "environment": {"name": "Production", "id": "env"},
        "data": {"id": asset_id, "upload_id": upload_id, **data},
    }


def _ts(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dead_letter(conn: Any, payload: Any, event_id: str | None = None, **cols: Any) -> int:
    event_id = (
        event_id or (payload.get("id") if isinstance(payload, dict) else None) or str(uuid.uuid4())
    )
    event_type = payload.get("type") if isinstance(payload, dict) else None
    values = {
        "event_id": event_id,
        "event_type": event_type if isinstance(event_type, str) else None,
        "payload": Jsonb(payload),
        **cols,
    }
    names = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    row = conn.execute(
        f"INSERT INTO portal.mux_webhook_dlq ({names}) VALUES ({marks}) RETURNING id",  # noqa: S608
        list(values.values()),
    ).fetchone()
    return row[0]


def dead_letter_json(conn: Any, payload_json: str, event_id: str, **cols: Any) -> int:
    """A dead letter whose payload is given as JSON text, parsed by PostgreSQL alone: for
    documents Python cannot write or read (1,500 levels deep, `1e5000`)."""
    values = {"event_id": event_id, **cols}
    names = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    row = conn.execute(
        f"INSERT INTO portal.mux_webhook_dlq (payload, {names})"  # noqa: S608
        f" VALUES (%s::jsonb, {marks}) RETURNING id",
        [payload_json, *values.values()],
    ).fetchone()
    return row[0]


def nested(levels: int, inner: str = "1") -> str:
    """JSON text of `inner` inside `levels` arrays."""
    return "[" * levels + inner + "]" * levels


def raw(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"))
