"""Every job's run config is checked where it enters: a bad value fails before any work,
naming the field and never the value, which may have been read from the environment
(a choice outside a Literal is refused by Dagster itself, before the run, quoting what was
typed: such a field cannot read the environment; the digest's `now` has its own tests)."""

from __future__ import annotations

import pytest
from dagster import DagsterInstance, DagsterInvalidConfigError

from mm_orchestration.features.restore_drill.job import backup_verify
from mm_orchestration.features.retention.job import storage_retention
from mm_orchestration.monitoring.alerts import send_alert
from mm_orchestration.monitoring.run_status import failure_summary


def _failure(job, run_config, resources):
    with DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            run_config=run_config, resources=resources, instance=instance, raise_on_error=False
        )
        assert not result.success
        return failure_summary(instance, result.run_id)


@pytest.mark.parametrize(
    ("job", "op", "field", "value"),
    [
        (backup_verify, "run_restore_drill", "method", "nein"),
        (send_alert, "record_alert", "contact", "bogus"),
    ],
)
def test_values_outside_a_choice_are_refused_before_the_run(
    job, op, field, value, portal_db, job_settings, mailer
):
    from mm_orchestration.features.restore_drill.resource import RestoreDrill

    config = {"ops": {op: {"config": {field: value}}}}
    if job is send_alert:
        config["ops"][op]["config"].update(key="k", subject="s", body="b")
    resources = {"portal_db": portal_db, "job_settings": job_settings, "mailer": mailer,
                 "restore_drill": RestoreDrill()}  # fmt: skip
    with pytest.raises(DagsterInvalidConfigError) as refused:
        job.execute_in_process(run_config=config, resources=resources)
    assert f"config:{field}" in str(refused.value) and value in str(refused.value)


def test_a_retention_of_a_billion_days_names_the_field(portal_db):
    summary = _failure(
        storage_retention,
        {"ops": {"prune_dagster_runs": {"config": {"dagster_run_days": 1e9}}}},
        {"portal_db": portal_db},
    )
    assert "dagster_run_days" in summary and "36500" in summary, summary


def test_alert_details_must_be_a_json_object(portal_db, job_settings, mailer):
    config = {"key": "k", "subject": "s", "body": "b", "details_json": "[1, 2]"}
    summary = _failure(
        send_alert,
        {"ops": {"record_alert": {"config": config}}},
        {"portal_db": portal_db, "job_settings": job_settings, "mailer": mailer},
    )
    assert summary.startswith("record_alert: details_json Value error, details_json must be"), (
        summary
    )
    assert "must be a JSON object" in summary and "[1, 2]" not in summary
