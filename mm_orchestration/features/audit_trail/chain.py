"""The audit chain, verified: proof to an auditor that no audit entry was changed,
deleted, slipped in or reordered since it was written.

Every entry of `ops.audit_entries` is linked into `ops.audit_chain` when its transaction
commits (migration 0016): link `seq` holds the hash of link `seq - 1` and the SHA-256 of
that hash and the entry's canonical form. `verify` rebuilds the canonical form here, in
Python, from the stored columns (never trusting the database's own hash function), walks
the links in order and names the first that does not hold:

- `edited`: the entry does not match its link's hash (a field changed, two entries
  swapped, or a link made with a forged hash);
- `deleted`: a link's entry is gone, or positions are missing from the chain;
- `forged`: a link does not carry its predecessor's hash (inserted, replaced or moved);
- `out_of_order`: a link is older than the one before it;
- `unlinked`: an entry that is in no link (written around the chain);
- `truncated`: the chain ends before its head, or before a head recorded earlier (an
  anchor: the daily check's, a download's, an evidence bundle's) is reached;
- `rewritten`: the link at an anchor's position no longer has the anchor's hash.

Somebody who can disable the triggers and rewrite every later hash consistently is
caught by the anchors: the head published outside the database no longer matches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

VERSION = b"mm-audit-chain/1"
GENESIS = bytes(32)  # the hash before the first link
PROBLEMS_KEPT = 20  # a verdict names the first problem and keeps a few more

# The links in order with their entries (NULL columns when the entry is gone), between
# two positions.
_WALK = """
SELECT c.seq, c.entry_id, c.linked_at, c.prev_hash, c.hash, e.id IS NOT NULL,
       e.occurred_at, e.actor, e.action, e.job_name, e.run_id, e.details::text, e.role,
       e.target, e.outcome, e.settles
  FROM ops.audit_chain c
  LEFT JOIN ops.audit_entries e ON e.id = c.entry_id
 WHERE c.seq BETWEEN %(first)s AND %(last)s
 ORDER BY c.seq
