"""The job console behind a real nginx, configured by the very block docs/operations.md
gives ("The proxy"), the way a VM runs it in production.

The block is read from the document (so it cannot drift from what is tested); only its
ports, the TLS certificate's paths and the path of the included secret file are changed,
and it is wrapped in the least `http {}` an unprivileged nginx needs. oauth2-proxy is a
stand-in answering `/oauth2/auth` as `--set-xauthrequest` does: 202 with
`X-Auth-Request-Email` for a request whose `_oauth2_proxy` cookie names a signed-in
person, 401 otherwise. `mm-jobs dev` runs the console behind it in proxy mode with its
public address and proxy secret; Debian's Chromium drives it through nginx:

- an operator (a cookie, as after signing in) launches share-link expiry from the
  Launchpad and watches the run reach Success on the run page without reloading it: the
  run's events arrive over the websocket through nginx; the audit names the operator;
- a viewer who adds an identity header of their own is still the viewer (nginx replaces
  it), and their Launch button is disabled;
- a page of another origin on the same host (so the browser sends the cookie) frames the
  console: nginx serves it, the browser refuses to show it;
- straight to the console's own port, bypassing nginx, a request naming a person without
  the proxy secret is refused (401), a DNS-rebinding one (`Host` of another name) too;
- however the proxy rewrites `Host` (the block as written, without `proxy_set_header
  Host`, with `$http_host`), the websocket and a mutation from the console's own page are
  accepted, and a mutation from a page of another origin is refused (403);
- the operator is refused the restore drill (the console says why; audited, no drill);
- an admin switches a schedule off from its page (audited with their name).

The share links the demo data has due expire and their owners are emailed. Screenshots
are saved under test-artifacts/.
"""

from __future__ import annotations

import datetime
import grp
import http.client
import ipaddress
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mm_orchestration.local.embedded_pg import free_port
from mm_orchestration.local.topology import LOCATION
from mm_orchestration.platform.db import connect
from tests.debian import needs_each
from tests.local_stack import PROJECT_ROOT, own_env, start, wait_until_serving

NGINX = "/usr/sbin/nginx"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OPERATOR, VIEWER, ADMIN = "olivia@mm.example", "victor@mm.example", "adam@mm.example"
COOKIE = "_oauth2_proxy"  # oauth2-proxy's session cookie; the stand-in's holds the person
IDENTITY = "X-Auth-Request-Email"
SECRET_HEADER = "X-MM-Proxy-Secret"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
RELOAD = (
    f"mutation {{ reloadRepositoryLocation(repositoryLocationName: {json.dumps(LOCATION)})"
    " { __typename } }"
)
NUX = "mutation { setNuxSeen }"
JOB_PATH = f"/locations/{LOCATION}/jobs/share_link_expiry"

pytestmark = [
    pytest.mark.stack,
    needs_each(
        ("nginx-light", os.access(NGINX, os.X_OK), "the console behind a real nginx"),
        ("chromium", CHROMIUM is not None, "the console in a real browser"),
    ),
]


# -- the documented nginx block, made to run here ------------------------------------


def documented_site() -> str:
    """The ```nginx block of docs/operations.md's "The proxy"."""
    text = (PROJECT_ROOT / "docs" / "operations.md").read_text()
    section = text[text.index("**The proxy.**") : text.index("## Running a job by hand")]
    (block,) = re.findall(r"```nginx\n(.*?)```", section, re.S)
    return block


def _replace(text: str, pattern: str, new: str, count: int) -> str:
    """`text` with `pattern` (a regex) replaced by `new`, which must occur `count` times:
    a document that changes shape fails here, not with a puzzling nginx."""
    result, n = re.subn(pattern, new.replace("\\", "\\\\"), text)
    assert n == count, f"docs/operations.md's nginx block: {pattern!r} found {n} times"
    return result


