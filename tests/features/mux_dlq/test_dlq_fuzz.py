"""Fuzz: whatever the dead-letter queue holds, mux-webhook-retry settles every row alone.

Hypothesis generates batches that mix good Mux events (ties in `created_at`, duplicates,
signed as Mux signs them, unknown types, upload links, odd but harmless text) with hostile
rows (payloads nested thousands of levels deep, numbers of thousands of digits, odd or
missing text in `signature` and `raw_body`, payloads that are not the signed body, fields
of the wrong type or missing, ids too long, times in the future or before Mux, payloads
that are no object at all, events for a video that does not exist). Each example empties
the test's database, seeds four videos and the batch, and runs the real job
(`execute_in_process`) with a signing secret set.

Properties: the job never fails (the replay step always succeeds); every hostile row ends
with its failed attempt recorded (attempts + 1, `last_error`, one `ops.dlq_attempts` row;
'dead' and escalated when it was the fifth attempt or a bad signature; no video changed);
every good row is replayed with its attempts untouched; and each video ends exactly as
its good events say: the last by (`created_at`, lifecycle rank, arrival).

`benchmarks/dlq_fuzz.py` runs the same check with many more examples.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from dagster import DagsterInstance
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mm_orchestration.features.mux_dlq.job import mux_webhook_retry
from mm_orchestration.features.mux_dlq.resource import MuxWebhooks
from tests import factories as f

SECRET = "fuzz-secret"
VIDEOS = 4  # videos 0..2 carry their Mux asset id; video 3 only its upload id
GOOD_SECONDS = 4  # good events fall on base + 0..3 s, so ties in created_at are common
LATE = 10.0  # hostile events are later than any good one: applied by mistake, they show
DAY = 86_400.0
T = "@T@"  # stands for created_at in a payload's text until the example's clock is known
STATUS = {
    "video.asset.created": ("preparing", 1),
    "video.asset.ready": ("ready", 2),
    "video.asset.errored": ("errored", 2),
    "video.asset.deleted": ("deleted", 3),
}
UPLOAD_LINKED = "video.upload.asset_created"


@dataclass(frozen=True)
class Spec:
    """One generated dead letter."""

    kind: str  # 'good', or which hostile kind
    payload: str | None  # JSON text, with "@T@" for created_at; None: a NULL payload
    offset: float = 0.0  # seconds from the example's base time (a day ago) for "@T@"
    event_type: str | None = None
    raw_body: str | None = None
    signature: str | None = None
    sign: bool = False  # raw_body is the payload, signed with SECRET
    attempts: int = 0
    suffix: str = ""  # odd text at the end of the event_id
    video: int | None = None  # good status events: the video they move
    status: str | None = None
    rank: int = 0

    @property
    def good(self) -> bool:
        return self.kind == "good"


# Text PostgreSQL can hold (no NUL, no lone surrogates), with odd characters made common.
ODD = st.one_of(
    st.characters(exclude_characters="\x00", exclude_categories=("Cs",)),
    st.sampled_from(["\u00e9", "\u200b", "\ufeff", "\U0001f600", "\r", "\n", "'", '"', "\\"]),
)


def odd_text(min_size: int = 0, max_size: int = 12) -> st.SearchStrategy[str]:
    return st.text(ODD, min_size=min_size, max_size=max_size)


def long_text() -> st.SearchStrategy[str]:
    """More than 255 characters (the longest id taken as plausible)."""
    return st.builds(lambda s, n: (s * 3000)[:n], odd_text(1, 6), st.integers(256, 3000))


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    odd_text(),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text(), inner, max_size=3),
    max_leaves=6,
)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


def of_kinds(*kinds: str) -> st.SearchStrategy[Any]:
    """JSON values whose kind is one of `kinds`."""
    return json_values.filter(lambda v: _kind(v) in kinds)


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def status_event(kind: str, video: int, asset: str | None = None, **data: Any) -> dict[str, Any]:
    asset = asset or f"asset-{video}"
    return {
        "type": kind,
        "id": f"mux-{video}-{kind}",
        "created_at": T,
        "object": {"type": "asset", "id": asset},
        "environment": {"name": "Production", "id": "env"},
        "data": {"id": asset, "upload_id": f"up-{video}", "status": "x", **data},
    }


@st.composite
def good_letters(draw: st.DrawFn) -> Spec:
    video = draw(st.integers(0, VIDEOS - 1))
    kind = draw(st.sampled_from([*STATUS, *STATUS, UPLOAD_LINKED, "video.live_stream.active"]))
    offset = float(draw(st.integers(0, GOOD_SECONDS - 1)))
    if kind == UPLOAD_LINKED:
        payload = {
            "type": kind,
            "id": draw(odd_text(1, 20).filter(str.strip)),
            "created_at": T,
            "object": {"type": "upload", "id": f"up-{video}"},
            "data": {"id": f"up-{video}", "asset_id": f"asset-{video}"},
        }
    elif kind not in STATUS:
        payload = {"type": kind, "id": "ls-1", "created_at": T, "data": draw(json_values)}
    else:
        data: dict[str, Any] = {"passthrough": draw(odd_text())}
        if kind == "video.asset.ready":
            duration = draw(st.none() | st.decimals(0, 604_800, places=1))
            data["duration"] = None if duration is None else float(duration)
            if draw(st.booleans()):
                data["playback_ids"] = [{"id": draw(odd_text(1, 30)), "policy": "signed"}]
        payload = status_event(kind, video, **data)
        payload["id"] = draw(odd_text(1, 20).filter(str.strip))
    status, rank = STATUS.get(kind, (None, 0))
    return Spec(
        kind="good",
        payload=dumps(payload),
        offset=offset,
        event_type=kind,
        sign=True,  # with a signing secret set, only signed events are ever applied
        attempts=draw(st.sampled_from([0, 0, 0, 1, 4])),
        suffix=draw(st.just("") | odd_text()),
        video=video,
        status=status,
        rank=rank,
    )


@st.composite
def hostile_letters(draw: st.DrawFn) -> Spec:
    """A row that must fail: built on a late event for a real video, then broken."""
    video = draw(st.integers(0, VIDEOS - 1))
    kind = draw(st.sampled_from(["video.asset.ready", "video.asset.deleted"]))
    event = status_event(kind, video, duration=30)
    offset = LATE
    cols: dict[str, Any] = {}
    hostile = draw(
        st.sampled_from(
            [
                "deep",
                "huge_number",
                "signature",
                "wrong_type",
                "missing",
                "future",
                "past_or_naive",
                "bad_time",
                "too_long",
                "not_object",
                "no_such_video",
            ]
        )
    )
    text: str | None
    if hostile == "deep":
        depth = draw(st.integers(33, 2000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        deep = opener * depth + dumps(draw(json_scalars)) + closer * depth
        where = draw(st.sampled_from(["payload", "data.extra", "data.duration", "type"]))
        if where == "payload":
            text = deep
        else:
            key = where.split(".")[-1]
            (event["data"] if where.startswith("data.") else event)[key] = "@DEEP@"
            text = dumps(event).replace('"@DEEP@"', deep)
    elif hostile == "huge_number":
        number = draw(
            st.tuples(st.sampled_from(["1e", "-1e"]), st.integers(400, 5000)).map(
                lambda p: f"{p[0]}{p[1]}"
            )
            | st.integers(60, 5000).map(lambda n: f"1e-{n}")
            | st.integers(604_801, 10**15).map(str)
            | st.decimals(-(10**6), Decimal("-0.1"), places=1).map(str)
        )
        where = draw(st.sampled_from(["duration", "duration", "id", "data.id", "created_at"]))
        if where in ("duration", "data.id"):
            event["data"]["duration" if where == "duration" else "id"] = "@N@"
        else:
            event[where] = "@N@"
        text = dumps(event).replace('"@N@"', number)
    elif hostile == "signature":
        text = dumps(event)
        body = draw(st.none() | odd_text(0, 40) | st.just(text))
        signature = draw(
            st.none()
            | odd_text(0, 40)
            | odd_text(1, 20).map(lambda s: f"t=1,v1={s}")
            | st.just(_signed(SECRET, "{}", "1"))  # valid, for another body
        )
        if body == "{}" and signature == _signed(SECRET, "{}", "1"):
            body = "{ }"
        if draw(st.booleans()):  # a genuine signed body, but the payload is not that body
            body = dumps(status_event("video.asset.created", video))
            signature = _signed(SECRET, body)
        cols = {"raw_body": body, "signature": signature}
    elif hostile == "wrong_type":
        field, value = draw(
            st.sampled_from(
                [
                    ("type", of_kinds("number", "boolean", "array", "object")),
                    ("id", of_kinds("number", "boolean", "array", "object", "null")),
                    ("created_at", of_kinds("number", "boolean", "array", "object", "null")),
                    ("data", of_kinds("number", "boolean", "array", "string", "null")),
                    ("data.id", of_kinds("number", "boolean", "array", "object", "null")),
                    ("data.duration", of_kinds("string", "boolean", "array", "object")),
                    ("data.upload_id", of_kinds("number", "boolean", "array", "object")),
                    ("data.playback_ids", of_kinds("string", "number", "boolean", "object")),
                    ("data.playback_ids[0]", of_kinds("string", "number", "array", "null")),
                    ("data.playback_ids[0].id", of_kinds("number", "boolean", "array", "null")),
                ]
            ).flatmap(lambda fv: st.tuples(st.just(fv[0]), fv[1]))
        )
        if field.startswith("data.playback_ids"):
            first: Any = {"id": "pb", "policy": "signed"}
            if field == "data.playback_ids[0]":
                first = value
            elif field == "data.playback_ids[0].id":
                first = {"id": value}
            event["data"]["playback_ids"] = value if field == "data.playback_ids" else [first]
        elif field.startswith("data."):
            event["data"][field[5:]] = value
        else:
            event[field] = value
        text = dumps(event)
    elif hostile == "missing":
        field = draw(st.sampled_from(["type", "id", "created_at", "data", "data.id"]))
        if field == "data.id":
            del event["data"]["id"]
        else:
            del event[field]
        text = dumps(event)
    elif hostile == "future":
        # 15 minutes to three years past the replay's clock (base is a day ago).
        offset = DAY + draw(st.floats(900, 3 * 365 * DAY))
        text = dumps(event)
        if draw(st.booleans()):
            stamp = draw(st.sampled_from(["9999-12-31T23:59:59Z", "3000-01-01T00:00:00+00:00"]))
            text = text.replace(f'"{T}"', dumps(stamp))
    elif hostile == "past_or_naive":
        stamp = draw(
            st.sampled_from(
                [
                    "1970-01-01T00:00:00Z",
                    "0001-01-01T00:00:00Z",
                    "0001-01-01T00:00:00+01:00",
                    "2009-12-31T23:59:59.999999Z",
                    "2026-11-20T01:00:00",
                    "2026-11-20",
                ]
            )
        )
        text = dumps(event).replace(f'"{T}"', dumps(stamp))
    elif hostile == "bad_time":
        text = dumps(event).replace(f'"{T}"', dumps(draw(odd_text(0, 80).filter(_not_a_time))))
    elif hostile == "too_long":
        field = draw(st.sampled_from(["type", "id", "data.id", "data.upload_id", "playback"]))
        value = draw(long_text())
        if field == "playback":
            event["data"]["playback_ids"] = [{"id": value}]
        elif field.startswith("data."):
            event["data"][field[5:]] = value
        else:
            event[field] = value
        text = dumps(event)
    elif hostile == "not_object":
        text = draw(st.none() | json_values.filter(lambda v: not isinstance(v, dict)).map(dumps))
    else:  # no_such_video: a valid event for an asset nobody has
        event = status_event(kind, video, asset=f"ghost-{video}")
        del event["data"]["upload_id"]
        text = dumps(event)
    return Spec(
        kind=hostile,
        payload=text,
        offset=offset,
        event_type=draw(st.just(kind) | st.none() | odd_text()),
        attempts=draw(st.sampled_from([0, 0, 0, 2, 4])),
        suffix=draw(st.just("") | odd_text()),
        sign=not cols,  # signed as Mux would: it is the content that must fail
        **cols,
    )


def _not_a_time(text: str) -> bool:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).tzinfo is None
    except ValueError:
        return True


def _signed(secret: str, body: str, t: str = "1765000000") -> str:
    digest = hmac.new(secret.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


@st.composite
def batches(draw: st.DrawFn, min_size: int = 25, max_size: int = 40) -> tuple[list[Spec], int]:
    """A queue's worth of letters, good and hostile shuffled, some good ones delivered twice,
    and the batch size the replay claims them with."""
    letters = draw(
        st.lists(good_letters() | hostile_letters(), min_size=min_size, max_size=max_size)
    )
    goods = [s for s in letters if s.good]
    if goods:
        for twice in draw(st.lists(st.sampled_from(goods), max_size=3)):
            letters.insert(draw(st.integers(0, len(letters))), replace(twice, suffix="dup"))
    return letters, draw(st.sampled_from([4, 16, 200]))


def run_example(conn: Any, resources: dict[str, Any], batch: tuple[list[Spec], int]) -> Counter:
    """Seed one batch on an emptied database, run the job, check every property."""
    letters, batch_size = batch
    conn.execute(
        "TRUNCATE portal.mux_webhook_dlq, ops.dlq_attempts, ops.notification_outbox"
        " RESTART IDENTITY"
    )
    conn.execute("TRUNCATE portal.media_assets CASCADE")
    tenant = f.tenant(conn)
    videos = [
        f.asset(conn, tenant, mux_asset_id=f"asset-{i}" if i < 3 else None, mux_upload_id=f"up-{i}")
        for i in range(VIDEOS)
    ]
    now = conn.execute("SELECT date_trunc('second', now())").fetchone()[0]
    base = now - timedelta(days=1)
    ids = [_insert(conn, i, spec, base) for i, spec in enumerate(letters)]

    mux = MuxWebhooks(signing_secret=SECRET, batch_size=batch_size, backoff_seconds=60)
    with DagsterInstance.ephemeral() as instance:
        result = mux_webhook_retry.execute_in_process(
            resources={**resources, "mux": mux},
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            instance=instance,
            raise_on_error=False,
        )
    # The replay never fails; only delivering an escalation email may (SendGrid's problem).
    assert result.success or [
        e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"
    ] == ["send_dead_letter_escalations"]

    rows = {
        r[0]: r[1:]
        for r in conn.execute(
            "SELECT id, status, attempts, last_error, escalated_at FROM portal.mux_webhook_dlq"
        )
    }
    history = Counter(
        (r[0], r[1]) for r in conn.execute("SELECT dlq_id, attempt FROM ops.dlq_attempts")
    )
    for dlq_id, spec in zip(ids, letters, strict=True):
        status, attempts, error, escalated = rows[dlq_id]
        if spec.good:
            assert (status, attempts) == ("replayed", spec.attempts), (spec, error)
            continue
        assert attempts == spec.attempts + 1 and error, (spec, status, error)
        # Nothing to verify (a NULL payload has no signed body) is as bad as a bad signature.
        dead = spec.kind == "signature" or spec.payload is None or attempts >= 5
        assert status == ("dead" if dead else "pending"), (spec, status, error)
        assert (escalated is not None) == dead, spec
        assert history[(dlq_id, attempts)] == 1, spec
    assert sum(history.values()) == sum(not s.good for s in letters)

    for i, video in enumerate(videos):
        moves = [
            (s.offset, s.rank, n, s.status)
            for n, s in enumerate(letters)
            if s.good and s.video == i and s.status
        ]
        expected = max(moves, default=None)
        status, changed, asset_id, duration = conn.execute(
            "SELECT status, status_changed_at, mux_asset_id, duration_seconds"
            " FROM portal.media_assets WHERE id = %s",
            [video],
        ).fetchone()
        linked = i < 3 or any(
            s.good and s.video == i and (s.status or s.event_type == UPLOAD_LINKED) for s in letters
        )
        assert asset_id == (f"asset-{i}" if linked else None), i
        if expected is None:
            assert (status, changed) == ("waiting", None), i
        else:
            assert (status, changed) == (expected[3], base + timedelta(seconds=expected[0])), (
                i,
                moves,
            )
        assert duration is None or 0 <= duration <= 604_800

    counts = Counter(s.kind for s in letters)
    counts["rows"] = len(letters)
    counts["examples"] = 1
    return counts


def _insert(conn: Any, n: int, spec: Spec, base: datetime) -> int:
    payload = spec.payload
    if payload is not None:
        stamp = (base + timedelta(seconds=spec.offset)).isoformat().replace("+00:00", "Z")
        payload = payload.replace(f'"{T}"', dumps(stamp))
    raw_body, signature = spec.raw_body, spec.signature
    if spec.sign and payload is not None:
        raw_body, signature = payload, _signed(SECRET, payload)
    return conn.execute(
        """INSERT INTO portal.mux_webhook_dlq
               (event_id, event_type, payload, attempts, raw_body, signature)
           VALUES (%s, %s, %s::jsonb, %s, %s, %s) RETURNING id""",
        [f"fz-{n}-{spec.suffix}", spec.event_type, payload, spec.attempts, raw_body, signature],
    ).fetchone()[0]


EXAMPLES = 40  # 25 to 43 rows each: over 1,000 rows in all


def test_whatever_the_queue_holds_every_row_is_settled(conn, portal_db, mailer, job_settings):
    resources = {"portal_db": portal_db, "mailer": mailer, "job_settings": job_settings}
    totals: Counter = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=batches())
    def example(batch: tuple[list[Spec], int]) -> None:
        totals.update(run_example(conn, resources, batch))

    example()
    print(f"dlq fuzz: {dict(sorted(totals.items()))}")  # shown with -s
    assert totals["rows"] >= 1000, totals
    hostile = {k for k in totals if k not in ("good", "rows", "examples")}
    assert len(hostile) == 11, totals  # every hostile kind was tried
