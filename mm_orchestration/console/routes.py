"""The console's own pages beside Dagster's, served as the signed-in person (viewer and
above): stored reports (`/reports/<key>`) and the audit trail as CSV (`/audit-trail.csv`,
with the audit chain's head at the period's end in `X-Audit-Chain-Head`), each download
audited, and `/whoami`; the signed evidence bundle of a period (`/evidence/2026-Q4`) to
compliance and admins only. Placed before Dagster's catch-all page
(dagster_private.HookedWebserver.build_routes).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from mm_orchestration.console.access import identity_in
from mm_orchestration.console.access_settings import EVIDENCE_ROLES
from mm_orchestration.console.audit_log import AuditUnavailable, ConsoleAudit, ended_by
from mm_orchestration.console.downloads import lookup, report_of
from mm_orchestration.features.audit_trail import query as audit_trail
from mm_orchestration.platform.db import connect
from mm_orchestration.platform.report_store import ReportStore
from mm_orchestration.platform.settings import BUSINESS_TIMEZONE


class ConsoleRoutes:
    """The routes, for one audit log, report store (None: reports are not served here)
    and business time zone (the audit trail's days)."""

    def __init__(
        self, audit_log: ConsoleAudit, store: ReportStore | None, timezone: str = BUSINESS_TIMEZONE
    ) -> None:
        self._audit_log = audit_log
        self._store = store
        self._timezone = timezone

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/reports/{key:path}", self.report_download_endpoint),
            Route("/audit-trail.csv", self.audit_trail_endpoint),
            Route("/evidence/{period}", self.evidence_endpoint),
            Route("/whoami", self.whoami_endpoint),
        ]

    async def whoami_endpoint(self, request: Request) -> JSONResponse:
        identity = identity_in(request.scope)
        assert identity is not None  # the front lets no one through without
        return JSONResponse(
            {"person": identity.person, "role": identity.role, "source": identity.source}
        )

    async def report_download_endpoint(self, request: Request) -> Response:
        """A stored report (viewer and above), each download audited."""
        identity = identity_in(request.scope)
        key = request.path_params["key"]
        if self._store is None:
            return PlainTextResponse("reports are not configured here", status_code=404)
        database_url = self._audit_log.database_url
        found = await run_in_threadpool(lookup, self._store, database_url, key)
        report = await run_in_threadpool(report_of, self._store, database_url, key)
        # Named as compliance names it (the residency report of a week, CSV or HTML); the
        # object key stays in the details.
        target = (
            f"{report['report']} report {report['partition']} ({report['format']})"
            if report
            else key
        )
        try:
            await run_in_threadpool(
                self._audit_log.write,
                identity,
                "download_report",
                "succeeded" if found.status == 200 else "failed",
                target,
                {
                    "via": "rest GET",
                    "object_key": key,
                    "status": found.status,
                    **(
                        {"reports": [report["report"]], "partitions": [report["partition"]]}
                        if report
                        else {}
                    ),
                    **({} if found.status == 200 else {"reason": found.body.decode()}),
                },
            )
        except AuditUnavailable as exc:
            return PlainTextResponse(str(exc), status_code=503)
        if found.status != 200:
            return PlainTextResponse(found.body.decode(), status_code=found.status)
        return Response(found.body, headers=found.headers())

    async def audit_trail_endpoint(self, request: Request) -> Response:
        """The audit trail as CSV, filtered by person, action and day or period (viewer and
        above; the download itself is audited)."""
        params = request.query_params
        try:
            wanted = _trail_filter(params, self._timezone)
        except ValueError as exc:
            return PlainTextResponse(str(exc), status_code=400)
        identity = identity_in(request.scope)
        try:
            entry = await run_in_threadpool(
                self._audit_log.write,
                identity,
                "download_audit_trail",
                "allowed",
                "ops/audit_trail",
                {
                    "via": "rest GET",
                    "filter": {
                        "since": wanted.since.isoformat(),
                        "until": wanted.until.isoformat(),
                        "person": wanted.person,
                        "action": wanted.action,
                    },
                },
            )
        except AuditUnavailable as exc:
            return PlainTextResponse(str(exc), status_code=503)

        def read() -> audit_trail.Entries:
            with connect(self._audit_log.database_url) as conn:
                return audit_trail.read(conn, wanted)

        try:
            found = await run_in_threadpool(read)
            body = audit_trail.as_csv(found.frame, found.note)
        except BaseException as exc:
            self._audit_log.settle(entry, *ended_by(exc))  # not in a thread: we may be cancelled
            raise
        result = {"status": 200, "rows": len(found.frame), "truncated": found.truncated}
        await run_in_threadpool(self._audit_log.settle, entry, "succeeded", None, result)
        name = f"audit-trail-{wanted.since.date()}-{wanted.until.date()}.csv"
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        if found.truncated:
            # A cut download says so where a script looks, and in its last row.
            headers["X-Audit-Trail-Truncated"] = f"first {len(found.frame)} entries; narrow it"
        if found.head is not None:
            # Where the hash chain stood at the period's end: `mm-jobs audit verify
            # --expect-head HEAD` later proves nothing up to then was changed.
            headers["X-Audit-Chain-Head"] = found.head.text()
        return Response(body, media_type="text/csv; charset=utf-8", headers=headers)

    async def evidence_endpoint(self, request: Request) -> Response:
        """The newest signed evidence bundle of a period (`mm-jobs evidence export`), to
        compliance and admins only; each download, and each refusal, audited."""
        from mm_orchestration.features.evidence.bundle import Period
        from mm_orchestration.features.evidence.store import newest

        identity = identity_in(request.scope)
        try:
            period = Period.parse(request.path_params["period"]).name
        except ValueError as exc:
            return PlainTextResponse(str(exc), status_code=400)
        target = f"evidence {period}"
        if identity is None or identity.role not in EVIDENCE_ROLES:
            refusal = (
                f"{identity.role if identity else 'nobody'} may not download evidence "
                f"bundles: {' and '.join(EVIDENCE_ROLES)} only"
            )
            details = {"via": "rest GET", "refusal": refusal}
            unwritten = await run_in_threadpool(
                self._audit_log.refuse, identity, "download_evidence", target, details
            )
            if unwritten is not None:
                return PlainTextResponse(str(unwritten), status_code=unwritten.status)
            return PlainTextResponse(refusal, status_code=403)
        if self._store is None:
            return PlainTextResponse("reports are not configured here", status_code=404)
        store = self._store

        def read() -> Any:
            with connect(self._audit_log.database_url) as conn:
                return newest(conn, store, period)

        kept = await run_in_threadpool(read)
        try:
            await run_in_threadpool(
                self._audit_log.write,
                identity,
                "download_evidence",
                "succeeded" if kept.status == 200 else "failed",
                target,
                {
                    "via": "rest GET",
                    "status": kept.status,
                    **(
                        {"object": kept.name, "sha256": hashlib.sha256(kept.body).hexdigest()}
                        if kept.status == 200
                        else {"reason": kept.body.decode()}
                    ),
                },
            )
        except AuditUnavailable as exc:
            return PlainTextResponse(str(exc), status_code=exc.status)
        if kept.status != 200:
            return PlainTextResponse(kept.body.decode(), status_code=kept.status)
        return Response(
            kept.body,
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{kept.name}"'},
        )


