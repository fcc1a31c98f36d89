"""The audit chain, verified: proof to an auditor that no audit entry was changed,
deleted, slipped in or reordered since it was written.

Every entry of `ops.audit_entries` is linked into `ops.audit_chain` when its transaction
commits (migration 0016), in one of 16 lanes (concurrent writers append to different
lanes, so none waits for another's commit): link `(lane, seq)` holds the entry's hash
(SHA-256 of its columns as a JSON array), the hash of the lane's link `seq - 1`, and its
own hash (SHA-256 of that previous hash and `["mm-audit-chain/1", lane, seq, link time,
entry hash]`). `verify` rebuilds both hashes here, in Python, from the stored columns
(never trusting the database's functions), walks each lane in order and names the first
link that does not hold:

- `edited`: the entry is not the one that was linked there (a field changed, or two
  entries swapped);
- `deleted`: a link's entry is gone, or positions are missing from a lane;
- `forged`: a link's hash is not what its contents give, or it does not carry its
  predecessor's hash (inserted, replaced or moved);
- `out_of_order`: a link is older than the one before it in its lane;
- `unlinked`: an entry that is in no link (written around the chain);
- `truncated`: a lane ends before its head, or before a head recorded earlier (an
  anchor: the daily check's, a download's, an evidence bundle's) is reached;
- `rewritten`: the links at an anchor's positions no longer have the anchor's hashes;
- `invalid`: a row that cannot be verified at all (a time the canonical form cannot
  hold, which the table's checks refuse): named, never a crash.

Only the 16 lanes (0-15) are the chain: a link in any other is `forged`, and no head
counts it.

The chain's head is every lane's newest link, written `SEQ.SEQ...:SHA256` (each lane's
position, then the SHA-256 of the lanes' hashes). Somebody who can switch the triggers off
and rewrite every later hash consistently is caught by the heads published outside the
database: they no longer match.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

VERSION = "mm-audit-chain/1"
LANES = 16
GENESIS = bytes(32)  # the hash before a lane's first link
PROBLEMS_KEPT = 20  # a verdict names the first problem and keeps a few more
_HEAD_TEXT = re.compile(r"(\d{1,19}(?:\.\d{1,19}){0,15}):([0-9a-fA-F]{64})", re.ASCII)

# A time read only when Python can hold it in any time zone, else NULL (infinity, or beyond
# the years 1-9999): verify names such a row, never crashing on it. The lanes: 0-15.
# The links of one lane in order with their entries (NULL columns when the entry is gone),
# and the link and entry times as text (what a time Python cannot hold was).
_WALK = """
SELECT c.seq, c.entry_id,
       CASE WHEN c.linked_at >= '0001-01-02 00:00:00+00'
             AND c.linked_at < '9999-12-30 00:00:00+00' THEN c.linked_at END,
       c.entry_hash, c.prev_hash, c.hash, e.id IS NOT NULL,
       c.linked_at::text, e.occurred_at::text,
       CASE WHEN e.occurred_at >= '0001-01-02 00:00:00+00'
             AND e.occurred_at < '9999-12-30 00:00:00+00' THEN e.occurred_at END,
       e.actor, e.action, e.job_name, e.run_id, e.details::text, e.role, e.target,
       e.outcome, e.settles
  FROM ops.audit_chain c
  LEFT JOIN ops.audit_entries e ON e.id = c.entry_id
 WHERE c.lane = %(lane)s AND c.seq >= %(start)s
 ORDER BY c.seq
"""
# Where a period's walk of a lane starts: the link before the first one made since then
# (by position, never by a time an attacker could move), else the lane's last link.
_START = """
SELECT min(seq) FILTER (WHERE linked_at >= %(since)s), max(seq)
  FROM ops.audit_chain WHERE lane = %(lane)s
