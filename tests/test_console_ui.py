"""The job console in a real browser, through its front, with the test as the identity proxy.

Starts what `make dev` starts (embedded PostgreSQL with demo data, the console behind our
front, the daemon, the code server) with the console told to believe X-Auth-Request-Email
from 127.0.0.1 (the test, acting as the company's authenticating proxy) and SendGrid
pointed at the local recorder. In Debian's Chromium through Playwright:

- an operator launches share-link expiry from the Launchpad: it runs, and the run's
  `mm/actor`, the ledger and the audit entry (written before the launch) name them;
- the same operator launches the restore drill: the console shows "operator may not launch
  backup_verify", nothing runs, and the refusal is audited;
- an admin switches a schedule off from its page: audited with their name;
- a request with no identity from an address that is not the proxy's is refused.

Screenshots of each step are saved under test-artifacts/.
"""

from __future__ import annotations

import http.client
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
HEADER = "X-Auth-Request-Email"
OPERATOR, ADMIN = "olivia@mm.example", "adam@mm.example"
SECRET = "ui-test-proxy-secret-0123456789abcdef0123"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)


def _wait_for(what, check, timeout=90):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, f"timed out waiting for {what}"
            return value
        time.sleep(1)


def test_operator_and_admin_act_as_themselves_in_the_browser(tmp_path, sendgrid, project_root):
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    data = tmp_path / "mm"
    env = own_env(
        data,
        SENDGRID_API_KEY="SG.ui-test",
        SENDGRID_API_HOST=sendgrid.url,
        SENDGRID_DIGEST_TEMPLATE_ID="d-ui-test",
        MM_CONSOLE_AUTH="proxy",
        MM_CONSOLE_TRUSTED_PROXIES="127.0.0.1",
        MM_CONSOLE_ROLES=f"{OPERATOR}=operator; {ADMIN}=admin",
        MM_CONSOLE_PUBLIC_URL=f"http://127.0.0.1:{port}",
        MM_CONSOLE_PROXY_SECRET=SECRET,
    )
    log = tmp_path / "dev.log"
    proc = start(["dev", "--port", str(port)], env, log)
    artifacts = project_root / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
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

        # Nobody from an address the console does not trust, header or not.
        for headers in ({}, {HEADER: ADMIN}):
            stranger = http.client.HTTPConnection(
                "127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0)
            )
            stranger.request("GET", "/locations/mm_orchestration/jobs", headers=headers)
            answer = stranger.getresponse()
            assert answer.status == 401 and b"Sign-in required" in answer.read()
            stranger.close()

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

            def page_as(person: str):
                context = browser.new_context(
                    viewport={"width": 1400, "height": 900},
                    extra_http_headers={HEADER: person, "X-MM-Proxy-Secret": SECRET},
                )
                page = context.new_page()
                page.add_locator_handler(
                    page.get_by_role("button", name="Skip", exact=True), lambda b: b.click()
                )
                return page

            # The operator launches share-link expiry.
            page = page_as(OPERATOR)
            page.goto(f"http://127.0.0.1:{port}/locations/mm_orchestration/jobs/share_link_expiry")
            expect(page.get_by_text(f"Signed in as {OPERATOR} (operator)")).to_be_visible()
            page.get_by_role("tab", name="Launchpad").click()
            page.get_by_role("button", name=re.compile(r"Launch Run$")).click()
            page.wait_for_url(re.compile(r".*/runs/[0-9a-f-]{36}"), timeout=60_000)
            run_id = re.search(r"/runs/([0-9a-f-]{36})", page.url).group(1)
            expect(page.get_by_text("Success", exact=True).first).to_be_visible(timeout=120_000)
            page.screenshot(path=str(artifacts / "share_link_expiry_run.png"), full_page=True)

            # The operator may not launch the restore drill: the console says so.
            page.goto(f"http://127.0.0.1:{port}/locations/mm_orchestration/jobs/backup_verify")
            page.get_by_role("tab", name="Launchpad").click()
            page.get_by_role("button", name=re.compile(r"Launch Run$")).click()
            expect(page.get_by_text("operator may not launch backup_verify")).to_be_visible(
                timeout=30_000
            )
            page.screenshot(path=str(artifacts / "operator_refused_drill.png"), full_page=True)

            # The admin switches a schedule off from its page.
            page = page_as(ADMIN)
            page.goto(
                f"http://127.0.0.1:{port}/locations/mm_orchestration/schedules/"
                "invite_cleanup_schedule"
            )
            switch = page.get_by_role("checkbox").first
            expect(switch).to_be_checked(timeout=60_000)
            switch.locator("xpath=..").click()  # the styled switch around the hidden input
            expect(switch).not_to_be_checked(timeout=30_000)
            page.screenshot(path=str(artifacts / "admin_stopped_schedule.png"), full_page=True)
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
            assert ledger == ("succeeded", "manual", OPERATOR)
            launch = conn.execute(
                "SELECT actor, role, job_name, target, outcome FROM ops.audit_log"
                " WHERE action = 'launch_run' AND run_id = %s",
                [run_id],
            ).fetchone()
            assert launch == (
                OPERATOR,
                "operator",
                "share-link-expiry",
                "share_link_expiry",
                "succeeded",
            )
            refused = conn.execute(
                "SELECT actor, role, outcome, details->>'refusal' FROM ops.audit_log"
                " WHERE action = 'launch_run' AND target = 'backup_verify'"
            ).fetchall()
            assert refused == [
                (OPERATOR, "operator", "refused", "operator may not launch backup_verify")
            ]
            assert conn.execute("SELECT count(*) FROM ops.backup_drills").fetchone()[0] == 0
            stopped = conn.execute(
                "SELECT actor, role, target, outcome FROM ops.audit_log"
                " WHERE action = 'stop_schedule'"
            ).fetchall()
            assert stopped == [(ADMIN, "admin", "invite_cleanup_schedule", "succeeded")]
        assert len(sendgrid.accepted_recipients()) > 0  # the owners' emails
        # The run carries the person as mm/actor, which the alerts and Sentry read too.
        from dagster import DagsterInstance

        os.environ["DAGSTER_HOME"] = str(data / "dagster_home")
        with DagsterInstance.get() as instance:
            assert instance.get_run_by_id(run_id).tags["mm/actor"] == OPERATOR
        # The audit sensor finds nothing to reconcile: the launch was audited as it happened.
        time.sleep(12)
        with connect(url) as conn:
            assert (
                conn.execute(
                    "SELECT count(*) FROM ops.audit_log WHERE action = 'manual_run'"
                ).fetchone()[0]
                == 0
            )
    finally:
        os.environ.pop("DAGSTER_HOME", None)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
