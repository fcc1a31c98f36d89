"""Digests when each person wants them (issue 15): their own frequency, at their own local
time, in every time zone, once per period.

Time is controlled through the run's `now` (no sleeping). The fortnight simulation calls
the job's database work (`digests.settle.settle`) at every 15-minute tick, as the schedule
does, and compares each person's digests with what their choice implies, worked out here
independently: the first tick at which their wall clock shows their time on one of their
days, once per period.
"""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from mm_orchestration.features.digests.job import notification_digest
from mm_orchestration.features.digests.moments import first_instant_at_or_after, period_of
from mm_orchestration.features.digests.settle import settle
from mm_orchestration.platform.db import connect
from tests import factories as f
from tests.conftest import run_job

# SQL or PostgreSQL tools that may differ by server version: CI runs these on 15 and 16.
pytestmark = pytest.mark.pg_versions

GRACE = timedelta(hours=6)
TICK = timedelta(minutes=15)
SYDNEY = ZoneInfo("Australia/Sydney")


def person(conn, tenant, email, zone, frequency="daily", at=time(8), weekday=1):
    """A person with an overdue task, so that every digest of theirs has something to say."""
    user = f.user(
        conn, tenant, email=email, timezone=zone, digest_frequency=frequency,
        digest_time=at, digest_weekday=weekday, created_at=datetime(2020, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    conn.execute(
        "INSERT INTO portal.tasks (tenant_id, assignee_id, title, due_at) "
        "VALUES (%s, %s, 'Approve the grade', '2026-01-01T00:00:00Z')",
        [tenant, user],
    )
    return user


def start_clock(conn, at: datetime) -> None:
    """As if the schedule had run up to `at`."""
    conn.execute("INSERT INTO ops.digest_clock (id, evaluated_through) VALUES (1, %s)", [at])


def settle_at(database_url, now, **only):
    with connect(database_url) as c:
        return settle(c, now, f"run-{now:%Y%m%dT%H%M}", GRACE, "Australia/Sydney", **only)


def local_period(key: str, zone: str, frequency: str) -> str:
    """The local period a stored period (its bounds as instants) is, in `zone`: the local
    date of its start (`2026-11-30`), or its ISO week when weekly (`2026-W49`)."""
    starts = datetime.strptime(key.split("/")[0], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    day = starts.astimezone(ZoneInfo(zone)).date()
    year, week, _ = day.isocalendar()
    weekly = frequency.strip().lower() == "weekly"
    return f"{year}-W{week:02d}" if weekly else day.isoformat()


def digests(conn, as_local: bool = True):
    """email -> [(period, settled at)] of every digest queued, in order: each period as
    the local period it is in the person's zone (`as_local`, for people who never move),
    else as stored (its bounds as instants)."""
    found: dict[str, list] = {}
    for email, period, at, zone, frequency in conn.execute(
        """SELECT u.email, p.period, p.settled_at, u.timezone, u.digest_frequency::text
             FROM ops.digest_periods p JOIN portal.users u ON u.id = p.user_id
            WHERE p.outcome = 'queued' ORDER BY p.settled_at, u.email"""
    ):
        shown = local_period(period, zone, frequency) if as_local else period
        found.setdefault(email, []).append((shown, at))
    return found


def day_key(day: date, zone: str) -> str:
    """The stored key of the local day `day` in `zone` (its bounds as instants)."""
    return period_of(day, "daily", ZoneInfo(zone))[0]


def expected(people, start, end):
    """What each choice implies over the ticks [start, end): a digest at the first tick at
    which the person's wall clock reads their time (or later) on one of their days, once
    per period. Periods already past at `start` are not expected (the clock starts there)."""
    plan: dict[str, list] = {}
    done: set[tuple[str, str]] = set()
    tick = start - timedelta(days=8)
    while tick < end:
        for email, zone, frequency, at, weekday in people:
            wall = tick.astimezone(ZoneInfo(zone))
            day = wall.date()
            if frequency == "weekdays" and day.isoweekday() > 5:
                continue
            if frequency == "weekly" and day.isoweekday() != weekday:
                continue
            year, week, _ = day.isocalendar()
            period = f"{year}-W{week:02d}" if frequency == "weekly" else day.isoformat()
            if wall.time() >= at and (email, period) not in done:
                done.add((email, period))
                if tick >= start:
                    plan.setdefault(email, []).append((period, tick))
        tick += TICK
    return plan


PEOPLE = [
    ("perth@a.example", "Australia/Perth", "daily", time(8, 0), 1),
    ("adelaide@a.example", "Australia/Adelaide", "weekdays", time(7, 45), 1),
    ("darwin@a.example", "Australia/Darwin", "daily", time(18, 30), 1),
    ("sydney@a.example", "Australia/Sydney", "weekly", time(9, 0), 1),
    ("early@a.example", "Australia/Sydney", "daily", time(2, 30), 1),
    ("auckland@a.example", "Pacific/Auckland", "daily", time(8, 0), 1),
    ("chatham@a.example", "Pacific/Chatham", "weekdays", time(6, 15), 1),
    ("kathmandu@a.example", "Asia/Kathmandu", "weekdays", time(9, 15), 1),
    ("london@a.example", "Europe/London", "weekly", time(17, 30), 5),
]


def test_a_fortnight_across_both_daylight_saving_changes(conn, database_url):
    """24 Sep - 8 Oct 2026: Auckland and the Chatham Islands spring forward on 27 Sep,
    Sydney and Adelaide on 4 Oct. Every 15-minute run; each person gets exactly the digests
    their choice implies, at the right run."""
    tenant = f.tenant(conn)
    for email, zone, frequency, at, weekday in PEOPLE:
        person(conn, tenant, email, zone, frequency, at, weekday)
    start, end = datetime(2026, 9, 24, tzinfo=UTC), datetime(2026, 10, 8, tzinfo=UTC)
    start_clock(conn, start - TICK)
    tick = start
    while tick < end:
        settle_at(database_url, tick)
        tick += TICK

    got = digests(conn)
    assert got == expected(PEOPLE, start, end)
    # On Sydney's spring-forward day 02:30 does not exist: it goes at 03:00 AEDT.
    spring = [at for period, at in got["early@a.example"] if period == "2026-10-04"]
    assert spring == [datetime(2026, 10, 3, 16, 0, tzinfo=UTC)]
    assert spring[0].astimezone(SYDNEY).time() == time(3, 0)
    # Weekly: two Mondays for Sydney, two Fridays for London; weekdays skip weekends.
    assert [p for p, _ in got["sydney@a.example"]] == ["2026-W40", "2026-W41"]
    assert [p for p, _ in got["london@a.example"]] == ["2026-W39", "2026-W40"]
    assert len(got["kathmandu@a.example"]) == 10 and len(got["perth@a.example"]) == 14
    assert conn.execute(
        "SELECT count(*) FROM ops.digest_periods WHERE outcome <> 'queued'"
    ).fetchone() == (0,)
    keys = conn.execute(
        "SELECT count(*), count(DISTINCT idempotency_key) FROM ops.notification_outbox"
    ).fetchone()
    assert keys[0] == keys[1] == sum(len(v) for v in got.values())


def test_a_repeated_time_on_the_fall_back_day_is_sent_once(conn, database_url):
    """Sydney falls back on 5 Apr 2026: 02:30 happens twice; the digest goes at the first."""
    tenant = f.tenant(conn)
    person(conn, tenant, "early@a.example", "Australia/Sydney", at=time(2, 30))
    start = datetime(2026, 4, 4, 12, 0, tzinfo=UTC)
    start_clock(conn, start - TICK)
    for n in range(24 * 4):
        settle_at(database_url, start + n * TICK)
    (got,) = digests(conn)["early@a.example"]
    assert got == ("2026-04-05", datetime(2026, 4, 4, 15, 30, tzinfo=UTC))  # 02:30 AEDT


@pytest.mark.parametrize(
    ("zone", "at", "wall"),
    [("Australia/Sydney", time(2, 30), datetime(2026, 10, 4, 2, 30)),
     ("Pacific/Chatham", time(2, 50), datetime(2026, 9, 27, 2, 50)),
     ("Australia/Lord_Howe", time(2, 10), datetime(2026, 10, 4, 2, 10))],
)  # fmt: skip
def test_a_time_in_a_gap_is_due_at_the_transition(zone, at, wall):
    """The first moment after a time that does not exist is the transition itself (Lord
    Howe's is half an hour)."""
    due = first_instant_at_or_after(wall, ZoneInfo(zone))
    local = due.astimezone(ZoneInfo(zone))
    assert local.time() > at and local.date() == wall.date()
    assert (due - timedelta(seconds=1)).astimezone(ZoneInfo(zone)).time() < at


def test_a_person_who_changes_zone_mid_period_gets_one(conn, database_url):
    """Auckland at 08:00 on 1 Dec is 03:00 on 1 Dec in Perth: moved to Perth that day, the
    digest of Perth's 1 Dec has gone already; the next goes on 2 Dec at 08:00 Perth time."""
    tenant = f.tenant(conn)
    mover = person(conn, tenant, "mover@a.example", "Pacific/Auckland")
    start = datetime(2026, 11, 30, 18, 0, tzinfo=UTC)
    start_clock(conn, start - TICK)
    tick = start
    while tick < datetime(2026, 12, 2, 6, 0, tzinfo=UTC):
        if tick == datetime(2026, 11, 30, 20, 0, tzinfo=UTC):
            conn.execute("UPDATE portal.users SET timezone = 'Australia/Perth' WHERE id = %s",
                         [mover])  # fmt: skip
        settle_at(database_url, tick)
        tick += TICK
    assert digests(conn, as_local=False)["mover@a.example"] == [
        (day_key(date(2026, 12, 1), "Pacific/Auckland"), datetime(2026, 11, 30, 19, 0, tzinfo=UTC)),
        (day_key(date(2026, 12, 2), "Australia/Perth"), datetime(2026, 12, 2, 0, 0, tzinfo=UTC)),
    ]


def test_a_person_who_moves_their_time_later_the_same_day_gets_one(conn, database_url):
    tenant = f.tenant(conn)
    user = person(conn, tenant, "olivia@a.example", "Australia/Sydney", at=time(8))
    start = datetime(2026, 11, 29, 20, 0, tzinfo=UTC)  # 07:00 in Sydney
    start_clock(conn, start - TICK)
    for n in range(12 * 4):
        if n == 8:  # 09:00: they would rather have it at 17:00
            conn.execute("UPDATE portal.users SET digest_time = '17:00' WHERE id = %s", [user])
        settle_at(database_url, start + n * TICK)
    assert [p for p, _ in digests(conn)["olivia@a.example"]] == ["2026-11-30"]


@pytest.fixture
def digest(portal_db, mailer, job_settings):
    def run(now: datetime, **config):
        return run_job(
            notification_digest,
            {"portal_db": portal_db, "mailer": mailer, "job_settings": job_settings},
            {"ops": {"queue_due_digests": {"config": {"now": now.isoformat(), **config}}}},
        )

    return run


def metadata(result):
    (event,) = [
        e for e in result.all_events if e.is_successful_output and e.step_key == "queue_due_digests"
    ]
    return {k: v.value for k, v in event.step_output_data.metadata.items()}


def test_late_within_the_grace_is_sent_and_later_is_recorded_as_missed(conn, digest, sendgrid):
    """The daemon was down from 06:00 to 15:00 in Sydney: the 11:00 digest is 4 h late and
    goes; the 07:00 one is 8 h late and is recorded as missed, never sent stale."""
    tenant = f.tenant(conn)
    person(conn, tenant, "seven@a.example", "Australia/Sydney", at=time(7))
    person(conn, tenant, "eleven@a.example", "Australia/Sydney", at=time(11))
    start_clock(conn, datetime(2026, 11, 30, 6, 0, tzinfo=SYDNEY))
    result = digest(datetime(2026, 11, 30, 15, 0, tzinfo=SYDNEY))
    assert result.success
    assert sendgrid.accepted_recipients() == ["eleven@a.example"]
    counts = metadata(result)
    assert (counts["people_due"], counts["digests_queued"], counts["missed_past_grace"]) == (
        1,
        1,
        1,
    )
    outcomes = dict(
        conn.execute(
            "SELECT u.email, p.outcome FROM ops.digest_periods p "
            "JOIN portal.users u ON u.id = p.user_id"
        ).fetchall()
    )
    assert outcomes == {"seven@a.example": "missed", "eleven@a.example": "queued"}


def test_three_hours_of_downtime_sends_late(conn, digest, sendgrid):
    tenant = f.tenant(conn)
    person(conn, tenant, "olivia@a.example", "Australia/Sydney", at=time(8))
    start_clock(conn, datetime(2026, 11, 30, 7, 45, tzinfo=SYDNEY))
    assert digest(datetime(2026, 11, 30, 11, 0, tzinfo=SYDNEY)).success
    assert sendgrid.accepted_recipients() == ["olivia@a.example"]


def test_the_run_counts_due_sent_skipped_suppressed_and_missed(conn, digest, sendgrid):
    tenant = f.tenant(conn)
    person(conn, tenant, "sent@a.example", "Australia/Sydney")
    f.user(conn, tenant, email="idle@a.example")  # nothing to report
    person(conn, tenant, "bounced@a.example", "Australia/Sydney")
    f.suppression(conn, "bounced@a.example")
    person(conn, tenant, "off@a.example", "Australia/Sydney", frequency="off")
    start_clock(conn, datetime(2026, 11, 30, 7, 45, tzinfo=SYDNEY))
    result = digest(datetime(2026, 11, 30, 8, 0, tzinfo=SYDNEY))
    counts = metadata(result)
    assert {k: counts[k] for k in ("people_due", "digests_queued", "skipped_nothing_to_report",
                                   "suppressed", "missed_past_grace")} == {  # fmt: skip
        "people_due": 3, "digests_queued": 1, "skipped_nothing_to_report": 1,
        "suppressed": 1, "missed_past_grace": 0,
    }  # fmt: skip
    assert sendgrid.accepted_recipients() == ["sent@a.example"]


def test_two_runs_at_once_settle_each_person_once(conn, database_url):
    tenant = f.tenant(conn)
    for i in range(50):
        person(conn, tenant, f"p{i}@a.example", "Australia/Sydney")
    now = datetime(2026, 11, 30, 8, 0, tzinfo=SYDNEY)
    start_clock(conn, now - TICK)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(settle_at(database_url, now)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.queued for r in results) == [0, 0, 50]
    assert conn.execute("SELECT count(*) FROM ops.notification_outbox").fetchone() == (50,)


def test_an_operator_sends_an_agencys_digests_now_and_once(conn, digest, sendgrid):
    """At 06:00 an operator sends one agency's digests; at 08:00 the schedule sends the
    others', and not theirs again (one per period)."""
    ours, theirs = f.tenant(conn), f.tenant(conn)
    person(conn, ours, "ours@a.example", "Australia/Sydney")
    person(conn, theirs, "theirs@b.example", "Australia/Sydney")
    start_clock(conn, datetime(2026, 11, 30, 5, 45, tzinfo=SYDNEY))
    now = datetime(2026, 11, 30, 6, 0, tzinfo=SYDNEY)
    assert digest(now, tenant_id=str(ours)).success
    assert sendgrid.accepted_recipients() == ["ours@a.example"]
    for hour in (6, 7, 8):
        assert digest(datetime(2026, 11, 30, hour, 15 if hour == 6 else 0, tzinfo=SYDNEY)).success
    assert sendgrid.accepted_recipients() == ["ours@a.example", "theirs@b.example"]


def test_default_rows_keep_todays_digest_in_their_own_zone(conn, digest, sendgrid):
    """A row nobody has touched (daily, 08:00) gets the 08:00 digest it always got, now at
    08:00 in the person's own zone, keyed by their local date as before."""
    tenant = f.tenant(conn)
    olivia = f.user(conn, tenant, email="olivia@a.example")  # the columns' defaults
    conn.execute(
        "INSERT INTO portal.tasks (tenant_id, assignee_id, title, due_at) "
        "VALUES (%s, %s, 'Review', '2026-11-30T03:00:00Z')",
        [tenant, olivia],
    )
    assert conn.execute(
        "SELECT timezone, digest_frequency, digest_time, digest_weekday FROM portal.users"
    ).fetchone() == ("Australia/Sydney", "daily", time(8), 1)
    start_clock(conn, datetime(2026, 11, 30, 7, 0, tzinfo=SYDNEY))
    assert digest(datetime(2026, 11, 30, 7, 45, tzinfo=SYDNEY)).success
    assert sendgrid.accepted_recipients() == []
    assert digest(datetime(2026, 11, 30, 8, 0, tzinfo=SYDNEY)).success
    (request,) = sendgrid.mail_requests
    (p,) = request.body["personalizations"]
    assert p["custom_args"] == {
        "idempotency_key": f"digest:{olivia}:2026-11-29T13:00:00Z/2026-11-30T13:00:00Z"
    }
    assert p["dynamic_template_data"]["date"] == "2026-11-30"


def test_bad_choices_in_a_row_fall_back_and_are_counted(conn, database_url):
    """A portal whose columns hold what the contract does not allow (no CHECK there) still
    gets everyone their digest: unknown frequency -> daily, weekday 9 -> Monday."""
    conn.execute("ALTER TABLE portal.users DROP CONSTRAINT users_digest_frequency_check")
    conn.execute("ALTER TABLE portal.users DROP CONSTRAINT users_digest_weekday_check")
    tenant = f.tenant(conn)
    person(conn, tenant, "fortnightly@a.example", "Australia/Sydney", frequency="fortnightly")
    person(conn, tenant, "ninth@a.example", "Australia/Sydney", frequency="weekly", weekday=9)
    person(conn, tenant, "fine@a.example", "Australia/Sydney")
    now = datetime(2026, 11, 30, 8, 0, tzinfo=SYDNEY)  # a Monday
    start_clock(conn, now - TICK)
    settled = settle_at(database_url, now)
    assert settled.queued == 3 and settled.fallbacks == 2
    assert sorted(digests(conn)) == ["fine@a.example", "fortnightly@a.example", "ninth@a.example"]


def test_expected_is_an_honest_oracle():
    """The oracle itself, on a plain day: 08:00 in Perth is midnight UTC."""
    plan = expected(
        [("p", "Australia/Perth", "daily", time(8), 1)],
        datetime(2026, 11, 29, 12, 0, tzinfo=UTC),
        datetime(2026, 11, 30, 12, 0, tzinfo=UTC),
    )
    assert plan == {"p": [(date(2026, 11, 30).isoformat(), datetime(2026, 11, 30, tzinfo=UTC))]}


def test_a_run_in_the_future_is_refused(conn, digest, sendgrid):
    """A `now` ahead of the clock would settle people's digests before their time."""
    result = digest(datetime.now(UTC) + timedelta(hours=1))
    assert not result.success
    assert conn.execute("SELECT count(*) FROM ops.digest_periods").fetchone() == (0,)


def test_null_and_empty_zones_are_two_choices_each_person_counted_once(conn, database_url):
    conn.execute("ALTER TABLE portal.users ALTER COLUMN timezone DROP NOT NULL")
    tenant = f.tenant(conn)
    person(conn, tenant, "null@a.example", None)
    person(conn, tenant, "empty@a.example", "")
    now = datetime(2026, 11, 30, 8, 0, tzinfo=SYDNEY)
    start_clock(conn, now - TICK)
    settled = settle_at(database_url, now)
    assert (settled.due, settled.queued, settled.fallbacks) == (2, 2, 2)


def test_off_in_any_case_is_off(conn, database_url):
    conn.execute("ALTER TABLE portal.users DROP CONSTRAINT users_digest_frequency_check")
    tenant = f.tenant(conn)
    person(conn, tenant, "off@a.example", "Australia/Sydney", frequency="OFF")
    person(conn, tenant, "weekly@a.example", "Australia/Sydney", frequency=" Weekly")
    now = datetime(2026, 11, 30, 8, 0, tzinfo=SYDNEY)  # a Monday
    start_clock(conn, now - TICK)
    settled = settle_at(database_url, now)
    assert list(digests(conn)) == ["weekly@a.example"] and settled.fallbacks == 0
    assert digests(conn)["weekly@a.example"][0][0] == "2026-W49"


def test_an_update_reported_late_is_not_reported_again(conn, digest, sendgrid):
    """A digest sent three hours late reports the videos up to then; the next one starts
    there, not at the late one's moment."""
    tenant = f.tenant(conn)
    person(conn, tenant, "olivia@a.example", "Australia/Sydney")
    f.asset(conn, tenant, title="Late video", status="ready",
            status_changed_at=datetime(2026, 11, 29, 9, 30, tzinfo=SYDNEY))  # fmt: skip
    start_clock(conn, datetime(2026, 11, 29, 7, 45, tzinfo=SYDNEY))
    assert digest(datetime(2026, 11, 29, 11, 0, tzinfo=SYDNEY)).success
    conn.execute(
        "UPDATE ops.digest_clock SET evaluated_through = %s",
        [datetime(2026, 11, 30, 7, 45, tzinfo=SYDNEY)],
    )
    assert digest(datetime(2026, 11, 30, 8, 0, tzinfo=SYDNEY)).success
    first, second = (
        [u["title"] for u in p["dynamic_template_data"]["asset_updates"]]
        for r in sendgrid.mail_requests
        for p in r.body["personalizations"]
    )
    assert (first, second) == (["Late video"], [])
