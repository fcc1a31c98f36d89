"""The error-rate thresholds as Sentry metric alert rules, set through a stand-in for
Sentry's API (tests/sentry_api.py) by the real sync job, from the inventory's numbers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dagster import SkipReason, build_sensor_context

from mm_orchestration.monitoring.sentry_rules import (
    RULE_PREFIX,
    SentryAlertRules,
    sentry_alert_rules_sensor,
    sentry_alert_rules_sync,
)
from mm_orchestration.platform import inventory
from tests.sentry_api import SentryApi


@pytest.fixture
def sentry() -> Iterator[SentryApi]:
    api = SentryApi()
    yield api
    api.close()


def rules_api(sentry: SentryApi, token: str | None = "sntrys_test") -> SentryAlertRules:
    return SentryAlertRules(
        auth_token=token,
        organization=sentry.organization,
        project="mm-orchestration",
        api_host=sentry.url,
        environment="production",
        http_connect_timeout=2,
        http_read_timeout=2,
    )


def sync(resource: SentryAlertRules):
    return sentry_alert_rules_sync.execute_in_process(
        resources={"sentry_alert_rules": resource}, raise_on_error=False
    )


def test_each_threshold_becomes_a_rule_with_the_same_numbers(sentry) -> None:
    result = sync(rules_api(sentry))
    assert result.success
    rules = sentry.by_name()
    settable = [s for s in inventory.INVENTORY if s.error_rate and s.error_rate.window_hours <= 24]
    assert sorted(rules) == sorted(RULE_PREFIX + s.name for s in settable)
    for spec in settable:
        rule = rules[RULE_PREFIX + spec.name]
        assert spec.error_rate is not None
        assert rule["aggregate"] == "failure_rate()" and rule["dataset"] == "transactions"
        assert rule["query"] == f"transaction:{spec.name}"  # the run transactions' name
        assert rule["timeWindow"] == spec.error_rate.window_hours * 60
        assert rule["triggers"][0]["alertThreshold"] == spec.error_rate.max_failed_percent / 100
        assert rule["resolveThreshold"] == spec.error_rate.recover_percent / 100
        assert rule["projects"] == ["mm-orchestration"]
        assert rule["environment"] == "production"
    # The weekly rules are not approximated: they are said to be ours alone.
    (output,) = [e for e in result.all_events if e.is_successful_output]
    rules_meta = output.step_output_data.metadata["rules"].value
    assert set(rules_meta["not_settable"]) == {
        "notification-suppression-cleanup",
        "storage-retention",
        "tenant-health-check",
    }
    assert "at most 24 hours" in rules_meta["not_settable"]["storage-retention"]


def test_a_second_sync_changes_nothing_and_a_hand_edit_is_put_back_with_its_actions(
    sentry,
) -> None:
    assert sync(rules_api(sentry)).success
    assert sync(rules_api(sentry)).success  # unchanged: no POST or PUT the second time
    writes = [r for r in sentry.requests if r.method in ("POST", "PUT")]
    assert [r.method for r in writes] == ["POST"] * 5
    # Someone loosens a threshold in Sentry and adds a Slack action.
    edited = sentry.by_name()[RULE_PREFIX + "mux-webhook-retry"]
    edited["triggers"][0]["alertThreshold"] = 0.5
    slack = {"type": "slack", "targetType": "specific", "targetIdentifier": "#ops"}
    edited["triggers"][0]["actions"] = [slack]
    assert sync(rules_api(sentry)).success
    (put,) = [r for r in sentry.requests if r.method == "PUT"]
    assert put.path.endswith(f"/alert-rules/{edited['id']}/")
    rule = sentry.by_name()[RULE_PREFIX + "mux-webhook-retry"]
    assert rule["triggers"][0]["alertThreshold"] == 0.2
    assert rule["triggers"][0]["actions"] == [slack]
    # Every page was read (two rules a page): none at first, then 5 rules in 3 pages, twice.
    assert sum(1 for r in sentry.requests if r.method == "GET") == 1 + 3 + 3


def test_a_refused_token_fails_the_run_saying_what_it_needs(sentry) -> None:
    result = sync(rules_api(sentry, token="sntrys_revoked"))
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.event_specific_data.error.message
    assert "401" in message and "alerts:write" in message
    assert "sntrys_revoked" not in message
    assert sentry.rules == {}


def test_the_sensor_asks_for_a_sync_only_with_a_token(sentry) -> None:
    with build_sensor_context(
        resources={"sentry_alert_rules": rules_api(sentry, token=None)}
    ) as context:
        assert isinstance(sentry_alert_rules_sensor(context), SkipReason)
    with build_sensor_context(resources={"sentry_alert_rules": rules_api(sentry)}) as context:
        request = sentry_alert_rules_sensor(context)
    # The same thresholds in the same week are one run; a change is a new key.
    assert request.run_key.startswith("sentry-rules:")
    with build_sensor_context(resources={"sentry_alert_rules": rules_api(sentry)}) as context:
        assert sentry_alert_rules_sensor(context).run_key == request.run_key
