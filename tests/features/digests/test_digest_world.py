"""Every person's digest at their own time anywhere on Earth (issue 23): people who move
across the date line, change their time or frequency, live through gaps and overlaps of
any size or a day that never was, and zone rules that change between two runs. Driven
through the job's database work (`digests.settle.settle`) at every 15-minute tick, as the
schedule does.
"""

from __future__ import annotations

import contextlib
import struct
import subprocess
import sys
import zoneinfo
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from psycopg import sql

from mm_orchestration.features.digests import moments as digest_moments
from mm_orchestration.features.digests.moments import period_of
from mm_orchestration.platform import zones
from tests import factories as f
from tests.features.digests.test_digest_times import TICK, person, settle_at, start_clock

# SQL or PostgreSQL tools that may differ by server version: CI runs these on 15 and 16.
pytestmark = pytest.mark.pg_versions


def records(conn, user) -> list[tuple[datetime, str, datetime]]:
    """(moment, outcome, settled at) of each period settled for `user`, in order."""
    return conn.execute(
        "SELECT moment, outcome, settled_at FROM ops.digest_periods WHERE user_id = %s"
        " ORDER BY moment",
        [user],
    ).fetchall()


def run_ticks(conn, database_url, start, end, changes=None) -> list:
    """Settle at every tick in [start, end); `changes`: {tick: SQL SET clause} applied to
    every person just before that tick's run."""
    start_clock(conn, start - TICK)
    results = []
    tick = start
    while tick < end:
        if changes and tick in changes:
            # The test's own SET clause, as SQL (never a value from outside).
            conn.execute(sql.SQL("UPDATE portal.users SET {}").format(sql.SQL(changes[tick])))
        results.append(settle_at(database_url, tick))
        tick += TICK
    return results


