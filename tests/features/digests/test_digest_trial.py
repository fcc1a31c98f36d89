"""The digest schedule tried the way the world tries it (issue 23's trial): people who go
away and come back (opted out, deactivated, their agency suspended), who change frequency
around a day that was not a digest day of theirs, many people sharing a choice while one
of them changes it, and an operator's rerun of an earlier tick between two scheduled runs.
Driven through the job's database work (`digests.settle.settle`) at 15-minute ticks.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests import factories as f
from tests.features.digests.test_digest_times import TICK, person, settle_at, start_clock
from tests.features.digests.test_digest_world import records, rules_from, tzif, z

SYDNEY = ZoneInfo("Australia/Sydney")


def ticks(conn, database_url, start, end, changes=None) -> None:
    """Settle at every tick in [start, end); `changes`: {tick: [SQL]} run just before it."""
    tick = start
    while tick < end:
        for statement in (changes or {}).get(tick, []):
            conn.execute(statement)
        settle_at(database_url, tick)
        tick += TICK


def sydney(day: int, hour: int, minute: int = 0, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=SYDNEY).astimezone(UTC)


# -- away and back --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "away, back",
    [
        ("digest_opt_in = false", "digest_opt_in = true"),
        ("deactivated_at = now()", "deactivated_at = NULL"),
    ],
)
def test_someone_away_for_a_day_has_no_digest_of_it_sent_or_missed(conn, database_url, away, back):
    """Away from 28 Nov 23:00 to 30 Nov 07:30 (Sydney): 29 Nov was not theirs, so it is
    neither sent nor recorded as missed (the dashboard would count a digest nobody was
    owed); 30 Nov's goes at 08:00 as usual. Their group's others get every day."""
    tenant = f.tenant(conn)
    returner = person(conn, tenant, "back@a.example", "Australia/Sydney")
    other = person(conn, tenant, "stays@a.example", "Australia/Sydney")
    start_clock(conn, sydney(28, 5) - TICK)
    ticks(conn, database_url, sydney(28, 5), sydney(1, 10, month=12), {
        sydney(28, 23): [f"UPDATE portal.users SET {away} WHERE id = '{returner}'"],  # noqa: S608
        sydney(30, 7, 30): [f"UPDATE portal.users SET {back} WHERE id = '{returner}'"],  # noqa: S608
    })  # fmt: skip
    assert records(conn, returner) == [
        (sydney(28, 8), "queued", sydney(28, 8)),
        (sydney(30, 8), "queued", sydney(30, 8)),
        (sydney(1, 8, month=12), "queued", sydney(1, 8, month=12)),
    ]
    days = [(28, 11), (29, 11), (30, 11), (1, 12)]
    assert [(m, o) for m, o, _ in records(conn, other)] == [
        (sydney(day, 8, month=month), "queued") for day, month in days
    ]


def test_an_agency_suspended_and_resumed_is_as_a_person_deactivated_and_reactivated(
    conn, database_url
):
    """Suspended 07:00-09:00 on 30 Nov (Sydney) across their 08:00: on resuming, the day
    has had no digest, so it goes at once, as it does for a reactivated person."""
    suspended, other = f.tenant(conn), f.tenant(conn)
    member = person(conn, suspended, "member@a.example", "Australia/Sydney")
    away = person(conn, other, "away@b.example", "Australia/Sydney", at=time(8, 15))
    person(conn, other, "stays@b.example", "Australia/Sydney", at=time(18))
    start_clock(conn, sydney(29, 5) - TICK)
    ticks(conn, database_url, sydney(29, 5), sydney(30, 12), {
        sydney(30, 7): [f"UPDATE portal.tenants SET status = 'suspended' WHERE id = '{suspended}'",  # noqa: S608
                        f"UPDATE portal.users SET deactivated_at = now() WHERE id = '{away}'"],  # noqa: S608
        sydney(30, 9): [f"UPDATE portal.tenants SET status = 'active' WHERE id = '{suspended}'",  # noqa: S608
                        f"UPDATE portal.users SET deactivated_at = NULL WHERE id = '{away}'"],  # noqa: S608
    })  # fmt: skip
    assert records(conn, member)[1:] == [(sydney(30, 8), "queued", sydney(30, 9))]
    assert records(conn, away)[1:] == [(sydney(30, 8, 15), "queued", sydney(30, 9))]


def test_when_everyone_was_away_whoever_comes_back_has_joined(conn, database_url):
    """The only person with a digest is deactivated 07:00-09:00 across their 08:00: no
    group had anyone at the run between, and the one they are back in is still one they
    joined (today's goes at once), not the first the schedule ever saw."""
    tenant = f.tenant(conn)
    only = person(conn, tenant, "only@a.example", "Australia/Sydney")
    start_clock(conn, sydney(29, 5) - TICK)
    ticks(conn, database_url, sydney(29, 5), sydney(30, 12), {
        sydney(30, 7): [f"UPDATE portal.users SET deactivated_at = now() WHERE id = '{only}'"],  # noqa: S608
        sydney(30, 9): [f"UPDATE portal.users SET deactivated_at = NULL WHERE id = '{only}'"],  # noqa: S608
    })  # fmt: skip
    assert records(conn, only)[1:] == [(sydney(30, 8), "queued", sydney(30, 9))]


# -- a new frequency and a day that was not a digest day ------------------------------------


@pytest.mark.parametrize(
    "frequency, at, start, changed, end, expected",
    [
        # Weekdays at 23:00; daily from Sunday 6 Dec 02:00: Saturday 23:00 (three hours
        # before, within the grace) was no digest day of theirs: no Saturday digest at
        # 02:00 and another at 23:00 the same Sunday.
        ("weekdays", time(23), sydney(4, 12, month=12), sydney(6, 2, month=12),
         sydney(7, 23, 30, month=12), [sydney(d, 23, month=12) for d in (4, 6, 7)]),
        # Weekly on Monday at 08:00; daily from Wednesday 2 Dec 07:30: Tuesday was no
        # digest day of theirs, and is not recorded as missed.
        ("weekly", time(8), sydney(30, 5), sydney(2, 7, 30, month=12),
         sydney(3, 12, month=12), [sydney(30, 8)] + [sydney(d, 8, month=12) for d in (2, 3)]),
    ],
)  # fmt: skip
def test_a_new_frequency_never_reaches_into_a_day_that_was_not_theirs(
    conn, database_url, frequency, at, start, changed, end, expected
):
    tenant = f.tenant(conn)
    user = person(conn, tenant, "freq@a.example", "Australia/Sydney", frequency, at)
    start_clock(conn, start - TICK)
    ticks(conn, database_url, start, end,
          {changed: ["UPDATE portal.users SET digest_frequency = 'daily'"]})  # fmt: skip
    assert [(m, o) for m, o, _ in records(conn, user)] == [(m, "queued") for m in expected]


# -- many people, one choice, one of them changing it -------------------------------------


def test_many_sharing_a_choice_while_one_changes_it_get_one_each_day(conn, database_url):
    """Twenty people at 08:00 in Sydney and five in Auckland; one of them moves to
    Auckland, changes time twice and moves back, all within two days. Everyone else gets
    one digest a day and no record of a day before the schedule started (a group someone
    leaves or joins is looked back for, but never into a day already over); the mover
    never two in one day of theirs."""
    tenant = f.tenant(conn)
    sydney_people = [person(conn, tenant, f"s{n}@a.example", "Australia/Sydney") for n in range(20)]
    auckland_people = [
        person(conn, tenant, f"a{n}@a.example", "Pacific/Auckland") for n in range(5)
    ]
    mover = sydney_people.pop()
    set_mover = "UPDATE portal.users SET {} WHERE id = '" + str(mover) + "'"  # noqa: S608
    start_clock(conn, sydney(28, 5) - TICK)
    ticks(conn, database_url, sydney(28, 5), sydney(1, 5, month=12), {
        sydney(28, 7): [set_mover.format("timezone = 'Pacific/Auckland'")],
        sydney(28, 10): [set_mover.format("digest_time = '11:00'")],
        sydney(28, 12): [set_mover.format("digest_time = '07:00'")],
        sydney(29, 9): [set_mover.format("timezone = 'Australia/Sydney'")],
    })  # fmt: skip
    for user, zone in [(u, "Australia/Sydney") for u in sydney_people] + [
        (u, "Pacific/Auckland") for u in auckland_people
    ]:
        got = records(conn, user)
        assert [o for _, o, _ in got] == ["queued"] * 3
        assert [m.astimezone(ZoneInfo(zone)).time() for m, _, _ in got] == [time(8)] * 3
    # Moved at 07:00 Sydney (09:00 Auckland): Auckland's 28 Nov has had no digest, so its
    # 08:00 goes at once; its 11:00 and 07:00 the same day are no second. Auckland's 29
    # Nov 07:00 is 05:00 in Sydney, so Sydney's 29 Nov (back from 09:00) has had its.
    assert records(conn, mover) == [
        (sydney(28, 6), "queued", sydney(28, 7)),
        (sydney(29, 5), "queued", sydney(29, 5)),
        (sydney(30, 7), "queued", sydney(30, 7)),
    ]
    keys = conn.execute(
        "SELECT count(*), count(DISTINCT idempotency_key) FROM ops.notification_outbox"
    ).fetchone()
    assert (
        keys[0]
        == keys[1]
        == conn.execute(
            "SELECT count(*) FROM ops.digest_periods WHERE outcome = 'queued'"
        ).fetchone()[0]
    )


# -- reruns of an earlier tick ------------------------------------------------------------


def test_a_rerun_of_an_earlier_tick_leaves_a_change_for_the_next_run(conn, database_url):
    """11:00 in Sydney; at 09:50 on 30 Nov changed to 09:30 (already past: today's goes at
    the next run). An operator reruns the 09:00 tick first: it looks back from 09:00 and
    finds nothing, and must not make the 10:00 run think nothing changed."""
    tenant = f.tenant(conn)
    user = person(conn, tenant, "rerun@a.example", "Australia/Sydney", at=time(11))
    start_clock(conn, sydney(29, 23) - TICK)
    ticks(conn, database_url, sydney(29, 23), sydney(30, 10))
    conn.execute("UPDATE portal.users SET digest_time = '09:30'")
    settle_at(database_url, sydney(30, 9))  # the rerun of an earlier tick
    ticks(conn, database_url, sydney(30, 10), sydney(1, 10, month=12))
    assert records(conn, user) == [
        (sydney(30, 9, 30), "queued", sydney(30, 10)),
        (sydney(1, 9, 30, month=12), "queued", sydney(1, 9, 30, month=12)),
    ]


@pytest.fixture
def old_vancouver(tmp_path) -> Path:
    """Zone files as tzdata 2025b has them: Vancouver still changes clocks in Nov 2026."""
    (tmp_path / "America").mkdir()
    (tmp_path / "America" / "Vancouver").write_bytes(tzif("PST8PDT,M3.2.0,M11.1.0", -28800, "PST"))
    return tmp_path


def test_a_rerun_of_an_earlier_tick_leaves_new_zone_rules_for_the_next_run(
    conn, database_url, old_vancouver
):
    """Runs up to 15:45Z on 5 Nov read the old rules (08:00 in Vancouver is 16:00Z); tzdata
    is upgraded (08:00 is 15:00Z) and the 14:45Z tick is rerun first: the 16:00Z run still
    knows the rules changed since it last looked, and settles the day."""
    tenant = f.tenant(conn)
    user = person(conn, tenant, "bc@a.example", "America/Vancouver")
    with rules_from(old_vancouver, "2025b"):
        start_clock(conn, z(4, 12, month=11) - TICK)
        ticks(conn, database_url, z(4, 12, month=11), z(5, 16, month=11))
    settle_at(database_url, z(5, 14, 45, month=11))  # the rerun, with the new rules
    ticks(conn, database_url, z(5, 16, month=11), z(5, 17, month=11))
    assert records(conn, user)[1:] == [(z(5, 15, month=11), "queued", z(5, 16, month=11))]


def test_a_rerun_of_the_same_tick_and_two_at_once_keep_one_per_period(conn, database_url):
    """The same tick settled twice, and an earlier one after it: nothing twice."""
    tenant = f.tenant(conn)
    user = person(conn, tenant, "same@a.example", "Australia/Sydney")
    start_clock(conn, sydney(30, 7, 45) - TICK)
    for tick in (sydney(30, 7, 45), sydney(30, 8), sydney(30, 8), sydney(30, 7, 45)):
        settle_at(database_url, tick)
    assert records(conn, user) == [(sydney(30, 8), "queued", sydney(30, 8))]
    assert conn.execute("SELECT count(*) FROM ops.notification_outbox").fetchone() == (1,)


# -- downtime -----------------------------------------------------------------------------


@pytest.mark.parametrize("days", [3, 12])
def test_after_days_of_downtime_every_day_is_recorded(conn, database_url, days):
    """The daemon down from 1 Dec 00:00Z for `days` days (longer than a weekly period and
    its day too): every day's moment in between is recorded as missed, none silently
    dropped; the one within the grace goes; the next day is on time."""
    tenant = f.tenant(conn)
    user = person(conn, tenant, "down@a.example", "Australia/Sydney")
    start_clock(conn, z(1, 0))
    back = z(1, 0) + timedelta(days=days)  # 11:00 in Sydney
    settle_at(database_url, back)
    ticks(conn, database_url, back + TICK, back + timedelta(days=1))
    got = records(conn, user)
    first = sydney(2, 8, month=12)  # the first 08:00 after 1 Dec 00:00Z (11:00 Sydney)
    assert [m for m, _, _ in got] == [first + timedelta(days=n) for n in range(days + 1)]
    assert [o for _, o, _ in got] == ["missed"] * (days - 1) + ["queued", "queued"]
