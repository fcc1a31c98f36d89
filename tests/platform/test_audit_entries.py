"""What an audit entry may hold: one masking rule for every secret however it is written,
and values PostgreSQL refuses (NUL, lone surrogates, huge variables) stored, never lost."""

from __future__ import annotations

import pytest

from mm_orchestration.platform import audit
from mm_orchestration.platform.audit import MASK, is_secret_name, masked

# SQL or PostgreSQL tools that may differ by server version: CI runs these on 15 and 16.
pytestmark = pytest.mark.pg_versions


@pytest.mark.parametrize(
    "name",
    ["password", "pwd", "auth", "access_key", "signing_key", "signingKey", "X-Api-Key",
     "apiKey", "sendgrid/token", "client_secret", "dbpassword", "mux_key", "Authorization",
     "sslpassword", "oauth2", "PGPASSWORD", "aws_secret_access_key"],
)  # fmt: skip
def test_secret_names_follow_one_rule(name):
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    ["key", "assetKey", "partitionKeys", "concurrencyKey", "defsStateKey", "author",
     "passenger", "bypass", "runConfigData", "s3_key", "parentRunId", "stepKey"],
)  # fmt: skip
def test_names_of_things_are_not_secrets(name):
    assert not is_secret_name(name)


def test_run_config_as_json_or_flow_yaml_text_is_masked():
    assert masked('{"resources": {"db": {"config": {"pwd": "hunter2", "n": 1}}}}') == {
        "resources": {"db": {"config": {"pwd": MASK, "n": 1}}}
    }
    assert masked("{ops: {send: {config: {signing_key: abc, auth: xyz}}}}") == {
        "ops": {"send": {"config": {"signing_key": MASK, "auth": MASK}}}
    }
    # Text with nothing to hide stays as it was sent.
    assert masked("{ version }") == "{ version }"
    assert masked('{"ops": {"x": {"config": {"n": 1}}}}') == '{"ops": {"x": {"config": {"n": 1}}}}'
    # Text that does not parse still has its secret pairs masked.
    assert masked("ops: {x: [password: hunter2") == f"ops: {{x: [password: {MASK}"


def test_connection_strings_and_urls_in_text_are_masked():
    libpq = "host=db port=5432 user=jobs password='hun ter2' dbname=portal"
    assert masked(libpq) == f"host=db port=5432 user=jobs password={MASK} dbname=portal"
    assert masked("dsn: postgresql://jobs:pw@db.example/portal") == f"dsn: {MASK}"
    url = "could not reach postgresql://jobs:p@ss@db.example/portal?sslpassword=x&a=1"
    assert (
        masked(url)
        == f"could not reach postgresql://jobs:{MASK}@db.example/portal?sslpassword={MASK}&a=1"
    )
    # Unencoded '/', '#' and '@' in a password (URL parsers split those differently).
    assert (
        masked("postgresql://jobs:p/a#s@s@db/portal x") == f"postgresql://jobs:{MASK}@db/portal x"
    )
    assert masked("Authorization: Bearer abc.def then") == f"Authorization: {MASK} then"
    assert masked({"reason": "resend: api_key=SG.x"}) == {"reason": f"resend: api_key={MASK}"}
    # Nothing secret: unchanged.
    assert (
        masked("see https://example.com/a?b=1 at 10:30") == "see https://example.com/a?b=1 at 10:30"
    )


def test_sizes_are_capped_with_a_marker():
    long = masked("x" * 10_000)
    assert long.startswith("x" * audit.MAX_TEXT) and long.endswith(
        "[truncated: 6000 more characters]"
    )
    many = masked(list(range(2000)))
    assert len(many) == audit.MAX_ITEMS + 1 and many[-1] == "[truncated: 1500 more items]"
    deep: object = "bottom"
    for _ in range(100):
        deep = [deep]
    assert "nested too deep" in str(masked(deep))
    # A YAML alias bomb is a small text and a huge tree: cut, not walked for ever.
    levels = "abcdefghi"
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{name}: &{name} [{', '.join([f'*{below}'] * 9)}]\n"
        for below, name in zip(levels, levels[1:], strict=False)
    )
    assert "too many values" in str(masked(bomb))


def test_an_entry_with_nul_surrogates_and_huge_variables_is_written(conn):
    entry = audit.record(
        conn,
        "ann\x00@x.io",
        "launch_run",
        "job\x00",
        None,
        {"variables": {"tag\x00": "a\x00b", "odd": "\ud800", "big": ["y" * 4000] * 400}},
        target="t" * 5000 + "\x00",
        outcome="allowed",
    )
    audit.settle(conn, entry, "failed", None, {"message": "bad\x00 password=hunter2"})
    actor, target, details = conn.execute(
        "SELECT actor, target, details FROM ops.audit_log WHERE id = %s", [entry]
    ).fetchone()
    assert actor == "ann\\u0000@x.io"
    assert len(target) < 1100 and "[truncated: " in target
    assert details["result"]["message"] == f"bad\\u0000 password={MASK}"
    variables = details["variables"]
    assert isinstance(variables, str) and "[truncated: " in variables  # whole too long
    assert "a\\\\u0000b" in variables and "\\\\ud800" in variables


