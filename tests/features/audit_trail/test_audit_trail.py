"""ops/audit_trail: one Sydney day of the audit log for compliance, and the CSV it links to."""

from __future__ import annotations

import re
from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest
from dagster import DagsterInstance, materialize

from mm_orchestration.features.audit_trail import query as audit_trail
from mm_orchestration.features.audit_trail.asset import audit_trail as audit_trail_asset

# SQL or PostgreSQL tools that may differ by server version: CI runs these on 15 and 16.
pytestmark = pytest.mark.pg_versions

SYDNEY = ZoneInfo("Australia/Sydney")
DAY = date(2026, 11, 27)


def materialized(portal_db, job_settings):
    """The day's partition of ops/audit_trail materialised; its metadata."""
    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [audit_trail_asset],
            partition_key=DAY.isoformat(),
            instance=instance,
            resources={"portal_db": portal_db, "job_settings": job_settings},
        )
    (materialization,) = result.asset_materializations_for_node("ops__audit_trail")
    return materialization.metadata


def entry(conn, actor, action, at, role=None, target=None, outcome=None):
    """An entry that happened at `at` (written so: entries are never changed afterwards)."""
    conn.execute(
        """INSERT INTO ops.audit_log (occurred_at, actor, action, role, target, outcome)
           VALUES (%s, %s, %s, %s, %s, %s)""",
        [at, actor, action, role, target, outcome],
    )


def test_one_sydney_day_with_counts_table_and_filtered_csv(conn, portal_db, job_settings):
    inside = datetime(2026, 11, 27, 0, 30, tzinfo=SYDNEY)  # 2026-11-26 13:30 UTC
    entry(conn, "olivia@mm.example", "launch_run", inside, role="operator", target="x")
    entry(conn, "olivia@mm.example", "launch_run", inside, role="operator", outcome="refused")
    entry(conn, "=cmd|' /C calc'!A0", "download_report", inside, role="viewer")
    entry(conn, "adam@mm.example", "stop_schedule", datetime(2026, 11, 28, 0, 1, tzinfo=SYDNEY))
    metadata = materialized(portal_db, job_settings)
    assert metadata["entries"].value == 3 and metadata["people"].value == 2
    assert metadata["refused"].value == 1
    assert "olivia\\@mm.example: 2" in metadata["by_person"].value  # escaped: no mailto link
    assert "launch\\_run: 2" in metadata["by_action"].value
    assert metadata["download_csv"].value.endswith("/audit-trail.csv?day=2026-11-27")
    assert "\\|" in metadata["entries_preview"].value  # a pipe in a name keeps the table whole

    only = audit_trail.Filter.for_day(DAY, "Australia/Sydney", person="OLIVIA@mm.example")
    frame = audit_trail.entries(conn, only)
    assert list(frame["action"]) == ["launch_run", "launch_run"]
    csv = audit_trail.as_csv(
        audit_trail.entries(conn, audit_trail.Filter.for_day(DAY, "Australia/Sydney"))
    ).decode()
    assert "\"'=cmd|' /C calc'!A0\"" in csv  # a formula is text in a spreadsheet


def test_a_cut_trail_says_so_and_how_to_narrow_it(conn, portal_db, job_settings, monkeypatch):
    """More entries than one download holds: the CSV ends with a row saying so, and the
    asset's metadata says it too, never a silent cut."""
    at = datetime(2026, 11, 27, 9, 0, tzinfo=SYDNEY)
    for i in range(3):
        entry(conn, f"p{i}@mm.example", "launch_run", at)
    day = audit_trail.Filter.for_day(DAY, "Australia/Sydney")
    found = audit_trail.read(conn, day, limit=2)
    assert found.truncated and len(found.frame) == 2
    assert found.note is not None and "person=" in found.note and "since=" in found.note
    rows = audit_trail.as_csv(found.frame, found.note).decode().splitlines()
    assert len(rows) == 4 and '"[truncated]"' in rows[-1] and "only the first 2" in rows[-1]
    whole = audit_trail.read(conn, day, limit=3)
    assert not whole.truncated and whole.note is None

    monkeypatch.setattr(audit_trail, "MAX_ROWS", 2)
    metadata = materialized(portal_db, job_settings)
    assert metadata["truncated"].value is True
    assert "only the first 2" in metadata["narrow"].value


def test_the_preview_renders_no_markdown_anyone_sent(conn, portal_db, job_settings):
    at = datetime(2026, 11, 27, 9, 0, tzinfo=SYDNEY)
    entry(
        conn,
        "[click](http://evil.example)",
        "launch_run",
        at,
        target="![x](http://t.example/p.png)",
    )
    entry(conn, "<img src=x onerror=alert(1)>", "**bold**", at)
    metadata = materialized(portal_db, job_settings)
    shown = metadata["entries_preview"].value + metadata["by_person"].value
    shown += metadata["by_action"].value
    assert "[click](" not in shown and "\\[click\\]" in shown
    assert "![x](" not in shown and "**bold**" not in shown and "nan" not in shown
    assert re.search(r"(?<!\\)<img", shown) is None and "\\<img" in shown
