"""Runs share-link-expiry in its own process, so a test can kill it mid-flight."""

import sys

from dagster import DagsterInstance

from mm_orchestration.jobs.share_link_expiry import share_link_expiry
from mm_orchestration.resources import Mailer, PortalDatabase

if __name__ == "__main__":
    database_url, sendgrid_url = sys.argv[1:3]
    with DagsterInstance.ephemeral() as instance:
        result = share_link_expiry.execute_in_process(
            resources={
                "portal_db": PortalDatabase(url=database_url),
                "mailer": Mailer(api_key="SG.test-key", api_host=sendgrid_url),
            },
            instance=instance,
            raise_on_error=False,
        )
    sys.exit(0 if result.success else 1)
