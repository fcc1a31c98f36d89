"""`mm-jobs digest preview USER`: what one person's digest would say, sending nothing."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg import sql

from mm_orchestration import cli
from mm_orchestration.features.digests.settle import settle
from tests import factories as f
from tests.json_lines import json_lines

PERTH = ZoneInfo("Australia/Perth")
AT = datetime(2026, 12, 1, 8, 0, tzinfo=PERTH)  # a Tuesday, 08:00 in Perth (00:00Z)


@pytest.fixture
def preview(database_url, monkeypatch, capsys):
    """Run the command in this process against the test's database: (exit code, out, err)."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.delenv("MM_TIMEZONE", raising=False)

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(["digest", "preview", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def refusal(err: str) -> str:
    """The command's refusal: one JSON line on stderr, its message in `event`."""
    (line,) = json_lines(err, "mm-jobs digest preview")
    assert line["level"] == "error" and line["exitCode"] in (1, 2)
    return str(line["event"])


def task(conn, tenant, user, title, due_at) -> None:
    conn.execute(
        "INSERT INTO portal.tasks (tenant_id, assignee_id, title, due_at) VALUES (%s, %s, %s, %s)",
        [tenant, user, title, due_at],
    )


def snapshot(conn: psycopg.Connection) -> dict[str, str]:
    """A digest of every row of every ops and portal table."""
    tables = conn.execute(
        "SELECT table_schema, table_name FROM information_schema.tables"
        " WHERE table_schema IN ('ops', 'portal') AND table_type = 'BASE TABLE'"
    ).fetchall()
    digests = {}
    for schema, name in tables:
        row = conn.execute(
            sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), ''))"
                " FROM {} x"
            ).format(sql.Identifier(schema, name))
        ).fetchone()
        assert row is not None
        digests[f"{schema}.{name}"] = f"{row[0]}:{row[1]}"
    return digests


def test_preview_prints_what_the_digest_would_queue_and_changes_nothing(conn, preview):
    t = f.tenant(conn, name="Kangaroo Creative")
    olivia = f.user(
        conn, t, email="Olivia@Kangaroo.example", display_name="Olivia", timezone="Australia/Perth"
    )
    task(conn, t, olivia, "Review colour grade", AT + timedelta(hours=5))
    task(conn, t, olivia, "Send the invoice", AT - timedelta(days=1))
    task(conn, t, olivia, "Next week", AT + timedelta(days=7))  # not in this digest
    f.asset(conn, t, title="Summer cut", status="ready", status_changed_at=AT - timedelta(hours=2))
    before = snapshot(conn)

    # By address, in another case, at an instant given in UTC.
    code, out, err = preview("  olivia@KANGAROO.example ", "--at", "2026-12-01T00:00:00Z")

    assert (code, err) == (0, "")
    shown = json.loads(out)
    assert {k: shown[k] for k in ("user_id", "zone", "frequency", "period", "suppressed")} == {
        "user_id": str(olivia),
        "zone": "Australia/Perth",
        "frequency": "daily",
        "period": "2026-11-30T16:00:00Z/2026-12-01T16:00:00Z",  # Perth's 1 December
        "suppressed": False,
    }
    assert datetime.fromisoformat(shown["at"]) == AT
    data = shown["data"]
    assert [i["title"] for i in data["due_soon"]] == ["Review colour grade"]
    assert [i["title"] for i in data["overdue"]] == ["Send the invoice"]
    assert [a["title"] for a in data["asset_updates"]] == ["Summer cut"]
    assert data["counts"] == {"due_soon": 1, "overdue": 1, "asset_updates": 1}
    assert (data["display_name"], data["tenant_name"]) == ("Olivia", "Kangaroo Creative")
    # Nothing sent, queued, settled, audited or moved: not one row of any table changed.
    assert snapshot(conn) == before

    # And it is what the digest itself would queue at that instant (settled, then undone).
    with conn.transaction():
        settled = settle(conn, AT, "check", timedelta(hours=6), "Australia/Sydney", user=olivia)
        assert settled.queued == 1
        payload = conn.execute("SELECT payload FROM ops.notification_outbox").fetchone()[0]
        assert payload == data
        raise psycopg.Rollback
    assert snapshot(conn) == before


