"""The deployment files stay true to the code: the Kubernetes instance config resolves with
the pinned dagster-k8s and gives every job its pod size, the systemd units pass
`systemd-analyze verify`, and the image, the Helm values and the units all run the code
server, daemon and webserver the same way `mm-jobs prod-local` does."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import DagsterInstance, DagsterRun

from mm_orchestration.definitions import build_definitions
from mm_orchestration.local.topology import LOCATION, PROJECT_ROOT, commands
from mm_orchestration.platform import inventory
from mm_orchestration.platform.settings import Settings, SettingsError
from tests.debian import needs

DEPLOY = PROJECT_ROOT / "deploy"
SHARED_SECTIONS = ("run_coordinator", "concurrency", "run_retries", "retention", "python_logs")


def _code_server_args() -> list[str]:
    """What follows `dagster api grpc` for the code server, minus where it listens."""
    args = commands("127.0.0.1", 4266, 3000)["code-server"][3:]
    return args[: args.index("--host")]


def _throwaway_kubeconfig(path: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "nobody", "user": {"token": "not-a-real-token"}}],
                "contexts": [{"name": "none", "context": {"cluster": "none", "user": "nobody"}}],
                "current-context": "none",
            }
        )
    )
    return path


@pytest.fixture
def k8s_instance(dagster_storage: str, tmp_path: Path) -> Any:
    """deploy/dagster.k8s.yaml as a pod would load it, with a throwaway kubeconfig in place
    of the in-cluster service account and the test server in place of Neon."""
    config = yaml.safe_load((DEPLOY / "dagster.k8s.yaml").read_text())
    launcher = config["run_launcher"]["config"]
    launcher["load_incluster_config"] = False
    launcher["kubeconfig_file"] = str(_throwaway_kubeconfig(tmp_path / "kubeconfig"))
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    with DagsterInstance.from_config(str(home)) as instance:
        yield instance


def test_k8s_instance_config_resolves_launcher_and_storage(k8s_instance: Any) -> None:
    from dagster_k8s import K8sRunLauncher
    from dagster_postgres import PostgresRunStorage

    launcher = k8s_instance.run_launcher
    assert isinstance(launcher, K8sRunLauncher)
    assert launcher.job_namespace == "mm-jobs"
    assert launcher.env_config_maps == ["mm-orchestration-config"]
    assert launcher.env_secrets == ["mm-orchestration-secrets"]
    assert isinstance(k8s_instance.run_storage, PostgresRunStorage)
    assert list(k8s_instance.get_runs()) == []  # the storage answers, migrated
    assert type(k8s_instance.run_coordinator).__name__ == "PlainValuesRunCoordinator"


def test_every_job_gets_its_pod_size_from_the_inventory(k8s_instance: Any) -> None:
    from dagster_k8s.job import construct_dagster_k8s_job

    launcher = k8s_instance.run_launcher
    defs = build_definitions(Settings.from_env({"MM_RUN_LAUNCHER": "k8s"}))
    for spec in inventory.INVENTORY:
        tags = defs.resolve_job_def(spec.dagster_name).tags
        run = DagsterRun(job_name=spec.dagster_name, run_id=str(uuid.uuid4()), tags=tags)
        context = launcher.get_container_context_for_run(run)
        job = construct_dagster_k8s_job(
            job_config=context.get_k8s_job_config(job_image="mm:test", run_launcher=launcher),
            args=["dagster", "api", "execute_run"],
            job_name=f"dagster-run-{run.run_id[:8]}",
            user_defined_k8s_config=context.run_k8s_config,
        )
        pod = job.spec.template.spec
        (container,) = pod.containers
        assert container.resources.requests == {
            "cpu": spec.resources.cpu,
            "memory": spec.resources.memory,
        }, spec.name
        assert container.resources.limits == {"memory": spec.resources.memory_limit}
        assert pod.security_context.run_as_user == 10001
        assert container.security_context.allow_privilege_escalation is False
        sources = {e.config_map_ref.name for e in container.env_from if e.config_map_ref}
        sources |= {e.secret_ref.name for e in container.env_from if e.secret_ref}
        assert {"mm-orchestration-config", "mm-orchestration-secrets"} <= sources
        assert job.spec.ttl_seconds_after_finished == 86400


def test_pod_sizes_are_tagged_only_where_the_k8s_launcher_is() -> None:
    local = build_definitions(Settings.from_env({}))
    k8s = build_definitions(Settings.from_env({"MM_RUN_LAUNCHER": "k8s"}))
    for spec in inventory.INVENTORY:
        assert "dagster-k8s/config" not in local.resolve_job_def(spec.dagster_name).tags
        tagged = k8s.resolve_job_def(spec.dagster_name)
        assert "dagster-k8s/config" in tagged.tags
        assert (
            tagged.executor_def.name == local.resolve_job_def(spec.dagster_name).executor_def.name
        )


def test_k8s_instance_keeps_the_limits_of_dagster_yaml() -> None:
    local = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    k8s = yaml.safe_load((DEPLOY / "dagster.k8s.yaml").read_text())
    for section in SHARED_SECTIONS:
        assert k8s[section] == local[section], section
    assert k8s["run_monitoring"]["enabled"] and k8s["storage"].keys() == local["storage"].keys()


def test_helm_values_match_the_code_and_hold_no_secret() -> None:
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == _code_server_args()
    assert deployment["podSecurityContext"]["runAsNonRoot"] is True
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False
    assert values["generatePostgresqlPasswordSecret"] is False
    assert "postgresqlPassword" not in values["postgresql"]
    local = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())["concurrency"]["runs"]
    daemon = values["dagsterDaemon"]
    coordinator = daemon["runCoordinator"]["config"]["customRunCoordinator"]
    assert (coordinator["module"], coordinator["class"]) == (
        "mm_orchestration.platform.run_config",
        "PlainValuesRunCoordinator",
    )
    assert coordinator["config"]["max_concurrent_runs"] == local["max_concurrent_runs"]
    assert coordinator["config"]["tag_concurrency_limits"] == local["tag_concurrency_limits"]
    # The daemon imports our coordinator: it runs our image.
    assert daemon["image"]["repository"] == deployment["image"]["repository"]
    from dagster._config import process_config, resolve_to_config_type

    from mm_orchestration.platform.run_config import PlainValuesRunCoordinator

    schema = resolve_to_config_type(PlainValuesRunCoordinator.config_type())
    assert process_config(schema, coordinator["config"]).success  # its own config

    manifests = {(m["kind"], m["metadata"]["name"]): m for m in values["extraManifests"]}
    config_map = manifests["ConfigMap", "mm-orchestration-config"]
    from mm_orchestration.platform.settings import Settings

    read = set(Settings.variable_names())
    secrets = {
        "DATABASE_URL",
        "DATABASE_DIRECT_URL",
        "SENDGRID_API_KEY",
        "SENTRY_DSN",
        "MUX_WEBHOOK_SECRET",
        "NEON_API_KEY",
    }
    assert set(config_map["data"]) <= read, set(config_map["data"]) - read
    assert not set(config_map["data"]) & secrets
    text = (DEPLOY / "helm" / "values.yaml").read_text()
    for name in secrets:  # each secret named where the operator creates it
        assert name in text, name
    # The project id is the operator's to fill in: the shipped placeholder fails the load.
    with pytest.raises(SettingsError, match="^NEON_PROJECT_ID is not a Neon project id"):
        Settings.from_env(config_map["data"] | {"NEON_API_KEY": "x"})
    operator = {"NEON_API_KEY": "x", "NEON_PROJECT_ID": "autumn-disk-484331"}
    settings = Settings.from_env(config_map["data"] | operator)
    assert settings.env == "production" and settings.drill_method == "neon"


def test_helm_runs_the_console_behind_its_proxy_not_the_bare_webserver(tmp_path: Path) -> None:
    """The chart's own webserver has no sign-in: it is scaled to nothing, and the console
    runs the command prod-local runs, on 127.0.0.1 behind oauth2-proxy in its pod."""
    from mm_orchestration.console.access import ConsoleAccess

    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    assert values["dagsterWebserver"]["replicaCount"] == 0
    manifests = {(m["kind"], m["metadata"]["name"]): m for m in values["extraManifests"]}
    pod = manifests["Deployment", "mm-console"]["spec"]["template"]["spec"]
    console, proxy = pod["containers"]
    expected = commands("127.0.0.1", 4266, 3000)["webserver"]
    assert console["command"][0] == Path(expected[0]).name
    tail = [a if "/" not in a else Path(a).name for a in expected[1:]]
    assert [a if "/" not in a else Path(a).name for a in console["command"][1:]] == tail
    alpha = _oauth2_proxy_alpha_config(manifests, proxy)
    assert [u["uri"] for u in alpha["upstreamConfig"]["upstreams"]] == ["http://127.0.0.1:3000"]
    assert alpha["server"]["bindAddress"] == "0.0.0.0:4180"
    assert manifests["Service", "mm-console"]["spec"]["ports"][0]["targetPort"] == 4180
    data = manifests["ConfigMap", "mm-console-config"]["data"]
    roles = tmp_path / "roles.yaml"
    roles.write_text(data["roles.yaml"])
    secret = {"MM_CONSOLE_PROXY_SECRET": "0" * 64}  # the Secret's, in the pod
    access = ConsoleAccess.from_env(data | secret | {"MM_CONSOLE_ROLES_FILE": str(roles)})
    assert access.mode == "proxy" and [str(n) for n in access.trusted_proxies] == ["127.0.0.1/32"]
    assert access.role_of("someone@motionmavericks.com.au") == "viewer"
    assert access.public_url == "https://jobs.motionmavericks.com.au"


def _oauth2_proxy_alpha_config(manifests: dict[Any, Any], proxy: dict[str, Any]) -> Any:
    """The alpha configuration file the oauth2-proxy container is started with, read from
    the ConfigMap mounted where its --alpha-config flag points."""
    (flag,) = [a for a in proxy["args"] if a.startswith("--alpha-config=")]
    path = Path(flag.split("=", 1)[1])
    (mount,) = [m for m in proxy["volumeMounts"] if path.is_relative_to(m["mountPath"])]
    pod = manifests["Deployment", "mm-console"]["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    config_map = manifests["ConfigMap", volume["configMap"]["name"]]
    return yaml.safe_load(config_map["data"][str(path.relative_to(mount["mountPath"]))])


def test_helm_oauth2_proxy_is_patched_and_proves_itself_to_the_console() -> None:
    """oauth2-proxy 7.15.2 or later (GHSA-vjrc-mh2v-45x6, GHSA-7x63-xv5r-3p2x), in its
    alpha configuration's shape of v7.14.0 on (header sources nested): it injects the person
    from the email claim and the proxy secret from its environment, and the same Secret's
    key reaches both containers, never a ConfigMap or the file."""
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    manifests = {(m["kind"], m["metadata"]["name"]): m for m in values["extraManifests"]}
    pod = manifests["Deployment", "mm-console"]["spec"]["template"]["spec"]
    console, proxy = pod["containers"]
    image, _, tag = proxy["image"].rpartition(":")
    assert image == "quay.io/oauth2-proxy/oauth2-proxy"
    version = tuple(int(part) for part in re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", tag).groups())
    assert version >= (7, 15, 2), tag

    alpha = _oauth2_proxy_alpha_config(manifests, proxy)
    injected = {h["name"]: h["values"] for h in alpha["injectRequestHeaders"]}
    header = manifests["ConfigMap", "mm-console-config"]["data"]["MM_CONSOLE_IDENTITY_HEADER"]
    assert injected[header] == [{"claimSource": {"claim": "email"}}]
    assert injected["X-MM-Proxy-Secret"] == [
        {"secretSource": {"fromEnv": "MM_CONSOLE_PROXY_SECRET"}}
    ]
    assert not any(h.get("preserveRequestValue") for h in alpha["injectRequestHeaders"])
    # Flags the alpha configuration replaces are refused beside it by oauth2-proxy.
    replaced = ("--upstream", "--http-address", "--provider", "--client-", "--oidc-", "--pass-")
    assert not [a for a in proxy["args"] if a.startswith(replaced)], proxy["args"]
    (provider,) = alpha["providers"]
    assert provider["oidcConfig"]["audienceClaims"] and provider["oidcConfig"]["emailClaim"]
    # From its environment (the Secret mm-console-oauth2-proxy), not written in the file.
    assert provider["clientSecret"] == "${OAUTH2_PROXY_CLIENT_SECRET}"

    for container in (console, proxy):
        (env,) = [e for e in container["env"] if e["name"] == "MM_CONSOLE_PROXY_SECRET"]
        assert env["valueFrom"]["secretKeyRef"] == {
            "name": "mm-console-proxy-secret",
            "key": "MM_CONSOLE_PROXY_SECRET",
        }, container["name"]
    for name, manifest in manifests.items():
        if name[0] == "ConfigMap":
            assert "MM_CONSOLE_PROXY_SECRET" not in manifest["data"], name
    # Run pods get mm-orchestration-secrets: the proxy secret is not there.
    assert "mm-console-proxy-secret" not in yaml.safe_dump(values["runLauncher"])


def test_image_is_pinned_non_root_and_serves_the_code_location() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base
    (user,) = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert not user.startswith(("0", "root")), user
    cmd = re.search(r"^CMD (\[.*?\])\s*$", dockerfile.replace("\\\n", ""), re.MULTILINE | re.S)
    assert cmd is not None
    args = yaml.safe_load(cmd.group(1))
    assert args[:3] == ["dagster", "api", "grpc"] and args[3:-4] == _code_server_args()
    assert "ENTRYPOINT" not in re.sub(r"#.*", "", dockerfile)  # run pods bring their own args

    lock = {}
    for line in (DEPLOY / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"not pinned: {line}"
            lock[name.lower().replace("_", "-")] = version
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    for requirement in [*project["dependencies"], *project["optional-dependencies"]["k8s"]]:
        name = re.split(r"[\[<>=!~ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in lock, f"{name} is not in deploy/requirements.lock: run make lock"
        if "==" in requirement:
            assert lock[name] == requirement.split("==")[1], f"{name}: run make lock"

    ignore = (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*")] == "*"  # nothing but what is named below
    for source in re.findall(r"^COPY (\S+)", dockerfile, re.MULTILINE):
        assert f"!{source.rstrip('/')}" in ignore or f"!{source}/" in ignore, source


def test_image_carries_the_client_tools_of_the_servers_major_version() -> None:
    """The drill needs pg_dump/pg_restore/psql of the server's major version: the image
    installs those of the build argument PG_MAJOR and points MM_PG_BIN_DIR at them."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    (default,) = re.findall(r"^ARG PG_MAJOR=(\d+)\s*$", dockerfile, re.MULTILINE)
    assert int(default) >= 14
    # Declared inside the build stage (after FROM), or RUN and ENV would not see it.
    assert dockerfile.index("\nFROM ") < dockerfile.index("\nARG PG_MAJOR=")
    runs = re.findall(r"^RUN (.*)$", dockerfile.replace("\\\n", " "), re.MULTILINE)
    (install,) = [run for run in runs if "postgresql-client-${PG_MAJOR}" in run]
    assert 'apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}"' in install
    # The build fails unless the installed pg_dump is of that version.
    assert '/usr/lib/postgresql/${PG_MAJOR}/bin/pg_dump" --version' in install
    assert 'grep -q "(PostgreSQL) ${PG_MAJOR}\\."' in install
    (bin_dir,) = re.findall(r"^ENV MM_PG_BIN_DIR=(\S+)\s*$", dockerfile, re.MULTILINE)
    assert bin_dir == "/usr/lib/postgresql/${PG_MAJOR}/bin"
    assert dockerfile.index("\nARG PG_MAJOR=") < dockerfile.index("\nENV MM_PG_BIN_DIR=")


