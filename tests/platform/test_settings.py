"""A bad setting fails at load, naming the setting; secrets stay out of repr."""

from __future__ import annotations

import traceback

import pytest
import yaml

from mm_orchestration.platform import inventory
from mm_orchestration.platform.cron import ACCEPTED
from mm_orchestration.platform.settings import Settings, SettingsError


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
    from mm_orchestration.definitions import build_resources, defs

    monkeypatch.setenv("MM_ENV", "staging")
    monkeypatch.setenv("MM_SCHEDULE_OVERRIDES", "share-link-expiry=* * * * *")
    loaded = defs()
    expiry = loaded.get_schedule_def("share_link_expiry_schedule")
    cleanup = loaded.get_schedule_def("invite_cleanup_schedule")
    assert expiry.cron_schedule == "* * * * *"
    assert cleanup.cron_schedule == inventory.get("invite-cleanup").staging_cron
    # The location as loaded is a repository (built on first use): its resources are
    # Dagster's wrapped definitions, so the monitoring resource is read as it is built.
    assert "monitoring" in loaded.get_top_level_resources()
    monitoring = build_resources(Settings.from_env())["monitoring"]
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
    assert "the cron of share-link-expiry is refused" in text  # the job, never the value
    assert cron not in text.replace(ACCEPTED, "")  # the examples may look like it
    assert message in text
    assert "Accepted: five space-separated ASCII fields" in text  # what to write instead


def test_good_overrides_are_kept():
    value = "share-link-expiry=*/5 9-17 * * 1-5; invite-cleanup=@hourly; backup-verify=0 9 1 * *"
    assert Settings.from_env({"MM_SCHEDULE_OVERRIDES": value}).schedule_overrides == (
        ("share-link-expiry", "*/5 9-17 * * 1-5"),
        ("invite-cleanup", "@hourly"),
        ("backup-verify", "0 9 1 * *"),
    )


def test_a_job_named_twice_in_the_overrides_is_refused_naming_it():
    value = "share-link-expiry=* * * * *;share-link-expiry=0 * * * *"
    with pytest.raises(SettingsError, match="^MM_SCHEDULE_OVERRIDES") as error:
        Settings.from_env({"MM_SCHEDULE_OVERRIDES": value})
    text = str(error.value)
    assert "share-link-expiry twice (items 1 and 2)" in text and "Accepted:" in text
    assert "* * * * *" not in text.replace(ACCEPTED, "")
    assert "0 * * * *" not in text.replace(ACCEPTED, "")


def _refusal(name: str, value: str) -> str:
    """The message refusing `name=value`, with the traceback an operator would see (a
    secret must not hide in a chained exception either): it names the variable first,
    says what to write instead, and never shows the value."""
    with pytest.raises(SettingsError) as error:
        Settings.from_env({name: value})
    text = str(error.value)
    assert text.startswith(f"{name} "), text  # the variable's name first
    assert "Accepted: " in text, text  # and what to write instead
    assert text.endswith("the value is not shown"), text
    everything = "".join(traceback.format_exception(error.value))
    assert repr(value) not in everything, everything  # the canary tests check any part
    return everything


@pytest.mark.parametrize(
    "value",
    ["\u0661\u0660", "\uff11\uff10", "0", "-1", "+10", "1_0", "10.0", "1e3", "ten", str(10**12),
     "9" * 5000],
)  # fmt: skip
def test_integer_settings_are_ascii_digits_within_a_range(value):
    text = _refusal("MM_DLQ_ALERT_THRESHOLD", value)
    assert "from 1 to 1000000, in the digits 0-9" in text


def test_integer_settings_in_range_are_read():
    read = Settings.from_env({"MM_DLQ_ALERT_THRESHOLD": "0025"}).dlq_alert_threshold
    assert read == 25
    assert Settings.from_env({"MM_DLQ_ALERT_THRESHOLD": "1000000"}).dlq_alert_threshold == 10**6