def test_a_weekly_person_by_id_previews_their_week(conn, preview):
    t = f.tenant(conn)
    kiri = f.user(
        conn,
        t,
        timezone="Pacific/Chatham",
        digest_frequency="weekly",
        digest_weekday=3,
        digest_time="07:45",
    )
    code, out, _ = preview(str(kiri).upper(), "--at", "2026-12-02T07:45:00+13:45")
    assert code == 0
    shown = json.loads(out)
    assert (shown["zone"], shown["frequency"], shown["period"]) == (
        "Pacific/Chatham",
        "weekly",
        "2026-11-29T10:15:00Z/2026-12-06T10:15:00Z",  # the Chatham Islands' week 49
    )
    assert shown["data"]["counts"] == {"due_soon": 0, "overdue": 0, "asset_updates": 0}


def test_a_suppressed_address_is_shown_as_suppressed(conn, preview):
    t = f.tenant(conn)
    f.user(conn, t, email="bounced@a.example")
    f.suppression(conn, "Bounced@A.example")
    code, out, _ = preview("bounced@a.example")
    assert code == 0 and json.loads(out)["suppressed"] is True


@pytest.mark.parametrize(
    ("cols", "tenant_status", "reason"),
    [
        ({"digest_opt_in": False}, "active", "opted out (digest_opt_in is false)"),
        ({"digest_frequency": "off"}, "active", "digest frequency is off"),
        (
            {"deactivated_at": datetime(2026, 11, 2, 9, 30, tzinfo=PERTH)},
            "active",
            "deactivated at 2026-11-02 01:30Z",
        ),
        ({}, "suspended", "their agency is suspended"),
        (
            {"digest_opt_in": False, "digest_frequency": "off"},
            "active",
            "opted out (digest_opt_in is false); digest frequency is off",
        ),
    ],
)
def test_who_gets_no_digest_is_told_why(conn, preview, cols, tenant_status, reason):
    t = f.tenant(conn, status=tenant_status)
    person = f.user(conn, t, email="quiet@a.example", **cols)
    before = snapshot(conn)
    code, out, err = preview("quiet@a.example")
    assert (code, out) == (1, "")
    assert refusal(err) == f"user {person} gets no digest: {reason}"
    assert snapshot(conn) == before


def test_unknown_and_ambiguous_people_are_refused(conn, preview):
    for status in ("active", "active"):  # one address, two agencies
        f.user(conn, f.tenant(conn, status=status), email="sam@freelance.example")
    ids = sorted(
        str(r[0])
        for r in conn.execute(
            "SELECT id FROM portal.users WHERE email = 'sam@freelance.example'"
        ).fetchall()
    )

    code, out, err = preview("SAM@freelance.example")
    assert (code, out) == (1, "")
    assert "2 users have the address SAM@freelance.example" in err
    assert all(i in err for i in ids) and "give the user id" in err

    code, _, err = preview("nobody@a.example")
    assert (code, refusal(err)) == (1, "no user with that address")
    unknown = "3f2b6c1e-8d4a-4c2e-9f1a-2b3c4d5e6f70"
    code, _, err = preview(unknown)
    assert (code, refusal(err)) == (1, f"no user {unknown}")
    code, _, err = preview("olivia\x1b[31m")
    assert code == 2 and "holds control characters; give a user id or an address" in err
    assert "\x1b" not in err  # echoed as text, never as a terminal escape
    code, _, err = preview("olivia")
    assert code == 2 and "neither a user id (UUID) nor an email address" in err
    code, _, err = preview("o@a.example\x00")
    assert code == 2 and "control characters" in err


@pytest.mark.parametrize(
    "at", ["2026-12-01T08:00", "2026-12-01", "tomorrow", "2026-W49", "2026-12-01T08:00+25:00"]
)
def test_a_bad_at_is_refused_naming_the_argument(preview, capsys, at):
    with pytest.raises(SystemExit) as exited:
        preview("olivia@a.example", "--at", at)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --at" in err and "not an instant with its offset" in err


def test_stored_text_cannot_drive_the_terminal(conn, preview):
    t = f.tenant(conn, name="Agency\u009b31m")
    f.user(conn, t, email="zoe@a.example", display_name="Zoë\x1b[2J\u2028")
    code, out, _ = preview("zoe@a.example")
    assert code == 0
    assert "\x1b" not in out and "\u2028" not in out and "\u009b" not in out
    assert "Zoë" in out  # names stay readable
    data = json.loads(out)["data"]
    assert (data["display_name"], data["tenant_name"]) == ("Zoë\x1b[2J\u2028", "Agency\u009b31m")
