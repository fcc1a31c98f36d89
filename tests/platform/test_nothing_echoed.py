"""No refusal echoes the value it refuses: a setting, an op's config field, a resource's
field or a command-line argument that fails its check is named, with what is accepted,
and the value (a canary here) appears nowhere: not in the message, not in a chained
exception, not in anything the run's event log stores.

Dagster resolves `{env: NAME}` in a run config's fields, so a field's value may be any
environment variable's; and a secret pasted into the wrong variable is a secret too.
"""

from __future__ import annotations

import traceback
from typing import Any

import pytest
from dagster import DagsterInstance
from dagster._serdes import serialize_value

from mm_orchestration.platform.settings import Settings, SettingsError
from mm_orchestration.platform.text import quotes_value, reason_without_value
from tests.json_lines import json_lines

CANARY = "canary"  # in every value below, and in no message of the project
DSN = "postgresql://postgres:canary-pw@db.example/portal"
KEY = "key-canary-777"


def _no_canary(text: str) -> None:
    assert CANARY not in text.lower(), text


def _refused_setting(name: str, value: str) -> str:
    with pytest.raises(SettingsError) as error:
        Settings.from_env({name: value})
    text = "".join(traceback.format_exception(error.value))
    assert str(error.value).startswith(name), str(error.value)
    _no_canary(text)
    return str(error.value)


# Each setting Settings reads, with values that fail its check and carry the canary.
BAD_SETTINGS: dict[str, tuple[str, ...]] = {
    "MM_ENV": (KEY, DSN),
    "MM_TIMEZONE": (KEY, "Australia/canary"),
    "MM_DATA_DIR": ("/srv/key-canary-777\n/x", "/srv/käy-canary\x00"),
    "SENDGRID_API_KEY": (KEY, "SG.key-canary\x01-777", "SG.key-canary\u2019777"),
    "SENDGRID_API_HOST": (KEY, "https://u:canary-pw@api.sendgrid.com", "https://canary:x"),
    "SENDGRID_DIGEST_TEMPLATE_ID": (KEY, "d-key canary"),
    "MAIL_FROM": (KEY, DSN, "ops@canary-777.invalid", "a@xn--canary.example"),
    "COMPLIANCE_EMAIL": (KEY, "Canary <a@b.example>"),
    "RELIABILITY_EMAIL": (KEY, "canary-pw@localhost"),
    "ADMIN_EMAIL": (KEY, "a@canary..example"),
    "SENTRY_DSN": (
        KEY,
        DSN,
        "https://sentry.example/canary",
        "https://key-canary-777@sentry.example/x",
        "https://key:canary-pw@sentry.example:99999/1",
        "https://key:canary-pw@sentry.example:canary/1",
        "ftp://key-canary-777@sentry.example/1",
        "key-canary-777://a@sentry.example/1",
        "https://key-canary-777@sentry..example/1",
        "https://key-canary-777@[::1/1",
    ),
    "MM_DLQ_ALERT_THRESHOLD": (KEY, "canary"),
    "MM_DIGEST_GRACE_HOURS": (KEY,),
    "MM_REPORTS_URL": (KEY, "https://canary-pw@jobs.example.com/reports", "ftp://canary/x"),
    "MM_REPORTS_PASSWORD": ("canary-pw\x01x",),
    "MM_DRILL_METHOD": (KEY,),
    "MM_PG_BIN_DIR": (KEY, "/nonexistent/key-canary-777"),
    "MM_REPORTS_S3_BUCKET": ("KEY-CANARY-777", "key_canary_777", "xn--canary"),
    "MM_REPORTS_S3_PREFIX": ("/key-canary-777", "reports/../canary"),
    "MM_REPORTS_S3_ENDPOINT": (KEY, "https://u:canary-pw@s3.example.com", "https://canary/x"),
    "MM_REPORTS_S3_REGION": (KEY,),
    "NEON_API_KEY": ("key-canary\x01-777",),
    "NEON_PROJECT_ID": ("KEY_CANARY_777", DSN),
    "NEON_API_HOST": (KEY, "https://canary.example/api/v2"),
    "MM_SCHEDULE_OVERRIDES": (
        KEY,
        "key-canary-777=* * * * *",
        "share-link-expiry=key-canary-777",
        "share-link-expiry=* * * * *;share-link-expiry=key canary 7 7 7",
        "share-link-expiry=canary\u00a0* * * *",
    ),
    "MM_RUN_LAUNCHER": (KEY,),
    "MM_HTTP_CONNECT_TIMEOUT": (KEY,),
    "MM_HTTP_READ_TIMEOUT": (KEY,),
    "DATABASE_URL": (
        KEY,
        "mysql://u:canary-pw@h/db",
        "key-canary-777://u:canary-pw@h/db",
        "postgresql://u:canary-pw@h/db?sslmode=key-canary-777",
        "host=h password=canary-pw port=canary",
        "postgresql://u:canary-pw@h:canary/db",
        "host=h password='canary-pw",
    ),
    "DATABASE_DIRECT_URL": (KEY, "postgresql://u:canary-pw@h/db?canary=1"),
    "DAGSTER_DATABASE_URL": (KEY, "postgresql://u:canary-pw@h/db?target_session_attrs=canary"),
}
# Read without a check that could refuse them (any text is a signing secret; DAGSTER_HOME
# is checked where the instance opens: test_a_dagster_home_is_never_shown).
ANY_VALUE = {"MUX_WEBHOOK_SECRET", "DAGSTER_HOME"}


