"""The job console in a real browser: launch share_link_expiry from the UI and see it work.

Starts what `make dev` starts (embedded PostgreSQL with demo data, the Dagster
webserver and daemon) with SendGrid pointed at the local recorder, drives Debian's
Chromium with Playwright, then checks the database, the email and the audit entry.
A screenshot of the run page is saved under test-artifacts/.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time

import pytest

from mm_orchestration.db import connect
from mm_orchestration.embedded_pg import free_port
from tests.local_stack import own_env, start, wait_until_serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)


def test_launch_share_link_expiry_from_the_ui(tmp_path, sendgrid, project_root):
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    data = tmp_path / "mm"
    env = own_env(
        data,
        SENDGRID_API_KEY="SG.ui-test",
        SENDGRID_API_HOST=sendgrid.url,
        SENDGRID_DIGEST_TEMPLATE_ID="d-ui-test",
    )
    log = tmp_path / "dev.log"
    proc = start(["dev", "--port", str(port), "--reports-port", str(free_port())], env, log)
    try:
        wait_until_serving(port, proc, log)
        pg_port = (data / "postgres" / "port").read_text().strip()
        url = f"postgresql://postgres@127.0.0.1:{pg_port}/portal"
        with connect(url) as conn:
            due = conn.execute(
                "SELECT count(*) FROM portal.share_links WHERE status = 'active'"
                " AND expires_at <= now()"
            ).fetchone()[0]
        assert due > 0, "the demo data has share links already due"

        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                ],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.add_locator_handler(
                page.get_by_role("button", name="Skip", exact=True), lambda button: button.click()
            )
            page.goto(f"http://127.0.0.1:{port}/locations/mm_orchestration/jobs/share_link_expiry")
            page.get_by_role("tab", name="Launchpad").click()
            page.get_by_role("button", name=re.compile(r"Launch Run$")).click()
            page.wait_for_url(re.compile(r".*/runs/[0-9a-f-]{36}"), timeout=60_000)
            run_id = re.search(r"/runs/([0-9a-f-]{36})", page.url).group(1)
            expect(page.get_by_text("Success", exact=True).first).to_be_visible(timeout=120_000)
            artifacts = project_root / "test-artifacts"
            artifacts.mkdir(exist_ok=True)
            page.screenshot(path=str(artifacts / "share_link_expiry_run.png"), full_page=True)
            browser.close()

        with connect(url) as conn:
            assert (
                conn.execute(
                    "SELECT count(*) FROM portal.share_links WHERE status = "
                    "'active' AND expires_at <= now()"
                ).fetchone()[0]
                == 0
            )
            ledger = conn.execute(
                "SELECT status, trigger, actor FROM ops.job_runs WHERE run_id = %s", [run_id]
            ).fetchone()
            assert ledger == ("succeeded", "manual", "ui")
        assert len(sendgrid.accepted_recipients()) > 0  # the owners' emails
        # The daemon's audit sensor records the UI launch.
        deadline = time.monotonic() + 90
        while True:
            with connect(url) as conn:
                audit = conn.execute(
                    "SELECT actor, job_name FROM ops.audit_log WHERE "
                    "action = 'manual_run' AND run_id = %s",
                    [run_id],
                ).fetchone()
            if audit or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert audit == ("ui", "share-link-expiry")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