"""
_COLUMNS = (
    "occurred_at", "actor", "action", "job_name", "run_id", "details", "role", "target",
    "outcome", "settles",
)  # fmt: skip


@dataclass(frozen=True)
class Head:
    """A point of the chain: each lane's position (`seqs[lane]`; 0 before its first link),
    the SHA-256 of those links' hashes, and when the newest of them was made."""

    seqs: tuple[int, ...]
    sha256: str
    linked_at: datetime | None = None

    @classmethod
    def of(cls, links: dict[int, tuple[int, bytes]], linked_at: datetime | None) -> Head:
        """The head made of each lane's link (lane -> (seq, hash)); only the 16 lanes."""
        links = {lane: link for lane, link in links.items() if 0 <= lane < LANES}
        seqs = tuple(links[lane][0] if lane in links else 0 for lane in range(LANES))
        return cls(seqs, combined(links), linked_at)

    @property
    def links(self) -> int:
        """How many links the chain had up to this head."""
        return sum(self.seqs)

    def text(self) -> str:
        """How a download, a bundle or a command line shows it: `SEQ.SEQ...:SHA256` (one
        position per lane; lanes after the last used one left out)."""
        used = list(self.seqs)
        while len(used) > 1 and used[-1] == 0:
            used.pop()
        return ".".join(map(str, used)) + ":" + self.sha256

    @classmethod
    def parse(cls, text: str) -> Head:
        """A head as `text` writes it; ValueError naming the form."""
        found = _HEAD_TEXT.fullmatch(text.strip())
        if found is None:
            raise ValueError(
                "a chain head is SEQ.SEQ...:SHA256 (each lane's position, up to 16, then "
                "64 hex digits), as `mm-jobs audit head` prints it"
            )
        seqs = [int(s) for s in found[1].split(".")]
        return cls(tuple(seqs + [0] * (LANES - len(seqs))), found[2].lower())


def combined(links: dict[int, tuple[int, bytes]]) -> str:
    """The SHA-256 naming a head: of `[[lane, seq, hash], ...]` for the lanes with links."""
    items = [
        [lane, seq, digest.hex()]
        for lane, (seq, digest) in sorted(links.items())
        if seq and 0 <= lane < LANES
    ]
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


@dataclass(frozen=True)
class Problem:
    """One place where the chain does not hold, as an auditor reads it."""

    kind: str
    lane: int | None
    seq: int | None
    entry_id: int | None
    message: str

    @property
    def where(self) -> str:
        """`lane 3 seq 17`, or the entry when it is in no link."""
        if self.seq is not None:
            return f"lane {self.lane} seq {self.seq}"
        return f"entry #{self.entry_id}" if self.entry_id is not None else "the head"


@dataclass(frozen=True)
class Verdict:
    """What `verify` found: the links checked, the head at the end of what was checked,
    and the problems, first first."""

    checked: int
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
        at = f" at {self.head.linked_at.isoformat()}" if self.head.linked_at else ""
        return f"audit chain verified: {self.checked} link(s), head {self.head.text()}{at}"


# -- the canonical form, rebuilt --------------------------------------------------------


def _utc(moment: datetime) -> str:
    """A moment as ops.audit_utc writes it (to_char in UTC, microseconds)."""
    t = moment.astimezone(UTC)
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
        f".{t.microsecond:06d}Z"
    )


def _json(value: str | int | None) -> str:
    """One item as jsonb writes it inside an array: strings JSON-escaped (the same
    characters PostgreSQL escapes, the rest as UTF-8), whole numbers, null."""
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def _array(items: list[str]) -> bytes:
    return ("[" + ", ".join(items) + "]").encode("utf-8")


def entry_hash(entry: dict[str, Any]) -> bytes:
    """What ops.audit_entry_hash gives for `entry` (its columns, `details` as jsonb text)."""
    return hashlib.sha256(
        _array(
            [
                _json(entry["id"]),
                _json(_utc(entry["occurred_at"])),
                *(_json(entry[c]) for c in ("actor", "action", "job_name", "run_id")),
                "null" if entry["details"] is None else entry["details"],
                *(_json(entry[c]) for c in ("role", "target", "outcome", "settles")),
            ]
        )
    ).digest()


def link_hash(prev: bytes, lane: int, seq: int, linked_at: datetime, digest: bytes) -> bytes:
    """The hash link `(lane, seq)` must carry after `prev`, for an entry hashed `digest`."""
    link = _array(
        [_json(VERSION), _json(lane), _json(seq), _json(_utc(linked_at)), _json(digest.hex())]
    )
    return hashlib.sha256(prev + link).digest()