class _Recording(dict[str, str]):
    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.asked.add(key)
        return default


def test_every_setting_has_its_canaries():
    environ = _Recording()
    Settings.from_env(environ)
    assert environ.asked - ANY_VALUE == set(BAD_SETTINGS), environ.asked ^ set(BAD_SETTINGS)


@pytest.mark.parametrize(
    ("name", "value"), [(name, value) for name, values in BAD_SETTINGS.items() for value in values]
)
def test_a_refused_setting_is_named_and_never_shown(name, value):
    message = _refused_setting(name, value)
    assert "not shown" in message or "value hidden" in message, message


def test_a_dagster_home_is_never_shown(tmp_path, monkeypatch):
    from mm_orchestration.platform.instance import storage_url

    home = tmp_path / "key-canary-777"
    home.mkdir()
    with pytest.raises(SettingsError, match="^DAGSTER_HOME ") as error:
        storage_url(home)
    _no_canary("".join(traceback.format_exception(error.value)))
    (home / "dagster.yaml").write_text("storage: {}\n")
    with pytest.raises(SettingsError, match="^DAGSTER_HOME ") as error:
        storage_url(home)
    _no_canary("".join(traceback.format_exception(error.value)))


# -- op config, resources and tags ------------------------------------------------------


@pytest.fixture
def canaries(monkeypatch):
    """Environment variables a run config could read, as a person's {env: ...} would."""
    monkeypatch.setenv("CANARY_DSN", DSN)
    monkeypatch.setenv("CANARY_KEY", "SG.key-canary-777")
    monkeypatch.setenv("CANARY_NUMBER", "7770777")


def _everything(job, resources, run_config=None, tags=None) -> str:
    """What a failed run shows and stores: its one-line summary and every event of its log
    (messages, errors with their causes and stacks), as Dagster serialises them."""
    from mm_orchestration.monitoring.run_status import failure_summary

    with DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            resources=resources,
            run_config=run_config or {},
            tags=tags or {},
            instance=instance,
            raise_on_error=False,
        )
        assert not result.success
        summary = failure_summary(instance, result.run_id)
        events = [serialize_value(record) for record in instance.all_logs(result.run_id)]
    assert summary, events
    return summary + "\n" + "\n".join(events)


def _digest_config(**config: Any) -> dict[str, Any]:
    return {"ops": {"queue_due_digests": {"config": config}}}


@pytest.mark.parametrize(
    "config",
    [
        {"tenant_id": {"env": "CANARY_DSN"}},
        {"user_id": {"env": "CANARY_KEY"}},
        {"now": {"env": "CANARY_KEY"}},
        {"now": {"env": "CANARY_DSN"}},
        {"tenant_id": "key-canary-777"},
        {"now": "2026-11-30T08:00:00+11:00", "user_id": "canary"},
    ],
)
def test_the_digest_names_a_bad_field_and_never_shows_it(
    canaries, portal_db, mailer, job_settings, config
):
    from mm_orchestration.features.digests.job import notification_digest

    resources = {"portal_db": portal_db, "mailer": mailer, "job_settings": job_settings}
    text = _everything(notification_digest, resources, _digest_config(**config))
    (field,) = [name for name in config if name != "now"] or ["now"]
    assert f"{field} is " in text and "the value is not shown" in text, text
    _no_canary(text)