"""


@dataclass(frozen=True)
class Head:
    """A point of the chain: the link at `seq`, its hash and when it was made."""

    seq: int
    sha256: str
    linked_at: datetime | None

    def text(self) -> str:
        """How a download, a bundle or a command line shows it: `seq:sha256`."""
        return f"{self.seq}:{self.sha256}"

    @classmethod
    def parse(cls, text: str) -> Head:
        """`SEQ:SHA256` (as `text` writes it) back into a Head; ValueError naming the form."""
        seq, _, digest = text.strip().partition(":")
        digest = digest.strip().lower()
        if not (seq.isascii() and seq.isdigit() and len(digest) == 64):
            raise ValueError("a chain head is SEQ:SHA256 (a position and 64 hex digits)")
        try:
            bytes.fromhex(digest)
        except ValueError:
            raise ValueError("a chain head is SEQ:SHA256 (a position and 64 hex digits)") from None
        return cls(int(seq), digest, None)


@dataclass(frozen=True)
class Problem:
    """One place where the chain does not hold, as an auditor reads it."""

    kind: str
    seq: int | None
    entry_id: int | None
    message: str


@dataclass(frozen=True)
class Verdict:
    """What `verify` found: the links checked, the head reached, the problems (first first)."""

    checked: int
    first_seq: int | None
    head: Head | None
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    def summary(self) -> str:
        """One line: verified up to which head, or the first problem."""
        if self.first is not None:
            more = len(self.problems) - 1
            extra = f" (and {more} more problem(s) after it)" if more else ""
            return f"audit chain BROKEN: {self.first.kind}: {self.first.message}{extra}"
        if self.head is None:
            return "audit chain verified: no entries in this period"
        span = f"seq {self.first_seq}-{self.head.seq}" if self.checked else "no links"
        return f"audit chain verified: {self.checked} link(s) ({span}), head {self.head.text()}" + (
            f" at {self.head.linked_at.isoformat()}" if self.head.linked_at else ""
        )


# -- the canonical form, rebuilt --------------------------------------------------------


def _utc(moment: datetime) -> str:
    """A moment as ops.audit_utc writes it (to_char in UTC, microseconds)."""
    t = moment.astimezone(UTC)
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
        f".{t.microsecond:06d}Z"
    )


def _field(value: str | None) -> bytes:
    """One field as ops.audit_field writes it: `<bytes>:<UTF-8>`, or `~` for NULL."""
    if value is None:
        return b"~"
    data = value.encode("utf-8")
    return str(len(data)).encode() + b":" + data


def link_hash(prev: bytes, seq: int, linked_at: datetime, entry: dict[str, Any]) -> bytes:
    """The hash link `seq` must carry for `entry` (its columns, `details` as jsonb text)."""
    settles = entry["settles"]
    parts = [
        VERSION,
        _field(str(seq)),
        _field(_utc(linked_at)),
        _field(str(entry["id"])),
        _field(_utc(entry["occurred_at"])),
        _field(entry["actor"]),
        _field(entry["action"]),
        _field(entry["job_name"]),
        _field(entry["run_id"]),
        _field(entry["details"]),
        _field(entry["role"]),
        _field(entry["target"]),
        _field(entry["outcome"]),
        _field(None if settles is None else str(settles)),
    ]
    return hashlib.sha256(prev + b"".join(parts)).digest()


# -- reading the chain ---------------------------------------------------------------------


def head(conn: psycopg.Connection, until: datetime | None = None) -> Head | None:
    """The newest link made before `until` (now when None): what a download or bundle of a
    period ending then carries. None when the chain has no link yet."""
    row = conn.execute(
        """SELECT seq, hash, linked_at FROM ops.audit_chain
            WHERE %(until)s::timestamptz IS NULL OR linked_at < %(until)s
            ORDER BY seq DESC LIMIT 1""",
        {"until": until},
    ).fetchone()
    return None if row is None else Head(int(row[0]), bytes(row[1]).hex(), row[2])


def _bounds(
    conn: psycopg.Connection, since: datetime | None, until: datetime | None
) -> tuple[int, int, bytes, int, datetime | None]:
    """The positions to walk (first, last), and the hash, position and time the first link
    must follow."""
    first, last = conn.execute(
        """SELECT min(seq), max(seq) FROM ops.audit_chain
            WHERE (%(since)s::timestamptz IS NULL OR linked_at >= %(since)s)
              AND (%(until)s::timestamptz IS NULL OR linked_at < %(until)s)""",
        {"since": since, "until": until},
    ).fetchone() or (None, None)
    if since is None or first is None:
        return (1 if first is None else min(first, 1)), last or 0, GENESIS, 0, None
    before = conn.execute(
        "SELECT seq, hash, linked_at FROM ops.audit_chain WHERE seq < %s ORDER BY seq DESC LIMIT 1",
        [first],
    ).fetchone()
    if before is None:
        return first, last, GENESIS, 0, None
    return first, last, bytes(before[1]), int(before[0]), before[2]


def _walk(conn: psycopg.Connection, first: int, last: int) -> Iterator[tuple[Any, ...]]:
    with conn.cursor(name="audit_chain_walk") as cur:
        cur.itersize = 2000
        cur.execute(_WALK, {"first": first, "last": last})
        yield from cur


_COLUMNS = (
    "occurred_at", "actor", "action", "job_name", "run_id", "details", "role", "target",
    "outcome", "settles",
)  # fmt: skip


def verify(
    conn: psycopg.Connection,
    since: datetime | None = None,
    until: datetime | None = None,
    anchors: Iterable[Head] = (),
) -> Verdict:
    """Walk the chain (the links made in [since, until), all when both are None) and say
    whether every entry is where and as it was linked, and every anchor still holds.

    Runs in its own read-only snapshot (REPEATABLE READ), so writers going on meanwhile
    are either wholly in it or not at all; `conn` must not be inside a transaction."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise ValueError("verify needs a connection outside any transaction (its own snapshot)")
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return _verify(conn, since, until, tuple(anchors))


