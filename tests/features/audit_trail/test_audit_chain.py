"""The audit log is append-only and hash-chained: every kind of tampering is named, the
database refuses changes (the application's role by its grants, everyone by a trigger),
and concurrent writers leave a chain that verifies."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from mm_orchestration.features.audit_trail import chain
from mm_orchestration.platform import audit
from mm_orchestration.platform.db import connect
from mm_orchestration.platform.grants import statements


def write(conn: psycopg.Connection, n: int, actor: str = "olivia@mm.example") -> list[int]:
    """`n` entries as the console writes them, each settled."""
    ids = []
    for i in range(n):
        entry = audit.record(
            conn, actor, "launch_run", "share-link-expiry", None, {"i": i}, outcome="allowed"
        )
        audit.settle(conn, entry, "succeeded", f"run-{i}", {"status": 200})
        ids.append(entry)
    return ids


class Attacker:
    """Somebody with the owner's rights who switches the triggers off (as the superuser
    can, or a table owner with ALTER TABLE ... DISABLE TRIGGER) and edits rows directly."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def __call__(self, statement: str, params: list | None = None) -> None:
        with self.conn.transaction():
            self.conn.execute("SET LOCAL session_replication_role = replica")
            self.conn.execute(statement, params)

    def link_of(self, entry_id: int) -> tuple[int, int]:
        """The lane and position of an entry's link."""
        return self.conn.execute(
            "SELECT lane, seq FROM ops.audit_chain WHERE entry_id = %s", [entry_id]
        ).fetchone()


@pytest.fixture
def trail(conn) -> tuple[list[int], Attacker]:
    """Five entries, each settled, written one after another on one connection: one lane."""
    ids = write(conn, 5)
    assert chain.verify(conn).ok
    assert conn.execute("SELECT count(DISTINCT lane) FROM ops.audit_chain").fetchone() == (1,)
    return ids, Attacker(conn)


def first(conn, **kwargs) -> chain.Problem:
    verdict = chain.verify(conn, **kwargs)
    assert not verdict.ok, verdict.summary()
    assert verdict.first is not None
    return verdict.first


def test_settled_entries_read_as_before_and_the_chain_verifies(conn):
    entry = audit.record(conn, "olivia", "launch_run", "x", None, {"a": 1}, outcome="allowed")
    audit.settle(conn, entry, "succeeded", "run-1", {"status": 200})
    audit.annotate(conn, entry, {"sendgrid_requests": 2})
    refused = audit.record(conn, "ben", "wipe", None, None, {"n": "\x00é"}, outcome="refused")
    row = conn.execute(
        "SELECT actor, run_id, outcome, details FROM ops.audit_log WHERE id = %s", [entry]
    ).fetchone()
    assert row == (
        "olivia",
        "run-1",
        "succeeded",
        {"a": 1, "result": {"status": 200}, "sendgrid_requests": 2},
    )
    assert conn.execute("SELECT count(*) FROM ops.audit_log").fetchone() == (2,)
    # The entry itself never changed: its ending and the addition are entries of their own.
    assert conn.execute(
        "SELECT outcome, run_id FROM ops.audit_entries WHERE id = %s", [entry]
    ).fetchone() == ("allowed", None)
    assert conn.execute("SELECT count(*) FROM ops.audit_entries").fetchone() == (4,)
    verdict = chain.verify(conn)
    assert verdict.ok and verdict.checked == 4 and verdict.head is not None
    assert verdict.head == chain.head(conn)
    assert "verified: 4 link(s), head " in verdict.summary()
    audit.settle_run(conn, "run-1", "canceled", "stopped")  # not `allowed` any more: nothing
    assert conn.execute("SELECT count(*) FROM ops.audit_entries").fetchone() == (4,)
    assert refused == conn.execute("SELECT max(id) FROM ops.audit_log").fetchone()[0]


def test_the_chain_holds_any_text_the_columns_may_hold(conn):
    """The hashes rebuilt in Python agree with the database's for every character JSON
    escapes, and for what it does not (quotes, controls, line separators, emoji)."""
    odd = 'q"uote\\back\tslash\n\x01\x1f\x7f\u2028\u00e9\U0001f600 \\u0000'
    audit.record(conn, odd, odd, odd, odd, {odd: [odd, 1.5, 10**20, None, True]},
                 role=odd, target=odd, outcome="refused")  # fmt: skip
    conn.execute(
        "INSERT INTO ops.audit_log (occurred_at, actor, action) VALUES"
        " ('0999-01-01 00:00:00.000001+00', %s, '')",
        ["\\u0000 and a NUL escaped"],
    )
    assert chain.verify(conn).ok


def test_an_edited_field_is_named(conn, trail):
    ids, attack = trail
    attack("UPDATE ops.audit_entries SET actor = 'mallory' WHERE id = %s", [ids[2]])
    problem = first(conn)
    assert (problem.kind, problem.entry_id) == ("edited", ids[2])
    assert f"entry #{ids[2]}" in problem.message