# -- reading the chain ---------------------------------------------------------------------


def head(conn: psycopg.Connection, until: datetime | None = None) -> Head | None:
    """Each lane's newest link made before `until` (now when None): what a download or a
    bundle of a period ending then carries. None when no entry was linked by then."""
    rows = conn.execute(
        """SELECT DISTINCT ON (lane) lane, seq, hash,
                  CASE WHEN linked_at >= '0001-01-02 00:00:00+00'
                        AND linked_at < '9999-12-30 00:00:00+00' THEN linked_at END
             FROM ops.audit_chain
            WHERE lane BETWEEN 0 AND 15
              AND (%(until)s::timestamptz IS NULL OR linked_at < %(until)s)
             ORDER BY lane, seq DESC""",
        {"until": until},
    ).fetchall()
    if not rows:
        return None
    times = [r[3] for r in rows if r[3] is not None]
    return Head.of({r[0]: (int(r[1]), bytes(r[2])) for r in rows}, max(times, default=None))


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
        # Times as psycopg reads them, whatever the role's defaults say (a role may set its
        # own: `ALTER ROLE ... SET DateStyle = 'SQL'` made every verify crash).
        conn.execute("SET LOCAL DateStyle = 'ISO, YMD'")
        conn.execute("SET LOCAL TimeZone = 'UTC'")
        return _Walk(conn, since, until).run(tuple(anchors))


