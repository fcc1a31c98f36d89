"""Mux webhook events: read an envelope and verify its signature.

Pure rules (applying an event to its video is `apply`; the replay decides transactions,
attempts and escalation). The event is Mux's webhook envelope as the portal stores it
(`portal.mux_webhook_dlq.payload`).

A payload is whatever JSON the portal stored: any depth, any size, any number. So it is
never decoded in Python: `envelope_fields_sql` picks the few fields an envelope needs out
of the jsonb in SQL, each as one short text (its JSON kind and, for a scalar, its first
characters), and `read_envelope` checks those: kinds, lengths, and values that make sense
(a time that is not in the future, a duration between zero and seven days).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from psycopg import sql

STATUS_BY_TYPE = {
    "video.asset.created": "preparing",
    "video.asset.ready": "ready",
    "video.asset.errored": "errored",
    "video.asset.deleted": "deleted",
}
UPLOAD_LINKED = "video.upload.asset_created"

# Lifecycle order, which breaks ties between events of one `created_at`: created, then
# ready or errored, then deleted. An upload link comes before any of them.
RANK_BY_STATUS = {"waiting": 0, "preparing": 1, "ready": 2, "errored": 2, "deleted": 3}
RANK_BY_TYPE = {UPLOAD_LINKED: 0} | {k: RANK_BY_STATUS[v] for k, v in STATUS_BY_TYPE.items()}


def status_rank_sql(column: sql.Composable) -> sql.Composed:
    """SQL for the lifecycle rank of a `media_assets.status` column."""
    whens = sql.SQL(" ").join(
        sql.SQL("WHEN {} THEN {}").format(sql.Literal(status), sql.Literal(rank))
        for status, rank in RANK_BY_STATUS.items()
    )
    return sql.SQL("(CASE {} {} ELSE 0 END)").format(column, whens)


# What is plausible. Mux ids are tens of characters; 2010 is well before Mux existed;
# ten minutes in the future allows for clocks that disagree a little.
MAX_TEXT = 255
MAX_DEPTH = 32  # a Mux envelope is about five levels deep
MAX_NUMBER_TEXT = 40
MAX_DURATION_SECONDS = 7 * 24 * 3600
FUTURE_TOLERANCE = timedelta(minutes=10)
EARLIEST_EVENT = datetime(2010, 1, 1, tzinfo=UTC)


class EventError(Exception):
    """This attempt failed; the message says exactly why (it goes in `last_error`)."""


class BadSignature(EventError):
    """The stored Mux-Signature does not match the stored body: never apply, dead at once."""


@dataclass(frozen=True)
class Envelope:
    type: str
    id: str
    created_at: datetime
    asset_id: str | None
    upload_id: str | None
    duration: Decimal | None
    playback_id: str | None

    @property
    def rank(self) -> int:
        return RANK_BY_TYPE.get(self.type, 0)


# The fields an envelope is read from: name -> path in the payload.
ENVELOPE_PATHS: dict[str, tuple[str, ...]] = {
    "payload": (),
    "type": ("type",),
    "id": ("id",),
    "created_at": ("created_at",),
    "object.type": ("object", "type"),
    "object.id": ("object", "id"),
    "data": ("data",),
    "data.id": ("data", "id"),
    "data.upload_id": ("data", "upload_id"),
    "data.asset_id": ("data", "asset_id"),
    "data.duration": ("data", "duration"),
    "data.playback_ids": ("data", "playback_ids"),
    "data.playback_ids[0]": ("data", "playback_ids", "0"),
    "data.playback_ids[0].id": ("data", "playback_ids", "0", "id"),
}
ENVELOPE_FIELDS = (*ENVELOPE_PATHS, "too_deep")
_KINDS = {
    "s": "string",
    "n": "number",
    "b": "boolean",
    "o": "object",
    "a": "array",
    "z": "null",
}


def _field_sql(column: sql.Composable, path: tuple[str, ...]) -> sql.Composed:
    # One text per field: a kind letter, and for a scalar its first MAX_TEXT + 1 characters.
    # jsonb's own operators never fail on any document, and nothing else is sent.
    where = sql.Literal("{" + ",".join(path) + "}")
    return sql.SQL(
        "CASE jsonb_typeof({column} #> {path})"
        " WHEN 'string' THEN 's' || left({column} #>> {path}, {size})"
        " WHEN 'number' THEN 'n' || left({column} #>> {path}, {size})"
        " WHEN 'boolean' THEN 'b' || ({column} #>> {path})"
        " WHEN 'object' THEN 'o' WHEN 'array' THEN 'a' WHEN 'null' THEN 'z' END"
    ).format(column=column, path=where, size=sql.Literal(MAX_TEXT + 1))


def envelope_fields_sql(column: sql.Composable) -> sql.Composed:
    """The select-list that reads `ENVELOPE_FIELDS`, in that order, from a jsonb column."""
    # jsonpath walks any depth without recursing in a way that can fail: 'b' + true when
    # something sits deeper than MAX_DEPTH.
    too_deep = sql.SQL("'b' || jsonb_path_exists({}, {}, '{{}}', true)::text").format(
        column, sql.Literal(f"strict $.**{{{MAX_DEPTH + 1}}}")
    )
    return sql.SQL(",\n       ").join(
        [*(_field_sql(column, p) for p in ENVELOPE_PATHS.values()), too_deep]
    )


class _Fields:
    """The fields picked out by `envelope_fields_sql`: kind and text, by name."""

    def __init__(self, values: Mapping[str, str | None]) -> None:
        self.values = values

    def kind(self, name: str) -> str:
        value = self.values.get(name)
        return "missing" if value is None else _KINDS.get(value[:1], "unknown")

    def has(self, name: str, code: str) -> bool:
        """Whether the field is of the kind `code` stands for ('o' object, 'a' array...)."""
        value = self.values.get(name)
        return value is not None and value[:1] == code

    def text(self, name: str) -> str | None:
        value = self.values.get(name)
        return value[1:] if value is not None and value[:1] in "snb" else None

    def string(self, name: str, missing: str) -> str:
        """A non-empty string of at most MAX_TEXT characters; `missing` says what is absent."""
        found = self.optional_string(name)
        if found is None:
            raise EventError(f"invalid envelope: {missing}")
        return found

    def optional_string(self, name: str) -> str | None:
        """As `string`, but None when absent, null or empty."""
        value = self.values.get(name)
        if value is None or value == "z" or value == "s":
            return None
        if value[0] != "s":
            raise EventError(
                f"invalid envelope: '{name}' must be a string, not {_a(self.kind(name))}"
            )
        if len(value) > MAX_TEXT + 1:
            raise EventError(
                f"implausible event: '{name}' is longer than {MAX_TEXT} characters:"
                f" {_show(value[1:])}"
            )
        return value[1:]


def _a(kind: str) -> str:
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"


def _show(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def read_envelope(values: Mapping[str, str | None], now: datetime) -> Envelope:
    """A valid, plausible Mux envelope from its picked fields, or EventError naming the first
    thing wrong with it. `now` is the database's clock (the replay's `now()`)."""
    fields = _Fields(values)
    if not fields.has("payload", "o"):
        got = "no payload" if fields.kind("payload") == "missing" else _a(fields.kind("payload"))
        raise EventError(f"invalid envelope: expected a JSON object, got {got}")
    if values.get("too_deep") == "btrue":
        raise EventError(f"implausible event: the payload is nested more than {MAX_DEPTH} levels")
    kind = fields.string("type", "missing 'type'")
    event_id = fields.string("id", "missing 'id'")
    created_at = _created_at(fields, now)
    if kind not in STATUS_BY_TYPE and kind != UPLOAD_LINKED:
        return Envelope(kind, event_id, created_at, None, None, None, None)
    if not fields.has("data", "o"):
        raise EventError(f"invalid envelope: {kind} has no 'data' object")
    object_type = fields.text("object.type") if fields.has("object.type", "s") else None
    if kind == UPLOAD_LINKED:
        if object_type == "asset":
            upload = fields.string("data.upload_id", f"{kind} has no 'data.upload_id'")
        else:
            upload = fields.string("data.id", f"{kind} has no upload id in 'data.id'")
        linked = fields.optional_string("data.asset_id")
        if linked is None and object_type == "asset":
            linked = fields.optional_string("object.id")
        if linked is None:
            raise EventError(f"invalid envelope: {kind} has no 'data.asset_id'")
        return Envelope(kind, event_id, created_at, linked, upload, None, None)
    asset_id = fields.string("data.id", f"{kind} has no asset id in 'data.id'")
    upload_id = fields.optional_string("data.upload_id")
    return Envelope(
        kind,
        event_id,
        created_at,
        asset_id,
        upload_id,
        _duration(fields),
        _playback_id(fields),
    )


def _created_at(fields: _Fields, now: datetime) -> datetime:
    if not fields.has("created_at", "s"):
        kind = fields.kind("created_at")
        if kind in ("missing", "null"):
            raise EventError("invalid envelope: missing 'created_at'")
        raise EventError(
            f"invalid envelope: 'created_at' must be a timestamp string, not {_a(kind)}"
        )
    text = fields.text("created_at") or ""
    try:
        if len(text) > 64:
            raise ValueError(text)
        created_at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise EventError(
            f"invalid envelope: 'created_at' {_show(text)} is not a timestamp"
        ) from None
    if created_at.tzinfo is None:
        raise EventError(f"invalid envelope: 'created_at' {_show(text)} has no time zone")
    try:
        created_at = created_at.astimezone(UTC)
    except OverflowError:  # a valid date near year 1 or 9999 pushed out of range by its offset
        raise EventError(f"invalid envelope: 'created_at' {_show(text)} is out of range") from None
    if created_at > now + FUTURE_TOLERANCE:
        raise EventError(
            f"implausible event: 'created_at' {_show(text)} is more than"
            f" {FUTURE_TOLERANCE.seconds // 60} minutes in the future (database time"
            f" {now.astimezone(UTC).isoformat(timespec='seconds')})"
        )
    if created_at < EARLIEST_EVENT:
        raise EventError(
            f"implausible event: 'created_at' {_show(text)} is before"
            f" {EARLIEST_EVENT.date().isoformat()}"
        )
    return created_at


def _duration(fields: _Fields) -> Decimal | None:
    value = fields.values.get("data.duration")
    if value is None or value == "z":
        return None
    if value[:1] != "n":
        kind = fields.kind("data.duration")
        raise EventError(f"invalid envelope: 'data.duration' must be a number, not {_a(kind)}")
    text = value[1:]
    accepted = f"is not a duration in seconds (0 to {MAX_DURATION_SECONDS:,})"
    if len(text) > MAX_NUMBER_TEXT:  # 1e400 arrives as 401 digits: absurd, whatever its sign
        size = f"{MAX_TEXT}+" if len(text) > MAX_TEXT else str(len(text))
        raise EventError(
            f"implausible event: 'data.duration' {_show(text, 30)} ({size} characters) {accepted}"
        )
    duration = Decimal(text)  # PostgreSQL's rendering of a jsonb number always parses
    if not duration.is_finite() or not 0 <= duration <= MAX_DURATION_SECONDS:
        raise EventError(f"implausible event: 'data.duration' {text} {accepted}")
    return duration


def _playback_id(fields: _Fields) -> str | None:
    value = fields.values.get("data.playback_ids")
    if value is None or value == "z":
        return None
    if value != "a":
        kind = fields.kind("data.playback_ids")
        raise EventError(f"invalid envelope: 'data.playback_ids' must be a list, not {_a(kind)}")
    first = fields.kind("data.playback_ids[0]")
    if first == "missing":  # an empty list
        return None
    if first != "object":
        raise EventError(
            f"invalid envelope: 'data.playback_ids[0]' must be an object, not {_a(first)}"
        )
    return fields.string("data.playback_ids[0].id", "'data.playback_ids[0]' has no 'id'")


def verify_signature(secret: str, raw_body: str, header: str) -> None:
    """Mux-Signature `t=<unix>,v1=<hex>[,v1=...]`: HMAC-SHA256 of `t.body`, any v1 may match.

    The age of `t` is not checked: a dead-letter replay happens later by design. Any text
    is compared as bytes (a non-ASCII `v1=` simply does not match).
    """
    parts = [p.strip().split("=", 1) for p in header.split(",") if "=" in p]
    timestamps = [v for k, v in parts if k == "t"]
    signatures = [v for k, v in parts if k == "v1"]
    if not timestamps or not signatures:
        raise BadSignature("invalid Mux-Signature: needs t= and at least one v1=")
    expected = (
        hmac.new(
            secret.encode("utf-8", "surrogatepass"),
            f"{timestamps[0]}.{raw_body}".encode("utf-8", "surrogatepass"),
            hashlib.sha256,
        )
        .hexdigest()
        .encode()
    )
    if not any(
        hmac.compare_digest(expected, s.strip().lower().encode("utf-8", "surrogatepass"))
        for s in signatures
    ):
        raise BadSignature("invalid Mux-Signature: no v1 signature matches the stored body")
