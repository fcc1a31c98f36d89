"""A run on Kubernetes, end to end, on this machine (issue 26).

The real `dagster-daemon` with deploy/dagster.k8s.yaml (the K8s run launcher, our queued
coordinator, run monitoring, run retries) and the real code server with the Helm values'
settings; a Kubernetes API stand-in on loopback and a node that runs each Job's pod here
(tests/k8s_api.py). Two runs go through the queue: share-link expiry's pod runs the job
against the portal database and the run succeeds; mux-webhook-retry's pod is killed while
its step waits on a row lock (the OOM killer, an eviction), its Job is failed, run
monitoring sees it and fails the run, and run retries launch it again in a new pod, which
succeeds. Every object posted (the operator's ConfigMaps and Secret, the launcher's Jobs,
the pods the node makes of them) is valid for the Kubernetes API the launcher speaks, and
each Job asks for its job's pod size from the inventory and mounts the settings' Secret.
The daemon runs as the Helm chart runs it (its fixed command, no `--log-format`), and every
process runs with the image's ENV: every line the code server, the daemon and each pod
wrote, from start to stop, is one JSON object (issue 26).
"""

from __future__ import annotations

import copy
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from mm_orchestration.local.embedded_pg import free_port
from mm_orchestration.local.topology import PROJECT_ROOT, WORKSPACE, commands
from mm_orchestration.platform import inventory
from mm_orchestration.platform.db import connect
from tests import factories as f
from tests.json_lines import json_lines
from tests.k8s_api import KubeApi, Node, secret

DEPLOY = PROJECT_ROOT / "deploy"
IMAGE = "registry.example.com/motion-mavericks/mm-orchestration:k8s-test"
NAMESPACE = "mm-jobs"
BIN = str(Path(sys.executable).parent)


def _image_env() -> dict[str, str]:
    """The image's ENV PYTHONPATH (deploy/Dockerfile), where this checkout has that folder:
    every process of the image, run pods included, starts with the JSON-log hook."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    (path,) = re.findall(r"^ENV PYTHONPATH=(\S+)\s*$", dockerfile, re.MULTILINE)
    return {"PYTHONPATH": path.replace("/opt/mm-orchestration", str(PROJECT_ROOT), 1)}


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, 15)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


def _values() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())


def _settings_config_map() -> dict[str, Any]:
    """The Helm values' ConfigMap of settings, with the one value the operator must fill in."""
    (config_map,) = [
        m
        for m in _values()["extraManifests"]
        if (m["kind"], m["metadata"]["name"]) == ("ConfigMap", "mm-orchestration-config")
    ]
    config_map = copy.deepcopy(config_map)
    config_map["data"]["NEON_PROJECT_ID"] = "autumn-disk-484331"
    return config_map


def _instance_yaml(kubeconfig: Path) -> dict[str, Any]:
    """deploy/dagster.k8s.yaml as the daemon loads it here: the kubeconfig of the stand-in in
    place of the in-cluster service account, and the queue and run monitoring polled every
    second (5 s and 60 s shipped) so that the test waits seconds, not minutes."""
    config = yaml.safe_load((DEPLOY / "dagster.k8s.yaml").read_text())
    launcher = config["run_launcher"]["config"]
    launcher["load_incluster_config"] = False
    launcher["kubeconfig_file"] = str(kubeconfig)
    config["run_coordinator"]["config"] = {"dequeue_interval_seconds": 1}
    config["run_monitoring"]["poll_interval_seconds"] = 1
    return config


def _wait_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the code server exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError("the code server never listened")


