"""Compliance checks that alert: a failed asset check of ours (the audit chain does not
verify, a restore drill about to lapse or lapsed) requests one `send_alert` run to its
contact, through the one alert path (outbox, audit, exactly once).

Each check says what to send in its metadata: `alert_key` (one alert per thing found: the
same break of the chain, the same due date, never once per daily run) and
`alert_subject`; its description is the body. A check that passed sends nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster import (
    DagsterEventType,
    DagsterRunStatus,
    RunRequest,
    RunStatusSensorContext,
    SensorDefinition,
    SkipReason,
)

from mm_orchestration.monitoring.alerts import alert_request, send_alert
from mm_orchestration.monitoring.every_run import every_run_sensor
from mm_orchestration.platform.inventory import Contact


def failed_check_alerts(
    context: RunStatusSensorContext, checks: Mapping[str, Contact]
) -> list[RunRequest]:
    """One alert request per failed evaluation, in the finished run, of a check in `checks`."""
    run = context.dagster_run
    requests = []
    records = context.instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
    for record in records:
        event = record.dagster_event
        if event is None:
            continue
        evaluation = event.asset_check_evaluation_data
        contact = checks.get(evaluation.check_name)
        if contact is None or evaluation.passed:
            continue
        meta: dict[str, Any] = {k: v.value for k, v in evaluation.metadata.items()}
        key = str(meta.get("alert_key") or f"{evaluation.check_name}:{run.run_id}")
        subject = str(meta.get("alert_subject") or f"{evaluation.check_name} failed")
        asset = "/".join(evaluation.asset_key.path)
        body = (
            f"{evaluation.description or subject}\n\n"
            f"Check {evaluation.check_name} on {asset} ({evaluation.severity.value}), "
            f"run {run.run_id}."
        )
        requests.append(
            alert_request(
                key,
                contact,
                subject,
                body,
                f"{evaluation.check_name}_alert",
                run.job_name,
                {"run_id": run.run_id, "check": evaluation.check_name, "asset": asset},
                tag=evaluation.check_name,
            )
        )
    return requests


def check_alert_sensor(
    name: str, checks: Mapping[str, Contact], description: str
) -> SensorDefinition:
    """A sensor watching every finished run for failed evaluations of `checks`."""

    @every_run_sensor(
        name,
        DagsterRunStatus.SUCCESS,
        request_job=send_alert,
        minimum_interval_seconds=30,
        description=description,
    )
    def _sensor(context: RunStatusSensorContext) -> list[RunRequest] | SkipReason:
        if context.dagster_run.job_name == send_alert.name:
            return SkipReason("an alert run checks nothing")
        requests = failed_check_alerts(context, checks)
        return requests or SkipReason(
            f"run {context.dagster_run.run_id[:8]}: no failed {', '.join(checks)}"
        )

    return _sensor
