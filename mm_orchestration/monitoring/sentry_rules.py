"""The jobs' error-rate thresholds as Sentry metric alerts, from the same numbers.

Every run is a Sentry transaction named after its job (sentry_sensors.report_run), failed
runs with an error status; Sentry's `failure_rate()` over those transactions is the same
measure as ours. With `SENTRY_AUTH_TOKEN` (a token with `alerts:write`), `SENTRY_ORG` and
`SENTRY_PROJECT` set, `sentry_alert_rules_sensor` asks for one run of
`sentry_alert_rules_sync` whenever the inventory's thresholds change (and once a week, so
a rule deleted by hand comes back), which creates or updates one metric alert rule per
job, named `mm-jobs error rate: <job>`, through Sentry's organization alert-rules API:
critical above the job's `max_failed_percent`, resolved at its `recover_percent`, over its
window. Actions added to a rule in Sentry (Slack, PagerDuty) are kept. What Sentry cannot
hold is said, not approximated: its metric alerts look back at most 24 hours (a weekly
rule stays ours alone), and it has no minimum run count.
"""

import hashlib
import json
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dagster import (
    ConfigurableResource,
    DefaultSensorStatus,
    Failure,
    MetadataValue,
    OpExecutionContext,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    job,
    op,
    sensor,
)
from pydantic import Field

from mm_orchestration.platform import http, inventory
from mm_orchestration.platform.config_models import QUIET
from mm_orchestration.platform.inventory import JobSpec
from mm_orchestration.platform.scheduling import RUN_LOGS
from mm_orchestration.platform.settings import DEFAULTS

RULE_PREFIX = "mm-jobs error rate: "
# The windows Sentry's metric alerts accept, in minutes (its longest is 24 hours).
SENTRY_WINDOWS = (1, 5, 10, 15, 30, 60, 120, 240, 1440)
_NEXT = re.compile(r'<([^>]+)>;\s*rel="next";\s*results="true"')


class SentryApiError(Exception):
    """Sentry refused or did not answer; the message says which call and why."""


@dataclass(frozen=True)
class Rule:
    """One job's rule as Sentry should hold it, or why it cannot."""

    job: str
    body: dict[str, Any] | None
    not_settable: str = ""

    @property
    def name(self) -> str:
        return RULE_PREFIX + self.job


def rule_for(spec: JobSpec, project: str, environment: str | None) -> Rule | None:
    """The metric alert rule of `spec`'s error-rate threshold (None: it has none)."""
    rate = spec.error_rate
    if rate is None:
        return None
    minutes = rate.window_hours * 60
    if minutes not in SENTRY_WINDOWS:
        return Rule(
            spec.name,
            None,
            f"Sentry's metric alerts look back at most 24 hours; the {rate.window_hours} h "
            "window is evaluated here only (error_rate_sensor)",
        )
    body: dict[str, Any] = {
        "name": RULE_PREFIX + spec.name,
        "dataset": "transactions",
        "queryType": 1,
        "eventTypes": ["transaction"],
        "aggregate": "failure_rate()",
        "query": f"transaction:{spec.name}",
        "timeWindow": minutes,
        "thresholdType": 0,  # above
        # failure_rate() is a ratio of transactions (0.2 is 20 %).
        "resolveThreshold": rate.recover_percent / 100,
        "triggers": [
            {"label": "critical", "alertThreshold": rate.max_failed_percent / 100, "actions": []}
        ],
        "projects": [project],
        "environment": environment,
    }
    return Rule(spec.name, body)


def desired_rules(project: str, environment: str | None) -> list[Rule]:
    return [
        rule
        for spec in inventory.INVENTORY
        if (rule := rule_for(spec, project, environment)) is not None
    ]


