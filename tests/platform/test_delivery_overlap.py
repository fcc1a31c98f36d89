"""Delivery's work beside the request in flight: the next page read and judged on a thread
(`outbox.paging.ReadAhead`), and the next request's claim begun on a thread and committed
only just before its own request (`Delivery.prepare`). Neither may change what a refusal or
a crash does to any row."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from dagster import DagsterInstance

from mm_orchestration.features.digests.job import notification_digest
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.job_settings import JobSettings
from mm_orchestration.platform.outbox import DeliveryFailed, conclude, deliver_pending_templated
from mm_orchestration.platform.outbox.mailer import Mailer
from mm_orchestration.platform.outbox.paging import ReadAhead
from mm_orchestration.platform.outbox.report import DeliveryReport
from mm_orchestration.platform.outbox.rows import Row, page
from mm_orchestration.platform.outbox.screening import Suppressions, judge, record
from mm_orchestration.platform.outbox.templated import _page_sizes
from tests.platform.test_email_promise import AT, counts, many
from tests.sendgrid_server import Reply


def _mailer(sendgrid, read_timeout=10.0):
    return Mailer(
        api_key="SG.test-key",
        api_host=sendgrid.url,
        mail_from="jobs@motionmavericks.example",
        backoff_seconds=0.01,
        read_timeout_seconds=read_timeout,
    )


def _run(portal_db, mailer, job_settings, instance):
    return notification_digest.execute_in_process(
        resources={"portal_db": portal_db, "mailer": mailer, "job_settings": job_settings},
        run_config={"ops": {"queue_due_digests": {"config": {"now": AT}}}},
        instance=instance,
        raise_on_error=False,
    )


def _attempts(conn):
    return dict(
        conn.execute("SELECT attempts, count(*) FROM ops.notification_outbox GROUP BY 1").fetchall()
    )


def test_the_next_request_is_claimed_while_one_is_in_flight_and_committed_only_when_it_goes(
    conn, portal_db, sendgrid, job_settings, instance
):
    many(conn, 3500)  # pages of 1,000, 2,000 and 500 rows: requests 1 | 2, 3 | 4
    sendgrid.then(Reply(202), Reply(202, delay=1.5))  # the second is held for a while
    with _running(portal_db, _mailer(sendgrid), job_settings, instance) as done:
        _wait_for(lambda: sendgrid.arrivals >= 2)
        # The next request's claim is begun, not committed: its rows are locked yet pending.
        _wait_for(lambda: _unlocked_pending(conn) == 500, timeout=10)
        assert counts(conn) == {"sent": 1000, "sending": 1000, "pending": 1500}
        conn.rollback()
    assert done["result"].success
    assert counts(conn) == {"sent": 3500}
    assert _attempts(conn) == {1: 3500}  # a claim begun and committed counts one attempt
    sizes = [len(r.body["personalizations"]) for r in sendgrid.mail_requests]
    assert sizes == [1000, 1000, 1000, 500]


def test_a_refused_request_abandons_the_claim_begun_for_the_next(
    conn, portal_db, sendgrid, job_settings, instance
):
    many(conn, 3500)
    # The second request (the first of a page of two) is refused: a revoked key, which
    # SendGrid refuses every request alike, so delivery stops there.
    sendgrid.then(Reply(202), Reply(401, {"errors": [{"message": "The provided "
                  "authorization grant is invalid, expired, or revoked"}]}))  # fmt: skip
    result = _run(portal_db, _mailer(sendgrid), job_settings, instance)
    assert not result.success
    assert counts(conn) == {"sent": 1000, "pending": 2500}  # nothing claimed left behind
    assert sendgrid.arrivals == 2
    # The refused request's rows were tried once; the third request's begun claim left
    # nothing, not even an attempt.
    assert _attempts(conn) == {1: 2000, 0: 1500}


def test_the_next_pages_first_request_is_claimed_while_this_pages_last_is_in_flight(
    conn, portal_db, sendgrid, job_settings, instance
):
    many(conn, 3500)  # requests 1 | 2, 3 | 4 (500 rows)
    # The second request is held long enough for the third page to be judged; the third
    # request (this page's last) is held while the test looks.
    sendgrid.then(Reply(202), Reply(202, delay=0.5), Reply(202, delay=1.5))
    with _running(portal_db, _mailer(sendgrid), job_settings, instance) as done:
        _wait_for(lambda: sendgrid.arrivals >= 3)
        time.sleep(0.3)
        # The last page's 500: pending, held by the begun claim.
        assert (counts(conn).get("pending"), _unlocked_pending(conn)) == (500, 0)
        conn.rollback()
    assert done["result"].success
    assert counts(conn) == {"sent": 3500}


def test_a_one_connection_pool_never_waits_on_itself(
    conn, database_url, sendgrid, job_settings, instance
):
    """With a direct URL and the lowest cap, the pool has one connection for the reading
    thread, the claiming thread and the delivering one: none may hold it while waiting for
    another, not even when a page judged ahead has rows to fail while the next request's
    claim is begun."""
    many(conn, 3500)
    # One address in 50 is malformed, so every page has rows to fail; each request is
    # answered slowly enough for the next page to be judged before this page's last goes.
    conn.execute(
        "UPDATE portal.users SET email = replace(email, '@', ' at ') "
        "WHERE substring(email from 'person(\\d+)@')::int % 50 = 0"
    )
    sendgrid.then(*[Reply(202, delay=0.2) for _ in range(5)])
    db = PortalDatabase(url=database_url, direct_url=database_url, max_connections=2)
    try:
        started = time.monotonic()
        result = _run(db, _mailer(sendgrid), job_settings, instance)
        assert time.monotonic() - started < 25  # a pool timeout is 30 s
    finally:
        db.close()
    assert not result.success  # 70 addresses failed: the run says so
    assert counts(conn) == {"sent": 3430, "failed": 70}
    assert _attempts(conn) == {1: 3430, 0: 70}


# -- ReadAhead ----------------------------------------------------------------------------


def _rows(*ids):
    return [Row(i, f"k{i}", "digest", None, f"p{i}@example.com", "{}") for i in ids]


def test_the_next_page_is_read_while_the_caller_works_on_this_one():
    pages = {0: _rows(1, 2), 2: _rows(3), 3: []}
    second_read = threading.Event()
    threads = []

    def read(after):
        threads.append(threading.current_thread().name)
        if after == 2:
            second_read.set()
        return pages[after]

    got = []
    with ReadAhead(read, lambda rows: [r.id for r in rows]) as ahead:
        for page in ahead:
            if page == [1, 2]:
                # Were reading not ahead, this would wait out its timeout.
                assert second_read.wait(5)
                deadline = time.monotonic() + 5
                while ahead.next_if_ready() is None and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert ahead.next_if_ready() == [3]  # judged already: its claim may begin
            got.append(page)
        assert ahead.next_if_ready() is None  # no page after the last
    assert got == [[1, 2], [3]]
    assert threads[0] == threading.current_thread().name  # the first page: at once
    assert all(t.startswith("outbox-read") for t in threads[1:])


def test_a_page_still_being_read_is_not_offered_and_leaving_early_awaits_it():
    finished = threading.Event()

    def read(after):
        if after:
            time.sleep(0.3)
            finished.set()
        return _rows(after + 1)

    with ReadAhead(read, lambda rows: rows) as ahead:
        pages = iter(ahead)
        next(pages)
        time.sleep(0.05)  # the second read is under way
        assert ahead.next_if_ready() is None  # never waits for it
    assert finished.is_set()  # its connection is back before the caller goes on


def test_a_reading_error_is_raised_where_its_page_is_taken():
    def read(after):
        if after:
            raise RuntimeError("the database went away")
        return _rows(1)

    with ReadAhead(read, lambda rows: rows) as ahead:
        pages = iter(ahead)
        assert next(pages) == _rows(1)
        with pytest.raises(RuntimeError, match="went away"):
            next(pages)
        assert ahead.next_if_ready() is None


def test_pages_start_at_one_request_and_double_up_to_ten():
    sizes = _page_sizes(1000)
    assert [next(sizes) for _ in range(6)] == [1000, 2000, 4000, 8000, 10000, 10000]


def test_a_stop_while_waiting_for_a_begun_claim_rolls_it_back_and_marks_what_was_sent(
    conn, database_url, sendgrid, project_root
):
    """SIGTERM while the delivering thread waits for the next request's claim (held up by a
    row lock someone else holds), with a pool of one connection: the begun claim must still
    be rolled back, so the accepted request before it is marked sent (not left 'sending'
    behind a pool timeout) and nothing stays open."""
    many(conn, 3500)  # requests 1 | 2, 3 | 4
    sendgrid.then(Reply(202, delay=1.0), Reply(202, delay=1.0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.run_job_in_subprocess", database_url, sendgrid.url,
         "digest", AT],
        cwd=project_root,
        env={**os.environ, "MM_TEST_ONE_CONNECTION": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    other = psycopg.connect(database_url)  # an operator's session holds one row of request 3
    try:
        _wait_for(lambda: sendgrid.arrivals >= 1)
        other.execute(
            "SELECT id FROM ops.notification_outbox WHERE id = (SELECT id FROM "
            "ops.notification_outbox ORDER BY id OFFSET 2500 LIMIT 1) FOR UPDATE"
        )
        _wait_for(lambda: sendgrid.arrivals >= 2)
        time.sleep(2.0)  # request 2 answered; the run waits for request 3's claim
        os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(2.0)
        other.rollback()  # the lock goes; the begun claim's UPDATE completes

        def open_transactions():
            return conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
            ).fetchone()[0]

        # The stopped attempt rolls back the begun claim and marks request 2 sent at once
        # (the op's retry, 30 s later, is not this test's business).
        _wait_for(lambda: counts(conn) == {"sent": 2000, "pending": 1500}, timeout=15)
        assert open_transactions() == 0
        assert sendgrid.arrivals == 2  # request 3 never left
    finally:
        other.close()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_rows_an_earlier_attempt_of_this_run_left_sending_fail_as_unknown(conn, portal_db, mailer):
    """An op stopped mid-request and retried in the same run (Dagster's step retry) finds
    its own earlier attempt's rows 'sending': they may have gone, so they fail with their
    outcome unknown and the op that finds them fails, rather than the run ending in
    success with them unreported."""
    many(conn, 3)
    with DagsterInstance.ephemeral() as instance:
        result = _run(portal_db, mailer, JobSettings(digest_template_id="d"), instance)
    assert counts(conn) == {"sent": 3}
    conn.execute(
        "UPDATE ops.notification_outbox SET status = 'sending', claimed_by = 'run-1', "
        "claimed_at = now(), sent_at = NULL WHERE id = (SELECT min(id) FROM "
        "ops.notification_outbox)"
    )
    report = deliver_pending_templated(portal_db, mailer, "digest", "d", None, "run-1")
    assert report.abandoned == 1
    assert counts(conn) == {"sent": 2, "failed/unknown": 1}
    assert result.success
    with pytest.raises(DeliveryFailed, match="unknown"):
        conclude(portal_db, report, ["digest"], "run-1", "digest")


def _wait_for(check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_row_another_deliverer_failed_first_is_not_counted_again(conn, portal_db):
    """Two deliveries judging the same page both see its malformed address; only the one
    whose write failed the row counts and logs it (the other run's report stays true)."""
    many(conn, 2)
    conn.execute("UPDATE portal.users SET email = 'nobody at all' WHERE email LIKE 'person1@%'")
    with DagsterInstance.ephemeral() as instance:
        notification_digest.execute_in_process(
            resources={
                "portal_db": portal_db,
                "mailer": Mailer(api_key="", mail_from="jobs@motionmavericks.example"),
                "job_settings": JobSettings(digest_template_id="d"),
            },
            run_config={"ops": {"queue_due_digests": {"config": {"now": AT}}}},
            instance=instance,
            op_selection=["queue_due_digests"],
        )
    rows = page(portal_db, ["digest"], 0, 10, raw=True)
    suppressions = Suppressions.load(portal_db)
    first, second = DeliveryReport(), DeliveryReport()
    screened = judge(rows, suppressions)
    assert len(screened.invalid) == 1
    record(portal_db, screened, "run-a", first)
    record(portal_db, judge(rows, suppressions), "run-b", second)
    assert (first.invalid, second.invalid) == (1, 0)
    assert len(first.errors) == 1 and second.errors == []
    failed_by = conn.execute(
        "SELECT failed_run_id FROM ops.notification_outbox WHERE status = 'failed'"
    ).fetchall()
    assert failed_by == [("run-a",)]


@contextlib.contextmanager
def _running(portal_db, mailer, job_settings, instance):
    """The digest run on a thread of its own while the test looks; its result in
    `done["result"]` once the block ends."""
    done = {}
    worker = threading.Thread(
        target=lambda: done.update(result=_run(portal_db, mailer, job_settings, instance))
    )
    worker.start()
    try:
        yield done
    finally:
        worker.join(60)


def _unlocked_pending(conn):
    """Pending rows no transaction holds (a begun claim locks its rows)."""
    free = conn.execute(
        "SELECT count(*) FROM (SELECT id FROM ops.notification_outbox "
        "WHERE status = 'pending' FOR UPDATE SKIP LOCKED) f"
    ).fetchone()[0]
    conn.rollback()
    return free