def test_an_edited_detail_or_time_is_named(conn, trail):
    ids, attack = trail
    attack("UPDATE ops.audit_entries SET occurred_at = occurred_at - interval '1 microsecond'"
           " WHERE id = %s", [ids[1]])  # fmt: skip
    assert first(conn).entry_id == ids[1]
    attack("UPDATE ops.audit_entries SET occurred_at = occurred_at + interval '1 microsecond'"
           " WHERE id = %s", [ids[1]])  # fmt: skip
    assert chain.verify(conn).ok
    attack("UPDATE ops.audit_entries SET details = details || '{\"i\": 99}' WHERE id = %s",
           [ids[3]])  # fmt: skip
    assert first(conn).entry_id == ids[3]


def test_a_deleted_row_is_named(conn, trail):
    ids, attack = trail
    lane, seq = attack.link_of(ids[1])
    attack("DELETE FROM ops.audit_entries WHERE id = %s", [ids[1]])
    problem = first(conn)
    assert (problem.kind, problem.lane, problem.seq, problem.entry_id) == (
        "deleted", lane, seq, ids[1]
    )  # fmt: skip
    # ...and with its link too: the lane skips a position.
    attack("DELETE FROM ops.audit_chain WHERE lane = %s AND seq = %s", [lane, seq])
    problem = first(conn)
    assert (problem.kind, problem.lane, problem.seq) == ("deleted", lane, seq)
    assert f"skips from seq {seq - 1} to seq {seq + 1}" in problem.message


def test_a_row_inserted_with_a_forged_hash_is_named(conn, trail):
    ids, attack = trail
    lane, seq = attack.link_of(ids[-1])
    seq += 1  # the settlement of the last entry is the lane's newest link
    attack("INSERT INTO ops.audit_entries (actor, action) VALUES ('mallory', 'nothing')")
    forged = conn.execute("SELECT max(id) FROM ops.audit_entries").fetchone()[0]
    # Linked after the head with a hash of the attacker's choosing, the head made to agree.
    attack("INSERT INTO ops.audit_chain SELECT h.lane, h.seq + 1, e.id, now(),"
           " ops.audit_entry_hash(e), h.hash, sha256('forged') FROM ops.audit_entries e,"
           " ops.audit_chain_head h WHERE e.id = %s AND h.lane = %s", [forged, lane])  # fmt: skip
    attack("UPDATE ops.audit_chain_head SET seq = seq + 1, hash = sha256('forged'),"
           " linked_at = now() WHERE lane = %s", [lane])  # fmt: skip
    problem = first(conn)
    assert (problem.kind, problem.lane, problem.seq, problem.entry_id) == (
        "forged", lane, seq + 1, forged
    )  # fmt: skip
    assert "hash its contents do not give" in problem.message


def test_a_row_inserted_around_the_chain_is_named(conn, trail):
    _, attack = trail
    attack("INSERT INTO ops.audit_entries (actor, action, occurred_at)"
           " VALUES ('mallory', 'backdated', now() - interval '30 days')")  # fmt: skip
    sneaked = conn.execute("SELECT max(id) FROM ops.audit_entries").fetchone()[0]
    problem = first(conn)
    assert (problem.kind, problem.entry_id) == ("unlinked", sneaked)
    assert problem.where == f"entry #{sneaked}"


def test_a_link_moved_out_of_order_is_named(conn, trail):
    ids, attack = trail
    # A link slipped in between two others: it cannot carry its predecessor's hash.
    lane, seq = attack.link_of(ids[3])
    attack("UPDATE ops.audit_chain SET prev_hash = sha256('elsewhere')"
           " WHERE lane = %s AND seq = %s", [lane, seq])  # fmt: skip
    problem = first(conn)
    assert (problem.kind, problem.seq, problem.entry_id) == ("forged", seq, ids[3])
    # A link dated before the one it follows.
    attack("UPDATE ops.audit_chain c SET prev_hash = p.hash FROM ops.audit_chain p"
           " WHERE c.lane = %s AND c.seq = %s AND p.lane = c.lane AND p.seq = c.seq - 1",
           [lane, seq])  # fmt: skip
    attack("UPDATE ops.audit_chain SET linked_at = linked_at - interval '1 hour'"
           " WHERE lane = %s AND seq = %s", [lane, seq])  # fmt: skip
    problem = first(conn)
    assert (problem.kind, problem.seq) == ("out_of_order", seq)


def test_swapped_rows_are_named(conn, trail):
    ids, attack = trail
    (lane, a), (_, b) = attack.link_of(ids[1]), attack.link_of(ids[3])
    link = "UPDATE ops.audit_chain SET entry_id = %s WHERE lane = %s AND seq = %s"
    attack(link, [-1, lane, a])
    attack(link, [ids[1], lane, b])
    attack(link, [ids[3], lane, a])
    problem = first(conn)
    assert (problem.kind, problem.seq, problem.entry_id) == ("edited", a, ids[3])
    assert [p.seq for p in chain.verify(conn).problems] == [a, b]


