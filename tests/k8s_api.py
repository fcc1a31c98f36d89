"""A Kubernetes API server stand-in on loopback, and a node that runs its Jobs' pods here.

No cluster can run on these machines (no kubelet, no container engine), so the tests stand
in for the two parts that cannot: the API server, which stores what clients send and
answers their reads, and the node, which runs a pod. Everything Dagster's `K8sRunLauncher`
and run monitoring ask of a cluster goes through the real `kubernetes` client over HTTP to
`KubeApi`: a Job created (`POST .../jobs`), its status read, its pods listed, their logs
and events read, a Job deleted. Every object posted is checked against the Kubernetes API's
own schema for KUBERNETES_VERSION (`kubernetes-validate`, strict: no unknown field) and
refused with a 422, as a server with strict field validation refuses it.

`Node` plays the kubelet for each Job: it makes the Job's pod from its template, resolves
the container's environment as the kubelet does (`env` values, `valueFrom` Secret and
ConfigMap keys, `envFrom` whole ConfigMaps and Secrets; a missing one leaves the pod in
CreateContainerConfigError, never started), writes ConfigMap and Secret volumes where they
are mounted, and runs the container's command as a local process under a folder that plays
the container's filesystem (absolute paths in the environment and mounts are placed under
it), with the image's ENV below the pod's own. The process's output is the pod's log; its
exit ends the pod and the Job (Complete or Failed, backoffLimit 0 as dagster-k8s writes
it). `Node.kill` ends a pod as the cluster would end one (the OOM killer, an eviction):
SIGKILL, exit 137, the Job failed.

What it does not do, and only a cluster would: pull the image (the node runs this checkout's
environment), enforce the pod's security context, its CPU and memory (they are validated,
not applied), schedule onto nodes, or network it apart from the host.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import jsonschema
import kubernetes
import kubernetes_validate
import yaml

from tests.background_server import serve_in_background

# The Kubernetes API the chart's launcher speaks: dagster-k8s 0.29.27 requires the
# `kubernetes` client below 37, whose release 36 is generated from Kubernetes 1.36's API.
KUBERNETES_VERSION = "1.36"
assert kubernetes.__version__.split(".")[0] == KUBERNETES_VERSION.split(".")[1], (
    "the kubernetes client moved: set KUBERNETES_VERSION to the API it speaks"
)

# (group path, resource) -> kind
_KINDS = {
    ("apis/batch/v1", "jobs"): ("Job", "batch/v1"),
    ("api/v1", "pods"): ("Pod", "v1"),
    ("api/v1", "configmaps"): ("ConfigMap", "v1"),
    ("api/v1", "secrets"): ("Secret", "v1"),
    ("api/v1", "events"): ("Event", "v1"),
}
_PATH = re.compile(
    r"^/(?P<group>api/v1|apis/batch/v1)/namespaces/(?P<ns>[^/]+)/(?P<resource>[a-z]+)"
    r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>status|log))?$"
)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# A resource quantity as the API server parses it (apimachinery's resource.Quantity): the
# published schema types it as int-or-string, so the schema alone takes "250 millicores".
_QUANTITY = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?")


def validate(manifest: dict[str, Any]) -> None:
    """Raise kubernetes_validate's ValidationError when `manifest` is not a valid object of
    its kind for KUBERNETES_VERSION (strict: an unknown field is an error), or when a
    container's requests or limits hold something that is not a quantity."""
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    spec = manifest.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") if manifest["kind"] == "Job" else spec
    for i, container in enumerate((pod or {}).get("containers") or []):
        resources = container.get("resources") or {}
        for bound in ("requests", "limits"):
            for name, value in (resources.get(bound) or {}).items():
                if not _QUANTITY.fullmatch(str(value)):
                    where = ["containers", i, "resources", bound, name]
                    error = jsonschema.ValidationError(f"{value!r} is not a quantity", path=where)
                    raise kubernetes_validate.ValidationError(error, KUBERNETES_VERSION)


@dataclass
class Posted:
    """One object a client sent, as it arrived, and whether it was valid."""

    kind: str
    name: str
    body: dict[str, Any]
    error: str | None


