"""A bad setting fails at load, naming the setting; secrets stay out of repr."""

from __future__ import annotations

import pytest

from mm_orchestration import inventory
from mm_orchestration.settings import Settings, SettingsError


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MM_ENV", "prod"),
        ("MM_TIMEZONE", "Sydney"),
        ("DATABASE_URL", "mysql://x@y/z"),
        ("DATABASE_URL", "postgresql://host:notaport/db"),
        ("SENDGRID_API_HOST", "api.sendgrid.com"),
        ("SENDGRID_API_KEY", "not-a-key"),
        ("MAIL_FROM", "jobs"),
        ("COMPLIANCE_EMAIL", "compliance at example"),
        ("RELIABILITY_EMAIL", "x@"),
        ("ADMIN_EMAIL", "@example.com"),
        ("SENTRY_DSN", "nonsense"),
        ("SENDGRID_DIGEST_TEMPLATE_ID", "digest"),
    ],
)
def test_bad_value_names_the_setting(name, value):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({name: value})
    assert str(err.value).startswith(name)


def test_secrets_are_not_echoed():
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"DATABASE_URL": "mysql://admin:hunter2@db/portal"})
    assert "hunter2" not in str(err.value)
    settings = Settings.from_env(
        {
            "SENDGRID_API_KEY": "SG.secret",
            "SENDGRID_DIGEST_TEMPLATE_ID": "d-digest",
            "DATABASE_URL": "postgresql://u:pw@h/db",
        }
    )
    assert "SG.secret" not in repr(settings) and "pw@" not in repr(settings)


def test_defaults():
    s = Settings.from_env({})
    assert (s.env, s.timezone, s.sendgrid_api_host) == (
        "development",
        "Australia/Sydney",
        "https://api.sendgrid.com",
    )


def test_definitions_fail_to_load_with_the_setting_name(monkeypatch):
    from mm_orchestration.definitions import defs

    monkeypatch.setenv("MM_ENV", "qa")
    with pytest.raises(SettingsError, match="^MM_ENV"):
        defs()


def test_sendgrid_key_needs_the_digest_template():
    with pytest.raises(SettingsError, match="^SENDGRID_DIGEST_TEMPLATE_ID is required"):
        Settings.from_env({"SENDGRID_API_KEY": "SG.key"})


def test_schedule_override_replaces_one_jobs_cron_everywhere(monkeypatch):
    from mm_orchestration.definitions import defs

    monkeypatch.setenv("MM_ENV", "staging")
    monkeypatch.setenv("MM_SCHEDULE_OVERRIDES", "share-link-expiry=* * * * *")
    loaded = defs()
    expiry = loaded.get_schedule_def("share_link_expiry_schedule")
    cleanup = loaded.get_schedule_def("invite_cleanup_schedule")
    assert expiry.cron_schedule == "* * * * *"
    assert cleanup.cron_schedule == inventory.get("invite-cleanup").staging_cron
    monitoring = loaded.resources["monitoring"]
    assert monitoring.crons["share-link-expiry"] == "* * * * *"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("expire-links=* * * * *", "with a job of the inventory"),
        ("share-link-expiry", "must be <job>=<cron>"),
        ("share-link-expiry=* * *", "3 fields, not 5"),
        ("share-link-expiry=61 * * * *", "minute field '61' is outside 0-59"),
        ("share-link-expiry=*/x * * * *", "is not a number, range or step"),
    ],
)
def test_bad_schedule_override_is_refused_at_load(value, message):
    with pytest.raises(SettingsError, match="^MM_SCHEDULE_OVERRIDES") as error:
        Settings.from_env({"MM_SCHEDULE_OVERRIDES": value})
    assert message in str(error.value)
