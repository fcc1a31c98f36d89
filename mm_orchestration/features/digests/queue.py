"""Who gets a digest now, and what it says: the notification digest's database work.

A run at instant `now` settles every person whose digest moment (`moments`) fell
in the run's window: one row in `ops.digest_periods` per person and period ('queued',
'skipped' with nothing to report, 'suppressed', 'missed' when later than the grace), and
for 'queued' one outbox email keyed `digest:<user>:<period>`. The key and the period row
make reruns, overlapping runs, crashes and retries send nothing twice.

The cost follows who is due, not how many people exist: the people's distinct choices
are read first (one pass), their moments worked out in Python, and only the people whose
choice has a moment in the window are read again and written.

Per-row trust: the choices are read as stored and each distinct one judged before any
statement uses it (`_judged`): a zone both PostgreSQL and Python know, in any case, else
MM_TIMEZONE; an unknown frequency is 'daily', a weekday out of 1-7 Monday, a missing time
08:00. The statements only ever see judged values, so no row can make them raise; the
people who fell back are counted and their ids returned (never their addresses).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from mm_orchestration.features.digests.moments import (
    DEFAULT_TIME,
    FREQUENCIES,
    LONGEST_LOOK_BACK,
    Choice,
    Moment,
    current_period,
    horizon,
    local,
    moments_between,
    scheduled_moment,
    zone_info,
)
from mm_orchestration.platform import zones
from mm_orchestration.platform.zones import zone_name

EMAIL_KIND = "digest"
# Each run also looks this far behind where the last one stopped: a run that started
# late, or two runs at once, never leave a moment between them.
MARGIN = timedelta(minutes=15)
# Rows of the fallback ids returned (logged by id, never by address).
IDS_SHOWN = 100
# Our zone rules are written for SQL a year ahead, and again when less than a week is left.
SPAN_RANGE = timedelta(days=400)
SPAN_MARGIN = timedelta(days=7)
SINCE_EVER = datetime(1, 1, 1, tzinfo=UTC)

# Everyone who may get a digest; `%(tenant)s` and `%(user)s` narrow it for an operator's
# "send now". Their choices are read as stored (RAW_CHOICE, one text) and judged in
# Python once per distinct choice (`_choice`): per-row trust, at the cost of a few values.
ELIGIBLE = """
SELECT u.id, u.tenant_id, u.email, u.display_name, t.name AS tenant_name
  FROM portal.users u
  JOIN portal.tenants t ON t.id = u.tenant_id AND t.status = 'active'
 WHERE u.digest_opt_in AND u.deactivated_at IS NULL
   AND (%(tenant)s::uuid IS NULL OR u.tenant_id = %(tenant)s::uuid)
   AND (%(user)s::uuid IS NULL OR u.id = %(user)s::uuid)
"""

# A person's choice as one value, exactly as stored: people are joined to the due choices
# on it (one key PostgreSQL hashes; on five columns it estimated one row and compared
# every pair).
RAW_CHOICE = """
concat_ws('|', quote_nullable(u.timezone), quote_nullable(u.digest_frequency::text),
          quote_nullable(u.digest_time), quote_nullable(u.digest_weekday))
"""  # quoted, so that NULL and '' (or a value holding '|') are never one key

# The distinct choices of the people ELIGIBLE names, each once: the one read of every
# person a run makes, so it is kept to a scan and a hash of raw columns (and a hash of the
# few active agencies). A group's people are exactly who may get its digest: someone whose
# agency is resumed joins their group as a reactivated person does (digest_groups).
CHOICES = sql.SQL("""
SELECT {raw}, u.timezone, u.digest_frequency::text, u.digest_time, u.digest_weekday, count(*),
       sum(uuid_hash(u.id)::bigint)
  FROM portal.users u
  JOIN portal.tenants t ON t.id = u.tenant_id AND t.status = 'active'
 WHERE u.digest_opt_in AND u.deactivated_at IS NULL
   AND (%(tenant)s::uuid IS NULL OR u.tenant_id = %(tenant)s::uuid)
   AND (%(user)s::uuid IS NULL OR u.id = %(user)s::uuid)
 GROUP BY u.timezone, u.digest_frequency, u.digest_time, u.digest_weekday
