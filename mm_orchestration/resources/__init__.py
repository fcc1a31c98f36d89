"""I/O behind the jobs: each a ConfigurableResource configured from the environment."""

from mm_orchestration.resources.database import PortalDatabase
from mm_orchestration.resources.job_settings import JobSettings
from mm_orchestration.resources.mailer import Mailer

__all__ = ["JobSettings", "Mailer", "PortalDatabase"]
