"""Delivery's work beside the request in flight: the next page read and judged on a thread
(`outbox.paging.read_ahead`), and the next request's claim begun on a thread and committed
only just before its own request (`Delivery.prepare`). Neither may change what a refusal or
a crash does to any row."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from mm_orchestration.jobs.notification_digest import notification_digest
from mm_orchestration.outbox.paging import read_ahead
from mm_orchestration.outbox.rows import Row
from mm_orchestration.outbox.templated import _page_sizes
from mm_orchestration.resources import Mailer, PortalDatabase
from tests.sendgrid_server import Reply
from tests.test_email_promise import AT, counts, many


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
    done = {}
    worker = threading.Thread(
        target=lambda: done.update(
            result=_run(portal_db, _mailer(sendgrid), job_settings, instance)
        )
    )
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while sendgrid.arrivals < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        deadline = time.monotonic() + 10
        while True:  # the next request's claim is begun, not committed
            free = conn.execute(
                "SELECT count(*) FROM (SELECT id FROM ops.notification_outbox "
                "WHERE status = 'pending' FOR UPDATE SKIP LOCKED) f"
            ).fetchone()[0]
            conn.rollback()
            if free == 500 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert free == 500  # the third request's 1,000 rows are held by the open claim...
        assert counts(conn) == {"sent": 1000, "sending": 1000, "pending": 1500}  # ...yet pending
        conn.rollback()
    finally:
        worker.join(60)
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


def test_a_one_connection_pool_never_waits_on_itself(
    conn, database_url, sendgrid, job_settings, instance
):
    """With a direct URL and the lowest cap, the pool has one connection for the reading
    thread, the claiming thread and the delivering one: none may hold it while waiting for
    another."""
    many(conn, 3500)
    db = PortalDatabase(url=database_url, direct_url=database_url, max_connections=2)
    try:
        started = time.monotonic()
        result = _run(db, _mailer(sendgrid), job_settings, instance)
        assert result.success, result
        assert time.monotonic() - started < 25  # a pool timeout is 30 s
    finally:
        db.close()
    assert counts(conn) == {"sent": 3500}


# -- read_ahead ---------------------------------------------------------------------------


def _rows(*ids):
    return [Row(i, f"k{i}", "digest", None, f"p{i}@example.com", "{}") for i in ids]


def test_read_ahead_reads_the_next_page_while_the_caller_works():
    pages = {0: _rows(1, 2), 2: _rows(3), 3: []}
    second_read = threading.Event()
    threads = []

    def read(after):
        threads.append(threading.current_thread().name)
        if after == 2:
            second_read.set()
        return pages[after]

    got = []
    for page in read_ahead(read, lambda rows: [r.id for r in rows]):
        if page == [1, 2]:
            # Were reading not ahead, this would wait out its timeout.
            assert second_read.wait(5)
        got.append(page)
    assert got == [[1, 2], [3]]
    assert threads[0] == threading.current_thread().name  # the first page: at once
    assert all(t.startswith("outbox-read") for t in threads[1:])


def test_read_ahead_closed_early_waits_for_the_read_in_flight():
    finished = threading.Event()

    def read(after):
        if after:
            time.sleep(0.3)
            finished.set()
        return _rows(after + 1)

    pages = read_ahead(read, lambda rows: rows)
    with contextlib.closing(pages):
        next(pages)
        time.sleep(0.05)  # the second read is under way
    assert finished.is_set()  # its connection is back before the caller goes on


def test_read_ahead_raises_a_reading_error_where_its_page_is_taken():
    def read(after):
        if after:
            raise RuntimeError("the database went away")
        return _rows(1)

    pages = read_ahead(read, lambda rows: rows)
    assert next(pages) == _rows(1)
    with pytest.raises(RuntimeError, match="went away"):
        next(pages)


def test_pages_start_at_one_request_and_double_up_to_ten():
    sizes = _page_sizes(1000)
    assert [next(sizes) for _ in range(6)] == [1000, 2000, 4000, 8000, 10000, 10000]
