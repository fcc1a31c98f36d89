"""Delivery through a dynamic template, many people per request (the notification
digest): requests sized by SendGrid's limits together, and a refused request taken apart
until only the rows SendGrid refuses fail."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from mm_orchestration.joblog import log_event
from mm_orchestration.outbox.delivery import Delivery
from mm_orchestration.outbox.report import DeliveryReport
from mm_orchestration.outbox.rows import FinishedRuns, Row, page
from mm_orchestration.resources.database import PortalDatabase
from mm_orchestration.resources.mailer import (
    MAX_PERSONALIZATIONS,
    MAX_RECIPIENTS,
    Mailer,
    SendError,
    TemplateRecipient,
    plan_requests,
    request_bytes,
)

# Rows read per page: several requests' worth, so that only the last request of a page
# may be short (requests per 1,000 people stay near 1).
PAGES_OF_TEMPLATE_REQUESTS = 10


class _Item(NamedTuple):
    row: Row
    part: str  # the personalization as JSON
    size: int
    people: int


def deliver_pending_templated(
    db: PortalDatabase,
    mailer: Mailer,
    kind: str,
    template_id: str,
    personalize: Callable[[str, dict[str, Any]], TemplateRecipient] | None,
    run_id: str,
    batch_size: int = MAX_PERSONALIZATIONS,
    finished: FinishedRuns | None = None,
) -> DeliveryReport:
    """Deliver pending messages of `kind` through a dynamic template, as few requests as
    SendGrid's limits allow (at most `batch_size` people each).

    `personalize(key, row)` builds each person's template data; None means the stored
    payload *is* the template data, sent as the database wrote it (never decoded and
    encoded again in Python: at 100,000 people that is most of the delivery's time).

    A request SendGrid accepted is marked sent at once, so a later request's failure never
    sends it again. A 400 naming `personalizations.N` fails that row alone and the rest go
    again; a 400 naming nothing, or a 413, halves the request, each half on its own, until
    every refused row is alone (with Delivery's probe after a streak of lone refusals). A
    refusal every request would get (`Delivery.settle`) or SendGrid busy stops delivery,
    the rest pending.
    """
    delivery = Delivery(db, [kind], run_id, finished)
    envelope = mailer.template_envelope(template_id)
    split = _Split(delivery, mailer, template_id)
    page_size = batch_size * PAGES_OF_TEMPLATE_REQUESTS
    after = 0
    while rows := page(db, [kind], after, page_size, raw=personalize is None):
        after = rows[-1].id
        items = [
            item
            for row in delivery.screen(rows)
            if (item := _item(delivery, mailer, personalize, row)) is not None
        ]
        plans = plan_requests(
            [(i.people, i.size) for i in items],
            request_bytes(envelope, []),
            max_personalizations=min(batch_size, MAX_PERSONALIZATIONS),
            max_recipients=MAX_RECIPIENTS,
            max_bytes=mailer.max_request_bytes,
        )
        try:
            for plan in plans:
                if not split.deliver([items[i] for i in plan]):
                    return delivery.report  # stopped: what is left stays pending
        finally:
            delivery.flush()
    return delivery.report


def _item(
    delivery: Delivery,
    mailer: Mailer,
    personalize: Callable[[str, dict[str, Any]], TemplateRecipient] | None,
    row: Row,
) -> _Item | None:
    """The row's personalization, serialised once (measured here, sent as is); None when
    it cannot be built (the row fails alone)."""
    try:
        if personalize is None:
            text = mailer.raw_personalization(row.key, row.recipient, row.payload)
            people = 1
        else:
            part = mailer.personalization(
                personalize(row.key, {"recipient": row.recipient, **row.payload})
            )
            text = json.dumps(part)
            people = sum(len(part.get(k) or []) for k in ("to", "cc", "bcc"))
    except Exception as exc:  # one row's bad data costs that row alone
        delivery.fail_unbuilt(row, exc)
        return None
    return _Item(row, text, len(text.encode()), people)


class _Split:
    """Sends one planned request, and takes apart a refused one (module docstring)."""

    def __init__(self, delivery: Delivery, mailer: Mailer, template_id: str) -> None:
        self.delivery, self.mailer, self.template_id = delivery, mailer, template_id

    def deliver(self, items: list[_Item]) -> bool:
        """Send `items` (pending rows); False when delivery must stop for this attempt."""
        # Depth first: the first half is taken apart before the second is tried, so a
        # refusal that is the request's own is recognised after a few requests, not after
        # one per row.
        work: deque[list[_Item]] = deque([items])
        while work:
            group = work.popleft()
            claimed = self.delivery.claim([i.row.id for i in group])
            group = [i for i in group if i.row.id in claimed]  # others: another deliverer's
            if not group:
                continue
            try:
                message_id = self.mailer.send_template(self.template_id, [i.part for i in group])
            except SendError as exc:
                if not self._refused(group, exc, work):
                    return False
                continue
            self.delivery.accepted_request([i.row.id for i in group], message_id)
            log_event(
                "email.batch_sent",
                kind=group[0].row.kind,
                size=len(group),
                runId=self.delivery.run_id,
            )
        return True

    def _refused(self, group: list[_Item], exc: SendError, work: deque[list[_Item]]) -> bool:
        """Settle a request SendGrid did not take; False when delivery must stop."""
        going_on = self.delivery.settle([i.row for i in group], exc)
        if going_on is not None:
            return going_on
        named = {n: m for n, m in exc.named_personalizations().items() if n < len(group)}
        if exc.status == 400 and named:
            rest = [item for n, item in enumerate(group) if n not in named]
            self.delivery.fail(
                [(group[n].row, f"SendGrid 400: {m}") for n, m in named.items()],
                back_to_pending=[i.row.id for i in rest],
            )
            if rest:
                work.appendleft(rest)  # the others, again, in a new request
            return True
        if self.delivery.probing:  # a probe, refused whole (Delivery's refusal streak)
            self.delivery.probe_refused([i.row for i in group], str(exc))
            return False
        if len(group) > 1:  # a 400 naming no row, or a 413: the culprit is in here
            half = len(group) // 2
            self.delivery.release([i.row for i in group], str(exc))  # until their own request
            work.extendleft([group[half:], group[:half]])
            return True
        if exc.status == 413:  # too big alone: this row's own, whatever else happens
            self.delivery.fail([(group[0].row, str(exc))])
        else:
            self.delivery.refused_alone(group[0].row, str(exc))
        return True
