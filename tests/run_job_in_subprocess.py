"""Runs share-link-expiry (or, with a third argument `digest`, the day's notification
digest) in its own process, so a test can kill it mid-flight."""

import sys

from dagster import DagsterInstance

from mm_orchestration.jobs.notification_digest import notification_digest
from mm_orchestration.jobs.share_link_expiry import share_link_expiry
from mm_orchestration.resources import JobSettings, Mailer, PortalDatabase

if __name__ == "__main__":
    database_url, sendgrid_url = sys.argv[1:3]
    which = sys.argv[3] if len(sys.argv) > 3 else "share-link-expiry"
    resources = {
        "portal_db": PortalDatabase(url=database_url),
        "mailer": Mailer(api_key="SG.test-key", api_host=sendgrid_url),
    }
    with DagsterInstance.ephemeral() as instance:
        if which == "digest":
            result = notification_digest.execute_in_process(
                resources={**resources, "job_settings": JobSettings(digest_template_id="d-x")},
                run_config={"ops": {"queue_daily_digests": {"config": {"date": sys.argv[4]}}}},
                instance=instance,
                raise_on_error=False,
            )
        else:
            result = share_link_expiry.execute_in_process(
                resources=resources, instance=instance, raise_on_error=False
            )
    sys.exit(0 if result.success else 1)