@pytest.mark.parametrize("value", ["49", "-1", "6h", "\u0666", "2.5"])
def test_the_digest_grace_is_whole_hours_from_0_to_48(value):
    assert "from 0 to 48, in the digits 0-9" in _refusal("MM_DIGEST_GRACE_HOURS", value)


def test_the_digest_grace_reaches_the_jobs():
    from mm_orchestration.platform.job_settings import JobSettings

    settings = Settings.from_env({"MM_DIGEST_GRACE_HOURS": "3"})
    assert settings.digest_grace_hours == 3
    assert JobSettings.from_settings(settings).digest_grace_hours == 3
    assert Settings.from_env({}).digest_grace_hours == 6


@pytest.mark.parametrize("port", ["5432x", "\u0665\u0664\u0663\u0662", "0", "65536", " 5432", ""])
def test_dagster_storage_port_is_an_integer_setting_too(tmp_path, monkeypatch, port):
    from mm_orchestration.platform.instance import storage_url

    # dagster-postgres's own fields from the environment, as a hand-written (or an older)
    # dagster.yaml has them.
    home = tmp_path / "home"
    home.mkdir()
    fields = ("username", "USER"), ("password", "PASSWORD"), ("hostname", "HOST"), ("port", "PORT")
    postgres_db = {key: {"env": f"DAGSTER_PG_{name}"} for key, name in fields}
    postgres_db["db_name"] = {"env": "DAGSTER_PG_DB"}
    (home / "dagster.yaml").write_text(
        yaml.safe_dump({"storage": {"postgres": {"postgres_db": postgres_db}}})
    )
    for name, value in (("HOST", "db.example"), ("USER", "u"), ("PASSWORD", "pw"), ("DB", "d")):
        monkeypatch.setenv(f"DAGSTER_PG_{name}", value)
    monkeypatch.setenv("DAGSTER_PG_PORT", port)
    if port == "":
        with pytest.raises(SettingsError, match="needs DAGSTER_PG_PORT to be set"):
            storage_url(home)
        return
    with pytest.raises(SettingsError, match="^DAGSTER_PG_PORT ") as error:
        storage_url(home)
    assert "from 1 to 65535" in str(error.value)
    assert repr(port) not in str(error.value) and "5432x" not in str(error.value)
    monkeypatch.setenv("DAGSTER_PG_PORT", "6543")
    assert ":6543/" in storage_url(home)


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("SENDGRID_API_HOST", "https://api.send grid.com", "a space"),
        ("SENDGRID_API_HOST", "https://api.sendgrid.com/v3", "a path"),
        ("SENDGRID_API_HOST", "https://api.sendgrid.com?region=eu", "a query"),
        ("SENDGRID_API_HOST", "https://api.sendgrid.com#x", "a fragment"),
        ("SENDGRID_API_HOST", "https://api.sendgrid.com?", "a query"),
        ("SENDGRID_API_HOST", "ftp://api.sendgrid.com", "not http or https"),
        ("SENDGRID_API_HOST", "localhost:8080", "not http or https"),
        ("SENDGRID_API_HOST", "https://api.sendgrid.com:0", "port is 0"),
        ("SENDGRID_API_HOST", "https://api.sendgrid.com:99999", "port is not a number"),
        ("SENDGRID_API_HOST", "https://api..sendgrid.com", "neither a DNS name"),
        ("SENDGRID_API_HOST", "https://300.1.1.1", "neither a DNS name"),
        ("SENDGRID_API_HOST", "https://api.séndgrid.com", "not ASCII"),
        ("SENDGRID_API_HOST", "https://", "no host"),
        ("NEON_API_HOST", "https://console.neon.tech/api/v2", "a path"),
        ("NEON_API_HOST", "console.neon.tech", "no scheme"),
        ("MM_REPORTS_URL", "https://jobs.example.com/reports?x=1", "a query"),
        ("MM_REPORTS_URL", "javascript:alert(1)", "not http or https"),
        ("MM_REPORTS_S3_ENDPOINT", "https://s3.example.com/bucket", "a path"),
        ("MM_REPORTS_S3_ENDPOINT", "s3://s3.example.com", "not http or https"),
    ],
)
def test_url_settings_are_a_scheme_a_host_and_a_port(name, value, problem):
    text = _refusal(name, value)
    assert problem in text, text