def test_swapped_contents_are_named(conn, trail):
    ids, attack = trail
    attack("UPDATE ops.audit_entries e SET details = o.details FROM ops.audit_entries o"
           " WHERE (e.id, o.id) IN ((%s, %s), (%s, %s))",
           [ids[0], ids[4], ids[4], ids[0]])  # fmt: skip
    assert first(conn).entry_id == ids[0]


def test_a_truncated_head_is_named(conn, trail):
    ids, attack = trail
    anchor = chain.head(conn)
    assert anchor is not None
    lane, _ = attack.link_of(ids[0])
    end = anchor.seqs[lane]
    # The newest entries and their links deleted: the head row still says where it ended.
    attack("DELETE FROM ops.audit_entries WHERE id IN (SELECT entry_id FROM ops.audit_chain"
           " WHERE lane = %s AND seq > %s)", [lane, end - 3])  # fmt: skip
    attack("DELETE FROM ops.audit_chain WHERE lane = %s AND seq > %s", [lane, end - 3])
    problem = first(conn)
    assert (problem.kind, problem.lane, problem.seq) == ("truncated", lane, end - 2)
    assert f"head records seq {end}" in problem.message
    # The head row rewound too: only a head recorded outside the database catches it.
    attack("UPDATE ops.audit_chain_head h SET seq = c.seq, hash = c.hash, linked_at ="
           " c.linked_at FROM ops.audit_chain c WHERE c.lane = h.lane AND c.seq = %s",
           [end - 3])  # fmt: skip
    assert chain.verify(conn).ok
    problem = first(conn, anchors=[anchor])
    assert problem.kind == "truncated" and f"seq {end} was in the head" in problem.message


def test_a_rewritten_chain_is_caught_by_an_earlier_head(conn, trail):
    ids, attack = trail
    anchor = chain.head(conn)
    # Edited, then every hash recomputed from there on with the database's own functions.
    attack("UPDATE ops.audit_entries SET actor = 'mallory' WHERE id = %s", [ids[0]])
    attack(
        """DO $$
           DECLARE link record; prev bytea := decode(repeat('00', 32), 'hex'); h bytea;
           BEGIN
             FOR link IN SELECT c.*, ops.audit_entry_hash(e) AS digest FROM ops.audit_chain c
                         JOIN ops.audit_entries e ON e.id = c.entry_id ORDER BY c.seq LOOP
               h := ops.audit_link_hash(prev, link.lane, link.seq, link.linked_at, link.digest);
               UPDATE ops.audit_chain SET entry_hash = link.digest, prev_hash = prev, hash = h
                WHERE lane = link.lane AND seq = link.seq;
               prev := h;
             END LOOP;
             UPDATE ops.audit_chain_head h SET hash = prev
              WHERE h.lane = (SELECT lane FROM ops.audit_chain LIMIT 1);
           END $$"""
    )
    assert chain.verify(conn).ok  # consistent again, as far as the database can tell
    assert first(conn, anchors=[anchor]).kind == "rewritten"


def test_a_period_verifies_from_the_link_before_it(conn):
    write(conn, 3)
    time.sleep(0.01)
    middle = conn.execute("SELECT now()").fetchone()[0]
    write(conn, 3)
    verdict = chain.verify(conn, since=middle)
    assert verdict.ok and verdict.checked == 6
    older = chain.verify(conn, until=middle)
    assert older.ok and older.head is not None and older.head.links == 6
    assert older.head == chain.head(conn, until=middle)
    # A head as text and back.
    assert chain.Head.parse(older.head.text()) == chain.Head(older.head.seqs, older.head.sha256)
    for bad in ("6:abc", "1.2:" + "0" * 63 + "g", ".".join(["1"] * 17) + ":" + "0" * 64):
        with pytest.raises(ValueError):
            chain.Head.parse(bad)