UNIT_COMMANDS = {
    "mm-code-server.service": "code-server",
    "mm-daemon.service": "daemon",
    "mm-webserver.service": "webserver",
}


def _units() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((DEPLOY / "systemd").iterdir())}


def test_systemd_units_run_the_topology_as_an_unprivileged_user() -> None:
    units = _units()
    for unit, component in UNIT_COMMANDS.items():
        text = units[unit]
        (exec_start,) = re.findall(r"^ExecStart=(.*)$", text, re.MULTILINE)
        expected = commands("127.0.0.1", 4266, 3000)[component]
        tail = [arg if "/" not in arg else Path(arg).name for arg in expected[1:]]
        argv = exec_start.split()
        assert Path(argv[0]).name == Path(expected[0]).name, unit
        assert [a if "/" not in a else Path(a).name for a in argv[1:]] == tail, unit
        assert "User=mm-jobs" in text and "Restart=always" in text, unit
        assert "EnvironmentFile=/etc/mm-orchestration/env" in text, unit
    assert "KillMode=process" in units["mm-code-server.service"]  # runs outlive a redeploy
    # Reports download from the console as the signed-in person: no shared-password server.
    assert "mm-reports.service" not in units
    target = units["mm-orchestration.target"]
    for unit in UNIT_COMMANDS:
        assert unit in target
    env = dict(
        line.split("=", 1)
        for line in units["env.example"].splitlines()
        if line and not line.startswith("#")
    )
    assert "MM_REPORTS_PASSWORD" not in env and env["MM_CONSOLE_TRUSTED_PROXIES"] == "127.0.0.1"
    # The console's public address and proxy secret are there; the secret's placeholder is
    # too short for the console to start with, so it cannot be left as shipped.
    from mm_orchestration.console.access import ConsoleAccess

    console = env | {"MM_CONSOLE_ROLES_FILE": ""}
    with pytest.raises(SettingsError, match="^MM_CONSOLE_PROXY_SECRET must be at least 32"):
        ConsoleAccess.from_env(console)
    access = ConsoleAccess.from_env(console | {"MM_CONSOLE_PROXY_SECRET": "0" * 64})
    assert access.public_url == env["MM_CONSOLE_PUBLIC_URL"] == env["MM_REPORTS_URL"]