@pytest.mark.parametrize(
    "name", ["SENDGRID_API_HOST", "NEON_API_HOST", "MM_REPORTS_URL", "MM_REPORTS_S3_ENDPOINT"]
)
@pytest.mark.parametrize(
    "value",
    [
        "https://alice:hunter2@api.example.com",
        "https://alice:hun/ter2@api.example.com",  # parsers split this one at the /
        "https://alice:hun#ter2@api.example.com",
        "https://hunter2@api.example.com",
    ],
)
def test_credentials_in_a_url_setting_are_refused_and_never_shown(name, value):
    text = _refusal(name, value)
    assert "credentials" in text
    assert "alice" not in text and "hun" not in text and "ter2" not in text, text
    assert "api.example.com" not in text, text


def test_good_url_settings_are_kept():
    settings = Settings.from_env(
        {
            "SENDGRID_API_HOST": "http://127.0.0.1:8025/",
            "NEON_API_HOST": "https://[2001:db8::1]:8443",
            "MM_REPORTS_URL": "https://jobs.motionmavericks.com.au/reports",
            "MM_REPORTS_S3_ENDPOINT": "http://minio_1:9000",
        }
    )
    assert settings.reports_url == "https://jobs.motionmavericks.com.au/reports"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("https://sentry.example/1", "no public key"),
        ("https://:pw@sentry.example/1", "no public key"),
        ("https://abc@sentry.example/", "project id"),
        ("https://abc@sentry.example/project", "project id"),
        ("https://abc@sentry.example/\u0661", "not ASCII"),  # int() would take it
        ("https://abc@sentry.example/+1", "project id (the last part of its path) is not a"),
        ("https://abc@sentry.example/1_0", "project id (the last part of its path) is not a"),
        ("ftp://abc@sentry.example/1", "does not start with https://"),
        ("https://abc@/1", "no host"),
        ("https://abc@sentry..example/1", "neither a DNS name"),
        ("https://abc@sentry.example:http/1", "port is not a number"),
        ("https://abc@sentry.example:0/1", "port is not a number"),
        ("https://abc@sentry.example/1?timeout=1", "a query"),
        ("https://abc@sentry example/1", "a space"),
        ("sentry.example/1", "does not start with https://"),
        ("key-canary-777", "does not start with https://"),
    ],
)
def test_sentry_dsn_is_read_by_sentry_sdk_and_refused_naming_it(value, problem):
    text = _refusal("SENTRY_DSN", value)
    assert problem in text, text
    assert "https://<public key>@<host>/<project id>" in text


@pytest.mark.parametrize(
    "value",
    [
        "https://abc:s3cretkey@sentry.example/x",
        "https://abc:s3cretkey@sentry.example:99999/1",
        "https://abc:s3c/retkey@sentry.example/1",  # a / that parsers take for the path
        "https://abc:s3c/retkey@sentry.example/x",
        "https://abc:s3c#retkey@sentry.example/1",
        "https://abc:s3cretkey@sentry example/1",
    ],
)
def test_a_sentry_dsn_error_never_shows_the_secret_key(value):
    text = _refusal("SENTRY_DSN", value)
    assert "s3c" not in text and "retkey" not in text, text