class KubeApi:
    """The API server stand-in: one store of objects by (kind, namespace, name)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.logs: dict[tuple[str, str], bytes] = {}
        self.posted: list[Posted] = []
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.RLock()
        self.created = threading.Condition(self.lock)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = serve_in_background(self._server)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig naming this server, as `kubectl` and the client read it."""
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
                    "users": [{"name": "launcher", "user": {"token": "stand-in-token"}}],
                    "contexts": [
                        {"name": "stand-in", "context": {"cluster": "stand-in", "user": "launcher"}}
                    ],
                    "current-context": "stand-in",
                }
            )
        )
        return path

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # The store, for the node and the test.

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            found = self.objects.get((kind, namespace, name))
            return copy.deepcopy(found) if found else None

    def items(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        with self.lock:
            return [
                copy.deepcopy(o)
                for (k, ns, _), o in self.objects.items()
                if (k, ns) == (kind, namespace)
            ]

    def put(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta.setdefault("namespace", "default")
        with self.lock:
            meta["resourceVersion"] = str(len(self.posted) + len(self.objects) + 1)
            self.objects[manifest["kind"], meta["namespace"], meta["name"]] = manifest
            self.created.notify_all()
        return manifest

    def update(self, kind: str, namespace: str, name: str, **status: Any) -> None:
        with self.lock:
            found = self.objects.get((kind, namespace, name))
            if found is not None:
                found.setdefault("status", {}).update(status)

    def append_log(self, namespace: str, pod: str, chunk: bytes) -> None:
        with self.lock:
            self.logs[namespace, pod] = self.logs.get((namespace, pod), b"") + chunk

    def log(self, namespace: str, pod: str) -> str:
        with self.lock:
            return self.logs.get((namespace, pod), b"").decode("utf-8", "replace")

    def jobs_posted(self) -> list[Posted]:
        with self.lock:
            return [p for p in self.posted if p.kind == "Job"]

    def wait_for(self, predicate: Any, timeout: float, what: str) -> Any:
        """The first truthy `predicate()` within `timeout` seconds, else AssertionError."""
        deadline = time.monotonic() + timeout
        with self.created:
            while True:
                found = predicate()
                if found:
                    return found
                left = deadline - time.monotonic()
                assert left > 0, f"timed out waiting for {what}"
                self.created.wait(min(left, 0.2))


def _selected(obj: dict[str, Any], query: dict[str, list[str]]) -> bool:
    """labelSelector (`a=b,c=d`) and fieldSelector (`metadata.name=x`), equality only:
    the forms the launcher sends."""
    labels = obj["metadata"].get("labels") or {}
    for clause in ",".join(query.get("labelSelector", [])).split(","):
        if clause:
            key, _, value = clause.partition("=")
            if labels.get(key) != value:
                return False
    for clause in ",".join(query.get("fieldSelector", [])).split(","):
        if clause:
            path, _, value = clause.partition("=")
            node: Any = obj
            for part in path.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if str(node) != value:
                return False
    return True


def _handler(api: KubeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _status(self, code: int, reason: str, message: str) -> None:
            self._send(
                code,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure" if code >= 400 else "Success",
                    "message": message,
                    "reason": reason,
                    "code": code,
                },
            )

        def _route(self) -> tuple[Any, dict[str, list[str]]] | None:
            url = urlparse(self.path)
            match = _PATH.match(url.path)
            with api.lock:
                api.requests.append((self.command, url.path))
            if not match or (match["group"], match["resource"]) not in _KINDS:
                self._status(404, "NotFound", f"the stand-in does not serve {url.path}")
                return None
            return match, parse_qs(url.query)

        def do_GET(self) -> None:
            routed = self._route()
            if routed is None:
                return
            match, query = routed
            kind, api_version = _KINDS[match["group"], match["resource"]]
            ns, name = match["ns"], match["name"]
            if name is None:
                items = [o for o in api.items(kind, ns) if _selected(o, query)]
                listing = {"apiVersion": api_version, "kind": f"{kind}List"}
                self._send(200, {**listing, "metadata": {"resourceVersion": "1"}, "items": items})
                return
            if match["sub"] == "log":
                if api.get("Pod", ns, name) is None:
                    self._status(404, "NotFound", f'pods "{name}" not found')
                    return
                text = api.log(ns, name)
                tail = query.get("tailLines")
                if tail:
                    text = "".join(text.splitlines(keepends=True)[-int(tail[0]) :])
                self._send(200, text.encode(), "text/plain")
                return
            found = api.get(kind, ns, name)
            if found is None:
                self._status(404, "NotFound", f'{match["resource"]} "{name}" not found')
                return
            self._send(200, found)

        def do_POST(self) -> None:
            routed = self._route()
            if routed is None:
                return
            match, _ = routed
            kind, api_version = _KINDS[match["group"], match["resource"]]
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            body.setdefault("apiVersion", api_version)
            body.setdefault("kind", kind)
            body.setdefault("metadata", {})["namespace"] = match["ns"]
            name = body["metadata"].get("name", "")
            error = None
            try:
                validate(body)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                error = f"{kind} {name} is invalid: {path}: {exc.message}"
            with api.lock:
                api.posted.append(Posted(kind, name, copy.deepcopy(body), error))
            if error:
                self._status(422, "Invalid", error)
                return
            if api.get(kind, match["ns"], name) is not None:
                self._status(409, "AlreadyExists", f'{match["resource"]} "{name}" already exists')
                return
            self._send(201, api.put(body))

        def do_DELETE(self) -> None:
            routed = self._route()
            if routed is None:
                return
            match, _ = routed
            kind, _ = _KINDS[match["group"], match["resource"]]
            with api.lock:
                gone = api.objects.pop((kind, match["ns"], match["name"] or ""), None)
                api.created.notify_all()
            if gone is None:
                self._status(404, "NotFound", f'{match["resource"]} "{match["name"]}" not found')
                return
            self._status(200, "Deleted", f"{kind} {match['name']} deleted")

    return Handler


@dataclass
class PodRun:
    """A pod the node ran (or is running)."""

    namespace: str
    job: str
    pod: str
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    killed: str | None = None


class Node:
    """The kubelet of one node: runs each Job's pod as a local process (see the module)."""

    def __init__(
        self, api: KubeApi, root: Path, path: str, image_env: dict[str, str] | None = None
    ) -> None:
        self.api = api
        self.root = root  # each pod's filesystem is a folder under it
        self.path = path  # the image's PATH: where `dagster` and `mm-jobs` are
        # The image's own ENV, paths as this machine has them (the image is this checkout),
        # which the container runtime sets below the pod's env.
        self.image_env = image_env or {}
        self.pods: dict[str, PodRun] = {}  # by Job name
        self.problems: list[str] = []
        self._seen: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for run in self.pods.values():
            if run.process and run.process.poll() is None:
                os.killpg(run.process.pid, signal.SIGKILL)
                run.process.wait()

    def kill(self, job: str, reason: str = "OOMKilled") -> None:
        """End the Job's pod as the cluster would (the OOM killer, an eviction)."""
        run = self.pods[job]
        run.killed = reason
        assert run.process is not None
        os.killpg(run.process.pid, signal.SIGKILL)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self.api.lock:
                new = [
                    (ns, name)
                    for (kind, ns, name) in self.api.objects
                    if kind == "Job" and (ns, name) not in self._seen
                ]
                self._seen.update(new)
            for ns, name in new:
                try:
                    self._start(ns, name)
                except Exception as exc:  # the test reads it; the node goes on
                    self.problems.append(f"{name}: {type(exc).__name__}: {exc}")
            time.sleep(0.1)

    def _start(self, ns: str, job_name: str) -> None:
        job = self.api.get("Job", ns, job_name)
        assert job is not None
        template = job["spec"]["template"]
        pod_name = f"{job_name}-{secrets.token_hex(3)[:5]}"
        labels = {
            **(template.get("metadata", {}).get("labels") or {}),
            "job-name": job_name,
            "batch.kubernetes.io/job-name": job_name,
            "controller-uid": job["metadata"]["uid"],
        }
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": ns,
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": job_name,
                        "uid": job["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": {**copy.deepcopy(template["spec"]), "nodeName": "stand-in-node"},
            "status": {"phase": "Pending"},
        }
        validate(pod)  # what the Job controller makes of the template is a valid pod
        self.api.put(pod)
        self.api.update("Job", ns, job_name, active=1, startTime=_now())
        run = PodRun(ns, job_name, pod_name)
        self.pods[job_name] = run
        (container,) = pod["spec"]["containers"]
        try:
            run.env = self._environment(ns, pod_name, container)
        except LookupError as exc:
            waiting = {"reason": "CreateContainerConfigError", "message": str(exc)}
            self._container_status(run, container, {"waiting": waiting}, phase="Pending")
            return
        fs = self.root / pod_name
        self._mount(ns, pod["spec"], container, fs)
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        workdir = fs / container["workingDir"].lstrip("/") if container.get("workingDir") else fs
        workdir.mkdir(parents=True, exist_ok=True)
        run.env = {k: self._in_pod(fs, v) for k, v in run.env.items()}
        run.env = {**self.image_env, **run.env}
        Path(run.env["HOME"]).mkdir(parents=True, exist_ok=True)
        executable = shutil.which(argv[0], path=self.path)
        assert executable, f"the image has no {argv[0]}"
        run.process = subprocess.Popen(
            [executable, *argv[1:]],
            env=run.env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        running = {"running": {"startedAt": _now()}}
        self._container_status(run, container, running, phase="Running", ready=True)
        threading.Thread(target=self._follow, args=(run, container), daemon=True).start()

    def _follow(self, run: PodRun, container: dict[str, Any]) -> None:
        assert run.process is not None and run.process.stdout is not None
        for line in iter(run.process.stdout.readline, b""):
            self.api.append_log(run.namespace, run.pod, line)
        code = run.process.wait()
        if run.killed:
            code = 137
        reason = run.killed or ("Completed" if code == 0 else "Error")
        ended = {"terminated": {"exitCode": code, "reason": reason, "finishedAt": _now()}}
        phase = "Succeeded" if code == 0 else "Failed"
        self._container_status(run, container, ended, phase=phase)
        condition = {
            "type": "Complete" if code == 0 else "Failed",
            "status": "True",
            "lastTransitionTime": _now(),
            **({} if code == 0 else {"reason": "BackoffLimitExceeded"}),
        }
        counts = {"succeeded": 1} if code == 0 else {"failed": 1}
        self.api.update(
            "Job",
            run.namespace,
            run.job,
            active=0,
            completionTime=_now() if code == 0 else None,
            conditions=[condition],
            **counts,
        )

    def _container_status(
        self,
        run: PodRun,
        container: dict[str, Any],
        state: dict[str, Any],
        phase: str,
        ready: bool = False,
    ) -> None:
        status = {
            "name": container["name"],
            "image": container["image"],
            "imageID": f"{container['image']}@sha256:{'0' * 64}",
            "ready": ready,
            "restartCount": 0,
            "state": state,
        }
        self.api.update("Pod", run.namespace, run.pod, phase=phase, containerStatuses=[status])

    def _environment(self, ns: str, pod: str, container: dict[str, Any]) -> dict[str, str]:
        """The container's environment as the kubelet builds it; LookupError naming a
        ConfigMap, Secret or key that is missing (CreateContainerConfigError)."""
        env = {
            "PATH": self.path,
            "HOSTNAME": pod,
            "HOME": "/home/dagster",
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": self.api.url.rsplit(":", 1)[1],
        }
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for key in ("configMapRef", "secretRef"):
                if key in source:
                    data = self._data(ns, key, source[key]["name"], source[key].get("optional"))
                    env.update({prefix + k: v for k, v in data.items()})
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = var["value"]
            elif "valueFrom" in var:
                source = var["valueFrom"]
                for key in ("configMapKeyRef", "secretKeyRef"):
                    if key in source:
                        ref = source[key]
                        data = self._data(ns, key, ref["name"], ref.get("optional"))
                        if ref["key"] not in data:
                            if ref.get("optional"):
                                continue
                            raise LookupError(f"couldn't find key {ref['key']} in {ref['name']}")
                        env[var["name"]] = data[ref["key"]]
                if "fieldRef" in source:
                    field_path = source["fieldRef"]["fieldPath"]
                    env[var["name"]] = {"metadata.name": pod, "metadata.namespace": ns}[field_path]
        return env

    def _data(self, ns: str, key: str, name: str, optional: bool | None) -> dict[str, str]:
        kind = "Secret" if key.startswith("secret") else "ConfigMap"
        found = self.api.get(kind, ns, name)
        if found is None:
            if optional:
                return {}
            raise LookupError(f'{kind.lower()} "{name}" not found')
        if kind == "Secret":
            decoded = {
                k: base64.b64decode(v).decode() for k, v in (found.get("data") or {}).items()
            }
            return {**decoded, **(found.get("stringData") or {})}
        return dict(found.get("data") or {})

    def _mount(self, ns: str, spec: dict[str, Any], container: dict[str, Any], fs: Path) -> None:
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            target = fs / mount["mountPath"].lstrip("/")
            if "emptyDir" in volume:
                target.mkdir(parents=True, exist_ok=True)
                continue
            key = "configMap" if "configMap" in volume else "secret"
            name = volume[key].get("name") or volume[key].get("secretName")
            data = self._data(ns, key, name, volume[key].get("optional"))
            if mount.get("subPath"):
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(data[mount["subPath"]])
                continue
            target.mkdir(parents=True, exist_ok=True)
            for item_key, value in data.items():
                (target / item_key).write_text(value)

    def _in_pod(self, fs: Path, value: str) -> str:
        """A path in the container's filesystem, as a path on this machine."""
        if value.startswith("/") and ":" not in value and not value.startswith(str(self.root)):
            return str(fs / value.lstrip("/"))
        return value


def secret(name: str, values: dict[str, str]) -> dict[str, Any]:
    """A Secret manifest as `kubectl create secret generic --from-literal` makes it."""
    data = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "Opaque",
        "data": data,
    }