def test_the_digest_never_shows_a_bad_window_tag(portal_db, mailer, job_settings):
    from mm_orchestration.features.digests.job import notification_digest

    resources = {"portal_db": portal_db, "mailer": mailer, "job_settings": job_settings}
    text = _everything(notification_digest, resources, tags={"mm/window": KEY})
    assert "tag mm/window is not an instant" in text
    _no_canary(text)


def test_a_digest_now_out_of_range_is_not_shown(portal_db, mailer, job_settings):
    from mm_orchestration.features.digests.job import notification_digest

    resources = {"portal_db": portal_db, "mailer": mailer, "job_settings": job_settings}
    text = _everything(notification_digest, resources, _digest_config(now="2001-07-07T07:07:07Z"))
    assert "now is out of range" in text and "07:07:07" not in text


@pytest.mark.parametrize(
    "details", [{"env": "CANARY_DSN"}, {"env": "CANARY_KEY"}, '["key-canary-777"]', "canary"]
)
def test_alert_details_are_named_and_never_shown(canaries, portal_db, job_settings, details):
    from mm_orchestration.monitoring.alerts import send_alert
    from mm_orchestration.platform.outbox.mailer import Mailer

    config = {"key": "k", "subject": "s", "body": "b", "details_json": details}
    text = _everything(
        send_alert,
        {"portal_db": portal_db, "job_settings": job_settings, "mailer": Mailer()},
        {"ops": {"record_alert": {"config": config}}},
    )
    assert "details_json" in text and "the value is not shown" in text, text
    _no_canary(text)


def test_a_retention_out_of_range_is_named_and_never_shown(canaries, portal_db):
    from mm_orchestration.features.retention.job import storage_retention

    for days in (7770777.0, {"env": "CANARY_NUMBER"}):
        config = {"ops": {"prune_dagster_runs": {"config": {"outbox_days": 1, "job_runs_days": 1,
                                                            "dagster_run_days": 1}}}}  # fmt: skip
        config["ops"]["prune_dagster_runs"]["config"]["dagster_run_days"] = days
        try:
            text = _everything(storage_retention, {"portal_db": portal_db}, config)
        except Exception as exc:  # a float field cannot read the environment: refused first
            text = "".join(traceback.format_exception(exc))
            assert "DagsterInvalidConfigError" in text and isinstance(days, dict), text
        else:
            assert "dagster_run_days is out of range" in text, text
        assert "7770777" not in text


def test_a_drill_method_from_the_resource_is_never_shown(portal_db, job_settings):
    from mm_orchestration.features.restore_drill.job import backup_verify
    from mm_orchestration.features.restore_drill.resource import RestoreDrill

    resources = {
        "portal_db": portal_db,
        "job_settings": job_settings,
        "restore_drill": RestoreDrill(method=KEY),
    }
    text = _everything(backup_verify, resources)
    assert "neither local nor neon" in text
    _no_canary(text)


@pytest.mark.parametrize("url", [KEY, "SG.key-canary-777", "https://key-canary-777@s.example/1"])
def test_a_portal_database_url_libpq_cannot_parse_is_never_shown(portal_db, job_settings, url):
    from mm_orchestration.monitoring.alerts import send_alert
    from mm_orchestration.platform.database import PortalDatabase
    from mm_orchestration.platform.outbox.mailer import Mailer

    config = {"ops": {"record_alert": {"config": {"key": "k", "subject": "s", "body": "b"}}}}
    resources = {"portal_db": PortalDatabase(url=url), "job_settings": job_settings,
                 "mailer": Mailer()}  # fmt: skip
    text = _everything(send_alert, resources, config)
    assert "the portal database (DATABASE_URL) is not a connection string" in text, text
    _no_canary(text)


def test_a_direct_url_libpq_cannot_parse_is_never_shown(database_url):
    import psycopg

    from mm_orchestration.platform.database import PortalDatabase

    db = PortalDatabase(url=database_url, direct_url=KEY)
    try:
        with pytest.raises(psycopg.ProgrammingError) as error, db.session():
            pass
    finally:
        db.close()
    assert "DATABASE_DIRECT_URL" in str(error.value)
    _no_canary("".join(traceback.format_exception(error.value)))