def z(day: int, hour: int, minute: int = 0, month: int = 12, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# -- moving across the date line -------------------------------------------------------


def test_moving_west_across_the_date_keeps_los_angeles_first_of_december(conn, database_url):
    """Sydney -> Los Angeles with a daily 08:00: Sydney's 1 December went at 30 Nov 21:00Z,
    which is Los Angeles' 30 November; Los Angeles' 1 December is its own period."""
    tenant = f.tenant(conn)
    mover = person(conn, tenant, "west@a.example", "Australia/Sydney")
    run_ticks(conn, database_url, z(30, 18, month=11), z(3, 18),
              {z(1, 12): "timezone = 'America/Los_Angeles'"})  # fmt: skip
    assert [(m, o) for m, o, _ in records(conn, mover)] == [
        (z(30, 21, month=11), "queued"),  # 08:00 on 1 Dec in Sydney
        (z(1, 16), "queued"),  # 08:00 on 1 Dec in Los Angeles
        (z(2, 16), "queued"),
        (z(3, 16), "queued"),
    ]


def test_moving_west_after_the_new_zones_time_has_passed_sends_it_late(conn, database_url):
    """The move is noticed at 17:00Z, after Los Angeles' 08:00 (16:00Z): its 1 December
    still gets its digest (within the grace), never none for a day."""
    tenant = f.tenant(conn)
    mover = person(conn, tenant, "late@a.example", "Australia/Sydney")
    run_ticks(conn, database_url, z(30, 18, month=11), z(2, 18),
              {z(1, 17): "timezone = 'America/Los_Angeles'"})  # fmt: skip
    assert records(conn, mover) == [
        (z(30, 21, month=11), "queued", z(30, 21, month=11)),
        (z(1, 16), "queued", z(1, 17)),  # due at 16:00Z, sent at the first run after
        (z(2, 16), "queued", z(2, 16)),
    ]


def test_moving_east_never_gives_two_in_one_local_day(conn, database_url):
    """Los Angeles -> Sydney: LA's 1 December digest (16:00Z) falls on Sydney's 2 December
    (03:00), so Sydney's 2 December has had its digest; the next is Sydney's 3rd."""
    tenant = f.tenant(conn)
    mover = person(conn, tenant, "east@a.example", "America/Los_Angeles")
    run_ticks(conn, database_url, z(1, 12), z(3, 12),
              {z(1, 17): "timezone = 'Australia/Sydney'"})  # fmt: skip
    assert [m for m, _, _ in records(conn, mover)] == [z(1, 16), z(2, 21)]


# -- changing time or frequency ------------------------------------------------------------


def test_an_earlier_time_chosen_after_it_passed_still_gets_todays(conn, database_url):
    """08:00 Sydney, changed at 07:30 to 07:00: today's 07:00 has passed, but today has had
    no digest, so it goes at once (late, within the grace), and tomorrow's at 07:00."""
    tenant = f.tenant(conn)
    user = person(conn, tenant, "early@a.example", "Australia/Sydney")
    run_ticks(conn, database_url, z(29, 18, month=11), z(1, 0),
              {z(30, 20, 30, month=11): "digest_time = '07:00'"})  # fmt: skip
    assert records(conn, user) == [
        (z(29, 21, month=11), "queued", z(29, 21, month=11)),  # 30 Nov 08:00
        (z(30, 20, month=11), "queued", z(30, 20, 30, month=11)),  # 1 Dec 07:00, at 07:30
    ]


def test_changing_time_twice_in_a_day_gives_one_that_day(conn, database_url):
    """08:00 sent; at 09:00 moved to 10:00 (today is done: none at 10:00); at 11:00 moved
    to 07:00 (still done); tomorrow at 07:00."""
    tenant = f.tenant(conn)
    user = person(conn, tenant, "twice@a.example", "Australia/Sydney")
    run_ticks(conn, database_url, z(29, 20, month=11), z(30, 22, month=11),
              {z(29, 22, month=11): "digest_time = '10:00'",
               z(30, 0, month=11): "digest_time = '07:00'"})  # fmt: skip
    assert [m for m, _, _ in records(conn, user)] == [z(29, 21, month=11), z(30, 20, month=11)]


def test_weekly_to_daily_mid_week_and_back(conn, database_url):
    """Weekly on Monday (30 Nov, Sydney 08:00); on Wednesday daily: Wednesday on; on
    Friday weekly again: this week has had its digests, so the next is Monday 7 Dec."""
    tenant = f.tenant(conn)
    user = person(conn, tenant, "weekly@a.example", "Australia/Sydney", "weekly")
    run_ticks(conn, database_url, z(29, 18, month=11), z(7, 0),
              {z(1, 23): "digest_frequency = 'daily'",
               z(3, 23): "digest_frequency = 'weekly'"})  # fmt: skip
    assert [m for m, _, _ in records(conn, user)] == [
        z(29, 21, month=11),  # Mon 30 Nov (weekly)
        z(1, 21),  # Wed 2 Dec (daily from Wednesday 10:00 local)
        z(2, 21),  # Thu 3 Dec
        z(3, 21),  # Fri 4 Dec (daily until Friday 10:00 local... already sent at 08:00)
        z(6, 21),  # Mon 7 Dec (weekly again)
    ]


# -- transitions of any size --------------------------------------------------------------


@pytest.mark.parametrize(
    "zone, at, start, end, moment, shift",
    [
        # Lord Howe: half an hour forward at 02:00 on 4 Oct 2026 (02:15 does not exist).
        ("Australia/Lord_Howe", time(2, 15), z(2, 12, month=10), z(4, 12, month=10),
         z(3, 15, 30, month=10), "moved"),
        # ... and half an hour back at 02:00 on 5 Apr 2026 (01:45 happens twice).
        ("Australia/Lord_Howe", time(1, 45), z(3, 12, month=4), z(5, 12, month=4),
         z(4, 14, 45, month=4), "merged"),
        # Troll: two hours forward at 01:00 UTC on 29 Mar 2026 (01:30 does not exist).
        ("Antarctica/Troll", time(1, 30), z(28, 0, month=3), z(30, 0, month=3),
         z(29, 1, 0, month=3), "moved"),
    ],
)  # fmt: skip
def test_a_time_in_a_gap_or_overlap_of_any_size_goes_once(
    conn, database_url, zone, at, start, end, moment, shift
):
    tenant = f.tenant(conn)
    user = person(conn, tenant, "edge@a.example", zone, at=at)
    results = run_ticks(conn, database_url, start, end)
    moments = [m for m, _, _ in records(conn, user)]
    assert moment in moments and len(moments) == len(set(moments))
    days = [m.astimezone(ZoneInfo(zone)).date() for m in moments]
    assert len(days) == len(set(days))  # one a local day
    assert sum(getattr(r, shift) for r in results) == 1  # counted in the run's metadata


def test_a_day_that_never_was_has_no_digest_and_its_neighbours_do(conn, database_url):
    """Samoa went from 29 to 31 December 2011 (UTC-10 to UTC+14)."""
    tenant = f.tenant(conn)
    user = person(conn, tenant, "apia@a.example", "Pacific/Apia")
    run_ticks(conn, database_url, z(28, 0, year=2011), z(2, 0, month=1, year=2012))
    days = [m.astimezone(ZoneInfo("Pacific/Apia")).date() for m, _, _ in records(conn, user)]
    assert days == [date(2011, 12, d) for d in (28, 29, 31)] + [date(2012, 1, 1), date(2012, 1, 2)]


# -- zone rules: one source, and rules that change between two runs ------------------------


def tzif(posix: str, offset: int, abbreviation: str) -> bytes:
    """A zone file (RFC 8536, version 2) whose every instant follows one POSIX rule: what
    an operating system's older copy of a zone reads like."""
    chars = abbreviation.encode() + b"\0"
    block = b"TZif2" + b"\0" * 15 + struct.pack(">6l", 0, 0, 0, 0, 1, len(chars))
    block += struct.pack(">lbb", offset, 0, 0) + chars
    return block + block + b"\n" + posix.encode() + b"\n"


@pytest.fixture
def old_vancouver(tmp_path) -> Path:
    """Zone files as Debian 12 has them (tzdata 2025b): Vancouver still changes its clocks
    in November 2026 (British Columbia's permanent daylight time came later)."""
    (tmp_path / "America").mkdir()
    (tmp_path / "America" / "Vancouver").write_bytes(tzif("PST8PDT,M3.2.0,M11.1.0", -28800, "PST"))
    return tmp_path


def test_the_pinned_rules_run_whatever_the_machines_zone_files_say(old_vancouver):
    """On a machine whose zone files are older than the package, Python alone reads the
    machine's; every process of ours reads the package's."""
    probe = (
        "from datetime import datetime, time, UTC\n"
        "{imports}"
        "from zoneinfo import ZoneInfo\n"
        "wall = datetime(2026, 11, 5, 8, 0, tzinfo=ZoneInfo('America/Vancouver'))\n"
        "print(wall.astimezone(UTC).isoformat())\n"
    )
    env = {"PYTHONTZPATH": str(old_vancouver), "PATH": "/usr/bin:/bin"}
    bare = subprocess.run([sys.executable, "-c", probe.format(imports="")], env=env,
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert bare.stdout.strip() == "2026-11-05T16:00:00+00:00"  # the stale machine's answer
    ours = subprocess.run(
        [sys.executable, "-c", probe.format(imports="import mm_orchestration\n")],
        env=env, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[3],
    )  # fmt: skip
    assert ours.stdout.strip() == "2026-11-05T15:00:00+00:00"  # tzdata 2026: UTC-7 for good


@contextlib.contextmanager
def rules_from(folder: Path | None, version: str) -> Iterator[None]:
    """This process reads zones from `folder` first (None: the pinned package only), as
    rules version `version`, as if tzdata had been upgraded (or not yet)."""
    original = zones.rules_version

    def clear() -> None:
        zoneinfo.ZoneInfo.clear_cache()
        digest_moments.zone_info.cache_clear()
        digest_moments._wall.cache_clear()
        zones._spans.cache_clear()

    zoneinfo.reset_tzpath(to=[str(folder)] if folder else ())
    zones.rules_version = lambda: version  # type: ignore[assignment]
    clear()
    try:
        yield
    finally:
        zoneinfo.reset_tzpath(to=())
        zones.rules_version = original  # type: ignore[assignment]
        clear()


def test_rules_that_change_between_two_runs_lose_no_digest(conn, database_url, old_vancouver):
    """Runs up to 15:45Z on 5 Nov read the old rules (08:00 in Vancouver is 16:00Z); then
    tzdata is upgraded (08:00 is 15:00Z, already past). The next run still settles the
    day, late within the grace: never nothing."""
    tenant = f.tenant(conn)
    user = person(conn, tenant, "bc@a.example", "America/Vancouver")
    with rules_from(old_vancouver, "2025b"):
        run_ticks(conn, database_url, z(4, 12, month=11), z(5, 16, month=11))
    assert [m for m, _, _ in records(conn, user)] == [z(4, 16, month=11)]
    tick = z(5, 16, month=11)
    while tick < z(6, 16, month=11):
        settle_at(database_url, tick)
        tick += TICK
    assert records(conn, user)[1:] == [
        (z(5, 15, month=11), "queued", z(5, 16, month=11)),  # due 15:00Z, sent at 16:00Z
        (z(6, 15, month=11), "queued", z(6, 15, month=11)),
    ]


def test_local_times_in_a_digest_are_ours_not_postgresqls(conn, database_url):
    """A Vancouver task due at 20:00Z on 10 Nov 2026 is due at 13:00 there (UTC-7 for
    good, tzdata 2026); PostgreSQL's own zone files may say 12:00: the digest says 13:00,
    and where PostgreSQL differs the run names both versions."""
    tenant = f.tenant(conn)
    user = person(conn, tenant, "bc@a.example", "America/Vancouver")
    conn.execute(
        "INSERT INTO portal.tasks (tenant_id, assignee_id, title, due_at)"
        " VALUES (%s, %s, 'Sign off', '2026-11-10T20:00:00Z')",
        [tenant, user],
    )
    start_clock(conn, z(10, 14, 45, month=11))
    settled = settle_at(database_url, z(10, 15, month=11))
    payload = conn.execute("SELECT payload FROM ops.notification_outbox").fetchone()[0]
    assert payload["due_soon"][0]["due_local"] == "Tue 10 Nov 2026 13:00"
    assert payload["date"] == "2026-11-10"
    found = zones.disagreements(conn, ["America/Vancouver"], z(1, 0, month=11), z(30, 0))
    if found:  # the embedded server's files predate British Columbia's change
        assert settled.rules_differ is not None
        assert zones.rules_version() in settled.rules_differ
        assert "PostgreSQL" in settled.rules_differ and "America/Vancouver" in settled.rules_differ
    else:
        assert settled.rules_differ is None


def test_every_zone_python_knows_has_spans_the_digest_can_read(conn):
    """Our rules for SQL: every zone's spans cover all time, one offset each, in order."""
    for zone in sorted(zones._zones_by_folded_name().values())[::25]:
        spans = [s for _, s in zones.offsets([zone], z(1, 0, year=2033))]
        assert spans[0].starts.year == 1 and spans[-1].ends.year == 9999
        assert all(a.ends == b.starts for a, b in zip(spans, spans[1:], strict=False))
        info = ZoneInfo(zone)
        for s in spans[1:-1]:
            assert s.starts.astimezone(info).utcoffset().total_seconds() == s.offset


def test_a_period_is_a_span_of_instants_keyed_by_its_bounds():
    key, starts, ends = period_of(date(2026, 12, 1), "daily", ZoneInfo("America/Los_Angeles"))
    assert (starts, ends) == (z(1, 8), z(2, 8))
    assert key == "2026-12-01T08:00:00Z/2026-12-02T08:00:00Z"
    assert period_of(date(2026, 12, 1), "daily", ZoneInfo("Australia/Sydney"))[0] == (
        "2026-11-30T13:00:00Z/2026-12-01T13:00:00Z"
    )
    assert (
        timedelta(0)
        == period_of(date(2011, 12, 30), "daily", ZoneInfo("Pacific/Apia"))[2]
        - (period_of(date(2011, 12, 30), "daily", ZoneInfo("Pacific/Apia"))[1])
    )


def test_where_postgresqls_rules_differ_from_ours_both_versions_are_named(conn, old_vancouver):
    """Ours read as an older release (Vancouver still changing clocks) against the server's:
    the difference is found at the transition that matters and named with both versions."""
    with rules_from(old_vancouver, "2025b"):
        found = zones.disagreements(conn, ["America/Vancouver"], z(1, 0, month=10), z(30, 0))
        told = zones.describe(conn, found)
    server = conn.execute("SHOW server_version").fetchone()[0]
    postgres_moved = conn.execute(
        "SELECT extract(epoch FROM ('2026-11-05 16:00Z'::timestamptz AT TIME ZONE"
        " 'America/Vancouver') - '2026-11-05 16:00'::timestamp)::int"
    ).fetchone()[0]
    if postgres_moved == -7 * 3600:  # the server's files know British Columbia's change
        assert found and {d.zone for d in found} == {"America/Vancouver"}
        assert any(d.ours == -8 * 3600 and d.postgres == -7 * 3600 for d in found)
        assert "tzdata 2025b" in told and f"PostgreSQL {server}" in told
    else:
        assert found == []