""").format(raw=sql.SQL(RAW_CHOICE))

# What a digest says, for `senders` (id, tenant_id, zone, local_date, horizon, since) at
# %(now)s: open tasks due before `horizon` (the end of the person's next local day),
# overdue tasks, and their agency's videos that became ready or errored since their
# previous digest. Local times come from our zone rules (`{spans}`: ops.zone_spans, or the
# same rows as a CTE; version %(rules)s), never from PostgreSQL's own zone files.
CONTENT = """
SELECT s.*, t.due_soon, t.overdue, a.updates
  FROM senders s
  LEFT JOIN LATERAL (
      SELECT jsonb_agg(item ORDER BY k.due_at, k.title)
                 FILTER (WHERE k.due_at >= %(now)s) AS due_soon,
             jsonb_agg(item ORDER BY k.due_at, k.title)
                 FILTER (WHERE k.due_at < %(now)s) AS overdue
        FROM portal.tasks k
        LEFT JOIN portal.projects p ON p.id = k.project_id
       CROSS JOIN LATERAL (SELECT jsonb_build_object(
               'title', k.title, 'project', p.name, 'due_at', k.due_at,
               'due_local', to_char((k.due_at AT TIME ZONE 'UTC') + make_interval(secs => (
                   SELECT z.utc_offset FROM {spans} z
                    WHERE z.rules = %(rules)s AND z.zone = s.zone
                      AND z.starts <= k.due_at AND k.due_at < z.ends)),
                   'Dy DD Mon YYYY HH24:MI')) AS item) i
       WHERE k.assignee_id = s.id AND k.completed_at IS NULL AND k.due_at < s.horizon
  ) t ON NOT s.suppressed
  LEFT JOIN LATERAL (
      SELECT jsonb_agg(jsonb_build_object('title', m.title, 'status', m.status,
                                          'changed_at', m.status_changed_at)
                       ORDER BY m.status_changed_at, m.title) AS updates
        FROM portal.media_assets m
       WHERE m.tenant_id = s.tenant_id AND m.status IN ('ready', 'errored')
         AND m.status_changed_at >= s.since AND m.status_changed_at < %(now)s
  ) a ON NOT s.suppressed
"""

PAYLOAD = """
jsonb_build_object(
    'display_name', d.display_name,
    'tenant_name', d.tenant_name,
    'date', d.local_date,
    'period', d.period,
    'due_soon', coalesce(d.due_soon, '[]'::jsonb),
    'overdue', coalesce(d.overdue, '[]'::jsonb),
    'asset_updates', coalesce(d.updates, '[]'::jsonb),
    'counts', jsonb_build_object(
        'due_soon', coalesce(jsonb_array_length(d.due_soon), 0),
        'overdue', coalesce(jsonb_array_length(d.overdue), 0),
        'asset_updates', coalesce(jsonb_array_length(d.updates), 0)))
"""

# When the previous digest this person was sent went (a late one reported up to then),
# else one period back; never more than LONGEST_LOOK_BACK (a person back after months
# gets the week, not the months).
SINCE = """
greatest(coalesce((SELECT max(r.settled_at) FROM ops.digest_periods r
                    WHERE r.user_id = p.id AND r.outcome = 'queued'), p.since_default),
         %(now)s::timestamptz - %(look_back)s::interval)
"""

# A first cut of the suppression rule (same spelling, ASCII case): delivery screens every
# row by the whole rule (outbox.screening: any case, internationalised domains). Written
# as IN, which PostgreSQL hashes once; EXISTS here would scan the list once per person.
SUPPRESSED = """
coalesce(lower(btrim(p.email)) IN (SELECT lower(btrim(x.email))
                                     FROM portal.email_suppressions x
                                    WHERE x.email IS NOT NULL), false)
