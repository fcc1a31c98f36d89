"""A run's config from a person carries plain values: nothing in it makes the run read the
environment, whichever door it comes through (the console's gate is tested in
test_console_attacks.py; this is the policy itself and the run coordinator behind every
other door)."""

from __future__ import annotations

import dagster as dg
import pytest

from mm_orchestration.platform.run_config import (
    PlainValuesRunCoordinator,
    RunConfigRefused,
    environment_reads,
    for_person,
)

READS = {
    "ops": {
        "a": {"config": {"x": {"env": "DATABASE_URL"}, "y": [1, {"env": "K"}], "z": "env"}},
        "b": {"config": {"settings": {"env": "production", "zone": "UTC"}}},
    }
}


def test_every_read_of_the_environment_is_found_by_its_path():
    assert list(environment_reads(READS)) == ["ops.a.config.x", "ops.a.config.y[1]"]
    assert list(environment_reads({"env": "X"})) == ["(the whole config)"]


def test_a_persons_config_keeps_only_the_blocks_their_role_may_set():
    launchpad = {
        "ops": {"op": {"config": {"force": True}}},
        "resources": {"portal_db": {"config": {"url": {"env": "DATABASE_URL"}}}},
    }
    # Every run's log is JSON lines: the `console` logger is named unless an admin chose.
    logs = {"loggers": {"console": {}}}
    assert for_person(launchpad, admin=False) == {
        "ops": {"op": {"config": {"force": True}}},
        **logs,
    }
    with pytest.raises(RunConfigRefused, match="execution, which only an admin may set"):
        for_person({"execution": {"config": {}}}, admin=False)
    assert for_person({"execution": {"config": {}}}, admin=True) == {
        "execution": {"config": {}},
        **logs,
    }
    mine = {"loggers": {"console": {"config": {"log_level": "DEBUG"}}}}
    assert for_person(mine, admin=True) == mine
    with pytest.raises(RunConfigRefused, match="loggers, which only an admin may set"):
        for_person(mine, admin=False)
    # The default the Launchpad shows filled in is anyone's to send back.
    assert for_person({**logs, "ops": {}}, admin=False) == {**logs, "ops": {}}
    with pytest.raises(RunConfigRefused, match="at ops.a.config.x, ops.a.config.y\\[1\\]"):
        for_person(READS, admin=True)
    with pytest.raises(RunConfigRefused, match="surprise"):
        for_person({"surprise": {}}, admin=True)


@dg.op(config_schema={"note": dg.StringSource})
def noted(context) -> None:  # type: ignore[no-untyped-def]
    context.log.info(context.op_config["note"])


@dg.job
def noted_job() -> None:
    noted()


def test_the_run_coordinator_fails_a_run_that_reads_the_environment_before_it_is_queued(
    monkeypatch,
):
    overrides = {
        "run_coordinator": {
            "module": "mm_orchestration.platform.run_config",
            "class": "PlainValuesRunCoordinator",
        }
    }
    with dg.instance_for_test(overrides=overrides) as instance:
        coordinator = instance.run_coordinator
        assert isinstance(coordinator, PlainValuesRunCoordinator)
        reads = instance.create_run_for_job(
            noted_job, run_config={"ops": {"noted": {"config": {"note": {"env": "HOME"}}}}}
        )
        submitted = coordinator.submit_run(dg.SubmitRunContext(reads, workspace=None))  # type: ignore[arg-type]
        assert submitted.status == dg.DagsterRunStatus.FAILURE
        logs = [e.message for e in instance.all_logs(reads.run_id)]
        assert any(
            "refused before it was queued" in m and "ops.noted.config.note" in m for m in logs
        )
        # A run of plain values is Dagster's queue's, as ever.
        queued = []
        monkeypatch.setattr(
            dg.QueuedRunCoordinator, "submit_run", lambda self, context: queued.append(context)
        )
        plain = instance.create_run_for_job(
            noted_job, run_config={"ops": {"noted": {"config": {"note": "hello"}}}}
        )
        coordinator.submit_run(dg.SubmitRunContext(plain, workspace=None))  # type: ignore[arg-type]
        assert [c.dagster_run.run_id for c in queued] == [plain.run_id]