def test_the_owner_cannot_change_the_trail(conn, trail):
    ids, _ = trail
    for statement in (
        "UPDATE ops.audit_entries SET actor = 'x'",
        "DELETE FROM ops.audit_entries",
        "TRUNCATE ops.audit_entries",
        "UPDATE ops.audit_log SET actor = 'x'",
        "DELETE FROM ops.audit_log",
        "UPDATE ops.audit_chain SET hash = hash",
        "DELETE FROM ops.audit_chain",
        "INSERT INTO ops.audit_chain VALUES (0, 99, 1, now(), '\\x00', '\\x00', '\\x00')",
        "UPDATE ops.audit_chain_head SET seq = 0",
        "DELETE FROM ops.audit_chain_head",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(statement)
    assert chain.verify(conn).ok


def test_the_maintenance_path_leaves_its_own_entry(conn, trail):
    ids, _ = trail
    with conn.transaction():
        conn.execute("SET LOCAL mm.audit_maintenance = 'INC-42: redact a pasted password'")
        conn.execute("UPDATE ops.audit_entries SET details = '{}' WHERE id = %s", [ids[0]])
    (entry,) = conn.execute(
        "SELECT actor, target, details FROM ops.audit_log WHERE action = 'audit_maintenance'"
    ).fetchall()
    assert entry[0] == "postgres" and entry[1] == "ops.audit_entries"
    assert entry[2]["reason"] == "INC-42: redact a pasted password"
    assert entry[2]["operation"] == "UPDATE"
    assert first(conn).entry_id == ids[0]  # the changed entry is still named
    # Emptied whole on the same path (a legal erasure): the chain starts again, and the
    # trail says who emptied it and why.
    with conn.transaction():
        conn.execute("SET LOCAL mm.audit_maintenance = 'erasure ordered by ...'")
        conn.execute("TRUNCATE ops.audit_entries, ops.audit_chain, ops.audit_chain_head")
    assert chain.verify(conn).ok
    assert {r[0] for r in conn.execute("SELECT target FROM ops.audit_log")} == {
        "ops.audit_entries", "ops.audit_chain", "ops.audit_chain_head"
    }  # fmt: skip
    write(conn, 1)
    assert chain.verify(conn).ok


@pytest.fixture
def app_role(pg_server, database_url) -> Iterator[str]:
    """The application's role with only `mm-jobs grants` (the owner is the superuser)."""
    role = f"mm_jobs_{uuid.uuid4().hex[:8]}"
    with connect(database_url, autocommit=True) as c:
        c.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        for statement in statements(role):
            c.execute(statement)
    yield database_url.replace("postgresql://postgres@", f"postgresql://{role}@")
    with connect(database_url, autocommit=True) as c:
        c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with connect(pg_server.url("postgres"), autocommit=True) as c:
        c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_the_application_role_appends_but_never_updates_or_deletes(conn, app_role):
    with connect(app_role, autocommit=True) as app:
        ids = write(app, 2)
        assert chain.verify(app).ok
        for statement in (
            "UPDATE ops.audit_entries SET actor = 'x'",
            "DELETE FROM ops.audit_entries",
            "TRUNCATE ops.audit_entries",
            "UPDATE ops.audit_log SET actor = 'x'",
            "DELETE FROM ops.audit_log",
            "DELETE FROM ops.audit_chain",
            "UPDATE ops.audit_chain SET hash = hash",
            "DELETE FROM ops.audit_chain_head",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                app.execute(statement)
        # Links only through the chain's trigger (which runs as the owner): it reads them.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            app.execute(
                "INSERT INTO ops.audit_chain VALUES (0, 99, %s, now(), '\\x00', '\\x00', '\\x00')",
                [ids[0]],
            )
        # The maintenance path is the owner's: the application's role setting it is refused.
        with pytest.raises(psycopg.errors.InsufficientPrivilege), app.transaction():
            app.execute("SET LOCAL mm.audit_maintenance = 'mine'")
            app.execute("UPDATE ops.audit_chain_head SET seq = 0")
    assert chain.verify(conn).ok


# -- concurrent writers -------------------------------------------------------------------

WRITERS = 8
PER_WRITER = 40


def _writer(url: str, writer: int, errors: list[BaseException]) -> None:
    """One console, CLI or sensor writing entries: alone, two to a transaction, settled in
    a later transaction, or rolled back."""
    try:
        with connect(url) as c:
            for i in range(PER_WRITER):
                kind = i % 4
                if kind == 0:
                    audit.record(c, f"w{writer}", "launch_run", None, None, {"i": i})
                elif kind == 1:
                    a = audit.record(c, f"w{writer}", "launch_run", None, None, {"i": i},
                                     outcome="allowed")  # fmt: skip
                    audit.record(c, f"w{writer}", "rate_limited", None, None, {"i": i})
                    c.commit()
                    audit.settle(c, a, "succeeded", f"run-{writer}-{i}", {"n": i})
                elif kind == 2:
                    audit.record(c, f"w{writer}", "never_happened", None, None, {"i": i})
                    c.rollback()
                    continue
                else:
                    audit.record(c, f"w{writer}", "terminate_run", None, None, {"i": i},
                                 outcome="refused")  # fmt: skip
                c.commit()
    except BaseException as exc:  # reported to the test, which fails naming it
        errors.append(exc)


def _process_writer(url: str, writer: int) -> None:
    errors: list[BaseException] = []
    _writer(url, writer, errors)
    if errors:
        raise errors[0]


def expected_entries() -> int:
    per = sum({0: 1, 1: 3, 2: 0, 3: 1}[i % 4] for i in range(PER_WRITER))
    return WRITERS * per


def test_concurrent_threads_leave_a_chain_that_verifies(conn, database_url):
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=_writer, args=(database_url, w, errors)) for w in range(WRITERS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    verdict = chain.verify(conn)
    assert verdict.ok, verdict.summary()
    assert verdict.checked == expected_entries()
    assert conn.execute("SELECT count(*) FROM ops.audit_log WHERE action = 'never_happened'"
                        ).fetchone() == (0,)  # fmt: skip
    # The writers took lanes of their own, and each transaction kept to one.
    assert conn.execute("SELECT count(DISTINCT lane) FROM ops.audit_chain").fetchone()[0] > 1


def test_a_transaction_keeps_to_one_lane_and_waits_only_when_every_lane_is_held(conn, database_url):
    with connect(database_url) as writer:
        ids = [audit.record(writer, "o", "a", None, None, {"i": i}) for i in range(3)]
        writer.commit()
    lanes = conn.execute(
        "SELECT lane, seq FROM ops.audit_chain WHERE entry_id = ANY(%s) ORDER BY seq", [ids]
    ).fetchall()
    assert len({lane for lane, _ in lanes}) == 1
    assert [seq for _, seq in lanes] == [lanes[0][1], lanes[0][1] + 1, lanes[0][1] + 2]
    # Every lane held by another transaction: the writer waits for one, then links.
    with connect(database_url) as holder:
        holder.execute("SELECT * FROM ops.audit_chain_head FOR UPDATE")
        errors: list[BaseException] = []
        waiting = threading.Thread(target=_writer, args=(database_url, 99, errors))
        waiting.start()
        time.sleep(1.0)
        assert waiting.is_alive()  # its first commit is waiting for a lane
        holder.rollback()
    waiting.join(timeout=60)
    assert not errors and not waiting.is_alive()
    verdict = chain.verify(conn)
    assert verdict.ok and verdict.checked == 3 + expected_entries() // WRITERS


def test_concurrent_processes_leave_a_chain_that_verifies(conn, database_url):
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(target=_process_writer, args=(database_url, w)) for w in range(WRITERS)
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * WRITERS
    verdict = chain.verify(conn)
    assert verdict.ok and verdict.checked == expected_entries(), verdict.summary()


def test_a_long_transaction_does_not_hold_up_other_writers(conn, database_url):
    """The chain is appended to at commit: a job that records an entry and then works (or
    waits on SendGrid) in the same transaction keeps nobody else from auditing."""
    with connect(database_url) as slow:
        audit.record(slow, "suppression-cleanup", "delete_bounce_suppressions", None, None, {})
        started = time.perf_counter()
        with connect(database_url) as other:
            write(other, 3)
            other.commit()
        assert time.perf_counter() - started < 5
        assert chain.verify(conn).ok  # the open transaction's entry is not there yet
        slow.commit()
    verdict = chain.verify(conn)
    assert verdict.ok and verdict.checked == 7


# -- the daily check, the download's head, the command ---------------------------------


def materialize_trail(instance, portal_db, job_settings):
    from dagster import materialize

    from mm_orchestration.features.audit_trail.asset import audit_trail

    result = materialize(
        [audit_trail],
        partition_key="2026-11-27",
        instance=instance,
        resources={"portal_db": portal_db, "job_settings": job_settings},
    )
    (evaluation,) = result.get_asset_check_evaluations()
    (materialization,) = result.asset_materializations_for_node("ops__audit_trail")
    return evaluation, materialization.metadata, instance.get_run_by_id(result.run_id)


def test_the_daily_check_verifies_holds_yesterdays_head_and_alerts_compliance(
    conn, portal_db, job_settings
):
    from dagster import DagsterEventType, DagsterInstance, build_run_status_sensor_context

    from mm_orchestration.features.audit_trail.asset import audit_chain_alerts

    write(conn, 3)
    with DagsterInstance.ephemeral() as instance:
        evaluation, metadata, _ = materialize_trail(instance, portal_db, job_settings)
        assert evaluation.passed
        recorded = chain.Head.parse(metadata["audit_chain_head"].value)
        now = chain.head(conn)
        assert recorded == chain.Head(now.seqs, now.sha256) and now.links == 6
        (lane,) = conn.execute("SELECT DISTINCT lane FROM ops.audit_chain").fetchone()
        # Overnight somebody deletes the newest entries and rewinds the head row to match.
        attack = Attacker(conn)
        attack("DELETE FROM ops.audit_entries WHERE id IN"
               " (SELECT entry_id FROM ops.audit_chain WHERE seq > 4)")  # fmt: skip
        attack("DELETE FROM ops.audit_chain WHERE seq > 4")
        attack("UPDATE ops.audit_chain_head h SET seq = c.seq, hash = c.hash, linked_at ="
               " c.linked_at FROM ops.audit_chain c"
               " WHERE c.lane = h.lane AND c.seq = 4")  # fmt: skip
        assert chain.verify(conn).ok  # the database alone cannot tell
        evaluation, _, run = materialize_trail(instance, portal_db, job_settings)
        assert not evaluation.passed
        assert evaluation.severity.value == "ERROR"
        assert "truncated" in evaluation.metadata["first_problem"].value
        (success,) = instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_SUCCESS)
        context = build_run_status_sensor_context(
            sensor_name="s", dagster_instance=instance, dagster_run=run,
            dagster_event=success.dagster_event,
        )  # fmt: skip
        (request,) = audit_chain_alerts(context)
    config = request.run_config["ops"]["record_alert"]["config"]
    assert config["contact"] == "compliance"
    assert config["key"] == f"audit-chain:truncated:lane-{lane}-seq-5"
    assert "Audit trail tampering detected" in config["subject"]
    assert "mm-jobs audit verify" in config["body"]


