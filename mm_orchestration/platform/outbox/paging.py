"""The next page of pending rows, read and judged on a thread of its own while this page
is sent.

A page read early is only read and judged (screening.judge, the requests planned): its
failures, claims and marks are still made by the delivering thread, one request at a
time (`delivery`), so reading ahead changes nothing a crash can do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

from mm_orchestration.platform.outbox.rows import Row

T = TypeVar("T")


class ReadAhead(Generic[T]):
    """Each page `read(after)` returns (rows in id order; the next page starts after the
    last id), made ready by `prepare(rows)`; the next page is read and prepared on a thread
    while the caller works on this one, so `prepare` must write nothing. Iterating ends at
    the first empty page; an error is raised where its page is taken. Use it as a context
    manager: leaving it early awaits the read in flight, so its connection is back in the
    pool."""

    def __init__(self, read: Callable[[int], list[Row]], prepare: Callable[[list[Row]], T]):
        self._read, self._prepare = read, prepare
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-read")
        self._upcoming: Future[tuple[int, T] | None] | None = None

    def _step(self, after: int) -> tuple[int, T] | None:
        rows = self._read(after)
        return (rows[-1].id, self._prepare(rows)) if rows else None

    def __iter__(self) -> Iterator[T]:
        current = self._step(0)
        while current is not None:
            last, ready = current
            self._upcoming = self._reader.submit(self._step, last)
            yield ready
            current = self._upcoming.result()
        self._upcoming = None

    def next_if_ready(self) -> T | None:
        """The page after the one being worked on, when it is read and prepared already
        (never waits); None when it is not, or when there is none."""
        upcoming = self._upcoming
        if upcoming is None or not upcoming.done() or upcoming.exception() is not None:
            return None
        step = upcoming.result()
        return step[1] if step is not None else None

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._upcoming is not None:
            self._upcoming.cancel()  # not started: never read; reading: awaited below
        self._reader.shutdown(wait=True)
