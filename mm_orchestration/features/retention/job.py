"""storage-retention: nightly, forget what no one needs and keep what compliance needs.

Dagster run records and their event logs older than `dagster_run_days` (90) are
deleted through Dagster's public instance API (`DagsterInstance.delete_run`), never
with SQL against Dagster's tables. Sent rows of `ops.notification_outbox` and the digest
periods (`ops.digest_periods`) older than 90 days and `ops.job_runs` rows older than 400
days are deleted. `ops.audit_log`,
`ops.residency_reports` and `ops.backup_drills` are compliance evidence and kept.
Each run reports what it removed.
"""

from datetime import UTC, datetime, timedelta

from dagster import Failure, OpExecutionContext, RunsFilter, op
from pydantic import Field

from mm_orchestration.features.digests.moments import LONGEST_LOOK_BACK
from mm_orchestration.platform import inventory
from mm_orchestration.platform.config_models import OpConfig
from mm_orchestration.platform.database import PortalDatabase
from mm_orchestration.platform.ledger import ledgered
from mm_orchestration.platform.scheduling import inventory_job, retry_policy
from mm_orchestration.platform.text import NOT_SHOWN

SPEC = inventory.get("storage-retention")
# The tables the job needs; a missing one stops it before any work, named.
TABLES = ("ops.notification_outbox", "ops.digest_periods", "ops.job_runs")
PAGE = 500


MAX_DAYS = 36500  # a century: a larger number is a typo, and would overflow a date


class RetentionConfig(OpConfig):
    dagster_run_days: float = Field(default=90, description="Keep Dagster runs this long")
    outbox_days: float = Field(default=90, description="Keep sent emails this long")
    job_runs_days: float = Field(default=400, description="Keep the ledger this long")
    force: bool = Field(default=False, description="Run even if tonight already succeeded")

    def check(self) -> None:
        """Fail at once, without retries, naming the field, never its value (a range in
        pydantic would be checked inside the op's retry policy and retried like a passing
        fault)."""
        for name in ("dagster_run_days", "outbox_days", "job_runs_days"):
            value = getattr(self, name)
            if not 0 < value <= MAX_DAYS:
                raise Failure(
                    description=f"config {name} is out of range; accepted: more than 0 and "
                    f"at most {MAX_DAYS} days; {NOT_SHOWN}",
                    allow_retries=False,
                )


@op(retry_policy=retry_policy(SPEC))
def prune_dagster_runs(context: OpExecutionContext, config: RetentionConfig) -> int:
    """Delete finished Dagster runs older than the cut-off, with their event logs."""
    config.check()
    cutoff = datetime.now(UTC) - timedelta(days=config.dagster_run_days)
    deleted = 0
    while True:
        records = context.instance.get_run_records(
            filters=RunsFilter(created_before=cutoff), limit=PAGE
        )
        doomed = [
            r.dagster_run.run_id
            for r in records
            if r.dagster_run.is_finished and r.dagster_run.run_id != context.run_id
        ]
        for run_id in doomed:
            context.instance.delete_run(run_id)
        deleted += len(doomed)
        if len(records) < PAGE or not doomed:
            break
    context.add_output_metadata({"dagster_runs_deleted": deleted, "cutoff": cutoff.isoformat()})
    return deleted


@op(retry_policy=retry_policy(SPEC), tags={"kind": "postgres"})
def prune_ops_tables(
    context: OpExecutionContext,
    dagster_runs: int,
    config: RetentionConfig,
    portal_db: PortalDatabase,
) -> None:
    """Delete old sent emails and ledger rows; never the compliance evidence."""
    config.check()
    with ledgered(context, portal_db, SPEC.name, TABLES, config.force) as run:
        if run.skipped:
            return
        with portal_db.connection() as conn:
            outbox = conn.execute(
                """DELETE FROM ops.notification_outbox
                    WHERE status = 'sent' AND sent_at < now() - make_interval(days => %s)""",
                [config.outbox_days],
            ).rowcount
            # A digest period is needed for a week and a day (its "since" and its one per
            # period); it goes with the sent emails it accounts for, never sooner.
            periods = conn.execute(
                """DELETE FROM ops.digest_periods
                    WHERE settled_at < now() - make_interval(days => greatest(%s, %s))""",
                [config.outbox_days, LONGEST_LOOK_BACK.days + 1],
            ).rowcount
            ledger = conn.execute(
                """DELETE FROM ops.job_runs
                    WHERE started_at < now() - make_interval(days => %s) AND id <> %s""",
                [config.job_runs_days, run.ledger_id],
            ).rowcount
        run.rows_affected = outbox + periods + ledger
        run.details = {
            "dagster_runs": dagster_runs,
            "outbox": outbox,
            "digest_periods": periods,
            "job_runs": ledger,
        }
    context.add_output_metadata(
        {
            "dagster_runs_deleted": dagster_runs,
            "outbox_rows_deleted": outbox,
            "digest_periods_deleted": periods,
            "job_runs_deleted": ledger,
        }
    )


@inventory_job(SPEC, __doc__)
def storage_retention() -> None:
    prune_ops_tables(prune_dagster_runs())
