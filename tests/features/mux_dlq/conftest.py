"""The mux-webhook-retry job's resources, as its tests run it (a minute's backoff)."""

from __future__ import annotations

from typing import Any

import pytest

from mm_orchestration.features.mux_dlq.resource import MuxWebhooks


@pytest.fixture
def mux_batch() -> dict[str, int]:
    """Options of MuxWebhooks beyond the backoff; a module overrides it (a small batch)."""
    return {}


@pytest.fixture
def resources(portal_db: Any, mailer: Any, job_settings: Any, mux_batch: dict[str, int]) -> dict:
    return {
        "portal_db": portal_db,
        "mailer": mailer,
        "job_settings": job_settings,
        "mux": MuxWebhooks(backoff_seconds=60, **mux_batch),
    }
