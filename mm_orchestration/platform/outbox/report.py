"""What one delivery call did, counted as it happens; `outcome.conclude` turns it into the
op's metadata and outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DeliveryReport:
    """Counts of emails by what happened to them in one delivery call (one op attempt)."""

    sent: int = 0
    failed: int = 0  # refused by SendGrid, or the message could not be built
    invalid: int = 0  # malformed or empty address: never sent
    unknown: int = 0  # the answer was lost: may have been sent
    suppressed: int = 0
    deferred: int = 0  # SendGrid could not take them now: back to pending
    held: int = 0  # SendGrid refused every request alike (key, sender): back to pending
    abandoned: int = 0  # left 'sending' by a deliverer that died: outcome unknown
    in_flight_elsewhere: int = 0  # 'sending' for another deliverer that is still running
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    unknown_keys: list[str] = field(default_factory=list)
    stopped: str = ""  # why delivery stopped early (the rest stays pending)
    # How: "busy" (SendGrid cannot take it now: the op's retry goes again), "refused"
    # (SendGrid refuses every request alike: no retry fixes it), "lost" (SendGrid keeps
    # losing answers: retrying within the run would only strand more rows as unknown).
    stopped_kind: str = ""

    @property
    def stopped_for_good(self) -> bool:
        return self.stopped_kind in ("refused", "lost")

    def as_metadata(self) -> dict[str, Any]:
        return {
            "emails_sent": self.sent,
            "emails_failed": self.failed,
            "emails_invalid_address": self.invalid,
            "emails_suppressed": self.suppressed,
            "emails_deferred": self.deferred,
            "emails_held_after_refusal": self.held,
            # The answer was lost, or the deliverer died mid-send: never resent, an operator
            # checks SendGrid's activity log for the key.
            "emails_outcome_unknown": self.unknown + self.abandoned,
            "emails_in_flight_elsewhere": self.in_flight_elsewhere,
            "sendgrid_requests": self.requests,
        }