"""

SETTLE = sql.SQL("""
WITH due AS (
    SELECT * FROM unnest(%(choice_key)s::text[], %(zone)s::text[], %(fell_back)s::bool[],
                         %(period)s::text[], %(moment)s::timestamptz[],
                         %(starts)s::timestamptz[], %(ends)s::timestamptz[],
                         %(action)s::text[], %(since_default)s::timestamptz[],
                         %(local_date)s::date[], %(horizon)s::timestamptz[], %(shift)s::text[])
        AS d(choice_key, zone, fell_back, period, moment, starts, ends, action,
             since_default, local_date, horizon, shift)
), people AS MATERIALIZED (
    SELECT e.id, e.tenant_id, e.email, e.display_name, e.tenant_name, d.zone,
           d.fell_back, d.period, d.moment, d.action, d.since_default, d.local_date,
           d.horizon, d.shift
      FROM ({eligible}) e
      JOIN portal.users u ON u.id = e.id
      JOIN due d ON d.choice_key = {raw}
     -- At most one digest per period of theirs (a span of instants in the zone they have
     -- now), whatever zone, time or frequency an earlier one was settled in.
     WHERE NOT EXISTS (SELECT 1 FROM ops.digest_periods r
                        WHERE r.user_id = e.id AND r.moment >= d.starts AND r.moment < d.ends)
       -- A moment from before the run's window (a group someone joined): only after
       -- their last digest, and never before they existed.
       AND CASE WHEN d.moment > %(window_start)s THEN true
                ELSE d.moment > coalesce((SELECT max(r.moment) FROM ops.digest_periods r
                                           WHERE r.user_id = e.id), u.created_at)
           END
), senders AS MATERIALIZED (
    SELECT p.*, {since} AS since, {suppressed} AS suppressed
      FROM people p WHERE p.action = 'send'
), digests AS MATERIALIZED ({content}
), queued AS (
    INSERT INTO ops.notification_outbox
        (idempotency_key, kind, tenant_id, recipient, payload, user_id, next_attempt_at)
    SELECT 'digest:' || d.id || ':' || d.period, %(kind)s, d.tenant_id, d.email, {payload}, d.id,
           -- due as of the run's instant (a rerun of an earlier tick included), never later
           least(now(), %(now)s::timestamptz)
      FROM digests d
     WHERE NOT d.suppressed
       AND (d.due_soon IS NOT NULL OR d.overdue IS NOT NULL OR d.updates IS NOT NULL)
        ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING 1
), settled AS (
    INSERT INTO ops.digest_periods (user_id, period, moment, outcome, settled_at, run_id)
    SELECT p.id, p.period, p.moment, 'missed', %(now)s, %(run_id)s
      FROM people p WHERE p.action = 'missed'
    UNION ALL  -- (not a join of the two: CTEs have no index, and that join was quadratic)
    SELECT d.id, d.period, d.moment,
           CASE WHEN d.suppressed THEN 'suppressed'
                WHEN d.due_soon IS NOT NULL OR d.overdue IS NOT NULL OR d.updates IS NOT NULL
                    THEN 'queued'
                ELSE 'skipped' END,
           %(now)s, %(run_id)s
      FROM digests d
        ON CONFLICT (user_id, period) DO NOTHING
    RETURNING outcome
)
SELECT (SELECT count(*) FROM people WHERE action = 'send'),
       (SELECT count(*) FROM queued),
       (SELECT count(*) FROM settled WHERE outcome = 'queued'),
       (SELECT count(*) FROM settled WHERE outcome = 'skipped'),
       (SELECT count(*) FROM settled WHERE outcome = 'suppressed'),
       (SELECT count(*) FROM settled WHERE outcome = 'missed'),
       (SELECT count(DISTINCT id) FROM people WHERE fell_back),
       (SELECT coalesce(array_agg(id::text ORDER BY id), '{{}}')
          FROM (SELECT DISTINCT id FROM people WHERE fell_back
                 ORDER BY id LIMIT {ids_shown}) f),
       (SELECT count(*) FROM people WHERE shift = 'moved'),
       (SELECT count(*) FROM people WHERE shift = 'merged')
