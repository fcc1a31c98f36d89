"""How many refusals of one person the console audits one by one.

Every refused request writes an audit entry, so a person (or a script with their cookie)
could fill the audit log with refusals and push real entries out of a day's download.
Each person (or, for a request naming nobody, the address it came from) has a budget of
refusals per window; the refusal that spends it is audited together with one entry saying
the limit was reached, and until the window ends that person's further refusals are
answered 429 without an entry each. The budget holds per console process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

# A person clicking through the UI is refused a handful of times at most; a script is not.
REFUSALS_PER_WINDOW = 30
WINDOW_SECONDS = 60.0

Verdict = Literal["audit", "audit_and_limit", "suppress"]


@dataclass
class _Window:
    started: float
    refusals: int = 0


@dataclass
class RefusalLimiter:
    """Counts refusals per key (a person, or `anonymous@<address>`) in fixed windows."""

    limit: int = REFUSALS_PER_WINDOW
    window: float = WINDOW_SECONDS
    clock: Callable[[], float] = time.monotonic
    _windows: dict[str, _Window] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, key: str) -> Verdict:
        """One more refusal of `key`: `audit` it, `audit_and_limit` (this one spends the
        budget: audit it and the limit), or `suppress` (over budget: answer 429, no entry)."""
        now = self.clock()
        with self._lock:
            if len(self._windows) > 10_000:  # forget finished windows, not growing for ever
                self._windows = {
                    k: w for k, w in self._windows.items() if now - w.started < self.window
                }
            current = self._windows.get(key)
            if current is None or now - current.started >= self.window:
                current = self._windows[key] = _Window(now)
            current.refusals += 1
            if current.refusals < self.limit:
                return "audit"
            return "audit_and_limit" if current.refusals == self.limit else "suppress"

    def retry_after(self, key: str) -> int:
        """Whole seconds until `key`'s window ends (at least 1)."""
        with self._lock:
            current = self._windows.get(key)
            left = self.window - (self.clock() - current.started) if current else 0
        return max(1, int(left + 0.999))
