"""Runs share-link-expiry (or, with a third argument `digest`, the day's notification
digest) in its own process, so a test can kill it mid-flight."""

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dagster import DagsterInstance

from mm_orchestration.features.digests.job import notification_digest
from mm_orchestration.features.share_links.job import share_link_expiry
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.job_settings import JobSettings
from mm_orchestration.platform.outbox.mailer import Mailer

if TYPE_CHECKING:
    from tests.sendgrid_server import SendGridRecorder

if __name__ == "__main__":
    database_url, sendgrid_url = sys.argv[1:3]
    which = sys.argv[3] if len(sys.argv) > 3 else "share-link-expiry"
    # MM_TEST_ONE_CONNECTION=1: a direct URL and the lowest cap, so the pool has one
    # connection for every thread of the delivery.
    one = os.environ.get("MM_TEST_ONE_CONNECTION") == "1"
    resources = {
        "portal_db": PortalDatabase(
            url=database_url,
            **({"direct_url": database_url, "max_connections": 2} if one else {}),
        ),
        "mailer": Mailer(api_key="SG.test-key", api_host=sendgrid_url),
    }
    with DagsterInstance.ephemeral() as instance:
        if which == "digest":
            result = notification_digest.execute_in_process(
                resources={**resources, "job_settings": JobSettings(digest_template_id="d-x")},
                run_config={"ops": {"queue_due_digests": {"config": {"now": sys.argv[4]}}}},
                instance=instance,
                raise_on_error=False,
            )
        else:
            result = share_link_expiry.execute_in_process(
                resources=resources, instance=instance, raise_on_error=False
            )
    sys.exit(0 if result.success else 1)


def kill_at_request(
    database_url: str, sendgrid: "SendGridRecorder", root: Path, nth: int, *job: str
) -> None:
    """Run the job (`job`: nothing for share-link-expiry, or `digest DAY`) in its own
    process group and SIGKILL it as soon as SendGrid has received its `nth` request, which
    the test's stand-in is holding unanswered: a crash with that request in flight."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.run_job_in_subprocess", database_url, sendgrid.url, *job],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while sendgrid.arrivals < nth and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sendgrid.arrivals >= nth, f"the job never reached its request {nth}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
