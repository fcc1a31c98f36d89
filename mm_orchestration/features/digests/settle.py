"""Who gets a digest now: the notification digest's run, settled in the database.

A run at instant `now` settles every person whose digest moment (`moments`) fell
in the run's window: one row in `ops.digest_periods` per person and period ('queued',
'skipped' with nothing to report, 'suppressed', 'missed' when later than the grace), and
for 'queued' one outbox email keyed `digest:<user>:<period>`. The key and the period row
make reruns, overlapping runs, crashes and retries send nothing twice.

The cost follows who is due, not how many people exist: the people's distinct choices
are read first (`choices`, one pass), their moments worked out in Python, and only the
people whose choice has a moment in the window are read again and written (`SETTLE`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from mm_orchestration.features.digests.choices import read_choices
from mm_orchestration.features.digests.moments import (
    LONGEST_LOOK_BACK,
    Moment,
    current_period,
    horizon,
    local,
    moments_between,
    period_length,
    zone_info,
)
from mm_orchestration.features.digests.statements import SETTLE
from mm_orchestration.features.digests.zone_rules import write_zone_rules
from mm_orchestration.platform import zones
from mm_orchestration.platform.sql_files import query

EMAIL_KIND = "digest"
# Each run also looks this far behind where the last one stopped: a run that started
# late, or two runs at once, never leave a moment between them.
MARGIN = timedelta(minutes=15)
SINCE_EVER = datetime(1, 1, 1, tzinfo=UTC)


@dataclass
class Settled:
    """What one run settled: people due now, and what became of them."""

    due: int = 0  # people whose digest moment came (sent late or on time, or nothing to say)
    emails_queued: int = 0  # new outbox rows (0 for a period already queued)
    queued: int = 0
    skipped: int = 0  # nothing to report
    suppressed: int = 0
    missed: int = 0  # later than the grace: recorded, never sent stale
    fallbacks: int = 0  # people whose zone or choice could not be read as stored
    fallback_ids: list[str] = field(default_factory=list)
    window_start: datetime | None = None
    moved: int = 0  # settled at a transition: their time fell in a gap (clocks went forward)
    merged: int = 0  # their time happened twice (clocks went back): settled at the first
    rules_differ: str | None = None  # PostgreSQL's zone rules differ from ours (zones.py)

    def as_metadata(self) -> dict[str, Any]:
        return {
            "people_due": self.due,
            "digests_queued": self.queued,
            "skipped_nothing_to_report": self.skipped,
            "suppressed": self.suppressed,
            "missed_past_grace": self.missed,
            "moved_out_of_a_gap": self.moved,
            "merged_in_an_overlap": self.merged,
            "fallbacks": self.fallbacks,
            "zone_rules": zones.rules_version(),
        }


def settle(
    conn: psycopg.Connection,
    now: datetime,
    run_id: str,
    grace: timedelta,
    fallback_tz: str,
    tenant: uuid.UUID | None = None,
    user: uuid.UUID | None = None,
) -> Settled:
    """Settle every digest due at `now`, in the caller's transaction.

    Scheduled (no `tenant` or `user`): every moment after the last run's (less MARGIN) and
    up to `now`; a person's latest one is sent when it is at most `grace` old, and every
    other is recorded as missed. An operator's send (a tenant or a person): their current
    period's digest, now, whatever time they chose (still at most one per period).
    """
    # One run at a time settles: the second waits, then sees the first's rows.
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('ops.digest_periods', 0))")
    params, window_start = plan(conn, now, run_id, grace, fallback_tz, tenant, user)
    settled = Settled(window_start=window_start)
    if params["period"]:
        differ = write_zone_rules(conn, params["zone"], now)
        row = conn.execute(SETTLE, params, prepare=False).fetchone()
        assert row is not None
        due, emails, queued, skipped, suppressed, missed, fallbacks = (int(v) for v in row[:7])
        settled = Settled(
            due, emails, queued, skipped, suppressed, missed, fallbacks, list(row[7]),
            window_start, int(row[8]), int(row[9]), differ,
        )  # fmt: skip
    if window_start is not None:  # a scheduled run: the next one starts where this ended
        # A run of an earlier instant than the last (a rerun of a past tick) looked back
        # from then, not from now: the groups and rules it saw are left for the next run
        # to compare, or a change it could not settle would never be looked back for.
        if params["latest"]:
            _remember_groups(conn, params["groups"], params["groups_gone"])
        conn.execute(query(__package__, "advance_clock"), [now, zones.rules_version()])
    return settled


def plan(
    conn: psycopg.Connection,
    now: datetime,
    run_id: str,
    grace: timedelta,
    fallback_tz: str,
    tenant: uuid.UUID | None = None,
    user: uuid.UUID | None = None,
) -> tuple[dict[str, Any], datetime | None]:
    """SETTLE's parameters for a run at `now`: the distinct choices read once, and each
    one's moments in the run's window (its start is returned; None for an operator's send,
    which has no window). A choice with no moment in the window is not passed at all."""
    operator = tenant is not None or user is not None
    window_start = None
    latest = False  # no run has looked past `now`
    seen: dict[str, tuple[int, int]] = {}
    tracked = every_group = False
    if not operator:
        row = conn.execute("SELECT evaluated_through, rules FROM ops.digest_clock").fetchone()
        through = row[0] if row else now - grace
        latest = through <= now
        # From where the last run stopped, however long ago (the daemon down for weeks):
        # every moment since is settled, most of them as missed, never left unrecorded.
        window_start = min(through, now) - MARGIN
        seen = {
            key: (people, checksum)
            for key, people, checksum in conn.execute(
                "SELECT choice_key, people, checksum FROM ops.digest_groups"
            )
        }
        # The groups a run saw are kept from the first run that writes its rules: from
        # then on an empty ops.digest_groups means nobody was in any group (all away, or
        # their agencies suspended), and whoever is in one now has joined it.
        tracked = row is not None and row[1] is not None
        # New zone rules since the last run: any moment may have moved, so every group is
        # looked at a period back (each person only after their last digest).
        every_group = tracked and row is not None and row[1] != zones.rules_version()
    columns: dict[str, list[Any]] = {
        name: []
        for name in (
            "choice_key", "zone", "fell_back", "period", "moment", "starts", "ends",
            "action", "since_default", "local_date", "horizon", "shift",
        )
    }  # fmt: skip
    groups = read_choices(conn, fallback_tz, tenant, user)
    for raw in groups:
        choice = raw.choice
        if choice is None:
            continue  # 'off'
        if window_start is None:
            actions = [(current_period(choice, now), "send")]
        else:
            since = window_start
            if tracked and (every_group or seen.get(raw.key) != (raw.people, raw.checksum)):
                # Someone joined this group since the last run (a new zone, time or
                # frequency; a new or returning person): its moments of the last period
                # are looked at too, for them (SETTLE: only after their last digest).
                since = min(since, now - period_length(choice.frequency) - MARGIN)
            # ... but only those of a period still open when the last run looked: one that
            # had ended was lived under the choice they had then (a day they were weekly,
            # opted out or away), never owed by the new one, neither sent nor missed.
            moments = [m for m in moments_between(choice, since, now) if m.ends > window_start]
            actions = _actions(moments, now, grace)
        if not actions:
            continue
        # What the digest calls "today" and "due soon" is the person's local day at the
        # run's instant, worked out here with our rules (never PostgreSQL's).
        today = local(now, zone_info(choice.zone)).date()
        soon = horizon(today, choice.zone)
        for moment, action in actions:
            for name, value in (
                ("choice_key", raw.key), ("zone", choice.zone), ("fell_back", raw.fell_back),
                ("period", moment.period), ("moment", moment.due), ("starts", moment.starts),
                ("ends", moment.ends), ("action", action),
                ("since_default", moment.due - period_length(choice.frequency)),
                ("local_date", today), ("horizon", soon), ("shift", moment.shift),
            ):  # fmt: skip
                columns[name].append(value)
    params = {
        **columns,
        # An operator's send has no window: its one moment (now) is taken as it is.
        "window_start": window_start if window_start is not None else SINCE_EVER,
        # What changed in the groups since the last run (written for the next to compare;
        # a quiet run writes nothing).
        "groups": [
            (raw.key, raw.people, raw.checksum)
            for raw in groups
            if seen.get(raw.key) != (raw.people, raw.checksum)
        ],
        "groups_gone": sorted(set(seen) - {raw.key for raw in groups}),
        "latest": latest,
        "tenant": tenant,
        "user": user,
        "now": now,
        "run_id": run_id,
        "kind": EMAIL_KIND,
        "look_back": LONGEST_LOOK_BACK,
        "rules": zones.rules_version(),
    }
    return params, window_start


def _remember_groups(
    conn: psycopg.Connection, changed: list[tuple[str, int, int]], gone: list[str]
) -> None:
    """The groups that changed since the last run, as this run saw them, and those no one
    is in any more (ops.digest_groups), for the next run to compare."""
    if gone:
        conn.execute("DELETE FROM ops.digest_groups WHERE choice_key = ANY(%s)", [gone])
    if changed:
        conn.execute(
            """INSERT INTO ops.digest_groups (choice_key, people, checksum)
               SELECT * FROM unnest(%s::text[], %s::int[], %s::bigint[])
               ON CONFLICT (choice_key) DO UPDATE
                  SET people = excluded.people, checksum = excluded.checksum""",
            [[g[0] for g in changed], [g[1] for g in changed], [g[2] for g in changed]],
        )


def _actions(
    moments: Sequence[Moment], now: datetime, grace: timedelta
) -> list[tuple[Moment, str]]:
    """Of a choice's moments in the window (oldest first), the latest is sent when it is at
    most `grace` old; every other is missed (one digest per person per run, never stale)."""
    plan = [(m, "missed") for m in moments[:-1]]
    if moments:
        latest = moments[-1]
        plan.append((latest, "send" if now - latest.due <= grace else "missed"))
    return plan


def expire_stale(conn: psycopg.Connection, stale_before: datetime) -> int:
    """Digests still waiting in the outbox whose moment came before `stale_before` (held
    by an outage longer than the grace) expire, never sent stale, and their periods count
    as missed. One an operator requeued (`mm-jobs outbox resend`) is due from then."""
    row = conn.execute(
        query(__package__, "expire_stale"),
        {"kind": EMAIL_KIND, "before": stale_before},
    ).fetchone()
    return int(row[0]) if row else 0