def test_the_download_carries_the_chain_head_at_the_period_end(conn):
    from datetime import UTC, datetime, timedelta

    from mm_orchestration.features.audit_trail import query

    write(conn, 2)
    period = query.Filter(datetime.now(UTC) - timedelta(days=1), datetime.now(UTC))
    found = query.read(conn, period)
    assert found.head is not None and found.head.links == 4
    later = datetime.now(UTC) + timedelta(seconds=1)
    write(conn, 1)
    assert query.read(conn, query.Filter(period.since, later)).head.links == 6
    # An auditor holding the earlier head checks the chain still passes through it.
    assert chain.verify(conn, anchors=[found.head]).ok


def test_mm_jobs_audit_verify_names_the_entry_and_fails(conn, database_url, monkeypatch, capsys):
    from mm_orchestration.cli import main

    monkeypatch.setenv("DATABASE_URL", database_url)
    ids = write(conn, 2)
    assert main(["audit", "verify"]) == 0
    assert "audit chain verified: 4 link(s)" in capsys.readouterr().out
    assert main(["audit", "head"]) == 0
    printed = capsys.readouterr().out
    head = chain.head(conn)
    assert head is not None and head.text() in printed
    Attacker(conn)("UPDATE ops.audit_entries SET target = 'x' WHERE id = %s", [ids[1]])
    assert main(["audit", "verify"]) == 1
    err = capsys.readouterr().err
    assert f"entry #{ids[1]}" in err and "BROKEN" in err
    assert (
        main(["audit", "verify", "--expect-head", head.text().split(":")[0] + ":" + "0" * 64]) == 1
    )
    assert "rewritten" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main(["audit", "verify", "--expect-head", "nonsense"])
    assert refused.value.code == 2 and "SEQ.SEQ...:SHA256" in capsys.readouterr().err