def site_here(block: str, ports: dict[str, int], files: dict[str, Path], host: str) -> str:
    """The documented block on this machine's loopback ports and files; `host`: the
    block's `proxy_set_header Host $host` kept ("as written"), dropped ("none") or
    changed to `$http_host`."""
    site = _replace(block, r"listen 443 ssl;", f"listen 127.0.0.1:{ports['nginx']} ssl;", 1)
    site = _replace(site, r"http://127\.0\.0\.1:4180;", f"http://127.0.0.1:{ports['auth']};", 2)
    site = _replace(site, r"http://127\.0\.0\.1:3000;", f"http://127.0.0.1:{ports['console']};", 1)
    site = _replace(site, r"ssl_certificate\s+\S+;", f"ssl_certificate {files['cert']};", 1)
    site = _replace(site, r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {files['key']};", 1)
    site = _replace(
        site, r"include /etc/nginx/mm-console-proxy-secret\.conf;", f"include {files['secret']};", 1
    )
    host_line = r"proxy_set_header Host \$host;"
    if host == "none":
        site = _replace(site, host_line, "", 3)
    elif host == "$http_host":
        site = _replace(site, host_line, "proxy_set_header Host $http_host;", 3)
    else:
        assert host == "as written"
        _replace(site, host_line, "", 3)  # only checks the block still has them
    return site


def nginx_conf(prefix: Path, site: str) -> str:
    """The least around the site that nginx needs to run here: its temporary files under
    `prefix` (readable by the workers' user when started as root), a log of each request."""
    user = ""
    if os.geteuid() == 0:  # the workers drop to nobody, as a packaged nginx's to www-data
        nobody = pwd.getpwnam("nobody")
        user = f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};"
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}
worker_processes 1;
events {{ worker_connections 512; }}
http {{
{temp}
    log_format mm '$remote_addr "$request" $status host="$http_host" upstream=$upstream_status';
    access_log {prefix / "access.log"} mm;
{site}
}}
"""


class Nginx:
    """A real nginx in the foreground, restarted with another config when asked."""

    def __init__(self, prefix: Path, port: int):
        self.prefix, self.port = prefix, port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = prefix / "nginx.stderr"

    def start(self, conf: str) -> None:
        self.stop()
        path = self.prefix / "nginx.conf"
        path.write_text(conf)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    NGINX,
                    "-p",
                    str(self.prefix),
                    "-c",
                    str(path),
                    "-g",
                    f"daemon off; pid {self.prefix / 'nginx.pid'}; error_log stderr;",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while True:
            assert self.proc.poll() is None, f"nginx did not start:\n{self.log.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # fast shutdown: open websockets do not hold it up
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


# -- stand-ins: oauth2-proxy's auth endpoint, and another site's page ------------------


class _OAuth2ProxyStandIn(BaseHTTPRequestHandler):
    """`/oauth2/auth` as oauth2-proxy with --set-xauthrequest answers nginx's auth_request:
    202 and the person for a signed-in session (here: the cookie names them), else 401;
    `/oauth2/sign_in` a page."""

    signed_in: frozenset[str] = frozenset()

    def do_GET(self) -> None:
        if self.path.startswith("/oauth2/auth"):
            cookies = dict(
                part.strip().split("=", 1)
                for part in self.headers.get("Cookie", "").split(";")
                if "=" in part
            )
            person = cookies.get(COOKIE)
            if person in self.signed_in:
                self._answer(202, b"", {IDENTITY: person, "X-Auth-Request-User": person})
            else:
                self._answer(401, b"Unauthorized")
        elif self.path.startswith("/oauth2/sign_in"):
            self._answer(200, b"<h1>Sign in with your company account</h1>")
        else:
            self._answer(404, b"not found")

    do_POST = do_HEAD = do_GET

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _framing_page(url: str) -> type[BaseHTTPRequestHandler]:
    class Decoy(_OAuth2ProxyStandIn):
        def do_GET(self) -> None:
            page = (
                "<html><body><h1>Another site</h1>"
                f'<iframe id="console" src="{url}" width="1200" height="700"'
                " onload=\"document.title = 'framed'\"></iframe></body></html>"
            )
            self._answer(200, page.encode())

    return Decoy


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (the browser is told to accept it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def ask(
    port: int,
    path: str,
    headers: dict[str, str],
    method: str = "GET",
    body: bytes | None = None,
    tls: bool = False,
) -> tuple[int, str]:
    """One request to 127.0.0.1:`port`: its status and the start of its body."""
    if tls:
        insecure = ssl.create_default_context()
        insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=30, context=insecure
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host="Host" in headers)
        for name, value in headers.items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        answer = conn.getresponse()
        return answer.status, answer.read().decode(errors="replace")[:500]
    finally:
        conn.close()


def _wait_for(what: str, check: Callable[[], Any], timeout: float = 30, page: Any = None) -> Any:
    """Poll `check` until it is true. With `page`, wait in the browser's own loop: the sync
    Playwright API delivers events (websocket frames) only while one of its calls waits."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if page is None:
            time.sleep(0.2)
        else:
            page.wait_for_timeout(200)
    return value


# -- the test --------------------------------------------------------------------------


