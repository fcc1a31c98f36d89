"""I/O behind the jobs: each a ConfigurableResource configured from the environment."""

from mm_orchestration.resources.database import PortalDatabase
from mm_orchestration.resources.mailer import Mailer

__all__ = ["Mailer", "PortalDatabase"]
