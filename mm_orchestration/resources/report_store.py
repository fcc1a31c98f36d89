"""Where compliance reports live: a local folder by default.

Reports are written once per week and read back for the email and the download
endpoint, which refuses any path outside the store and any file whose SHA-256 no
longer matches the one recorded in `ops.residency_reports`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field


class ReportStoreError(ValueError):
    """A path outside the store, or a report that is missing or altered."""


class ReportStore(ConfigurableResource):
    """A folder of reports, addressed by relative keys such as `residency/2026-11-23/x.csv`."""

    root: str = Field(default=".mm/reports", description="MM_DATA_DIR/reports unless set")

    def path(self, key: str) -> Path:
        base = Path(self.root).resolve()
        target = (base / key).resolve()
        if base != target and base not in target.parents:
            raise ReportStoreError(f"{key!r} is outside the report store")
        return target

    def put(self, key: str, content: bytes) -> str:
        """Store `content` under `key`; returns its SHA-256 (hex)."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(target.suffix + ".partial")
        partial.write_bytes(content)
        partial.replace(target)  # readers never see half a report
        return hashlib.sha256(content).hexdigest()

    def get(self, key: str, sha256: str | None = None) -> bytes:
        """The stored bytes; with `sha256`, only if they still hash to it."""
        target = self.path(key)
        if not target.is_file():
            raise ReportStoreError(f"no report at {key!r}")
        content = target.read_bytes()
        if sha256 is not None and hashlib.sha256(content).hexdigest() != sha256:
            raise ReportStoreError(f"{key!r} no longer matches its recorded SHA-256")
        return content

    def uri(self, key: str) -> str:
        return self.path(key).as_uri()
