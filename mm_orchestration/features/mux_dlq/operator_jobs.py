"""The job console's doors to the dead-letter tools (operations.py): `dlq_requeue` and
`dlq_discard`, run by a signed-in person whose name the run carries (`mm/actor`)."""

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from dagster import Failure, OpExecutionContext, job, op
from pydantic import Field

from mm_orchestration.features.mux_dlq.operations import discard, requeue
from mm_orchestration.platform.config_models import OpConfig
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.ledger import ACTOR_TAG
from mm_orchestration.platform.scheduling import JOB_TAG, RUN_LOGS


class RequeueConfig(OpConfig):
    # A plain default (not a factory), so the console's Launchpad shows the field to fill.
    ids: list[int] = Field(default=[], description="Dead-letter ids to requeue")
    all_dead: bool = Field(default=False, description="Requeue every dead letter")


class DiscardConfig(OpConfig):
    id: int = Field(description="The dead letter to discard")
    reason: str = Field(description="Why (kept in the audit log)")


def _actor(context: OpExecutionContext) -> str:
    """The person who launched the run: the console's identity or `mm-jobs`'s user, as the
    run's `mm/actor` tag. Never a field they fill in, and never a default name."""
    actor = context.run.tags.get(ACTOR_TAG)
    if not actor:
        raise Failure(
            description="this run names no person (no mm/actor tag): launch the DLQ tools from "
            "the job console, signed in, or with `mm-jobs dlq`",
            allow_retries=False,
        )
    return actor


@contextmanager
def _as_operator(
    context: OpExecutionContext, portal_db: PortalDatabase
) -> Iterator[tuple[str, psycopg.Connection]]:
    """The person who launched the run, and a connection to act with. A mistyped id or a
    missing reason fails the run at once with that message alone: retrying cannot fix it,
    and a stack trace would only hide it."""
    actor = _actor(context)
    try:
        with portal_db.connection() as conn:
            yield actor, conn
    except (LookupError, ValueError) as exc:
        raise Failure(description=str(exc), allow_retries=False) from None


@op
def requeue_dead_letters(
    context: OpExecutionContext, config: RequeueConfig, portal_db: PortalDatabase
) -> None:
    """Put dead letters back in the queue with their attempts reset."""
    with _as_operator(context, portal_db) as (actor, conn):
        done = requeue(conn, config.ids, actor, config.all_dead, context.run_id)
    context.add_output_metadata({"requeued": len(done), "ids": str(done)})


@op
def discard_dead_letter(
    context: OpExecutionContext, config: DiscardConfig, portal_db: PortalDatabase
) -> None:
    """Close one dead letter for good, with the reason in the audit log."""
    with _as_operator(context, portal_db) as (actor, conn):
        discard(conn, config.id, config.reason, actor, context.run_id)


@job(
    tags={JOB_TAG: "dlq-operations"},
    description="Requeue Mux dead letters (audited).",
    config=RUN_LOGS,
)
def dlq_requeue() -> None:
    requeue_dead_letters()


@job(
    tags={JOB_TAG: "dlq-operations"},
    description="Discard one Mux dead letter (audited).",
)
def dlq_discard() -> None:
    discard_dead_letter()