def digest(rules: list[Rule]) -> str:
    """Changes whenever any rule would: the sensor's run key."""
    text = json.dumps([(r.name, r.body, r.not_settable) for r in rules], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _critical(rule: dict[str, Any]) -> dict[str, Any]:
    triggers = rule.get("triggers") or []
    return next(
        (t for t in triggers if t.get("label") == "critical"), triggers[0] if triggers else {}
    )


def _same(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    def number(value: Any) -> float | None:
        return None if value is None else float(value)

    return (
        current.get("aggregate") == wanted["aggregate"]
        and current.get("dataset") == wanted["dataset"]
        and current.get("query") == wanted["query"]
        and number(current.get("timeWindow")) == number(wanted["timeWindow"])
        and int(current.get("thresholdType") or 0) == wanted["thresholdType"]
        and number(current.get("resolveThreshold")) == number(wanted["resolveThreshold"])
        and current.get("environment") == wanted["environment"]
        and list(current.get("projects") or []) == wanted["projects"]
        and number(_critical(current).get("alertThreshold"))
        == number(wanted["triggers"][0]["alertThreshold"])
    )


@dataclass
class SyncReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    not_settable: dict[str, str] = field(default_factory=dict)


class SentryAlertRules(ConfigurableResource):
    """Sentry's organization alert-rules API, for the jobs' error-rate thresholds."""

    model_config = QUIET  # a refused field's value never shows in pydantic's error

    auth_token: str | None = Field(
        default=None, description="EnvVar('SENTRY_AUTH_TOKEN'), alerts:write; unset: no rules"
    )
    organization: str | None = Field(default=None, description="EnvVar('SENTRY_ORG'): its slug")
    project: str | None = Field(default=None, description="EnvVar('SENTRY_PROJECT'): its slug")
    api_host: str = Field(
        default="https://sentry.io", description="SENTRY_API_HOST (a region or self-hosted host)"
    )
    environment: str | None = Field(default=None, description="MM_ENV: the rules' environment")
    http_connect_timeout: float = Field(
        default=DEFAULTS.http_connect_timeout, gt=0, description="MM_HTTP_CONNECT_TIMEOUT"
    )
    http_read_timeout: float = Field(
        default=DEFAULTS.http_read_timeout, gt=0, description="MM_HTTP_READ_TIMEOUT"
    )

    @property
    def configured(self) -> bool:
        return bool(self.auth_token)

    def rules(self) -> list[Rule]:
        return desired_rules(self.project or "", self.environment)

    def _url(self, path: str) -> str:
        org = urllib.parse.quote(self.organization or "", safe="")
        return f"{self.api_host.rstrip('/')}/api/0/organizations/{org}/alert-rules/{path}"

    def _call(self, method: str, url: str, body: dict[str, Any] | None = None) -> http.Answer:
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={
                "Authorization": f"Bearer {self.auth_token}",
                "Accept": "application/json",
                "Content-Type": "application/json",
            },
        )
        where = f"Sentry {method} alert-rules"
        try:
            answer = http.send(
                request, http.Timeouts(self.http_connect_timeout, self.http_read_timeout)
            )
        except (http.NotSent, http.OutcomeUnknown) as exc:
            raise SentryApiError(f"{where}: no answer ({exc})") from None
        if answer.status in (401, 403):
            raise SentryApiError(
                f"{where}: {answer.status}: SENTRY_AUTH_TOKEN was refused (it needs the "
                "alerts:write scope, on the organization SENTRY_ORG names)"
            )
        if not 200 <= answer.status < 300:
            text = answer.body.decode("utf-8", "replace")[:500]
            raise SentryApiError(f"{where}: {answer.status}: {text}")
        return answer

    def existing(self) -> dict[str, dict[str, Any]]:
        """Every metric alert rule of the organization, by name (all pages)."""
        found: dict[str, dict[str, Any]] = {}
        url: str | None = self._url("?per_page=100")
        while url:
            answer = self._call("GET", url)
            for rule in json.loads(answer.body or b"[]"):
                found.setdefault(rule.get("name", ""), rule)
            match = _NEXT.search(answer.headers.get("Link", "") or "")
            url = match.group(1) if match else None
        return found

    def sync(self, rules: list[Rule]) -> SyncReport:
        """Create or update each rule; the report says what was done to which."""
        if not (self.organization and self.project):
            raise SentryApiError(
                "SENTRY_AUTH_TOKEN is set but SENTRY_ORG or SENTRY_PROJECT is not: set both "
                "(the organization's and the project's slugs)"
            )
        report = SyncReport()
        current = self.existing()
        for rule in rules:
            if rule.body is None:
                report.not_settable[rule.job] = rule.not_settable
                continue
            there = current.get(rule.name)
            if there is None:
                self._call("POST", self._url(""), rule.body)
                report.created.append(rule.job)
            elif _same(there, rule.body):
                report.unchanged.append(rule.job)
            else:
                body = json.loads(json.dumps(rule.body))
                # Keep what a person added in Sentry (where the alert goes).
                body["triggers"][0]["actions"] = _critical(there).get("actions") or []
                rule_id = urllib.parse.quote(str(there["id"]), safe="")
                self._call("PUT", self._url(f"{rule_id}/"), body)
                report.updated.append(rule.job)
        return report


@op(tags={"kind": "sentry"})
def set_sentry_alert_rules(
    context: OpExecutionContext, sentry_alert_rules: SentryAlertRules
) -> None:
    """Create or update one Sentry metric alert rule per job from its error-rate threshold."""
    if not sentry_alert_rules.configured:
        context.log.info("SENTRY_AUTH_TOKEN is not set: no Sentry alert rules to set")
        return
    try:
        report = sentry_alert_rules.sync(sentry_alert_rules.rules())
    except SentryApiError as exc:
        raise Failure(description=str(exc)) from None
    context.add_output_metadata(
        {
            "created": MetadataValue.int(len(report.created)),
            "updated": MetadataValue.int(len(report.updated)),
            "unchanged": MetadataValue.int(len(report.unchanged)),
            "rules": MetadataValue.json(
                {
                    "created": report.created,
                    "updated": report.updated,
                    "unchanged": report.unchanged,
                    "not_settable": report.not_settable,
                }
            ),
        }
    )


@job(
    name="sentry_alert_rules_sync",
    description="Set the jobs' error-rate thresholds as Sentry metric alert rules.",
    tags={"mm/job": "sentry-alert-rules"},
    config=RUN_LOGS,
)
def sentry_alert_rules_sync() -> None:
    set_sentry_alert_rules()


@sensor(
    name="sentry_alert_rules_sensor",
    job=sentry_alert_rules_sync,
    minimum_interval_seconds=3600,
    default_status=DefaultSensorStatus.RUNNING,
    description="With a Sentry token: set the error-rate alert rules when the inventory's "
    "thresholds change, and weekly.",
)
def sentry_alert_rules_sensor(
    context: SensorEvaluationContext, sentry_alert_rules: SentryAlertRules
) -> RunRequest | SkipReason:
    if not sentry_alert_rules.configured:
        return SkipReason("SENTRY_AUTH_TOKEN is not set: the thresholds are ours alone")
    week = datetime.now(UTC).strftime("%G-W%V")
    key = f"sentry-rules:{digest(sentry_alert_rules.rules())}:{week}"
    return RunRequest(run_key=key, tags={"mm/trigger": "sensor"})
