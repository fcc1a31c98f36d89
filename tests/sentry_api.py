"""A local stand-in for Sentry's organization metric alert rules API
(`/api/0/organizations/<org>/alert-rules/`), behaving as Sentry does for what we send:

- a bearer token is required (401 `{"detail": "Invalid token"}` otherwise), and only the
  organization it belongs to is known (404 for another);
- a rule is refused whole (400, a field's name and what is wrong) when a required field is
  missing, the time window is not one Sentry offers (1, 5, 10, 15, 30, 60, 120, 240 or 1440
  minutes), the trigger has no `critical` label or threshold, or, above-threshold, the
  resolve threshold is not below the critical one;
- the list is paginated (`per_page`, here at most 2 a page) with Sentry's `Link` header
  (`rel="next"; results="true"; cursor="..."`), so a client reading one page misses rules;
- created rules get an id (201), updated ones keep it (200); every request is recorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.background_server import serve_in_background

WINDOWS = (1, 5, 10, 15, 30, 60, 120, 240, 1440)
PAGE = 2


@dataclass
class Seen:
    method: str
    path: str
    body: Any


@dataclass
class SentryApi:
    token: str = "sntrys_test"
    organization: str = "motion-mavericks"
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                api.requests.append(Seen(method, self.path, body))
                if self.headers.get("Authorization") != f"Bearer {api.token}":
                    return self._answer(401, {"detail": "Invalid token"})
                url = urlsplit(self.path)
                parts = [p for p in url.path.split("/") if p]
                prefix = ["api", "0", "organizations"]
                if parts[:3] != prefix or len(parts) < 5 or parts[4] != "alert-rules":
                    return self._answer(404, {"detail": "The requested resource does not exist"})
                if parts[3] != api.organization:
                    return self._answer(404, {"detail": "The requested resource does not exist"})
                rule_id = parts[5] if len(parts) > 5 else None
                if method == "GET" and rule_id is None:
                    return self._list(parse_qs(url.query))
                if method == "POST" and rule_id is None:
                    return self._save(None, body)
                if method == "PUT" and rule_id is not None:
                    if rule_id not in api.rules:
                        return self._answer(
                            404, {"detail": "The requested resource does not exist"}
                        )
                    return self._save(rule_id, body)
                return self._answer(405, {"detail": f'Method "{method}" not allowed.'})

            def _list(self, query: dict[str, list[str]]) -> None:
                ordered = sorted(api.rules.values(), key=lambda r: int(r["id"]))
                start = int((query.get("cursor") or ["0"])[0])
                size = min(int((query.get("per_page") or ["100"])[0]), PAGE)
                page = ordered[start : start + size]
                more = start + size < len(ordered)
                base = f"http://{self.headers.get('Host')}{urlsplit(self.path).path}"
                link = (
                    f'<{base}?per_page={size}&cursor={start + size}>; rel="next"; '
                    f'results="{"true" if more else "false"}"; cursor="{start + size}"'
                )
                self._answer(200, page, {"Link": link})

            def _save(self, rule_id: str | None, body: Any) -> None:
                problem = invalid(body)
                if problem:
                    return self._answer(400, problem)
                new_id = rule_id or str(len(api.rules) + 1)
                saved = {**body, "id": new_id, "status": 0}
                saved["triggers"] = [
                    {**t, "id": f"{new_id}-{i}", "alertRuleId": new_id}
                    for i, t in enumerate(body["triggers"])
                ]
                api.rules[new_id] = saved
                self._answer(200 if rule_id else 201, saved)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = serve_in_background(self._server)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def by_name(self) -> dict[str, dict[str, Any]]:
        return {r["name"]: r for r in self.rules.values()}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def invalid(body: Any) -> dict[str, list[str]] | None:
    """What Sentry says of a rule it refuses, or None."""
    if not isinstance(body, dict):
        return {"nonFieldErrors": ["Invalid data. Expected a dictionary."]}
    for name in ("name", "aggregate", "timeWindow", "triggers", "projects"):
        if body.get(name) in (None, "", []):
            return {name: ["This field is required."]}
    if body["timeWindow"] not in WINDOWS:
        return {"timeWindow": [f"Invalid Time Window: {body['timeWindow']}"]}
    critical = [t for t in body["triggers"] if t.get("label") == "critical"]
    if not critical:
        return {"nonFieldErrors": ["Must have a trigger with label critical"]}
    threshold = critical[0].get("alertThreshold")
    if threshold is None:
        return {"triggers": ["alertThreshold is required"]}
    resolve = body.get("resolveThreshold")
    if body.get("thresholdType", 0) == 0 and resolve is not None and resolve >= threshold:
        return {"nonFieldErrors": ["critical alert threshold must be above resolution threshold"]}
    return None