""").format(
    eligible=sql.SQL(ELIGIBLE),
    raw=sql.SQL(RAW_CHOICE),
    since=sql.SQL(SINCE),
    suppressed=sql.SQL(SUPPRESSED),
    content=sql.SQL(CONTENT).format(spans=sql.SQL("ops.zone_spans")),
    payload=sql.SQL(PAYLOAD),
    ids_shown=sql.Literal(IDS_SHOWN),
)

PREVIEW = sql.SQL("""
WITH spans AS (
    SELECT %(rules)s::text AS rules, z.*
      FROM unnest(%(span_zone)s::text[], %(span_starts)s::timestamptz[],
                  %(span_ends)s::timestamptz[], %(span_offset)s::int[])
        AS z(zone, starts, ends, utc_offset)
), people AS (
    SELECT e.*, %(zone)s::text AS zone, %(period)s::text AS period,
           %(local_date)s::date AS local_date, %(horizon)s::timestamptz AS horizon,
           %(now)s::timestamptz - %(period_length)s::interval AS since_default
      FROM ({eligible}) e
), senders AS (
    SELECT p.*, {since} AS since, {suppressed} AS suppressed FROM people p
), digests AS ({content})
SELECT d.id, d.suppressed, {payload} FROM digests d
""").format(
    eligible=sql.SQL(ELIGIBLE),
    since=sql.SQL(SINCE),
    suppressed=sql.SQL(SUPPRESSED),
    content=sql.SQL(CONTENT).format(spans=sql.SQL("spans")),
    payload=sql.SQL(PAYLOAD),
)


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


def _period_length(frequency: str) -> timedelta:
    return timedelta(days=7) if frequency == "weekly" else timedelta(days=1)


@dataclass(frozen=True)
class RawChoice:
    """One distinct choice as stored, how many eligible people made it, and what it means
    (`choice` None for 'off'; `fell_back` when a value could not be read as stored)."""

    key: str  # RAW_CHOICE, to find its people again
    people: int
    choice: Choice | None
    fell_back: bool
    checksum: int = 0  # of the people's ids: who they are, for digest_groups


def _choices(
    conn: psycopg.Connection,
    fallback_tz: str,
    tenant: uuid.UUID | None,
    user: uuid.UUID | None,
) -> list[RawChoice]:
    """Every distinct choice of the eligible people, judged (see `_judged`)."""
    # Never prepared: a generic plan for it (after five runs on one connection) was ten
    # times slower than the plan for the values at hand.
    rows = conn.execute(CHOICES, {"tenant": tenant, "user": user}, prepare=False).fetchall()
    return [_judged(row, fallback_tz) for row in rows]


def _judged(row: tuple[Any, ...], fallback_tz: str) -> RawChoice:
    """A stored choice read without trusting it: a zone our tz rules know (any case;
    PostgreSQL is never asked for a local time, so its list does not matter), else
    `fallback_tz`; a frequency of FREQUENCIES, else daily; a time, else 08:00; a weekday
    1-7 when weekly, else Monday."""
    key, timezone, stored, at, weekday, people, checksum = row
    zone = zone_name(timezone)
    fell_back = zone is None
    # Any case, as zones are: 'OFF' is off, never a daily digest.
    frequency = (stored or "").strip().lower()
    if frequency not in FREQUENCIES:
        frequency, fell_back = "daily", True
    if at is None:
        at, fell_back = DEFAULT_TIME, True
    if frequency == "weekly" and not (isinstance(weekday, int) and 1 <= weekday <= 7):
        weekday, fell_back = 1, True
    if frequency == "off":
        return RawChoice(key, people, None, fell_back, checksum)
    choice = Choice(zone or fallback_tz, frequency, at, weekday or 1)
    return RawChoice(key, people, choice, fell_back, checksum)


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
        conn.execute(
            """INSERT INTO ops.digest_clock (id, evaluated_through, rules) VALUES (1, %s, %s)
               ON CONFLICT (id) DO UPDATE SET evaluated_through =
                   greatest(ops.digest_clock.evaluated_through, excluded.evaluated_through),
                   rules = CASE WHEN excluded.evaluated_through
                                     >= ops.digest_clock.evaluated_through
                                THEN excluded.rules ELSE ops.digest_clock.rules END""",
            [now, zones.rules_version()],
        )
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
    groups = _choices(conn, fallback_tz, tenant, user)
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
                since = min(since, now - _period_length(choice.frequency) - MARGIN)
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
                ("since_default", moment.due - _period_length(choice.frequency)),
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


def write_zone_rules(conn: psycopg.Connection, names: Sequence[str], now: datetime) -> str | None:
    """Make sure ops.zone_spans holds our rules (zones.offsets) for `names`, through the
    next year, for SQL to read local times by; returns how PostgreSQL's own rules differ
    from ours around `now` for those zones (None: they agree), naming both versions. Each
    zone's spans are written once per rules version (and again a year on)."""
    rules = zones.rules_version()
    wanted = sorted(set(names))
    covered = {
        row[0]
        for row in conn.execute(
            "SELECT zone FROM ops.zone_rules WHERE rules = %s AND zone = ANY(%s)"
            " AND valid_until > %s",
            [rules, wanted, now + SPAN_MARGIN],
        )
    }
    missing = [zone for zone in wanted if zone not in covered]
    if missing:
        until = now + SPAN_RANGE
        spans = zones.offsets(missing, until)
        conn.execute(
            "DELETE FROM ops.zone_spans WHERE rules = %s AND zone = ANY(%s)", [rules, missing]
        )
        conn.execute(
            """INSERT INTO ops.zone_spans (rules, zone, starts, ends, utc_offset)
               SELECT %s, z.* FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[],
                                          %s::int[]) z""",
            [
                rules,
                [zone for zone, _ in spans],
                [span.starts for _, span in spans],
                [span.ends for _, span in spans],
                [span.offset for _, span in spans],
            ],
        )
        conn.execute(
            """INSERT INTO ops.zone_rules (rules, zone, valid_until)
               SELECT %s, z, %s FROM unnest(%s::text[]) z
               ON CONFLICT (rules, zone) DO UPDATE SET valid_until = excluded.valid_until""",
            [rules, until, missing],
        )
    found = zones.disagreements(conn, wanted, now - LONGEST_LOOK_BACK, now + LONGEST_LOOK_BACK)
    return zones.describe(conn, found) if found else None


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
        """WITH stale AS (
               SELECT o.id, p.user_id, p.period
                 FROM ops.notification_outbox o
                 JOIN ops.digest_periods p
                   ON o.idempotency_key = 'digest:' || p.user_id || ':' || p.period
                WHERE o.kind = %(kind)s AND o.status = 'pending'
                  AND p.moment < %(before)s AND o.next_attempt_at < %(before)s
           ), expired AS (
               UPDATE ops.notification_outbox o
                  SET status = 'expired',
                      last_error = 'expired: due ' || to_char(p.moment AT TIME ZONE 'UTC',
                                   'YYYY-MM-DD HH24:MI "UTC"') || ', and never sent stale'
                 FROM stale s JOIN ops.digest_periods p
                      ON p.user_id = s.user_id AND p.period = s.period
                WHERE o.id = s.id
           ), missed AS (
               UPDATE ops.digest_periods p SET outcome = 'missed'
                 FROM stale s WHERE p.user_id = s.user_id AND p.period = s.period
           )
           SELECT count(*) FROM stale""",
        {"kind": EMAIL_KIND, "before": stale_before},
    ).fetchone()
    return int(row[0]) if row else 0