_NAME = re.compile(r"^[A-Za-z0-9._%+\-@:*]{1,254}$")


def _trail_filter(params: Mapping[str, str], zone: str) -> audit_trail.Filter:
    """`day=YYYY-MM-DD` (a local day), or `since`/`until` (dates or ISO times); `person`,
    `action` optional. Default: today."""
    person = params.get("person") or None
    action = params.get("action") or None
    for name, value in (("person", person), ("action", action)):
        if value is not None and not _NAME.fullmatch(value):
            raise ValueError(f"{name}: not a person or an action name")
    try:
        if params.get("since") or params.get("until"):
            since = _when(params.get("since") or "1970-01-01", zone)
            until = _when(params.get("until") or "9999-01-01", zone)
            wanted = audit_trail.Filter(since, until, person, action)
        else:
            today = datetime.now(ZoneInfo(zone)).date()
            day = date.fromisoformat(params["day"]) if params.get("day") else today
            wanted = audit_trail.Filter.for_day(day, zone, person, action)
        # Both ends as UTC: a day or time at the calendar's edge overflows here, not later.
        wanted.since.astimezone(UTC), wanted.until.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError(
            "day, since and until are dates (2026-11-30) or ISO times (2026-11-30T09:00+11:00) "
            "between the years 1 and 9998"
        ) from None
    if wanted.since >= wanted.until:
        raise ValueError("since must be before until")
    return wanted


def _when(text: str, zone: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=ZoneInfo(zone))