def test_good_sentry_dsns_are_kept():
    for dsn in (
        "https://0123abcd@o1.ingest.us.sentry.io/42",
        "https://0123abcd:legacysecret@sentry.example:9000/prefix/7",
        "http://key@127.0.0.1:9000/1",
    ):
        assert Settings.from_env({"SENTRY_DSN": dsn}).sentry_dsn == dsn


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("ab", "3 to 63 characters"),
        ("a" * 64, "3 to 63 characters"),
        ("Reports", "3 to 63 characters"),
        ("mm_reports", "3 to 63 characters"),
        ("-reports", "3 to 63 characters"),
        ("reports.", "3 to 63 characters"),
        ("mm reports", "3 to 63 characters"),
        ("réports", "3 to 63 characters"),
        ("mm..reports", "two dots in a row"),
        ("192.168.10.20", "an IP address"),
        ("xn--reports", "for its own buckets"),
        ("sthree-reports", "for its own buckets"),
        ("reports-s3alias", "for its own buckets"),
        ("reports--ol-s3", "for its own buckets"),
    ],
)
def test_s3_bucket_names_follow_the_aws_rules(value, problem):
    text = _refusal("MM_REPORTS_S3_BUCKET", value)
    assert problem in text, text


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("/reports", "starts with /"),
        ("reports/../other", ". or .. segment"),
        ("..", ". or .. segment"),
        ("reports/./x", ". or .. segment"),
        ("reports//x", "empty"),
        ("rep\x00orts", "control character"),
        ("rep\norts", "control character"),
        ("r" * 513, "longer than 512 bytes"),
    ],
)
def test_s3_key_prefix_is_relative_without_dot_segments(value, problem):
    text = _refusal("MM_REPORTS_S3_PREFIX", value)
    assert problem in text, text


@pytest.mark.parametrize(
    "value", ["sydney", "ap-southeast", "AP-SOUTHEAST-2", "ap-southeast-\u0662", "ap_southeast_2",
              "zz-north-1", "ap-southeast-2a"],
)  # fmt: skip
def test_s3_region_is_an_aws_region_name(value):
    text = _refusal("MM_REPORTS_S3_REGION", value)
    assert "ap-southeast-2" in text


def test_good_s3_settings_are_kept():
    for region in ("ap-southeast-2", "us-gov-west-1", "cn-north-1", "eu-central-2"):
        assert Settings.from_env({"MM_REPORTS_S3_REGION": region}).reports_s3_region == region
    settings = Settings.from_env(
        {
            "MM_REPORTS_S3_BUCKET": "mm.compliance-reports.2026",
            "MM_REPORTS_S3_PREFIX": "compliance/reports/",
            # An S3-compatible service asks for its own region name (Cloudflare R2: auto).
            "MM_REPORTS_S3_ENDPOINT": "https://account.r2.cloudflarestorage.com",
            "MM_REPORTS_S3_REGION": "auto",
        }
    )
    assert (settings.reports_s3_bucket, settings.reports_s3_region) == (
        "mm.compliance-reports.2026",
        "auto",
    )
    with pytest.raises(SettingsError, match="^MM_REPORTS_S3_REGION is not a region name"):
        Settings.from_env({"MM_REPORTS_S3_REGION": "auto"})  # AWS itself has no such region


@pytest.mark.parametrize(
    "value", ["REPLACE_ME", "autumn_disk_484331", "Autumn-Disk-484331", "autumn", "autumn--disk",
              "-autumn-disk", "autumn-disk-484331-", "autumn disk 484331", "autumn-disk-\u0664"],
)  # fmt: skip
def test_neon_project_id_is_checked(value):
    text = _refusal("NEON_PROJECT_ID", value)
    assert "autumn-disk-484331" in text


def test_good_neon_project_ids_are_kept():
    for value in ("autumn-disk-484331", "dry-heart-13671059", "proj-1"):
        assert Settings.from_env({"NEON_PROJECT_ID": value}).neon_project_id == value


@pytest.mark.parametrize(
    "argv",
    [
        ["dlq", "show", "\u0661\u0662"],
        ["dlq", "requeue", "3", "+4"],
        ["dlq", "discard", "1_0", "--reason", "r"],
        ["dlq", "list", "--limit", "0"],
        ["dlq", "show", "9" * 40],
        ["serve-reports", "--port", "70000"],
        ["dev", "--reports-port", "0"],
        ["prod-local", "--grpc-port", "\u0664\u0662\u0666\u0666"],
        ["seed-demo", "--scale", "-2"],
    ],
)
def test_whole_number_arguments_follow_the_settings_rule(argv, capsys):
    from mm_orchestration.cli import parser as _parser

    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(argv)
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "Accepted: a whole number from" in error and "in the digits 0-9" in error, error