def test_numbers_json_cannot_hold_are_stored_as_text(conn):
    """Run config YAML may hold `.nan`, `.inf` or a 5,000-digit number: jsonb refuses the
    first two, and Python will not even print the last; the entry is written anyway."""
    config = "ops:\n  x:\n    config: {a: .nan, b: -.inf, pwd: x}\n"
    variables = {"runConfigData": config, "n": 10**5000, "too_long_for_yaml": "c: " + "9" * 5000}
    entry = audit.record(conn, "ann@x.io", "launch_run", None, None, {"variables": variables})
    (details,) = conn.execute("SELECT details FROM ops.audit_log WHERE id = %s", [entry]).fetchone()
    stored = details["variables"]["runConfigData"]["ops"]["x"]["config"]
    assert stored == {"a": "nan", "b": "-inf", "pwd": "***"}
    assert details["variables"]["n"].startswith("[an integer of ")
    assert details["variables"]["too_long_for_yaml"].startswith("c: 999")


def test_an_action_cancelled_midway_is_not_left_allowed():
    """The client goes away (or the server stops) while Dagster acts: the entry says
    `canceled` (interrupted), not `allowed` for ever."""
    import asyncio

    from mm_orchestration.console.middleware import ConsoleGate

    class Trail:
        settled: list[tuple[int, str]] = []

        def settle(self, entry, outcome, run_id, result):
            self.settled.append((entry, outcome))

    async def cancelled():
        raise asyncio.CancelledError

    async def failing():
        raise RuntimeError("boom")

    trail = Trail()
    gate = ConsoleGate(trail)  # type: ignore[arg-type]
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(gate._settle_later("launchRun", [7], cancelled()))
    with pytest.raises(RuntimeError):
        asyncio.run(gate._settle_later("launchRun", [7], failing()))
    assert trail.settled == [(7, "canceled"), (7, "failed")]


def test_details_that_cannot_be_recorded_leave_the_entry_with_a_note(conn):
    class Odd:
        def __str__(self) -> str:
            raise ValueError("no text")

    entry = audit.record(conn, "ann@x.io", "wipe_assets", None, None, {"x": Odd()}, target="a")
    row = conn.execute(
        "SELECT action, target, details FROM ops.audit_log WHERE id = %s", [entry]
    ).fetchone()
    assert row == (
        "wipe_assets",
        "a",
        {"unrecordable": "the details could not be recorded (ValueError)"},
    )


@pytest.mark.parametrize(
    "text, shown",
    [
        ("run --db-password=hunter2 --n 3", f"run --db-password={MASK} --n 3"),
        ("--token=abc", f"--token={MASK}"),
        ("cmd --password hunter2 --verbose", f"cmd --password {MASK} --verbose"),
        ("cmd --api-key 'a b' x", f"cmd --api-key {MASK} x"),
        ("cmd -auth s3cr3t", f"cmd -auth {MASK}"),
        # A flag followed by the next flag has no value to hide; names of things stay.
        ("cmd --password --verbose", "cmd --password --verbose"),
        ("dagster asset materialize --asset-key a/b", "dagster asset materialize --asset-key a/b"),
    ],
)
def test_command_line_flags_with_a_secret_name_are_masked(text, shown):
    assert masked(text) == shown


def test_a_command_given_as_a_list_hides_the_value_after_a_secret_flag():
    """A pod's command or args (dagster-k8s/config) is a list: the value is the next item."""
    assert masked({"args": ["run", "--db-password", "hunter2", "--n", "3"]}) == {
        "args": ["run", "--db-password", MASK, "--n", "3"]
    }
    assert masked(["--token=abc", "--partition", "x"]) == [f"--token={MASK}", "--partition", "x"]


# Files whose raw INSERT is being changed elsewhere (the outbox's resend, on its own
# branch): each should call audit.record; remove it from here when it does.
_PENDING_RAW_INSERTS: set[str] = set()


def test_every_entry_is_written_the_one_way():
    """Only audit.py inserts into ops.audit_log (its entries, ops.audit_entries, since the
    chain: migration 0016), so every entry is masked and capped."""
    import re
    from pathlib import Path

    import mm_orchestration

    root = Path(mm_orchestration.__file__).parent
    raw = re.compile(r"INSERT\s+INTO\s+ops\.audit_(?:log|entries)\b", re.IGNORECASE)
    writers = {
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if raw.search(path.read_text(encoding="utf-8"))
    }
    assert writers - _PENDING_RAW_INSERTS == {"platform/audit.py"}
