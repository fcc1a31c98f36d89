"""The next page of pending rows, read and judged on a thread of its own while this page
is sent.

A page read early is only read and judged (screening.judge, the requests planned): its
failures, claims and marks are still made by the delivering thread, one request at a
time (`delivery`), so reading ahead changes nothing a crash can do.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from mm_orchestration.outbox.rows import Row

T = TypeVar("T")


def read_ahead(
    read: Callable[[int], list[Row]], prepare: Callable[[list[Row]], T]
) -> Generator[T, None, None]:
    """Each page `read(after)` returns (rows in id order; the next page starts after the
    last id) made ready by `prepare(rows)`, the next one read and prepared on a thread
    while the caller works on this one; `prepare` must touch nothing (no writes). Ends at
    the first empty page; an error is raised where its page is taken. Close it
    (`contextlib.closing`) when stopping early: the read in flight is awaited, so its
    connection is back in the pool."""

    def step(after: int) -> tuple[int, T] | None:
        rows = read(after)
        return (rows[-1].id, prepare(rows)) if rows else None

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-read") as reader:
        current = step(0)
        while current is not None:
            last, ready = current
            upcoming = reader.submit(step, last)
            try:
                yield ready
            except GeneratorExit:
                upcoming.cancel()  # not started: never read; reading: awaited on the way out
                raise
            current = upcoming.result()