def preview(
    conn: psycopg.Connection, user: uuid.UUID, now: datetime, fallback_tz: str
) -> dict[str, Any] | None:
    """What `user` would receive at `now` (the template data), without sending or
    recording anything about them; None when they get no digest (opted out, deactivated,
    frequency 'off', their agency suspended). Keys: user_id, zone, frequency, period,
    moment (when this period's digest is due, UTC, or None), shift (ON_TIME, MOVED out of
    a gap, MERGED in an overlap), settled (this period's record: outcome and moment, or
    None), suppressed, data (what the template gets; empty lists mean nothing to
    report)."""
    choices = [c for c in _choices(conn, fallback_tz, None, user) if c.choice is not None]
    if not choices:
        return None
    choice = choices[0].choice
    assert choice is not None
    zone, frequency = choice.zone, choice.frequency
    current = current_period(choice, now)
    scheduled = scheduled_moment(choice, now)
    spans = zones.offsets([zone], horizon(current.day, zone))
    row = conn.execute(
        PREVIEW,
        {
            "tenant": None,
            "user": user,
            "now": now,
            "zone": zone,
            "period": current.period,
            "local_date": current.day,
            "horizon": horizon(current.day, zone),
            "period_length": _period_length(frequency),
            "look_back": LONGEST_LOOK_BACK,
            "rules": zones.rules_version(),
            "span_zone": [z for z, _ in spans],
            "span_starts": [span.starts for _, span in spans],
            "span_ends": [span.ends for _, span in spans],
            "span_offset": [span.offset for _, span in spans],
        },
    ).fetchone()
    if row is None:
        return None
    record = conn.execute(
        """SELECT outcome, moment FROM ops.digest_periods
            WHERE user_id = %s AND moment >= %s AND moment < %s ORDER BY moment LIMIT 1""",
        [user, current.starts, current.ends],
    ).fetchone()
    return {
        "user_id": str(row[0]),
        "zone": zone,
        "frequency": frequency,
        "period": current.period,
        "moment": scheduled.due if scheduled else None,
        "shift": scheduled.shift if scheduled else None,
        "settled": {"outcome": record[0], "moment": record[1]} if record else None,
        "suppressed": row[1],
        "data": row[2],
    }