# -- what the reviewer found (issue 27) ----------------------------------------------------


def test_the_application_role_cannot_write_links_even_from_a_trigger_of_its_own(conn, app_role):
    """A write from inside a trigger once passed the guard (it took that for the chain's
    own): the role now only reads the links and the head, and creates nothing on ops."""
    with connect(app_role, autocommit=True) as app:
        write(app, 1)
        assert app.execute(
            "SELECT has_schema_privilege('ops', 'CREATE'),"
            " has_table_privilege('ops.audit_chain', 'INSERT, UPDATE'),"
            " has_table_privilege('ops.audit_chain_head', 'INSERT, UPDATE')"
        ).fetchone() == (False, False, False)
        app.execute(
            """CREATE FUNCTION pg_temp.rewind() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN UPDATE ops.audit_chain_head SET seq = 0; RETURN NULL; END $$"""
        )
        app.execute("CREATE TEMP TABLE t (x int)")
        app.execute(
            "CREATE TRIGGER t_rewind AFTER INSERT ON pg_temp.t"
            " FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.rewind()"
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            app.execute("INSERT INTO pg_temp.t VALUES (1)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            app.execute("CREATE TABLE ops.mine (x int)")
    assert chain.verify(conn).ok
    # Each of the chain's functions pins its search_path; the linking one runs as the owner.
    functions = conn.execute(
        """SELECT proname, prosecdef, coalesce(array_to_string(proconfig, ','), '')
             FROM pg_proc WHERE pronamespace = 'ops'::regnamespace
              AND proname LIKE 'audit%%'"""
    ).fetchall()
    assert len(functions) >= 8
    for name, definer, config in functions:
        assert "search_path=pg_catalog, pg_temp" in config, name
        assert definer == (name == "audit_link"), name


def test_a_link_outside_the_sixteen_lanes_is_refused_and_named(conn, trail):
    ids, attack = trail
    before = chain.head(conn)
    attack("INSERT INTO ops.audit_entries (actor, action) VALUES ('mallory', 'sneaked')")
    sneaked = conn.execute("SELECT max(id) FROM ops.audit_entries").fetchone()[0]
    link = (
        "INSERT INTO ops.audit_chain SELECT %s, 1, e.id, now(), ops.audit_entry_hash(e),"
        " '\\x00', sha256('x') FROM ops.audit_entries e WHERE e.id = %s"
    )
    with pytest.raises(psycopg.errors.CheckViolation):
        attack(link, [16, sneaked])
    # With the table's check dropped too, verify still names it and no head counts it.
    attack("ALTER TABLE ops.audit_chain DROP CONSTRAINT audit_chain_lane_check")
    attack(link, [99, sneaked])
    verdict = chain.verify(conn)
    kinds = {(p.kind, p.lane, p.entry_id) for p in verdict.problems}
    assert ("forged", 99, sneaked) in kinds
    assert chain.head(conn) == before and verdict.head == before


def test_a_time_the_chain_cannot_hold_is_refused_and_named_never_a_crash(conn, trail):
    _, attack = trail
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO ops.audit_entries (actor, action, occurred_at)"
            " VALUES ('mallory', 'x', 'infinity')"
        )
    conn.rollback()
    attack("ALTER TABLE ops.audit_entries DROP CONSTRAINT audit_entries_finite")
    for moment in ("infinity", "20000-01-01 00:00+00"):
        with conn.transaction():
            conn.execute(
                "INSERT INTO ops.audit_entries (actor, action, occurred_at) VALUES ('m', 'x', %s)",
                [moment],
            )
    odd = [
        r[0] for r in conn.execute("SELECT id FROM ops.audit_entries WHERE actor = 'm' ORDER BY id")
    ]
    verdict = chain.verify(conn)
    named = {p.entry_id: p for p in verdict.problems if p.kind == "invalid"}
    assert set(named) == set(odd)
    assert "'infinity'" in named[odd[0]].message and f"entry #{odd[0]}" in named[odd[0]].message


def test_a_settlement_only_adds_to_its_entry(conn, app_role):
    entry = audit.record(
        conn, "olivia", "launch_run", "x", "run-own", {"reason": "mine"}, outcome="refused"
    )
    audit.annotate(conn, entry, {"reason": "overwritten", "extra": 1})
    audit.settle(conn, entry, "succeeded", "run-other", {})
    row = conn.execute(
        "SELECT run_id, outcome, details FROM ops.audit_log WHERE id = %s", [entry]
    ).fetchone()
    assert row == ("run-own", "refused", {"reason": "mine", "extra": 1, "result": {}})
    # An ending is not rewritten by a later one.
    pending = audit.record(conn, "olivia", "launch_run", "x", None, {}, outcome="allowed")
    audit.settle(conn, pending, "succeeded", "run-1")
    audit.settle(conn, pending, "failed", "run-2")
    assert conn.execute(
        "SELECT run_id, outcome FROM ops.audit_log WHERE id = %s", [pending]
    ).fetchone() == ("run-1", "succeeded")
    conn.commit()
    shown = conn.execute("SELECT count(*) FROM ops.audit_log").fetchone()[0]
    with connect(app_role, autocommit=True) as app:
        # A row that would be hidden from the log, or speak for another person's entry.
        for settles, actor in ((entry, "mallory"), (10**12, "olivia"), (entry + 1, "olivia")):
            with pytest.raises(psycopg.errors.CheckViolation):
                app.execute(
                    "INSERT INTO ops.audit_entries (actor, action, job_name, outcome, settles)"
                    " VALUES (%s, 'launch_run', 'x', 'succeeded', %s)",
                    [actor, settles],
                )
        # ...or an entry dated before it was written.
        for table in ("ops.audit_entries", "ops.audit_log"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="dated when"):
                app.execute(
                    f"INSERT INTO {table} (actor, action, occurred_at)"  # noqa: S608 (tests' own)
                    " VALUES ('mallory', 'x', now() - interval '1 day')"
                )
    assert conn.execute("SELECT count(*) FROM ops.audit_log").fetchone()[0] == shown
    assert chain.verify(conn).ok


def test_the_maintenance_path_from_inside_a_trigger_leaves_its_entry_too(conn, trail):
    ids, _ = trail
    conn.execute(
        sql.SQL(
            """CREATE FUNCTION pg_temp.redact() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN UPDATE ops.audit_entries SET details = '{{}}' WHERE id = {};
               RETURN NULL; END $$"""
        ).format(sql.Literal(ids[0]))
    )
    conn.execute("CREATE TEMP TABLE t (x int)")
    conn.execute(
        "CREATE TRIGGER t_redact AFTER INSERT ON pg_temp.t"
        " FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.redact()"
    )
    conn.commit()
    with conn.transaction():
        conn.execute("SET LOCAL mm.audit_maintenance = 'INC-7: from a trigger'")
        conn.execute("INSERT INTO pg_temp.t VALUES (1)")
    (details,) = conn.execute(
        "SELECT details FROM ops.audit_log WHERE action = 'audit_maintenance'"
    ).fetchone()
    assert details["reason"] == "INC-7: from a trigger" and details["operation"] == "UPDATE"
    assert first(conn).entry_id == ids[0]


def test_a_failed_daily_check_records_no_head_and_keeps_the_last_good_one(
    conn, portal_db, job_settings
):
    from dagster import DagsterInstance

    from mm_orchestration.features.audit_trail.asset import HEAD_KEY

    ids = write(conn, 2)
    with DagsterInstance.ephemeral() as instance:
        evaluation, metadata, _ = materialize_trail(instance, portal_db, job_settings)
        assert evaluation.passed and HEAD_KEY in metadata
        good = metadata[HEAD_KEY].value
        Attacker(conn)("UPDATE ops.audit_entries SET actor = 'x' WHERE id = %s", [ids[0]])
        evaluation, metadata, _ = materialize_trail(instance, portal_db, job_settings)
        assert not evaluation.passed and HEAD_KEY not in metadata
        # Put back, the next day still holds the chain to the last head that verified.
        Attacker(conn)("UPDATE ops.audit_entries SET actor = 'olivia@mm.example' WHERE id = %s",
                       [ids[0]])  # fmt: skip
        evaluation, metadata, _ = materialize_trail(instance, portal_db, job_settings)
        assert evaluation.passed and metadata[HEAD_KEY].value == good


def test_a_period_cannot_be_left_by_moving_a_link_out_of_it(conn):
    """A period's walk goes by position from the link before it to the lane's end: a link
    edited and dated out of the period (after its end, or before its start) is still named,
    and a lane with nothing in the period is not taken for a truncated one."""
    write(conn, 2)
    time.sleep(0.01)
    since = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    ids = write(conn, 2)
    time.sleep(0.01)
    until = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    write(conn, 2)
    assert chain.verify(conn, since=since, until=until).ok
    assert chain.verify(conn, since=until).ok and chain.verify(conn, until=since).ok
    later = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    assert chain.verify(conn, since=later).ok  # nothing since: no lane is "truncated"
    attack = Attacker(conn)
    last = conn.execute(
        "SELECT entry_id FROM ops.audit_chain WHERE linked_at < %s ORDER BY seq DESC LIMIT 1",
        [until],
    ).fetchone()[0]
    attack("UPDATE ops.audit_entries SET actor = 'mallory' WHERE id = %s", [last])
    attack("UPDATE ops.audit_chain SET linked_at = %s WHERE entry_id = %s", [until, last])
    problem = first(conn, since=since, until=until)
    assert (problem.kind, problem.entry_id) == ("forged", last)
    attack("UPDATE ops.audit_entries SET actor = 'olivia@mm.example' WHERE id = %s", [ids[0]])
    attack("UPDATE ops.audit_chain SET linked_at = %s::timestamptz - interval '1 microsecond'"
           " WHERE entry_id = %s", [since, ids[0]])  # fmt: skip
    attack("UPDATE ops.audit_entries SET actor = 'mallory' WHERE id = %s", [ids[0]])
    assert (ids[0], "edited") in {
        (p.entry_id, p.kind) for p in chain.verify(conn, since=since, until=until).problems
    }


def test_a_roles_own_date_style_or_time_zone_does_not_stop_verify(conn, app_role):
    """The application's role may set its own session defaults; verify reads times the same
    whatever they are (a DateStyle psycopg cannot read made it crash)."""
    write(conn, 2)
    with connect(app_role, autocommit=True) as app:
        app.execute("ALTER ROLE CURRENT_USER SET DateStyle = 'SQL, DMY'")
        app.execute("ALTER ROLE CURRENT_USER SET TimeZone = 'America/St_Johns'")
    with connect(app_role, autocommit=True) as app:
        assert app.execute("SHOW DateStyle").fetchone() == ("SQL, DMY",)
        write(app, 1)
        verdict = chain.verify(app)
        assert verdict.ok, verdict.summary()
        assert verdict.checked == 6


def test_an_entrys_id_is_the_one_drawn_as_it_is_written(conn, app_role):
    """A settlement given an id left free before the real ending's (OVERRIDING SYSTEM VALUE,
    or the sequence set back) would be read as the entry's first ending: refused."""
    entry = audit.record(conn, "olivia", "launch_run", "x", None, {}, outcome="allowed")
    with conn.transaction(force_rollback=True):
        audit.record(conn, "olivia", "launch_run", "x", None, {})  # an id left free
    audit.settle(conn, entry, "failed", "run-1")
    forged = (
        "INSERT INTO ops.audit_entries (id, actor, action, job_name, outcome, settles)"
        " OVERRIDING SYSTEM VALUE VALUES (%s, 'olivia', 'launch_run', 'x', 'succeeded', %s)"
    )
    with connect(app_role, autocommit=True) as app:
        write(app, 1)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="drawn as it is written"):
            app.execute(forged, [entry + 1, entry])
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            app.execute("SELECT setval(pg_get_serial_sequence('ops.audit_entries', 'id'), %s)",
                        [entry])  # fmt: skip
        write(app, 1)  # the identity still draws ids for the role
    shown = conn.execute("SELECT outcome FROM ops.audit_log WHERE id = %s", [entry]).fetchone()
    assert shown == ("failed",)
    assert chain.verify(conn).ok