class _Walk:
    """One verification: the lanes walked in turn, the problems found."""

    def __init__(
        self, conn: psycopg.Connection, since: datetime | None, until: datetime | None
    ) -> None:
        self.conn, self.since, self.until = conn, since, until
        self.problems: list[Problem] = []
        self.checked = 0

    def found(
        self, kind: str, lane: int | None, seq: int | None, entry_id: int | None, message: str
    ) -> None:
        if len(self.problems) < PROBLEMS_KEPT:
            self.problems.append(Problem(kind, lane, seq, entry_id, message))

    def run(self, anchors: tuple[Head, ...]) -> Verdict:
        ends: dict[int, tuple[int, bytes]] = {}
        for lane in range(LANES):
            end = self.lane(lane)
            if end is not None:
                ends[lane] = end
        self.check_lanes()
        self.check_heads(ends)
        for anchor in anchors:
            self.check_anchor(anchor)
        self.check_unlinked()
        ordered = sorted(
            self.problems,
            key=lambda p: (p.seq is None, p.lane if p.lane is not None else LANES, p.seq or 0),
        )
        return Verdict(self.checked, head(self.conn, self.until), tuple(ordered))

    def _start(self, lane: int) -> tuple[int, bool]:
        """The position the walk of a lane starts at, and whether that is the link before
        the period (checked as any other, from the hash it carries): for the whole chain,
        or a lane whose first link is in the period, 1 (after the genesis hash)."""
        if self.since is None:
            return 1, False
        row = self.conn.execute(_START, {"lane": lane, "since": self.since}).fetchone()
        first, last = (row[0], row[1]) if row else (None, None)
        start = int(first) - 1 if first is not None else int(last or 0)
        return (start, True) if start >= 1 else (1, False)

    def _rows(self, lane: int, start: int) -> Iterator[tuple[Any, ...]]:
        with self.conn.cursor(name=f"audit_chain_lane_{lane}") as cur:
            cur.itersize = 2000
            cur.execute(_WALK, {"lane": lane, "start": start})
            yield from cur

    def lane(self, lane: int) -> tuple[int, bytes] | None:
        """Walk one lane; its last link (seq, hash), None when it has none.

        A period's walk starts at the link before it, and goes on past its end to the
        lane's last link, checking there only that the links still follow each other
        (their entries are not the period's): so a link whose time was moved out of the
        period, or a period's end cut off, breaks the walk instead of leaving it."""
        start, based = self._start(lane)
        prev_seq, prev, prev_at = start - 1, None if based else GENESIS, None
        end = None
        after = False  # past the period's end: the links' hashes only
        for row in self._rows(lane, start):
            seq, entry_id, linked_at, digest, prev_hash, recorded, exists = row[:7]
            linked_text, occurred_text = row[7:9]
            digest, prev_hash, recorded = bytes(digest), bytes(prev_hash), bytes(recorded)
            if based and seq == start:
                prev = prev_hash  # the link before the period: its predecessor is not walked
            else:
                after = after or (
                    self.until is not None and linked_at is not None and linked_at >= self.until
                )
                self.checked += 0 if after else 1
            at = f"lane {lane} seq {seq} (entry #{entry_id})"
            if linked_at is None:
                self.found(
                    "invalid",
                    lane,
                    seq,
                    entry_id,
                    f"{at} cannot be verified: its link time {linked_text!r} is not a moment "
                    "the chain's form can hold (written around the chain)",
                )
                prev_seq, prev = seq, recorded
                end = (seq, recorded)
                continue
            if seq != prev_seq + 1:
                gap = f"seq {prev_seq + 1}" + (f"-{seq - 1}" if seq > prev_seq + 2 else "")
                self.found(
                    "deleted",
                    lane,
                    prev_seq + 1,
                    None,
                    f"lane {lane} skips from seq {prev_seq} to seq {seq}: the link(s) at {gap} "
                    "and their entries were deleted",
                )
            elif prev_hash != prev:
                self.found(
                    "forged",
                    lane,
                    seq,
                    entry_id,
                    f"{at} does not carry the hash of seq {prev_seq}: a link was inserted, "
                    "replaced or moved here",
                )
            elif prev_at is not None and linked_at < prev_at:
                self.found(
                    "out_of_order",
                    lane,
                    seq,
                    entry_id,
                    f"{at} was linked at {linked_at.isoformat()}, before seq {prev_seq} "
                    f"({prev_at.isoformat()}): inserted out of order",
                )
            try:
                linked = link_hash(prev_hash, lane, seq, linked_at, digest)
            except (ValueError, OverflowError) as exc:
                self.found("invalid", lane, seq, entry_id, f"{at} cannot be verified: {exc}")
                linked = recorded
            if linked != recorded:
                self.found(
                    "forged",
                    lane,
                    seq,
                    entry_id,
                    f"{at} has a hash its contents do not give: the link was forged or altered",
                )
            if after:
                pass  # an entry after the period is not this walk's
            elif not exists:
                self.found(
                    "deleted",
                    lane,
                    seq,
                    entry_id,
                    f"entry #{entry_id}, linked at lane {lane} seq {seq}, is missing: it was "
                    "deleted",
                )
            elif row[9] is None:
                self.found(
                    "invalid",
                    lane,
                    seq,
                    entry_id,
                    f"entry #{entry_id} (lane {lane} seq {seq}) cannot be verified: its "
                    f"occurred_at {occurred_text!r} is not a moment the chain's form can "
                    "hold (infinite, or beyond the years 1-9999)",
                )
            else:
                entry = {"id": entry_id, **dict(zip(_COLUMNS, row[9:], strict=True))}
                try:
                    rebuilt: bytes | None = entry_hash(entry)
                except (ValueError, OverflowError, TypeError) as exc:
                    rebuilt = None
                    self.found(
                        "invalid",
                        lane,
                        seq,
                        entry_id,
                        f"entry #{entry_id} (lane {lane} seq {seq}) cannot be verified: {exc}",
                    )
                if rebuilt is not None and rebuilt != digest:
                    self.found(
                        "edited",
                        lane,
                        seq,
                        entry_id,
                        f"entry #{entry_id} (lane {lane} seq {seq}) is not the entry that was "
                        "linked there: a field was changed, or it was swapped with another",
                    )
            prev_seq, prev, prev_at = seq, recorded, linked_at
            end = (seq, recorded)
        return end

    def check_lanes(self) -> None:
        """Links outside the 16 lanes (the table's check switched off): never part of the
        chain, never counted in a head."""
        rows = self.conn.execute(
            """SELECT lane, seq, entry_id FROM ops.audit_chain WHERE lane NOT BETWEEN 0 AND 15
                 ORDER BY lane, seq LIMIT %s""",
            [PROBLEMS_KEPT],
        ).fetchall()
        for lane, seq, entry_id in rows:
            self.found(
                "forged",
                lane,
                seq,
                entry_id,
                f"lane {lane} seq {seq} (entry #{entry_id}) is in no lane of the chain (0-15): "
                "the link was written around it",
            )

    def check_heads(self, ends: dict[int, tuple[int, bytes]]) -> None:
        """Each lane ends where its head row says."""
        rows = self.conn.execute("SELECT lane, seq, hash FROM ops.audit_chain_head").fetchall()
        heads = {int(r[0]): (int(r[1]), bytes(r[2])) for r in rows}
        for lane in sorted(set(heads) | set(ends)):
            end_seq = ends[lane][0] if lane in ends else 0
            if lane not in heads:
                self.found("truncated", lane, None, None, f"lane {lane}'s head row is missing")
                continue
            seq, digest = heads[lane]
            if not 0 <= lane < LANES:
                self.found(
                    "forged",
                    lane,
                    None,
                    None,
                    f"a head row names lane {lane}, which is not one of the chain's (0-15)",
                )
            elif seq > end_seq:
                self.found(
                    "truncated",
                    lane,
                    end_seq + 1,
                    None,
                    f"lane {lane} ends at seq {end_seq} but its head records seq {seq}: the "
                    f"newest {seq - end_seq} link(s) and their entries were deleted",
                )
            elif seq < end_seq or (seq and digest != ends[lane][1]):
                self.found(
                    "forged",
                    lane,
                    seq,
                    None,
                    f"lane {lane}'s head records seq {seq}, which is not its last link (seq "
                    f"{end_seq}): links were appended or changed around the chain",
                )

    def check_anchor(self, anchor: Head) -> None:
        """A head seen earlier (published outside the database) is still in the chain."""
        links: dict[int, tuple[int, bytes]] = {}
        for lane, seq in enumerate(anchor.seqs):
            if seq == 0:
                continue
            row = self.conn.execute(
                "SELECT hash FROM ops.audit_chain WHERE lane = %s AND seq = %s", [lane, seq]
            ).fetchone()
            if row is None:
                newest = self.conn.execute(
                    "SELECT coalesce(max(seq), 0) FROM ops.audit_chain WHERE lane = %s", [lane]
                ).fetchone()
                end = int(newest[0]) if newest else 0
                if end < seq:
                    self.found(
                        "truncated",
                        lane,
                        end + 1,
                        None,
                        f"lane {lane} ends at seq {end}, but seq {seq} was in the head "
                        f"recorded earlier ({anchor.text()[:40]}...): the newest links were "
                        "deleted",
                    )
                return  # a gap inside a lane: the walk names it
            links[lane] = (seq, bytes(row[0]))
        if combined(links) != anchor.sha256:
            self.found(
                "rewritten",
                None,
                None,
                None,
                f"the links of the head recorded earlier ({anchor.text()[:40]}...) no longer "
                "have the hashes they had: the chain up to there was rewritten",
            )

    def check_unlinked(self) -> None:
        """Entries that no link names (written with the chain's trigger switched off)."""
        rows = self.conn.execute(
            """SELECT e.id FROM ops.audit_entries e
                WHERE NOT EXISTS (SELECT 1 FROM ops.audit_chain c
                                   WHERE c.entry_id = e.id AND c.lane BETWEEN 0 AND 15)
                  AND (%(since)s::timestamptz IS NULL OR e.occurred_at >= %(since)s)
                  AND (%(until)s::timestamptz IS NULL OR e.occurred_at < %(until)s)
                ORDER BY e.id LIMIT %(limit)s""",
            {"since": self.since, "until": self.until, "limit": PROBLEMS_KEPT},
        ).fetchall()
        for (entry_id,) in rows:
            self.found(
                "unlinked",
                None,
                None,
                entry_id,
                f"entry #{entry_id} is in no link of the chain: it was inserted around it",
            )