def test_every_deployed_process_starts_with_the_json_log_hook() -> None:
    """The image (its code server, the chart's daemon, each run pod, the console) and each
    unit name the startup folder in PYTHONPATH, where the image's copy of the sources and
    the units' checkout put it, so every line they write is JSON (process_log.py)."""
    from mm_orchestration.monitoring.process_log import STARTUP

    installed = f"/opt/mm-orchestration/{STARTUP.relative_to(PROJECT_ROOT).as_posix()}"
    assert (STARTUP / "sitecustomize.py").is_file()
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "\nWORKDIR /opt/mm-orchestration\n" in dockerfile
    assert "\nCOPY mm_orchestration mm_orchestration\n" in dockerfile
    (path,) = re.findall(r"^ENV PYTHONPATH=(\S+)\s*$", dockerfile, re.MULTILINE)
    assert path == installed
    # Set after the install: pip runs before the package it would import is there.
    assert dockerfile.index("pip install --no-deps .") < dockerfile.index("\nENV PYTHONPATH=")
    units = _units()
    for unit in UNIT_COMMANDS:
        assert f"\nEnvironment=PYTHONPATH={installed}\n" in units[unit], unit


@needs(
    "systemd",
    shutil.which("systemd-analyze") is not None,
    "the systemd units checked by systemd-analyze verify",
)
def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # The units name the install location /opt/mm-orchestration; verify checks that each
    # ExecStart exists, so point them at this checkout's environment instead.
    bin_dir = str(Path(sys.executable).parent)
    for name, text in _units().items():
        text = text.replace("/opt/mm-orchestration/.venv/bin", bin_dir)
        (tmp_path / name).write_text(text.replace("/opt/mm-orchestration", str(PROJECT_ROOT)))
    units = sorted(str(p) for p in tmp_path.iterdir() if p.suffix in (".service", ".target"))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    problems = [line for line in result.stderr.splitlines() if str(tmp_path) in line]
    assert problems == [], result.stderr


def test_production_workspace_points_at_the_code_server() -> None:
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    (entry,) = workspace["load_from"]
    assert entry["grpc_server"]["location_name"] == LOCATION
    assert entry["grpc_server"]["port"] == {"env": "MM_CODE_SERVER_PORT"}
