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
    ],
)
def test_bad_schedule_override_is_refused_at_load(value, message):
    with pytest.raises(SettingsError, match="^MM_SCHEDULE_OVERRIDES") as error:
        Settings.from_env({"MM_SCHEDULE_OVERRIDES": value})
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("0 0 31 2 *", "Dagster does not accept it"),  # never fires; Dagster refuses it
        ("0 0 31 4 *", "does not fire within a year"),  # Dagster accepts it, never fires
        ("\u0661 * * * *", "not ASCII"),  # an Arabic-Indic 1: int() takes it, cron must not
        ("0\u00a00 * * * *", "not ASCII"),  # a no-break space
        ("0 0 * * * *", "6 fields, not 5"),  # seconds
        ("* * *", "3 fields, not 5"),
        ("61 * * * *", "Dagster does not accept it"),
        ("*/x * * * *", "Dagster does not accept it"),
    ],
)
def test_override_cron_is_checked_the_way_dagster_reads_it(cron, message):
    value = f"invite-cleanup=0 3 * * *; share-link-expiry={cron}"
    with pytest.raises(SettingsError, match="^MM_SCHEDULE_OVERRIDES") as error:
        Settings.from_env({"MM_SCHEDULE_OVERRIDES": value})
    text = str(error.value)
    assert f"share-link-expiry={cron!r}" in text  # the job and the bad value
    assert message in text
    assert "Accepted: five space-separated ASCII fields" in text  # what to write instead


def test_good_overrides_are_kept():
    value = "share-link-expiry=*/5 9-17 * * 1-5; invite-cleanup=@hourly; backup-verify=0 9 1 * *"
    assert Settings.from_env({"MM_SCHEDULE_OVERRIDES": value}).schedule_overrides == (
        ("share-link-expiry", "*/5 9-17 * * 1-5"),
        ("invite-cleanup", "@hourly"),
        ("backup-verify", "0 9 1 * *"),
    )