def _wait_run(
    instance: DagsterInstance, run_id: str, statuses: set[DagsterRunStatus], timeout: float
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.status in statuses:
            return run
        time.sleep(0.2)
    run = instance.get_run_by_id(run_id)
    raise AssertionError(f"run {run_id[:8]} is {run.status if run else 'missing'}")


def _container(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return container


def test_every_jobs_manifest_is_valid_for_the_api_with_its_size_and_secrets(
    dagster_storage: str, tmp_path: Path
) -> None:
    """Each inventory job's Job, as the launcher of deploy/dagster.k8s.yaml builds it from
    the job's tags, is valid for the Kubernetes API and asks for the inventory's size."""
    from dagster import DagsterRun
    from dagster_k8s.job import construct_dagster_k8s_job
    from kubernetes.client import ApiClient

    from mm_orchestration.definitions import build_definitions
    from mm_orchestration.platform.settings import Settings
    from tests.k8s_api import validate

    api = KubeApi()
    try:
        home = tmp_path / "home"
        home.mkdir()
        config = _instance_yaml(api.kubeconfig(tmp_path / "kubeconfig"))
        (home / "dagster.yaml").write_text(yaml.safe_dump(config))
        defs = build_definitions(Settings.from_env({"MM_RUN_LAUNCHER": "k8s"}))
        with DagsterInstance.from_config(str(home)) as instance:
            launcher = instance.run_launcher
            for spec in inventory.INVENTORY:
                tags = defs.resolve_job_def(spec.dagster_name).tags
                run = DagsterRun(job_name=spec.dagster_name, run_id=str(uuid.uuid4()), tags=tags)
                context = launcher.get_container_context_for_run(run)
                job = construct_dagster_k8s_job(
                    job_config=context.get_k8s_job_config(job_image=IMAGE, run_launcher=launcher),
                    args=["dagster", "api", "execute_run", "{}"],
                    job_name=f"dagster-run-{run.run_id}",
                    user_defined_k8s_config=context.run_k8s_config,
                )
                manifest = ApiClient().sanitize_for_serialization(job)
                validate(manifest)
                container = _container(manifest)
                assert container["resources"]["requests"] == {
                    "cpu": spec.resources.cpu,
                    "memory": spec.resources.memory,
                }, spec.name
                assert {"secretRef": {"name": "mm-orchestration-secrets"}} in container["envFrom"]
    finally:
        api.close()


def test_the_stand_in_refuses_what_a_strict_api_server_refuses(tmp_path: Path) -> None:
    """A Job with an unknown field or a size that is no quantity is refused (422) through the
    real client, as the API server with strict field validation refuses it."""
    import kubernetes

    api = KubeApi()
    try:
        client = kubernetes.config.new_client_from_config(
            config_file=str(api.kubeconfig(tmp_path / "kubeconfig"))
        )
        batch = kubernetes.client.BatchV1Api(client)

        def job(container: dict[str, Any]) -> dict[str, Any]:
            pod = {"containers": [{"name": "run", "image": IMAGE, **container}]}
            pod["restartPolicy"] = "Never"
            return {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": f"j-{uuid.uuid4().hex[:8]}"},
                "spec": {"template": {"spec": pod}},
            }

        for bad in ({"resources": {"requests": {"cpu": "250 millicores"}}}, {"secrityContext": {}}):
            with pytest.raises(kubernetes.client.ApiException) as refused:
                batch.create_namespaced_job(NAMESPACE, job(bad))
            assert refused.value.status == 422
        batch.create_namespaced_job(NAMESPACE, job({"resources": {"requests": {"cpu": "250m"}}}))
        assert [p.error is None for p in api.jobs_posted()] == [False, False, True]
    finally:
        api.close()


@pytest.mark.stack
def test_a_queued_run_goes_through_kubernetes_and_a_lost_pod_fails_its_run(
    database_url: str, dagster_storage: str, conn: Any, tmp_path: Path
) -> None:
    import kubernetes

    started = time.monotonic()
    api = KubeApi()
    node = Node(
        api, tmp_path / "node", path=f"{BIN}:/usr/local/bin:/usr/bin:/bin", image_env=_image_env()
    )
    processes: list[subprocess.Popen[bytes]] = []
    outputs: list[Any] = []
    blocker = None
    try:
        # The operator's part (docs/operations.md): the Secret, the settings' ConfigMap of
        # the Helm values and the instance's ConfigMap, created through the API as kubectl
        # would, each validated by the stand-in.
        kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
        client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        core = kubernetes.client.CoreV1Api(client)
        secrets = {
            "DATABASE_URL": database_url,
            "DAGSTER_DATABASE_URL": os.environ["DAGSTER_DATABASE_URL"],
            "NEON_API_KEY": "neon-key-of-the-test",
        }
        instance_config = _instance_yaml(kubeconfig)
        instance_map = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "mm-orchestration-instance"},
            "data": {"dagster.yaml": yaml.safe_dump(instance_config)},
        }
        config_map = _settings_config_map()
        for manifest in (secret("mm-orchestration-secrets", secrets), config_map, instance_map):
            create = (
                core.create_namespaced_secret
                if manifest["kind"] == "Secret"
                else core.create_namespaced_config_map
            )
            create(NAMESPACE, manifest)

        # The daemon's and the code server's environment, as the chart gives their pods
        # (both run our image).
        home = tmp_path / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text(yaml.safe_dump(instance_config))
        grpc_port = free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DATABASE_", "DAGSTER_", "MM_", "SENDGRID_", "SENTRY_", "NEON_"))
        }
        env |= _image_env() | config_map["data"] | secrets
        env |= {
            "DAGSTER_HOME": str(home),
            "MM_DATA_DIR": str(tmp_path / "code-server-data"),
            "MM_CODE_SERVER_HOST": "127.0.0.1",
            "MM_CODE_SERVER_PORT": str(grpc_port),
        }
        code_server = commands("127.0.0.1", grpc_port, 0)["code-server"]
        # The chart's fixed command (its template's daemonCommand): no --log-format.
        daemon = [f"{BIN}/dagster-daemon", "run", "-w", str(WORKSPACE)]
        logs = tmp_path / "logs"
        logs.mkdir()
        for name, argv, extra in (
            ("code-server", code_server, {"DAGSTER_CURRENT_IMAGE": IMAGE}),
            ("daemon", daemon, {}),
        ):
            out = open(logs / f"{name}.log", "wb")  # closed at the end
            outputs.append(out)
            processes.append(
                subprocess.Popen(
                    argv,
                    env=env | extra,
                    cwd=home,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        _wait_port(grpc_port, processes[0], timeout=60)

        # A share link due to expire (its run succeeds) and the DLQ's rows locked against
        # claims (mux-webhook-retry's step waits, so its pod can be killed mid-run).
        tenant = f.tenant(conn)
        link = f.share_link(
            conn,
            tenant,
            f.asset(conn, tenant),
            f.user(conn, tenant, email="jack@bondi.example"),
            datetime.now(UTC) - timedelta(minutes=3),
        )
        blocker = connect(database_url)
        blocker.execute("LOCK TABLE portal.mux_webhook_dlq IN EXCLUSIVE MODE")

        runs = {"share-link-expiry": str(uuid.uuid4()), "mux-webhook-retry": str(uuid.uuid4())}
        launches = [
            subprocess.run(
                [
                    f"{BIN}/dagster",
                    "job",
                    "launch",
                    "-w",
                    str(WORKSPACE),
                    "-j",
                    inventory.get(job).dagster_name,
                    "--run-id",
                    run_id,
                ],
                env=env,
                cwd=home,
                capture_output=True,
                text=True,
                timeout=120,
            )  # fmt: skip
            for job, run_id in runs.items()
        ]
        for launched in launches:
            assert launched.returncode == 0, launched.stderr[-3000:]

        with DagsterInstance.from_config(str(home)) as instance:
            # The queue hands the run to the launcher, the node runs its pod, it succeeds.
            done = _wait_run(
                instance,
                runs["share-link-expiry"],
                {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE},
                timeout=90,
            )
            pod = node.pods.get(f"dagster-run-{runs['share-link-expiry']}")
            log = api.log(NAMESPACE, pod.pod) if pod else "(no pod)"
            assert done.status == DagsterRunStatus.SUCCESS, log[-3000:]
            status = conn.execute(
                "SELECT status FROM portal.share_links WHERE id = %s", [link]
            ).fetchone()
            assert status == ("expired",)
            ledger = conn.execute(
                "SELECT status FROM ops.job_runs WHERE run_id = %s", [done.run_id]
            ).fetchone()
            assert ledger == ("succeeded",)
            assert pod is not None and pod.env["DATABASE_URL"] == database_url
            # The creator's email, written where the pod's MM_DATA_DIR is (no SendGrid key).
            mail = list(Path(pod.env["MM_DATA_DIR"]).glob("mail/*.eml"))
            assert len(mail) == 1 and "jack@bondi.example" in mail[0].read_text()
            api.wait_for(
                lambda: (
                    (api.get("Job", NAMESPACE, pod.job) or {}).get("status", {}).get("succeeded")
                ),
                timeout=30,
                what="the Job to complete",
            )

            # The other pod is lost mid-step: run monitoring fails the run.
            lost = runs["mux-webhook-retry"]
            _wait_run(instance, lost, {DagsterRunStatus.STARTED}, timeout=60)
            node.kill(f"dagster-run-{lost}", reason="OOMKilled")
            failed = _wait_run(
                instance, lost, {DagsterRunStatus.FAILURE, DagsterRunStatus.SUCCESS}, timeout=30
            )
            assert failed.status == DagsterRunStatus.FAILURE
            failure = instance.get_records_for_run(
                lost, of_type=DagsterEventType.RUN_FAILURE
            ).records
            message = failure[-1].event_log_entry.dagster_event.message
            assert "K8s job" in message and "has no active pods" in message, message
            blocker.close()
            blocker = None

            # Run retries launch it again (a lost worker is not an op failure), in a new pod.
            retry = api.wait_for(
                lambda: instance.get_runs(filters=RunsFilter(tags={"dagster/parent_run_id": lost})),
                timeout=60,
                what="the retry of the lost run",
            )[0]
            retried = _wait_run(
                instance,
                retry.run_id,
                {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE},
                timeout=90,
            )
            assert retried.status == DagsterRunStatus.SUCCESS

        # Every object that reached the API was valid, and every Job as the deployment says.
        assert node.problems == []
        refused = [p.error for p in api.posted if p.error]
        assert refused == []
        jobs = {p.name: p.body for p in api.jobs_posted()}
        assert {f"dagster-run-{r}" for r in [*runs.values(), retry.run_id]} <= set(jobs)
        for name, manifest in jobs.items():
            container = _container(manifest)
            assert container["image"] == IMAGE, name
            assert container["args"][:3] == ["dagster", "api", "execute_run"], name
            sources = {
                (k, s[k]["name"])
                for s in container["envFrom"]
                for k in ("configMapRef", "secretRef")
                if k in s
            }
            assert sources == {
                ("configMapRef", "mm-orchestration-config"),
                ("secretRef", "mm-orchestration-secrets"),
            }, name
            spec = manifest["spec"]["template"]["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True, name
            assert manifest["spec"]["backoffLimit"] == 0, name
            job_name = manifest["metadata"]["labels"]["dagster/job"]
            try:
                size = inventory.get(job_name).resources
            except inventory.UnknownJobError:
                size = inventory.PodResources()  # support jobs (send_alert): the default
            assert container["resources"] == {
                "requests": {"cpu": size.cpu, "memory": size.memory},
                "limits": {"memory": size.memory_limit},
            }, name
        sized = {_container(jobs[f"dagster-run-{runs['mux-webhook-retry']}"])["resources"][
            "requests"]["cpu"]}  # fmt: skip
        assert sized == {"500m"}  # the inventory's size, not the launcher's default

        # Every line each process wrote, from start to stop, is one JSON object: the code
        # server's, the daemon's (the chart's command, no --log-format) and each pod's.
        _stop(processes)
        for out in outputs:
            out.flush()
        server_lines = {
            name: json_lines((logs / f"{name}.log").read_text(), f"{name}.log")
            for name in ("code-server", "daemon")
        }
        assert any(line["logger"] == "dagster.daemon" for line in server_lines["daemon"])
        pod_lines: dict[str, list[dict[str, Any]]] = {}
        for run in node.pods.values():
            api.wait_for(
                lambda run=run: (
                    (api.get("Job", NAMESPACE, run.job) or {}).get("status", {}).get("conditions")
                ),
                timeout=30,
                what=f"{run.job} to end",
            )
            pod_log = api.log(NAMESPACE, run.pod)
            (logs / f"{run.pod}.log").write_text(pod_log)  # kept beside the others
            pod_lines[run.job] = json_lines(pod_log, f"pod {run.pod}")
        # The seed's fields on a run's own lines.
        expiry = runs["share-link-expiry"]
        (succeeded,) = [
            line for line in pod_lines[f"dagster-run-{expiry}"] if line["event"] == "job.succeeded"
        ]
        assert (succeeded["jobName"], succeeded["runId"]) == ("share-link-expiry", expiry)
        assert succeeded["status"] == "succeeded" and isinstance(succeeded["durationMs"], int)
        # Each run's start and end, from its pod, whoever launched it (here `dagster job
        # launch`, the queue and the launcher; a run retry): at info, with the seed's fields.
        for job, run_id in (("share-link-expiry", expiry), ("mux-webhook-retry", retry.run_id)):
            lines = pod_lines[f"dagster-run-{run_id}"]
            (start,) = [line for line in lines if line.get("dagsterEvent") == "PIPELINE_START"]
            (end,) = [line for line in lines if line.get("dagsterEvent") == "PIPELINE_SUCCESS"]
            assert (start["status"], end["status"]) == ("started", "succeeded"), (start, end)
            for line in (start, end):
                assert (line["level"], line["jobName"], line["runId"]) == ("info", job, run_id)
            assert isinstance(end["durationMs"], int) and "durationMs" not in start, end
        seconds = time.monotonic() - started
        print(f"kubernetes run test: {seconds:.1f} s, {len(jobs)} Jobs posted")
    finally:
        if blocker is not None:
            blocker.close()
        _stop(processes)
        node.stop()
        api.close()
        for out in outputs:
            out.close()
