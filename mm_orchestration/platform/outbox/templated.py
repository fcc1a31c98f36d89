"""Delivery through a dynamic template, many people per request (the notification
digest): requests sized by SendGrid's limits together, and a refused request taken apart
until only the rows SendGrid refuses fail."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from mm_orchestration.monitoring.joblog import log_event
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.outbox.delivery import Delivery
from mm_orchestration.platform.outbox.mailer import Mailer, TemplateRecipient
from mm_orchestration.platform.outbox.paging import ReadAhead
from mm_orchestration.platform.outbox.report import DeliveryReport
from mm_orchestration.platform.outbox.request_plan import (
    MAX_PERSONALIZATIONS,
    MAX_RECIPIENTS,
    plan_requests,
    request_bytes,
)
from mm_orchestration.platform.outbox.rows import FinishedRuns, Row, page
from mm_orchestration.platform.outbox.screening import Screened, judge
from mm_orchestration.platform.outbox.sendgrid_client import SendError

# Rows read per page: up to several requests' worth, so that only the last request of a
# page may be short (requests per 1,000 people stay near 1).
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

    `personalize(key, row)` builds each person's template data (on the thread that reads
    ahead, so it must write nothing); None means the stored
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
    split = _Split(delivery, mailer, template_id)
    fixed_bytes = request_bytes(mailer.template_envelope(template_id), [])

    sizes = _page_sizes(batch_size)

    def read(after: int) -> list[Row]:
        return page(db, [kind], after, next(sizes), raw=personalize is None)

    def prepare(rows: list[Row]) -> _Page:
        # On the reading thread: verdicts, personalizations and requests, nothing written.
        screened = judge(rows, delivery.suppressions)
        built = [_item(mailer, personalize, row) for row in screened.sendable]
        items = [b for b in built if isinstance(b, _Item)]
        plans = plan_requests(
            [(i.people, i.size) for i in items],
            fixed_bytes,
            max_personalizations=min(batch_size, MAX_PERSONALIZATIONS),
            max_recipients=MAX_RECIPIENTS,
            max_bytes=mailer.max_request_bytes,
        )
        return _Page(
            screened,
            [b for b in built if isinstance(b, _Unbuilt)],
            [[items[i] for i in plan] for plan in plans],
        )

    try:
        with ReadAhead(read, prepare) as pages:
            for ready in pages:
                delivery.record(ready.screened)
                for row, error in ready.unbuilt:
                    delivery.fail_unbuilt(row, error)
                groups = ready.requests
                for n, group in enumerate(groups):
                    # The next request's claim begins while this one is in flight; past a
                    # page's end, when the next page is judged already.
                    following = (
                        groups[n + 1] if n + 1 < len(groups) else _first(pages.next_if_ready())
                    )
                    if not split.deliver(group, following):
                        return delivery.report  # stopped: what is left stays pending
    finally:
        delivery.close()
    return delivery.report


def _page_sizes(batch_size: int) -> Iterator[int]:
    """One request's worth first, then twice as many each page up to
    PAGES_OF_TEMPLATE_REQUESTS requests' worth: the first request goes at once, and each
    page is read and judged (`read_ahead`) in less time than the page before takes to send."""
    requests = 1
    while True:
        yield batch_size * requests
        requests = min(2 * requests, PAGES_OF_TEMPLATE_REQUESTS)


def _first(page: _Page | None) -> list[_Item] | None:
    return page.requests[0] if page is not None and page.requests else None


class _Unbuilt(NamedTuple):
    row: Row
    error: Exception


class _Page(NamedTuple):
    screened: Screened
    unbuilt: list[_Unbuilt]  # rows whose message could not be built: each fails alone
    requests: list[list[_Item]]  # as SendGrid's limits allow (plan_requests)


def _item(
    mailer: Mailer,
    personalize: Callable[[str, dict[str, Any]], TemplateRecipient] | None,
    row: Row,
) -> _Item | _Unbuilt:
    """The row's personalization, serialised once (measured here, sent as is); _Unbuilt
    when it cannot be built (the row fails alone)."""
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
        return _Unbuilt(row, exc)
    return _Item(row, text, len(text.encode()), people)


class _Split:
    """Sends one planned request, and takes apart a refused one (module docstring)."""

    def __init__(self, delivery: Delivery, mailer: Mailer, template_id: str) -> None:
        self.delivery, self.mailer, self.template_id = delivery, mailer, template_id

    def deliver(self, items: list[_Item], following: list[_Item] | None = None) -> bool:
        """Send `items` (pending rows); False when delivery must stop for this attempt.
        `following`: the next request's, whose claim begins while this one is in flight
        (Delivery.prepare)."""
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
            if following and not work:
                self.delivery.prepare([i.row.id for i in following])
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