def test_whole_number_arguments_in_range_are_read():
    from mm_orchestration.cli import parser as _parser

    assert _parser().parse_args(["dlq", "requeue", "3", "0004"]).ids == [3, 4]
    assert _parser().parse_args(["serve-reports", "--port", "65535"]).port == 65535


@pytest.mark.parametrize("value", ["d-", "d-abc def", "d-abc\x00", "d-\u0661\u0662", "template"])
def test_digest_template_id_is_d_and_an_id(value):
    text = _refusal("SENDGRID_DIGEST_TEMPLATE_ID", value)
    assert "d-f43daeeaef504760851f727007e0b5d0" in text


@pytest.mark.parametrize("zone", ["Factory", "localtime", "posixrules", "Mars/Olympus"])
def test_time_zone_is_a_named_zone(zone):
    with pytest.raises(SettingsError, match="^MM_TIMEZONE is not an IANA time zone"):
        Settings.from_env({"MM_TIMEZONE": zone})
    assert Settings.from_env({"MM_TIMEZONE": "Australia/Adelaide"}).timezone == "Australia/Adelaide"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("SG.abc\u2019def", "outside Latin-1"),
        ("SG.live-key-AAAA\r\nX: BBBBsecret", "control character"),
        ("SG.key\x00tail", "control character"),
    ],
)
@pytest.mark.parametrize("name", ["SENDGRID_API_KEY", "NEON_API_KEY", "MM_REPORTS_PASSWORD"])
def test_secrets_sent_in_headers_are_printable_and_never_shown(name, value, problem):
    with pytest.raises(SettingsError, match=f"^{name} ") as error:
        Settings.from_env({name: value})
    assert problem in str(error.value)
    for part in ("AAAA", "BBBB", "abc", "tail"):
        assert part not in str(error.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MM_REPORTS_URL", "http://host/reports/../admin"),
        ("MM_REPORTS_URL", "http://host/./reports"),
        ("SENDGRID_API_HOST", "http://host:"),
    ],
)
def test_url_paths_without_dot_segments_and_ports_not_left_empty(name, value):
    with pytest.raises(SettingsError, match=f"^{name} is refused"):
        Settings.from_env({name: value})


def test_data_dir_is_a_folder(tmp_path):
    file = tmp_path / "a-file"
    file.write_text("x")
    for value in (str(file), "/var/lib/mm\norchestration"):
        with pytest.raises(SettingsError, match="^MM_DATA_DIR is refused"):
            Settings.from_env({"MM_DATA_DIR": value})
    assert Settings.from_env({"MM_DATA_DIR": str(tmp_path / "new")}).data_dir == str(
        tmp_path / "new"
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("postgresql://u:pw@h/portal?sslmode=bogus", "its sslmode is not one of"),
        ("postgresql://u:pw@h/portal?target_session_attrs=bogus", "its target_session_attrs"),
        ("host=h dbname=portal gssencmode=bogus", "its gssencmode"),
        ("postgresql://u:pw@h/portal?connect_timeout=abc", "its connect_timeout is not a whole"),
    ],
)
def test_connection_parameters_libpq_checks_only_when_connecting_are_checked_at_load(
    value, problem
):
    for name in ("DATABASE_URL", "DATABASE_DIRECT_URL", "DAGSTER_DATABASE_URL"):
        with pytest.raises(SettingsError, match=f"^{name} \\(value hidden\\)") as error:
            Settings.from_env({name: value})
        assert problem in str(error.value) and "pw" not in str(error.value).replace("password", "")


@pytest.mark.parametrize(
    "value", ["jobs@", "Jobs <jobs@motionmavericks.com.au>", "jobs@localhost", "a b@x.example"]
)
@pytest.mark.parametrize("name", ["MAIL_FROM", "COMPLIANCE_EMAIL", "ADMIN_EMAIL"])
def test_sender_and_contacts_are_addresses_sendgrid_takes(name, value):
    """The same rule (email-validator) as for every recipient."""
    with pytest.raises(SettingsError, match=f"^{name} is not an address SendGrid takes"):
        Settings.from_env({name: value})
