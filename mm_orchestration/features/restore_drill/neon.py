"""The few Neon API v2 calls the restore drill needs: branch from a point in time, wait, delete.

https://api-docs.neon.tech: POST /projects/{id}/branches (with `parent_timestamp` and
a read-write endpoint), GET /projects/{id}/operations/{op}, DELETE
/projects/{id}/branches/{branch}. The connection URI comes back with the branch.
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mm_orchestration.platform import http


class NeonError(RuntimeError):
    """Neon refused or failed a request; the message carries its status and text."""


@dataclass(frozen=True)
class Branch:
    id: str
    connection_uri: str
    operation_ids: tuple[str, ...]


class NeonClient:
    def __init__(
        self,
        api_key: str,
        project_id: str,
        host: str = "https://console.neon.tech",
        timeouts: http.Timeouts | None = None,
    ) -> None:
        self.api_key = api_key
        self.project_id = project_id
        self.base = host.rstrip("/") + "/api/v2"
        # Connect and read timeouts (MM_HTTP_CONNECT_TIMEOUT, MM_HTTP_READ_TIMEOUT): a Neon
        # API that stalls costs the drill seconds, not the rest of its runtime limit.
        self.timeouts = timeouts or http.Timeouts()

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.base}{path}",
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.api_key}",
                "Accept": "application/json",
                "Content-Type": "application/json",
            },
        )
        # No retries: creating a branch is not idempotent, and the drill as a whole is.
        try:
            answer = http.send(request, self.timeouts)
        except http.OutcomeUnknown as exc:
            raise NeonError(f"Neon {method} {path}: outcome unknown: {exc}") from None
        except http.NotSent as exc:
            raise NeonError(f"Neon {method} {path}: unreachable: {exc}") from None
        if not 200 <= answer.status < 300:  # a redirect is no answer to act on
            text = answer.body.decode("utf-8", "replace")[:500]
            raise NeonError(f"Neon {method} {path}: {answer.status} {text}")
        raw = answer.body
        return json.loads(raw) if raw else {}

    def create_branch(self, name: str, parent_timestamp: datetime) -> Branch:
        reply = self._request(
            "POST",
            f"/projects/{self.project_id}/branches",
            {
                "branch": {"name": name, "parent_timestamp": parent_timestamp.isoformat()},
                "endpoints": [{"type": "read_write"}],
            },
        )
        uris = reply.get("connection_uris") or []
        if not uris:
            raise NeonError("Neon created the branch but returned no connection URI")
        return Branch(
            id=reply["branch"]["id"],
            connection_uri=uris[0]["connection_uri"],
            operation_ids=tuple(op["id"] for op in reply.get("operations", [])),
        )

    def wait(
        self,
        operation_ids: tuple[str, ...],
        poll_seconds: float = 2.0,
        timeout_seconds: float = 900.0,
    ) -> None:
        deadline = time.monotonic() + timeout_seconds
        pending = list(operation_ids)
        while pending:
            status = self._request("GET", f"/projects/{self.project_id}/operations/{pending[0]}")[
                "operation"
            ]["status"]
            if status == "finished":
                pending.pop(0)
                continue
            if status in ("failed", "error", "cancelled", "skipped"):
                raise NeonError(f"Neon operation {pending[0]} ended {status}")
            if time.monotonic() > deadline:
                raise NeonError(
                    f"Neon operation {pending[0]} still {status} after {timeout_seconds:.0f} s"
                )
            time.sleep(poll_seconds)

    def delete_branch(self, branch_id: str) -> None:
        self._request("DELETE", f"/projects/{self.project_id}/branches/{branch_id}")
