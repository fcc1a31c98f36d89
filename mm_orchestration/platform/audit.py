"""`ops.audit_log`: who did what to which job and run, kept as compliance evidence.

Every entry goes through one masking function (`masked`) and is made storable (NUL and
lone surrogates escaped, sizes capped with a visible marker) here, whoever writes it, so
no writer can leak a secret into the trail or lose an entry to a value PostgreSQL refuses.

The log is append-only and hash-chained (migration 0016, docs/audit.md): entries are rows
of `ops.audit_entries` that nobody changes, each linked into `ops.audit_chain` when its
transaction commits; how an entry ended (`settle`) or what was added to it afterwards
(`annotate`) is an entry of its own that settles it, and `ops.audit_log` shows each entry
as it reads with those folded in.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import psycopg
import yaml
from psycopg.types.json import Jsonb

MASK = "***"

# How an entry ends, the only values of `ops.audit_log.outcome` (a status code, an error
# or why it was refused goes in the details):
# - allowed: judged and passed on, not ended yet (an entry left so is still going);
# - refused: not done (role, transport, a request that could not be judged);
# - succeeded / failed: done, and how it went; `skipped`: a run that found its window done;
# - canceled: stopped before it ended (a signal, the client gone: `interrupted` in details);
# - reconciled: written after the fact for a manual run that had no entry.
OUTCOMES = ("allowed", "refused", "succeeded", "failed", "skipped", "canceled", "reconciled")

# -- which names are secret: one rule for keys, tag names and `name=value` text ---------
#
# A name is split into words (at `_ - . /` and spaces, and at case changes: `signingKey`
# is `signing key`). It is secret when
# - a word is a secret word (`pwd`, `auth`, `token`, ...), or contains one that never
#   names anything else (`dbpassword`, `clientsecret`), or
# - its last word is `key`/`keys` after another word that does not say which thing the
#   key picks (`access_key`, `signing_key`, `mux_key` are secret; `asset_key`,
#   `partition_keys`, `concurrency_key` name things). A bare `key` (a tag's) is not.
_SECRET_WORDS = frozenset(
    {
        "password", "passwd", "pwd", "pass", "passphrase", "secret", "secrets", "token",
        "tokens", "credential", "credentials", "creds", "auth", "oauth", "oauth2",
        "authorization", "authorisation", "cookie", "cookies", "dsn", "private", "signature",
        "sig", "apikey", "accesskey", "secretkey", "privatekey", "signingkey", "sessionid",
        "bearer",
    }
)  # fmt: skip
_SECRET_STEMS = ("password", "passwd", "secret", "credential")
# Words before `key` that make it the name of a thing, not a credential.
_NAMING_WORDS = frozenset(
    {
        "asset", "assets", "partition", "partitions", "concurrency", "idempotency", "cache",
        "sort", "group", "primary", "foreign", "run", "step", "object", "s3", "event",
        "state", "tag", "job", "schedule", "sensor", "public", "dedupe", "dedup", "lookup",
        "row", "map", "check", "range", "cursor", "report", "file", "path", "hash",
        "component", "defs", "storage_object", "translation", "i18n", "sha256",
    }
)  # fmt: skip
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z0-9]+(?![a-z])")


def is_secret_name(name: object) -> bool:
    """Whether a value named `name` (a key, a tag, a `name=value` pair) is a secret."""
    words = [w.lower() for w in _WORD.findall(str(name))]
    if any(w in _SECRET_WORDS or any(s in w for s in _SECRET_STEMS) for w in words):
        return True
    return len(words) >= 2 and words[-1] in ("key", "keys") and words[-2] not in _NAMING_WORDS


# -- secrets inside text ---------------------------------------------------------------

# A URL's password: scheme://user:PASSWORD@host, up to the last '@' before a space: a
# password may hold an unencoded '/', '#' or '@', which URL parsers split differently
# (a URL with a port and an '@' in its path loses a little more than its password).
_URL_PASSWORD = re.compile(r"((?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*+://[^\s:/?#@]*+:)\S*@")
# `name=value` and `name: value` (libpq's key=value strings, query strings, YAML and JSON
# text, log lines), the name optionally quoted, the value quoted or up to a separator;
# an HTTP scheme word (`Bearer abc`) is taken with the value after it. A name starts only
# where no name character precedes it and is matched possessively, so a long run of
# letters costs one pass, not one per letter (the text may be megabytes of variables).
_PAIR = re.compile(
    r"""(?P<lead>(?P<oq>["']?)(?<![A-Za-z0-9_.\-])"""
    r"""(?P<name>-{0,2}+[A-Za-z_][A-Za-z0-9_.\-]*+)(?P=oq)"""
    r"""\s*+[=:](?!//)\s*+)"""
    r"""(?P<value>(?i:(?:bearer|basic|token|digest)\s+)?"""
    r"""(?:"(?:[^"\\]|\\.)*+"|'(?:[^'\\]|\\.)*+'|[^\s,;&"'}\]]++))"""
)

# A command line's flag and its value as the next word: `--db-password hunter2`,
# `--token abc` (a flag given with `=` is a pair, above). A value starting with `-` is
# the next flag, not a value.
_FLAG = re.compile(
    r"""(?<![A-Za-z0-9_.\-])(?P<name>--?+[A-Za-z][A-Za-z0-9_.\-]*+)(?P<gap>[ \t]++)"""
    r"""(?P<value>"(?:[^"\\]|\\.)*+"|'(?:[^'\\]|\\.)*+'|(?!-)[^\s,;&"'}\]]++)"""
)

# Caps, so one request cannot make an entry PostgreSQL or a reader cannot take.
MAX_TEXT = 4000  # characters of one string
MAX_ITEMS = 500  # items of one list or mapping
MAX_DEPTH = 40  # levels of nesting
MAX_NODES = 20_000  # values in all (YAML aliases can make a small text a huge tree)
MAX_TARGET = 1000  # characters of the target column
MAX_DETAILS = 256_000  # characters of one entry's details as JSON


def truncated(text: str, limit: int = MAX_TEXT) -> str:
    """`text` cut at `limit` characters with a marker saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[truncated: {len(text) - limit} more characters]"


def masked_text(text: str) -> str:
    """`text` with every password in a URL, every secret `name=value` (`--name=value`
    too) and every secret command-line flag's value (`--db-password x`) masked."""
    text = _URL_PASSWORD.sub(rf"\1{MASK}@", text)
    text = _FLAG.sub(
        lambda m: f"{m['name']}{m['gap']}{MASK}" if is_secret_name(m["name"]) else m[0], text
    )

    # By hand, not re.sub: a pair that is not secret gives up only its name, so a secret
    # pair inside its value (`url=...?password=x`) is still found.
    out, pos = [], 0
    while (match := _PAIR.search(text, pos)) is not None:
        if is_secret_name(match["name"]):
            out.append(text[pos : match.start("value")] + MASK)
            pos = match.end()
        else:
            out.append(text[pos : match.end("lead")])
            pos = match.end("lead")
    out.append(text[pos:])
    return "".join(out)


def _structured(text: str) -> Any:
    """The mapping or list that `text` holds as JSON or YAML (block or flow style, as
    the Launchpad sends run config), or None when it is plain text."""
    stripped = text.strip()
    if not (stripped[:1] in ("{", "[") or ("\n" in stripped and ":" in stripped)):
        return None
    try:
        parsed = json.loads(stripped)
    except (ValueError, RecursionError):
        try:
            parsed = yaml.safe_load(stripped)
        except (yaml.YAMLError, RecursionError, ValueError):
            return None
    return parsed if isinstance(parsed, dict | list) else None


def masked(value: Any) -> Any:
    """`value` as the audit (and anything shown to people) may hold it: every secret
    replaced by ***, and capped in size with a visible marker.

    Secrets: values under a secret name (`is_secret_name`), the value of a `{key, value}`
    tag whose key is one, a URL's password, secret `name=value` pairs in text (a libpq
    connection string), and the same inside run config given as JSON or YAML text."""
    budget = [MAX_NODES]
    return _masked(value, 0, budget)


def _secret_flag(item: Any) -> bool:
    """A command-line flag alone (`--db-password`, `-token`) whose value is secret."""
    return (
        isinstance(item, str)
        and item.startswith("-")
        and "=" not in item
        and re.fullmatch(r"--?[A-Za-z][A-Za-z0-9_.\-]*", item) is not None
        and is_secret_name(item)
    )


def _masked(value: Any, depth: int, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        return "[truncated: too many values]"
    if depth > MAX_DEPTH and isinstance(value, dict | list | tuple):
        return "[truncated: nested too deep]"
    if isinstance(value, dict):
        if set(value) == {"key", "value"} and is_secret_name(value["key"]):
            return {"key": _masked(value["key"], depth + 1, budget), "value": MASK}
        out: dict[str, Any] = {}
        for i, (k, v) in enumerate(value.items()):
            if i == MAX_ITEMS:
                out["[truncated]"] = f"{len(value) - MAX_ITEMS} more items"
                break
            secret = is_secret_name(k) and v not in (None, "")
            out[truncated(str(k), 200)] = MASK if secret else _masked(v, depth + 1, budget)
        return out
    if isinstance(value, list | tuple):
        items = [_masked(v, depth + 1, budget) for v in list(value)[:MAX_ITEMS]]
        # A command as a list (a container's `command`/`args`): a secret flag's value is
        # the next item.
        for i in range(1, len(items)):
            flag = value[i - 1]
            if _secret_flag(flag) and isinstance(value[i], str | int | float):
                items[i] = MASK
        if len(value) > MAX_ITEMS:
            items.append(f"[truncated: {len(value) - MAX_ITEMS} more items]")
        return items
    if isinstance(value, str):
        parsed = _structured(value) if len(value) <= 100_000 else None
        if parsed is not None:
            hidden = _masked(parsed, depth, budget)
            # Text with nothing to hide stays the text that was sent (a GraphQL query
            # `{ version }` is not the mapping YAML reads in it).
            if hidden != parsed:
                return hidden
        return truncated(masked_text(value))
    if value is None or isinstance(value, bool | int | float):
        return value
    return truncated(masked_text(str(value)))


# -- what PostgreSQL stores ----------------------------------------------------------------


def storable_text(text: str) -> str:
    """`text` as PostgreSQL's text and jsonb take it: NUL (which both refuse) and lone
    surrogates (which are not UTF-8) written out as escapes, so the entry is never lost."""
    if "\x00" in text:
        text = text.replace("\x00", "\\u0000")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def storable(value: Any) -> Any:
    """`value` (already masked) as jsonb takes it: every string storable, keys included;
    numbers JSON cannot write (NaN, infinities, YAML's `.nan`) or Python will not print
    (an integer of thousands of digits) kept as text; anything else as its text."""
    if isinstance(value, dict):
        return {storable_text(str(k)): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    if isinstance(value, str):
        return storable_text(value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return (
            value if abs(value) < 10**300 else f"[an integer of {len(hex(value)) - 2} hex digits]"
        )
    return storable_text(str(value))


def entry_details(details: dict[str, Any]) -> Jsonb:
    """An entry's details: masked, storable and at most MAX_DETAILS characters of JSON (the
    variables, the largest part, are cut to a marked prefix when the whole is longer).
    Details that cannot be made so are replaced by a note saying so: the entry itself,
    who did what to what, is never lost to what it carries."""
    try:
        return _entry_details(details)
    except (ValueError, TypeError, RecursionError) as exc:
        return Jsonb({"unrecordable": f"the details could not be recorded ({type(exc).__name__})"})


def _entry_details(details: dict[str, Any]) -> Jsonb:
    clean = storable(masked(details))
    text = json.dumps(clean, default=str)
    if len(text) > MAX_DETAILS:
        for key in ("variables", "payload", "query"):
            if key in clean:
                clean[key] = truncated(json.dumps(clean[key], default=str), MAX_DETAILS // 4)
        text = json.dumps(clean, default=str)
        if len(text) > MAX_DETAILS:
            clean = {"truncated": truncated(text, MAX_DETAILS // 2)}
    return Jsonb(clean)


def _outcome(outcome: str | None) -> str | None:
    if outcome is not None and outcome not in OUTCOMES:
        raise ValueError(f"outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
    return outcome


def _column(text: str | None, limit: int = MAX_TARGET) -> str | None:
    return None if text is None else storable_text(truncated(masked_text(str(text)), limit))


def _row(
    actor: str,
    action: str,
    job_name: str | None,
    run_id: str | None,
    details: dict[str, Any],
    role: str | None,
    target: str | None,
    outcome: str | None,
) -> dict[str, Any]:
    """An entry's columns, masked, capped and storable: the one way into the log."""
    return {
        "actor": _column(actor),
        "action": _column(action),
        "job_name": _column(job_name),
        "run_id": _column(run_id),
        "details": entry_details(details),
        "role": _column(role),
        "target": _column(target),
        "outcome": _outcome(outcome),
    }


def record(
    conn: psycopg.Connection,
    actor: str,
    action: str,
    job_name: str | None,
    run_id: str | None,
    details: dict[str, Any],
    *,
    role: str | None = None,
    target: str | None = None,
    outcome: str | None = None,
) -> int:
    """One audit entry, in the caller's transaction so it exists exactly when the act does
    (and is linked into the chain when that transaction commits). Returns its id. `role`,
    `target` and `outcome` are the console's (migration 0010)."""
    row = conn.execute(
        """INSERT INTO ops.audit_entries
               (actor, action, job_name, run_id, details, role, target, outcome)
           VALUES (%(actor)s, %(action)s, %(job_name)s, %(run_id)s, %(details)s, %(role)s,
                   %(target)s, %(outcome)s) RETURNING id""",
        _row(actor, action, job_name, run_id, details, role, target, outcome),
    ).fetchone()
    assert row is not None
    return int(row[0])


def record_once_per_run(
    conn: psycopg.Connection,
    actor: str,
    action: str,
    job_name: str | None,
    run_id: str,
    details: dict[str, Any],
    *,
    target: str | None = None,
    outcome: str | None = None,
) -> bool:
    """An entry for `run_id` unless one already names it (a reconciliation that may run
    twice); returns whether this call wrote it. Masked and capped as `record`."""
    values = _row(actor, action, job_name, run_id, details, None, target, outcome)
    written = conn.execute(
        """INSERT INTO ops.audit_entries
               (actor, action, job_name, run_id, details, target, outcome)
           SELECT %(actor)s, %(action)s, %(job_name)s, %(run_id)s, %(details)s, %(target)s,
                  %(outcome)s
            WHERE NOT EXISTS (SELECT 1 FROM ops.audit_entries WHERE run_id = %(run_id)s)""",
        values,
    ).rowcount
    return bool(written)


# An ending or an addition: a new entry that settles `entry` (the same person, action,
# job, role and target), so the entry itself is never changed. ops.audit_log folds it in.
_SETTLE = """
INSERT INTO ops.audit_entries
       (actor, action, job_name, run_id, details, role, target, outcome, settles)
SELECT actor, action, job_name, %(run_id)s, %(details)s, role, target, %(outcome)s, id
  FROM ops.audit_entries
 WHERE id = %(entry)s AND settles IS NULL
"""


def settle(
    conn: psycopg.Connection,
    entry_id: int,
    outcome: str,
    run_id: str | None = None,
    result: dict[str, Any] | None = None,
) -> None:
    """How an audited action ended (the entry was written before it started): its outcome,
    the run it started, and `result` under the details' `result`."""
    conn.execute(
        _SETTLE,
        {
            "entry": entry_id,
            "outcome": _outcome(outcome),
            "run_id": _column(run_id),
            "details": Jsonb({"result": entry_details(result or {}).obj}),
        },
    )


def annotate(conn: psycopg.Connection, entry_id: int, details: dict[str, Any]) -> None:
    """Facts learned after an entry was written (what SendGrid answered, say), added to
    its details as ops.audit_log shows them; the entry keeps its outcome."""
    conn.execute(
        _SETTLE, {"entry": entry_id, "outcome": None, "run_id": None,
                  "details": entry_details(details)},
    )  # fmt: skip


def settle_run(conn: psycopg.Connection, run_id: str, outcome: str, summary: str) -> None:
    """End the entries of `run_id` still waiting for their ending (`allowed`): a run
    stopped by a signal or found with its process gone never reaches the code that
    settles its entry, and "allowed" for ever would say it is still going."""
    conn.execute(
        """INSERT INTO ops.audit_entries
                  (actor, action, job_name, run_id, details, role, target, outcome, settles)
           SELECT actor, action, job_name, NULL, %s, role, target, %s, id
             FROM ops.audit_log
            WHERE run_id = %s AND outcome = 'allowed'""",
        [Jsonb({"result": entry_details({"summary": summary}).obj}), _outcome(outcome), run_id],
    )
