"""Benchmark: what the audit log's hash chain costs the audit path (issue 27).

10,000 entries written through `audit.record`, each in its own transaction as the console
writes them, by 8 concurrent writers (processes, each with its own connection), on a
durable server (fsync and synchronous commit on). Floor: the same writers and entries in
the same run on an identical clone whose chain trigger is switched off (the audit path
without the chain: same table, indexes, masking). A lane of the chain is held from a
writer's commit to its end, so the figure that matters is its cost with writers
contending (one lane for all measured 4.3 times the floor here: docs/benchmarks.md).
Target: the median of the rounds' ratios (each round's pair back to back) at most 1.5.
Run: `.venv/bin/python benchmarks/audit_chain.py [--rounds 3] [--entries 10000] [--writers 8]`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import clone, median, report, server, source_database

from mm_orchestration.features.audit_trail import chain
from mm_orchestration.platform import audit
from mm_orchestration.platform.db import connect


def _writer(url: str, writer: int, count: int, start: multiprocessing.synchronize.Event) -> None:
    """One console process: `count` entries, each committed on its own."""
    with connect(url, autocommit=True) as conn:
        start.wait()
        for i in range(count):
            audit.record(
                conn,
                f"person{writer}@agency.example",
                "launch_run",
                "share-link-expiry",
                None,
                {
                    "source": "proxy",
                    "via": "graphql POST",
                    "jobs": ["share_link_expiry"],
                    "variables": {"force": False, "i": i},
                },
                role="operator",
                target="share-link-expiry",
                outcome="allowed",
            )


def write_all(url: str, entries: int, writers: int) -> float:
    """Seconds for `writers` processes to write `entries` between them."""
    context = multiprocessing.get_context("fork")
    start = context.Event()
    share = entries // writers
    processes = [
        context.Process(target=_writer, args=(url, w, share, start)) for w in range(writers)
    ]
    for p in processes:
        p.start()
    time.sleep(1.0)  # every writer connected and waiting
    began = time.perf_counter()
    start.set()
    for p in processes:
        p.join()
    elapsed = time.perf_counter() - began
    if any(p.exitcode != 0 for p in processes):
        raise SystemExit("a writer failed")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--writers", type=int, default=8)
    args = parser.parse_args()
    with server() as pg:
        source = source_database(pg, lambda url: None)
        chained, floors = [], []
        for round_ in range(args.rounds):
            # Alternate which goes first, so neither always meets a warmer server.
            for with_chain in (True, False) if round_ % 2 == 0 else (False, True):
                with clone(pg, source) as url:
                    if not with_chain:
                        with connect(url, autocommit=True) as conn:
                            conn.execute(
                                "ALTER TABLE ops.audit_entries DISABLE TRIGGER audit_entries_link"
                            )
                    seconds = write_all(url, args.entries, args.writers)
                    with connect(url, autocommit=True) as conn:
                        verdict = chain.verify(conn)
                    written = args.entries // args.writers * args.writers
                    if with_chain:
                        assert verdict.ok and verdict.checked == written, verdict.summary()
                        chained.append(seconds)
                    else:
                        floors.append(seconds)
        ours, floor = median(chained), median(floors)
        # Each round's pair runs back to back: on a machine others share, the median of the
        # pairs' ratios follows the chain's cost, not the load that came and went.
        ratio = median([c / f for c, f in zip(chained, floors, strict=True)])
        report(
            f"audit chain: {args.entries:,} entries from {args.writers} concurrent writers "
            "(durable commits)",
            {
                "with the chain (median)": f"{ours:.2f} s ({args.entries / ours:,.0f} entries/s)",
                "without it (median)": f"{floor:.2f} s ({args.entries / floor:,.0f} entries/s)",
                "rounds (with / without)": ", ".join(
                    f"{c:.2f}/{f:.2f}" for c, f in zip(chained, floors, strict=True)
                ),
                "ratio of the medians": f"{ours / floor:.2f}",
                "chain verified": f"{written:,} links",
            },  # fmt: skip
            ratio,
            "<= 1.5",
            ratio <= 1.5,
        )


if __name__ == "__main__":
    main()