def test_a_resource_field_out_of_range_is_never_shown(
    canaries, database_url, portal_db, job_settings
):
    """pydantic quotes the input of a failed check (`input_value=...`): our resources and
    op configs leave it out."""
    from mm_orchestration.monitoring.alerts import send_alert
    from mm_orchestration.platform.outbox.mailer import Mailer

    config = {
        "ops": {"record_alert": {"config": {"key": "k", "subject": "s", "body": "b"}}},
        "resources": {
            "portal_db": {
                "config": {"url": database_url, "max_connections": {"env": "CANARY_NUMBER"}}
            }
        },
    }
    text = _everything(
        send_alert,
        {"portal_db": portal_db, "job_settings": job_settings, "mailer": Mailer()},
        config,
    )
    assert "max_connections" in text and "7770777" not in text, text


def test_every_config_and_resource_model_hides_its_input():
    """Every op config and resource class of the project (the console's aside: it refuses
    `{env: ...}` itself): a new one that forgets `OpConfig` or `model_config = QUIET`
    fails here."""
    import importlib
    import inspect
    import pkgutil

    from dagster import Config, ConfigurableResource

    import mm_orchestration

    models = set()
    for module in pkgutil.walk_packages(mm_orchestration.__path__, "mm_orchestration."):
        if module.name.startswith("mm_orchestration.console"):
            continue
        for _, cls in inspect.getmembers(importlib.import_module(module.name), inspect.isclass):
            if cls.__module__ == module.name and issubclass(cls, Config | ConfigurableResource):
                models.add(cls)
    assert len(models) >= 12, models
    for model in models:
        assert model.model_config.get("hide_input_in_errors") is True, model


# -- mm-jobs arguments ------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["dlq", "show", "key-canary-777"],
        ["dlq", "list", "--limit", "canary"],
        ["dlq", "list", "--status", "key-canary-777"],
        ["outbox", "list", "--kind", "key-canary-777"],
        ["outbox", "resend", "--kind", "digest", "--since", "key-canary-777"],
        ["outbox", "resend", "--kind", "digest", "--since", "2026-11-30", "--to", DSN],
        ["outbox", "resend", "--kind", "digest", "--since", "2026-11-30", "--to", "a@canary"],
        ["run", "share-link-expiry", "--window", "key-canary-777"],
        ["digest", "preview", "x", "--at", "key-canary-777"],
        ["digest", "preview", "x", "--at", "9999-12-31T23:59:59-00:00"],
        ["serve-reports", "--port", "canary"],
    ],
)
def test_a_refused_argument_is_named_and_never_shown(argv, capsys):
    from mm_orchestration.cli import parser as _parser

    with pytest.raises(SystemExit) as stopped:
        _parser().parse_args(argv)
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "the value is not shown" in error, error
    _no_canary(error)
    assert "9999" not in error.replace("9000", "")


def test_an_unknown_job_is_not_repeated(capsys):
    from mm_orchestration.cli import main

    assert main(["run", "key-canary-777"]) == 2
    error = capsys.readouterr().err
    assert "unknown job" in error and "share-link-expiry" in error
    _no_canary(error)


def test_a_bad_settings_stops_mm_jobs_without_showing_the_value(monkeypatch, capsys):
    from mm_orchestration.cli import main

    monkeypatch.setenv("SENTRY_DSN", KEY)
    assert main(["list"]) == 2
    error = capsys.readouterr().err
    (line,) = json_lines(error, "mm-jobs list")  # one JSON line, as a collector reads it
    assert line["event"].startswith("SENTRY_DSN is not a Sentry DSN")
    assert (line["level"], line["exitCode"]) == ("error", 2)
    _no_canary(error)


# -- the guard for libraries' own reasons -----------------------------------------------


def test_a_librarys_reason_is_kept_only_when_it_quotes_nothing_of_the_value():
    assert quotes_value("no host in 'db.canary.example'", "u@db.CANARY.example")
    assert not quotes_value("it has no @-sign", "key-canary-777")
    assert quotes_value("bad ab", "ab") and not quotes_value("bad", "ab")
    fallback = "in our own words"
    kept = "The email address contains invalid characters before the @-sign: ':'."
    assert reason_without_value(kept, DSN, fallback) == kept
    # IDNA quotes the decoded label: none of the value's characters, still the value.
    idna = "not valid IDNA (Codepoint U+0089 at position 1 of '\x89\x89\x82\x92\x8d')"
    assert reason_without_value(idna, "a@xn--canary.example", fallback) == fallback
    assert reason_without_value("the domain canary.example is", "a@canary.example", fallback) == (
        fallback
    )
    libpq = 'missing "=" after "..." in connection info string'
    assert reason_without_value(libpq, KEY, fallback) == libpq