def test_console_behind_the_documented_nginx(tmp_path, sendgrid, project_root):
    from playwright.sync_api import expect, sync_playwright

    # The UI's pages render in seconds on a quiet machine and in tens of seconds on a loaded
    # 2-core one (Playwright's default wait is 5 s): slow is not broken.
    expect.set_options(timeout=30_000)
    ports = {"nginx": free_port(), "console": free_port()}
    base = f"https://127.0.0.1:{ports['nginx']}"
    proxy_secret = secrets.token_hex(32)
    data = tmp_path / "mm"
    env = own_env(
        data,
        SENDGRID_API_KEY="SG.proxy-test",
        SENDGRID_API_HOST=sendgrid.url,
        SENDGRID_DIGEST_TEMPLATE_ID="d-proxy-test",
        MM_CONSOLE_AUTH="proxy",
        MM_CONSOLE_TRUSTED_PROXIES="127.0.0.1",
        MM_CONSOLE_IDENTITY_HEADER=IDENTITY,
        MM_CONSOLE_PUBLIC_URL=base,
        MM_CONSOLE_PROXY_SECRET=proxy_secret,
        MM_CONSOLE_ROLES=f"{OPERATOR}=operator; {VIEWER}=viewer; {ADMIN}=admin",
    )
    log = tmp_path / "dev.log"
    stack = start(["dev", "--port", str(ports["console"])], env, log)
    artifacts = project_root / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    # nginx's workers (user nobody when started as root) read and write under this prefix:
    # pytest's own temporary folders are private to their owner.
    prefix = Path(tempfile.mkdtemp(prefix="mm-nginx-"))
    prefix.chmod(0o755)
    nginx = Nginx(prefix, ports["nginx"])
    try:
        cert, key = self_signed(tmp_path)
        # The secret's half for nginx, as the document says: a file only root reads (nginx
        # reads its configuration before its workers drop privileges).
        secret_file = tmp_path / "mm-console-proxy-secret.conf"
        secret_file.write_text(f'proxy_set_header {SECRET_HEADER} "{proxy_secret}";\n')
        secret_file.chmod(0o600)
        files = {"cert": cert, "key": key, "secret": secret_file}
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        _OAuth2ProxyStandIn.signed_in = frozenset({OPERATOR, VIEWER, ADMIN})
        with (
            serving(_OAuth2ProxyStandIn, None) as ports["auth"],
            serving(_framing_page(f"{base}{JOB_PATH}"), tls) as decoy_port,
        ):
            block = documented_site()
            nginx.start(nginx_conf(prefix, site_here(block, ports, files, "as written")))
            wait_until_serving(ports["console"], stack, log)

            # Straight to the console, bypassing nginx: a person named without the proxy
            # secret is nobody, and so is a DNS-rebinding page's request (its own name as
            # Host, from 127.0.0.1, naming whom it likes).
            console = ports["console"]
            direct = ask(console, JOB_PATH, {IDENTITY: OPERATOR})
            assert direct[0] == 401 and "Sign-in required" in direct[1], direct
            rebinding = {
                "Host": f"rebind.attacker.example:{console}",
                "Origin": f"http://rebind.attacker.example:{console}",
                IDENTITY: OPERATOR,
            }
            rebound = ask(console, JOB_PATH, rebinding)
            assert rebound[0] == 401 and "Sign-in required" in rebound[1], rebound
            rebound_post = ask(
                console,
                "/graphql",
                {**rebinding, "Content-Type": "application/json"},
                "POST",
                json.dumps({"query": RELOAD}).encode(),
            )
            assert rebound_post[0] == 401, rebound_post
            # Through nginx without a session: oauth2-proxy's sign-in page, not the console.
            anonymous = ask(ports["nginx"], JOB_PATH, {}, tls=True)
            assert "Sign in with your company account" in anonymous[1], anonymous

            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)

                def signed_in_page(person: str, **context_args: Any) -> Any:
                    context = browser.new_context(
                        viewport={"width": 1400, "height": 900},
                        ignore_https_errors=True,
                        **context_args,
                    )
                    # As after signing in: oauth2-proxy's cookie, for the host (cookies
                    # know no port), sent to same-site frames too.
                    context.add_cookies(
                        [
                            {
                                "name": COOKIE,
                                "value": person,
                                "domain": "127.0.0.1",
                                "path": "/",
                                "secure": True,
                                "httpOnly": True,
                                "sameSite": "None",
                            }
                        ]
                    )
                    page = context.new_page()
                    page.add_locator_handler(
                        page.get_by_role("button", name="Skip", exact=True), lambda b: b.click()
                    )
                    return page

                def watch_websockets(page: Any) -> list[dict[str, Any]]:
                    sockets: list[dict[str, Any]] = []

                    def opened(ws: Any) -> None:
                        seen: dict[str, Any] = {"url": ws.url, "frames": [], "closed": False}
                        ws.on("framereceived", lambda f: seen["frames"].append(str(f)[:2000]))
                        ws.on("close", lambda _: seen.update(closed=True))
                        sockets.append(seen)

                    page.on("websocket", opened)
                    return sockets

                # The operator launches share-link expiry from the Launchpad and watches it.
                page = signed_in_page(OPERATOR)
                sockets = watch_websockets(page)
                page.goto(f"{base}{JOB_PATH}")
                expect(page.get_by_text(f"Signed in as {OPERATOR} (operator)")).to_be_visible()
                page.get_by_role("tab", name="Launchpad").click()
                page.get_by_role("button", name=re.compile(r"Launch Run$")).click()
                page.wait_for_url(re.compile(r".*/runs/[0-9a-f-]{36}"), timeout=60_000)
                run_id = re.search(r"/runs/([0-9a-f-]{36})", page.url).group(1)
                loads: list[str] = []
                page.on("load", lambda: loads.append(page.url))
                page.evaluate("window.__mmSameDocument = true")

                # While it runs: a page of another origin (same host, so the cookie goes
                # along) frames the console: nginx and the console serve it, the browser
                # refuses to show it.
                decoy = page.context.new_page()
                framed: list[Any] = []
                decoy.on(
                    "response",
                    lambda r: framed.append(r) if r.url == f"{base}{JOB_PATH}" else None,
                )
                decoy.goto(f"https://127.0.0.1:{decoy_port}/")
                decoy.wait_for_function("document.title === 'framed'", timeout=30_000)
                decoy.screenshot(path=str(artifacts / "proxy_framing_refused.png"))
                assert framed and framed[0].status == 200, framed
                refusal = framed[0].headers
                assert refusal.get("x-frame-options", "").upper() == "DENY" or (
                    "frame-ancestors 'none'" in refusal.get("content-security-policy", "")
                ), refusal
                shown = [f.url for f in decoy.frames if f.url.startswith(base)]
                assert shown == [], shown
                decoy.close()

                # A viewer, whose browser adds an identity header of its own: nginx replaces
                # it, they are the viewer, and may not launch (Dagster greys out the whole
                # Launchpad tab for a person without the permission).
                viewer = signed_in_page(VIEWER, extra_http_headers={IDENTITY: OPERATOR})
                viewer.goto(f"{base}{JOB_PATH}")
                expect(viewer.get_by_text(f"Signed in as {VIEWER} (viewer)")).to_be_visible()
                expect(viewer.get_by_role("tab", name="Launchpad")).to_be_disabled()
                viewer.screenshot(path=str(artifacts / "proxy_viewer_launchpad.png"))

                # Meanwhile the run goes on; the operator's run page shows it succeed.
                expect(page.get_by_text("Success", exact=True).first).to_be_visible(timeout=90_000)
                page.screenshot(path=str(artifacts / "proxy_run_success.png"), full_page=True)
                # Shown without a reload: the same document, its events from the websocket
                # through nginx (the subscription's frames carry the run's success).
                assert loads == [] and page.evaluate("window.__mmSameDocument === true")
                graphql_ws = [
                    s for s in sockets if s["url"] == f"wss://127.0.0.1:{ports['nginx']}/graphql"
                ]
                assert graphql_ws, [s["url"] for s in sockets]
                # The page may show the success from a query a moment before the
                # subscription's frame with the event arrives.
                _wait_for(
                    "the run's success through the websocket",
                    lambda: any(
                        "RunSuccessEvent" in frame for s in graphql_ws for frame in s["frames"]
                    ),
                    page=page,
                )

                # However the proxy forwards Host, the console's own page may act and its
                # websocket connects; another origin's page may not act. The first mutation
                # is audited (reloading code, an operator's); the others are the UI's own
                # bookkeeping, judged for their origin all the same and quicker.
                mutations = {"as written": RELOAD, "none": NUX, "$http_host": NUX}
                for host, mutation in mutations.items():
                    if host != "as written":  # (as written: the run page is still open)
                        nginx.start(nginx_conf(prefix, site_here(block, ports, files, host)))
                        sockets.clear()
                        page.goto(f"{base}/runs/{run_id}")
                        expect(page.get_by_text("Success", exact=True).first).to_be_visible(
                            timeout=30_000
                        )
                    _wait_for(
                        f"a websocket with frames through nginx (Host: {host})",
                        lambda: any(s["frames"] for s in sockets if s["url"].endswith("/graphql")),
                        page=page,
                    )
                    answer = page.evaluate(
                        """async (query) => {
                            const r = await fetch("/graphql", {
                                method: "POST",
                                headers: {"Content-Type": "application/json"},
                                body: JSON.stringify({query}),
                            });
                            return {status: r.status, body: await r.text()};
                        }""",
                        mutation,
                    )
                    assert answer["status"] == 200, (host, answer)
                    result = json.loads(answer["body"])
                    assert "errors" not in result, (host, answer)
                    if mutation == RELOAD:
                        reloaded = result["data"]["reloadRepositoryLocation"]
                        assert reloaded["__typename"] == "WorkspaceLocationEntry", answer
                    else:
                        assert result["data"] == {"setNuxSeen": True}, (host, answer)
                    elsewhere = ask(
                        ports["nginx"],
                        "/graphql",
                        {
                            "Cookie": f"{COOKIE}={OPERATOR}",
                            "Origin": f"https://127.0.0.1:{decoy_port}",
                            "Content-Type": "application/json",
                        },
                        "POST",
                        json.dumps({"query": mutation}).encode(),
                        tls=True,
                    )
                    assert elsewhere[0] == 403 and "another site" in elsewhere[1], (host, elsewhere)

                # The operator may not launch the restore drill: the console says why.
                page.goto(f"{base}/locations/{LOCATION}/jobs/backup_verify")
                page.get_by_role("tab", name="Launchpad").click()
                page.get_by_role("button", name=re.compile(r"Launch Run$")).click()
                expect(page.get_by_text("operator may not launch backup_verify")).to_be_visible(
                    timeout=30_000
                )
                page.screenshot(path=str(artifacts / "proxy_operator_refused_drill.png"))

                # An admin switches a schedule off from its page.
                admin = signed_in_page(ADMIN)
                admin.goto(f"{base}/locations/{LOCATION}/schedules/invite_cleanup_schedule")
                switch = admin.get_by_role("checkbox").first
                expect(switch).to_be_checked(timeout=60_000)
                switch.locator("xpath=..").click()  # the styled switch around the hidden input
                expect(switch).not_to_be_checked(timeout=30_000)
                admin.screenshot(path=str(artifacts / "proxy_admin_stopped_schedule.png"))
                browser.close()

        pg_port = (data / "postgres" / "port").read_text().strip()
        with connect(f"postgresql://postgres@127.0.0.1:{pg_port}/portal") as conn:
            launch = conn.execute(
                "SELECT actor, role, target, outcome FROM ops.audit_log"
                " WHERE action = 'launch_run' AND run_id = %s",
                [run_id],
            ).fetchall()
            assert launch == [(OPERATOR, "operator", "share_link_expiry", "succeeded")]
            ledger = conn.execute(
                "SELECT status, actor FROM ops.job_runs WHERE run_id = %s", [run_id]
            ).fetchone()
            assert ledger == ("succeeded", OPERATOR)
            reloads = conn.execute(
                "SELECT actor, role, outcome FROM ops.audit_log WHERE action = 'reload_location'"
                " ORDER BY id"
            ).fetchall()
            assert reloads == [(OPERATOR, "operator", "succeeded")]
            refused = conn.execute(
                "SELECT actor, role, outcome, details->>'refusal' FROM ops.audit_log"
                " WHERE action = 'launch_run' AND target = 'backup_verify'"
            ).fetchall()
            assert refused == [
                (OPERATOR, "operator", "refused", "operator may not launch backup_verify")
            ]
            assert conn.execute("SELECT count(*) FROM ops.backup_drills").fetchone() == (0,)
            stopped = conn.execute(
                "SELECT actor, role, target, outcome FROM ops.audit_log"
                " WHERE action = 'stop_schedule'"
            ).fetchall()
            assert stopped == [(ADMIN, "admin", "invite_cleanup_schedule", "succeeded")]
            # The links expired and their owners were emailed.
            assert conn.execute(
                "SELECT count(*) FROM portal.share_links WHERE status = 'active'"
                " AND expires_at <= now()"
            ).fetchone() == (0,)
            # Nobody else acted: the viewer's forged header named nobody.
            actors = conn.execute(
                "SELECT DISTINCT actor FROM ops.audit_log WHERE outcome <> 'refused' ORDER BY actor"
            ).fetchall()
            assert actors == [(ADMIN,), (OPERATOR,)], actors
        assert sendgrid.accepted_recipients()  # the owners' emails
    finally:
        nginx.stop()
        try:
            os.killpg(stack.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        stack.wait(timeout=60)
        for kept in ("access.log", "nginx.stderr", "nginx.conf"):  # for a failure's reader
            if (prefix / kept).exists():
                shutil.copy(prefix / kept, tmp_path / f"nginx-{kept}")
        shutil.rmtree(prefix, ignore_errors=True)