def _verify(
    conn: psycopg.Connection,
    since: datetime | None,
    until: datetime | None,
    anchors: tuple[Head, ...],
) -> Verdict:
    problems: list[Problem] = []

    def found(kind: str, seq: int | None, entry_id: int | None, message: str) -> None:
        if len(problems) < PROBLEMS_KEPT:
            problems.append(Problem(kind, seq, entry_id, message))

    first, last, prev, prev_seq, prev_at = _bounds(conn, since, until)
    checked = 0
    last_link: Head | None = None
    for row in _walk(conn, first, last):
        seq, entry_id, linked_at, prev_hash, recorded, exists = row[:6]
        prev_hash, recorded = bytes(prev_hash), bytes(recorded)
        checked += 1
        if seq != prev_seq + 1:
            gap = f"seq {prev_seq + 1}" if seq == prev_seq + 2 else f"seq {prev_seq + 1}-{seq - 1}"
            found(
                "deleted",
                prev_seq + 1,
                None,
                f"the chain skips from seq {prev_seq} to seq {seq}: the link(s) at {gap} and "
                "their entries were deleted",
            )
        elif prev_hash != prev:
            found(
                "forged",
                seq,
                entry_id,
                f"seq {seq} (entry #{entry_id}) does not carry the hash of seq {prev_seq}: a "
                "link was inserted, replaced or moved here",
            )
        elif prev_at is not None and linked_at < prev_at:
            found(
                "out_of_order",
                seq,
                entry_id,
                f"seq {seq} (entry #{entry_id}) was linked at {linked_at.isoformat()}, before "
                f"seq {prev_seq} ({prev_at.isoformat()}): inserted out of order",
            )
        if not exists:
            found(
                "deleted",
                seq,
                entry_id,
                f"entry #{entry_id}, linked at seq {seq}, is missing: it was deleted",
            )
        else:
            entry = {"id": entry_id, **dict(zip(_COLUMNS, row[6:], strict=True))}
            if link_hash(prev_hash, seq, linked_at, entry) != recorded:
                found(
                    "edited",
                    seq,
                    entry_id,
                    f"entry #{entry_id} (seq {seq}) does not match its link's hash: the entry "
                    "was edited or swapped with another, or linked with a forged hash",
                )
        prev, prev_seq, prev_at = recorded, seq, linked_at
        last_link = Head(seq, recorded.hex(), linked_at)

    if until is None:
        _check_head(conn, last_link, found)
    for anchor in anchors:
        _check_anchor(conn, anchor, found)
    _check_unlinked(conn, since, until, found)
    ordered = sorted(problems, key=lambda p: (p.seq is None, p.seq or 0))
    return Verdict(checked, first if checked else None, last_link, tuple(ordered))


def _check_head(conn: psycopg.Connection, last: Head | None, found: Any) -> None:
    """The chain ends where its head row says."""
    row = conn.execute("SELECT seq, hash FROM ops.audit_chain_head").fetchone()
    if row is None:
        if last is not None:
            found("truncated", None, None, "the chain's head row is missing")
        return
    seq, digest = int(row[0]), bytes(row[1]).hex()
    end = last.seq if last else 0
    if seq > end:
        found(
            "truncated",
            end + 1,
            None,
            f"the chain ends at seq {end} but its head records seq {seq}: the newest "
            f"{seq - end} link(s) and their entries were deleted",
        )
    elif seq < end or (last is not None and digest != last.sha256):
        found(
            "forged",
            seq,
            None,
            f"the head records seq {seq} {digest[:16]}..., which is not the chain's last link "
            f"(seq {end}): links were appended or changed around the chain",
        )


def _check_anchor(conn: psycopg.Connection, anchor: Head, found: Any) -> None:
    """A head seen earlier (published outside the database) is still in the chain."""
    row = conn.execute("SELECT hash FROM ops.audit_chain WHERE seq = %s", [anchor.seq]).fetchone()
    if row is None:
        newest = conn.execute("SELECT max(seq) FROM ops.audit_chain").fetchone()
        end = int(newest[0]) if newest and newest[0] is not None else 0
        if end < anchor.seq:
            found(
                "truncated",
                end + 1,
                None,
                f"the chain ends at seq {end}, but seq {anchor.seq} was its head when recorded "
                f"earlier ({anchor.sha256[:16]}...): the newest links were deleted",
            )
        return  # a gap inside the chain: the walk names it
    if bytes(row[0]).hex() != anchor.sha256:
        found(
            "rewritten",
            anchor.seq,
            None,
            f"seq {anchor.seq} no longer has the hash recorded for it earlier "
            f"({anchor.sha256[:16]}...): the chain up to there was rewritten",
        )


def _check_unlinked(
    conn: psycopg.Connection, since: datetime | None, until: datetime | None, found: Any
) -> None:
    """Entries that no link names (written with the chain's trigger switched off)."""
    rows = conn.execute(
        """SELECT e.id FROM ops.audit_entries e
            WHERE NOT EXISTS (SELECT 1 FROM ops.audit_chain c WHERE c.entry_id = e.id)
              AND (%(since)s::timestamptz IS NULL OR e.occurred_at >= %(since)s)
              AND (%(until)s::timestamptz IS NULL OR e.occurred_at < %(until)s)
            ORDER BY e.id LIMIT %(limit)s""",
        {"since": since, "until": until, "limit": PROBLEMS_KEPT},
    ).fetchall()
    for (entry_id,) in rows:
        found(
            "unlinked",
            None,
            entry_id,
            f"entry #{entry_id} is in no link of the chain: it was inserted around it",
        )
