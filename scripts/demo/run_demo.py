"""The meshgate demo: a CA, three services with sidecars, and traffic that shows what the mesh does.

`scripts/demo.sh` sets up the virtualenv and runs this file with it. Steps, each checked:
the CA is bootstrapped and served, also as the control plane (registration, discovery,
central policies from $WORK/policies); web, orders and payments start, each behind a
sidecar that bootstraps its SVID with a one-time token, registers, and finds the services
it calls by discovery; permitted calls succeed (and a traceparent crosses both hops);
forbidden calls get 403 with the deciding policy in the access log; a client without a
mesh certificate is refused at the TLS handshake; a policy edit on the control plane takes
effect live; every SVID rotates while traffic flows, with no failed request; a revoked
certificate is refused; orders scales from one instance to three and back under traffic,
with no failed request and no config change anywhere else. Then a summary table, where
the logs and metrics are, and ``WORK/report.json`` (machine-readable, read by
tests/test_demo.py).

Exits 1 naming every step that did not behave as described; 2 when the mesh did not start.
Everything started is stopped on exit, on Ctrl-C and on failure, unless ``--keep`` (and the
run got to the end): then the mesh stays up and the curl commands to poke it are printed.

Why one module: the demo is one script, read top to bottom as the story it
tells: `Demo` holds the running mesh and one method per step, in the order they run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from demo_mesh import (
    CONTROL_TOML,
    ROOT,
    SERVICES,
    TRUST_DOMAIN,
    Mesh,
    Service,
    run_tool,
    spiffe_id,
)
from demo_report import HopRow, format_table, read_json_lines, summarize

STEPS = 10
LIVE_POLICY = """
// Added by the demo while the mesh was running: web may read the order statistics.
@id("web-reads-order-stats")
permit (
  principal == Workload::"spiffe://example.org/ns/shop/svc/web",
  action == Action::"GET",
  resource == Service::"orders"
)
when { context.path == "/stats" };
"""


class StepFailedError(Exception):
    """A step did not behave as described; the message says what was seen instead."""


class Style:
    def __init__(self, color: bool) -> None:
        self.color = color

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def bold(self, text: str) -> str:
        return self._wrap("1", text)

    def ok(self, text: str) -> str:
        return self._wrap("32", text)

    def bad(self, text: str) -> str:
        return self._wrap("31;1", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)


@dataclass
class Sent:
    """One request the unmeshed client sent to web's app, and what came back."""

    step: int
    method: str
    path: str
    expect: int
    status: int = 0
    request_id: str = field(default_factory=lambda: f"demo-{secrets.token_hex(6)}")
    traceparent: str = field(
        default_factory=lambda: f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    )
    body: Any = None

    @property
    def trace_id(self) -> str:
        return self.traceparent.split("-")[1]


def http_call(
    port: int, method: str, path: str, headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        body = b"{}" if method in ("POST", "PUT") else None
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(raw) if raw.strip() else None
    except ValueError:
        return response.status, raw.decode(errors="replace")


class Traffic(threading.Thread):
    """Background traffic through both hops while the demo runs; counts every failure."""

    def __init__(
        self, web_port: int, calls: tuple[tuple[str, str, int], ...] | None = None
    ) -> None:
        super().__init__(daemon=True)
        self.web_port = web_port
        self.calls = calls or (("GET", "/orders/7", 200), ("POST", "/checkout", 200))
        self.sent = 0
        self.failures: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        calls = self.calls
        while not self._stop_event.is_set():
            method, path, expect = calls[self.sent % len(calls)]
            try:
                status, body = http_call(self.web_port, method, path)
            except OSError as exc:
                status, body = 0, str(exc)
            self.sent += 1
            if status != expect:
                self.failures.append(f"{method} {path} → {status}: {body}")
            self._stop_event.wait(0.05)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(15)


class Demo:
    def __init__(self, work: Path, leaf_ttl: str, style: Style) -> None:
        self.work = work
        self.leaf_ttl = leaf_ttl
        self.s = style
        self.mesh = Mesh(work)
        self.sent: list[Sent] = []
        self.refusals: list[HopRow] = []
        self.steps: list[dict[str, Any]] = []
        self.traffic: Traffic | None = None
        self.scale_traffic: Traffic | None = None
        self.serials: dict[str, set[str]] = {name: set() for name in SERVICES}
        self.started = time.monotonic()
        self.trace: dict[str, Any] = {}

    # -- output -----------------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        print(f"      {text}" if text else "", flush=True)

    def shell(self, command: str) -> None:
        self.say(self.s.dim(f"$ {command}"))

    def check(self, good: bool, text: str) -> None:
        mark = self.s.ok("ok ") if good else self.s.bad("BAD")
        self.say(f"{mark} {text}")
        if not good:
            raise StepFailedError(text)

    def step(self, number: int, title: str, body: Callable[[], None], *, fatal: bool) -> bool:
        done = "#" * (number - 1) + "." * (STEPS - number + 1)
        elapsed = time.monotonic() - self.started
        print(
            f"\n{self.s.bold(f'[{number}/{STEPS}]')} [{done}] {self.s.bold(title)}"
            f"  {self.s.dim(f'{elapsed:4.1f}s')}",
            flush=True,
        )
        began = time.monotonic()
        record: dict[str, Any] = {"number": number, "title": title, "ok": True, "detail": ""}
        try:
            body()
        except (StepFailedError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
            record |= {"ok": False, "detail": str(exc)}
            if not isinstance(exc, StepFailedError):
                self.say(self.s.bad(f"BAD {type(exc).__name__}: {exc}"))
        record["seconds"] = round(time.monotonic() - began, 2)
        self.steps.append(record)
        if fatal and not record["ok"]:
            raise StepFailedError(f"step {number} ({title}) failed: {record['detail']}")
        return bool(record["ok"])

    # -- traffic helpers --------------------------------------------------------------------

    @property
    def web(self) -> Service:
        return self.mesh.services["web"]

    def client(self, step: int, method: str, path: str, expect: int) -> Sent:
        """The unmeshed client calls web's app (the shop's front door) with trace headers."""
        sent = Sent(step, method, path, expect)
        self.shell(
            f"curl -X {method} http://127.0.0.1:{self.web.app_port}{path} "
            f"-H 'traceparent: {sent.traceparent}'"
        )
        headers = {"traceparent": sent.traceparent, "x-request-id": sent.request_id}
        sent.status, sent.body = http_call(self.web.app_port, method, path, headers)
        self.sent.append(sent)
        self.check(sent.status == expect, f"{method} {path} → {sent.status} (expected {expect})")
        return sent

    def access_line(self, service: str, request_id: str, timeout: float = 3) -> dict[str, Any]:
        """The inbound access-log line of `service` for `request_id` (logs are written after
        the response, so poll briefly)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in read_json_lines(self.mesh.access_log(service)):
                if line.get("request_id") == request_id and line.get("direction") == "inbound":
                    return line
            if time.monotonic() > deadline:
                raise StepFailedError(f"no inbound access-log line for {request_id} in {service}")
            time.sleep(0.05)

    def curl_tls(self, port: int, path: str, *cert: str) -> tuple[int, str]:
        """curl over TLS to an inbound port: (exit code, what curl said). -k because curl
        checks host names, not SPIFFE IDs; the sidecar's check is what is being shown."""
        argv = ["curl", "-sS", "-k", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}"]
        if cert:
            argv += ["--cert", cert[0], "--key", cert[1]]
        argv.append(f"https://127.0.0.1:{port}{path}")
        self.shell(" ".join(argv).replace(str(self.work), "$WORK"))
        done = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
        return done.returncode, (done.stderr.strip() or done.stdout.strip())

    # -- the steps --------------------------------------------------------------------------

    def bootstrap_ca(self) -> None:
        ca_dir = self.work / "ca"
        command = f"bash scripts/bootstrap-ca.sh {TRUST_DOMAIN} $WORK/ca --leaf-ttl {self.leaf_ttl}"
        self.shell(command)
        done = subprocess.run(
            [
                "bash",
                str(ROOT / "scripts" / "bootstrap-ca.sh"),
                TRUST_DOMAIN,
                str(ca_dir),
                "--leaf-ttl",
                self.leaf_ttl,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise StepFailedError(
                f"bootstrap-ca.sh exited {done.returncode}: {done.stderr.strip()}"
            )
        for line in done.stdout.strip().splitlines():
            self.say(self.s.dim(line))
        shutil.copytree(ROOT / "policies", self.work / "policies")
        self.say("policies copied to $WORK/policies (the demo edits this copy, never the repo)")
        control = CONTROL_TOML.format(policies=self.work / "policies")
        self.shell("cat >> $WORK/ca/ca.toml  # the CA is the control plane too")
        for text in control.strip().splitlines():
            self.say(self.s.dim(f"+ {text}"))
        with (ca_dir / "ca.toml").open("a") as toml:
            toml.write(control)
        self.check((ca_dir / "bundle.pem").exists(), "CA ready: root, intermediate, trust bundle")

    def start_ca(self) -> None:
        self.shell("mesh-ca serve --dir $WORK/ca --listen 127.0.0.1:0 &")
        address = self.mesh.start_ca()
        self.check(bool(address), f"mesh-ca serving on {address}")

    def start_mesh(self) -> None:
        for name in SERVICES:
            self.mesh.start_app(name)
        for name in SERVICES:
            sid = spiffe_id(name)
            self.shell(
                f"mesh-ca token create --dir $WORK/ca --spiffe-id {sid} > $WORK/{name}/token"
            )
            token = run_tool(
                "mesh-ca", "token", "create", "--dir", "ca", "--spiffe-id", sid, cwd=self.work
            )
            self.mesh.write_sidecar_config(name, token)
        for name in SERVICES:
            self.shell(f"mesh-sidecar run --config $WORK/{name}.toml &")
            self.mesh.start_sidecar(name)
        self.mesh.wait_ready()
        for name, svc in self.mesh.services.items():
            cert = svc.admin_json("/certificate")
            self.serials[name].add(str(cert.get("serial")))
            self.check(
                cert.get("spiffe_id") == svc.spiffe_id,
                f"{name:8} ready  app :{svc.app_port}  mTLS :{svc.inbound_port}  "
                f"admin :{svc.admin_port}  serial {str(cert.get('serial'))[:12]}…",
            )
        web_view = self.web.admin_json("/control")
        found = {d["service"]: len(d["endpoints"]) for d in web_view.get("discovery", [])}
        self.check(
            found == {"orders": 1, "payments": 1},
            f"web found its upstreams by discovery, no addresses in its config: {found}",
        )
        self.traffic = Traffic(self.web.app_port)
        self.traffic.start()
        self.say(self.s.dim("background traffic started: GET /orders/7 and POST /checkout, 20/s"))

    def permitted(self) -> None:
        self.client(4, "GET", "/orders/42", 200)
        self.say("  client → web app → web sidecar ══mTLS══▶ orders sidecar (Cedar) → orders app")
        line = self.access_line("orders", self.sent[-1].request_id)
        self.check(
            line.get("policies") == ["web-reads-orders"],
            f"orders allowed it by policy {line.get('policies')}",
        )
        checkout = self.client(4, "POST", "/checkout", 200)
        self.say("  web → orders (web-creates-orders) → payments (orders-charges-payments)")
        pay = self.access_line("payments", checkout.request_id)
        self.check(
            pay.get("policies") == ["orders-charges-payments"]
            and service_id(pay) == spiffe_id("orders"),
            f"payments allowed {spiffe_id('orders')} by {pay.get('policies')}",
        )
        seen = [
            line
            for line in read_json_lines(self.mesh.app_log("payments"))
            if line.get("x-request-id") == checkout.request_id
        ]
        trace = (seen[0].get("traceparent") or "") if seen else ""
        self.trace = {
            "sent": checkout.traceparent,
            "request_id": checkout.request_id,
            "payments_saw": trace,
        }
        self.check(
            trace.split("-")[1:2] == [checkout.trace_id],
            f"trace id {checkout.trace_id[:16]}… reached payments two hops away",
        )

    def forbidden(self) -> None:
        delete = self.client(5, "DELETE", "/orders/42", 403)
        line = self.access_line("orders", delete.request_id)
        self.say("orders' access log (logs/orders-access.log):")
        self.say(self.s.dim(json.dumps(line)))
        self.check(
            line.get("decision") == "deny" and line.get("policies") == ["no-delete"],
            f"denied by policy {line.get('policies')} (guardrails.cedar)",
        )
        direct = self.client(5, "POST", "/pay", 403)
        line = self.access_line("payments", direct.request_id)
        self.check(
            line.get("decision") == "deny" and not line.get("policies"),
            "web → payments directly: denied by default (no policy permits it)",
        )
        received = [
            line
            for line in read_json_lines(self.mesh.app_log("orders"))
            if line.get("x-request-id") == delete.request_id
        ]
        self.check(not received, "the orders app never saw the DELETE")

    def no_certificate(self) -> None:
        orders = self.mesh.services["orders"]
        before = handshake_failures(orders.metrics())
        code, said = self.curl_tls(orders.inbound_port, "/orders/42")
        self.say(self.s.dim(said))
        self.check(
            code != 0 and ("certificate required" in said or "alert" in said),
            f"refused at the TLS handshake (curl exit {code}: TLS alert, no HTTP at all)",
        )
        after = handshake_failures(orders.metrics())
        self.check(
            after.get("no_client_cert", 0) > before.get("no_client_cert", 0),
            'orders counted it: meshgate_tls_handshakes_total{result="failed",'
            'reason="no_client_cert"}',
        )
        unverified = [
            line for line in read_json_lines(self.mesh.app_log("orders")) if not line.get("xfcc")
        ]
        self.check(not unverified, "every request the orders app saw came from a verified peer")
        self.refusals.append(
            HopRow(
                "client (no certificate)", "orders", "GET", "/orders/42", "-", "tls-refused", "-", 1
            )
        )

    def live_policy_edit(self) -> None:
        self.client(7, "GET", "/stats", 403)
        self.say(
            "no policy lets web read /stats yet; appending one to $WORK/policies/shop.cedar,"
            " the control plane's directory (the CA validates and publishes it):"
        )
        for text in LIVE_POLICY.strip().splitlines():
            self.say(self.s.dim(f"+ {text}"))
        orders = self.mesh.services["orders"]
        version = orders.admin_json("/policies").get("version")
        path = self.work / "policies" / "shop.cedar"
        staged = path.with_name(".shop.cedar.new")  # dot files are ignored by the watcher
        staged.write_text(path.read_text() + LIVE_POLICY)
        os.replace(staged, path)  # one atomic swap: the watcher never sees half a file
        edited = time.monotonic()
        deadline = edited + 10
        while orders.admin_json("/policies").get("version") == version:
            if time.monotonic() > deadline:
                raise StepFailedError("orders did not get the edited policy set within 10 s")
            time.sleep(0.05)
        view = orders.admin_json("/policies")
        central = view.get("control_plane") or {}
        self.check(
            not view.get("last_reload_error") and central.get("loaded_from") == "control-plane",
            f"orders enforces the published set v{central.get('version')} "
            f"(content {version} → {view.get('version')}) "
            f"{time.monotonic() - edited:.2f} s after the edit, no restart",
        )
        stats = self.client(7, "GET", "/stats", 200)
        line = self.access_line("orders", stats.request_id)
        self.check(
            line.get("policies") == ["web-reads-order-stats"],
            f"allowed by the new policy {line.get('policies')}",
        )

    def rotation(self) -> None:
        self.say(f"SVIDs live {self.leaf_ttl}; each sidecar renews at about half-life over mTLS")
        deadline = time.monotonic() + 60
        first = {name: next(iter(serials)) for name, serials in self.serials.items()}
        while True:
            views = {
                name: svc.admin_json("/certificate") for name, svc in self.mesh.services.items()
            }
            for name, view in views.items():
                self.serials[name].add(str(view.get("serial")))
            rotated = [name for name in SERVICES if len(self.serials[name]) > 1]
            if len(rotated) == len(SERVICES):
                break
            if time.monotonic() > deadline:
                raise StepFailedError(
                    f"no rotation within 60 s for: {set(SERVICES) - set(rotated)}"
                )
            if sys.stdout.isatty():
                waiting = ", ".join(n for n in SERVICES if n not in rotated)
                print(f"\r      waiting for {waiting} to rotate …   ", end="", flush=True)
            time.sleep(0.25)
        if sys.stdout.isatty():
            print("\r" + " " * 60 + "\r", end="")
        for name in SERVICES:
            latest = str(views[name].get("serial"))
            self.say(
                f"{name:8} serial {first[name][:12]}… → {latest[:12]}…  "
                f"rotations {views[name].get('rotations')}"
            )
        # Let traffic run on the new certificates for a moment, then count.
        time.sleep(1.0)
        traffic = self.traffic
        assert traffic is not None
        traffic.stop()
        self.check(
            traffic.sent > 0 and not traffic.failures,
            f"{traffic.sent} background requests during the demo, "
            f"{len(traffic.failures)} failed"
            + (f": {traffic.failures[:3]}" if traffic.failures else ""),
        )

    def revocation(self) -> None:
        orders = self.mesh.services["orders"]
        copied = self.work / "copied-web"
        self.say("a copy of web's credential leaks (issued offline, outside the sidecar):")
        self.shell(
            f"mesh-ca issue --dir $WORK/ca --spiffe-id {spiffe_id('web')} --out $WORK/copied-web"
        )
        run_tool(
            "mesh-ca",
            "issue",
            "--dir",
            "ca",
            "--spiffe-id",
            spiffe_id("web"),
            "--out",
            str(copied),
            cwd=self.work,
        )
        cert, key = str(copied / "svid.pem"), str(copied / "svid.key")
        code, said = self.curl_tls(orders.inbound_port, "/orders/42", cert, key)
        self.check(code == 0 and said == "200", f"with it, curl reaches orders: HTTP {said}")
        serial = certificate_serial(Path(cert))
        self.shell(f"mesh-ca revoke --dir $WORK/ca --serial {serial}")
        run_tool(
            "mesh-ca",
            "revoke",
            "--dir",
            "ca",
            "--serial",
            serial,
            "--reason",
            "demo: leaked",
            cwd=self.work,
        )
        deadline = time.monotonic() + 10
        while True:
            time.sleep(0.5)
            code, said = self.curl_tls(orders.inbound_port, "/orders/42", cert, key)
            if code != 0 or said != "200" or time.monotonic() > deadline:
                break
        self.say(self.s.dim(said))
        self.check(
            code != 0 or said != "200",
            f"after revocation: refused (curl exit {code}, {said.splitlines()[-1][:80]})",
        )
        self.refusals.append(
            HopRow(
                "web (revoked copy)",
                "orders",
                "GET",
                "/orders/42",
                said if code == 0 else "-",
                "revoked",
                "-",
                1,
            )
        )
        self.client(9, "GET", "/orders/42", 200)
        self.say("the real web sidecar (other serial) is unaffected")

    def discovered(self, service: str) -> int:
        for item in self.web.admin_json("/control").get("discovery", []):
            if item.get("service") == service:
                return len(item.get("endpoints", []))
        return 0

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 15) -> float:
        started = time.monotonic()
        while not check():
            if time.monotonic() - started > timeout:
                raise StepFailedError(f"{what}: not within {timeout:.0f} s")
            time.sleep(0.05)
        return time.monotonic() - started

    def scale(self) -> None:
        traffic = Traffic(self.web.app_port, (("GET", "/orders/7", 200),))
        traffic.start()
        self.scale_traffic = traffic
        self.say(self.s.dim("traffic: GET /orders/7 through web, 20/s; nothing else changes"))
        extras = [self.mesh.add_instance("orders", n) for n in (2, 3)]
        for svc in extras:
            self.mesh.start_app(svc.name)
            token = run_tool(
                "mesh-ca", "token", "create", "--dir", "ca", "--spiffe-id", svc.spiffe_id,
                cwd=self.work,
            )  # fmt: skip
            self.mesh.write_sidecar_config(svc.name, token)
            self.shell(f"mesh-sidecar run --config $WORK/{svc.name}.toml &")
            self.mesh.start_sidecar(svc.name)
        self.mesh.wait_ready(names=tuple(svc.name for svc in extras))
        took = self.wait("web to see three orders", lambda: self.discovered("orders") == 3)
        self.check(
            self.discovered("orders") == 3,
            f"orders 1 → 3: web's endpoint set holds all three {took:.2f} s after the new "
            "sidecars were ready (they register once ready)",
        )

        def served(svc: Service) -> int:
            lines = read_json_lines(self.mesh.access_log(svc.name))
            return sum(1 for line in lines if line.get("direction") == "inbound")

        self.wait("both new instances to serve", lambda: all(served(svc) for svc in extras))
        counts = ", ".join(f"{svc.name} {served(svc)}" for svc in extras)
        self.check(all(served(svc) for svc in extras), f"both new instances serve: {counts}")
        for svc in extras:
            self.shell(f"kill -TERM <{svc.name} sidecar>  # drains: deregisters, then stops")
            code = self.mesh.stop_process(f"{svc.name}-sidecar")
            self.mesh.stop_process(f"{svc.name}-app")
            self.check(code == 0, f"{svc.name} drained and exited {code}")
        self.wait("web to see one orders", lambda: self.discovered("orders") == 1)
        sent = traffic.sent
        self.wait("more traffic on one instance", lambda: traffic.sent >= sent + 10)
        traffic.stop()
        self.check(
            traffic.sent > 0 and not traffic.failures,
            f"orders 3 → 1: {traffic.sent} requests while scaling, {len(traffic.failures)} failed"
            + (f": {traffic.failures[:3]}" if traffic.failures else ""),
        )

    # -- the end ----------------------------------------------------------------------------

    def settle_logs(self, quiet: float = 0.3, timeout: float = 5) -> None:
        """Wait until the access logs stop growing: a sidecar writes a request's line after
        the response went out, so the last requests' lines may land after the client saw
        the answer (a summary read at once missed them on a busy machine)."""
        paths = [self.mesh.access_log(name) for name in SERVICES]
        deadline = time.monotonic() + timeout
        sizes = None
        while time.monotonic() < deadline:
            now = [p.stat().st_size if p.exists() else 0 for p in paths]
            if now == sizes:
                return
            sizes = now
            time.sleep(quiet)

    def rows(self) -> list[HopRow]:
        self.settle_logs()
        lines = []
        for name in SERVICES:
            lines += read_json_lines(self.mesh.access_log(name))
        return summarize(lines, self.refusals)

    def report(self, rows: list[HopRow]) -> dict[str, Any]:
        traffic = self.traffic
        return {
            "ok": all(step["ok"] for step in self.steps) and len(self.steps) == STEPS,
            "work_dir": str(self.work),
            "seconds": round(time.monotonic() - self.started, 1),
            "leaf_ttl": self.leaf_ttl,
            "steps": self.steps,
            "ca": {"address": self.mesh.ca_address, "dir": str(self.work / "ca")},
            "services": {
                name: {
                    "spiffe_id": svc.spiffe_id,
                    "app_port": svc.app_port,
                    "inbound_port": svc.inbound_port,
                    "admin_port": svc.admin_port,
                    "outbound_ports": svc.outbound_ports,
                    "access_log": str(self.mesh.access_log(name)),
                    "app_log": str(self.mesh.app_log(name)),
                    "sidecar_log": str(self.mesh.log_path(f"{name}-sidecar")),
                    "config": str(self.work / f"{name}.toml"),
                    "serials": sorted(self.serials[name]),
                }
                for name, svc in self.mesh.services.items()
                if name in SERVICES
            },
            # The extra orders instances of step 10 (stopped again by its end).
            "instances": {
                name: {
                    "service": svc.service_name,
                    "access_log": str(self.mesh.access_log(name)),
                    "sidecar_log": str(self.mesh.log_path(f"{name}-sidecar")),
                }
                for name, svc in self.mesh.services.items()
                if name not in SERVICES
            },
            "scaling": {
                "sent": self.scale_traffic.sent if self.scale_traffic else 0,
                "failures": self.scale_traffic.failures[:10] if self.scale_traffic else [],
            },
            "requests": [
                {
                    "step": s.step,
                    "method": s.method,
                    "path": s.path,
                    "expect": s.expect,
                    "status": s.status,
                    "request_id": s.request_id,
                    "traceparent": s.traceparent,
                }
                for s in self.sent
            ],
            "trace": self.trace,
            "background": {
                "sent": traffic.sent if traffic else 0,
                "failed": len(traffic.failures) if traffic else 0,
                "failures": traffic.failures[:10] if traffic else [],
            },
            "summary": [row.as_json() for row in rows],
            "pids": self.mesh.pids(),
        }

    def where(self) -> None:
        print(f"\n{self.s.bold('Where things are')}  (WORK = {self.work})")
        for name, svc in self.mesh.services.items():
            print(f"  {name:8} access log  {self.mesh.access_log(name)}")
            print(f"  {'':8} metrics     {svc.admin_url('/metrics')}")
        print(f"  {'logs':8} {'':11} {self.work / 'logs'} (sidecars, apps, CA)")
        print(f"  {'mesh':8} {'':11} http://{self.mesh.ca_admin}/v1/mesh (CA admin, JSON)")
        print(f"  {'report':8} {'':11} {self.work / 'report.json'}")

    def poke(self) -> None:
        web, orders = self.web, self.mesh.services["orders"]
        try:
            dashboard = self.mesh.start_dashboard()
        except RuntimeError as exc:  # the mesh is still worth poking without it
            dashboard = f"(not started: {exc})"
        pids = " ".join(str(p) for p in self.mesh.pids().values())
        stop = self.work / "stop.sh"
        stop.write_text(f"#!/bin/sh\n# Stops the demo mesh left running by --keep.\nkill {pids}\n")
        stop.chmod(0o755)
        print(f"\n{self.s.bold('Dashboard:')} {dashboard}")
        print(f"\n{self.s.bold('The mesh is still running (--keep). Poke it:')}")
        for command, comment in [
            (f"curl -s http://127.0.0.1:{web.app_port}/orders/42", "web → orders: allowed"),
            (
                f"curl -s -X POST http://127.0.0.1:{web.app_port}/checkout",
                "web → orders → payments",
            ),
            (f"curl -s -X DELETE http://127.0.0.1:{web.app_port}/orders/42", "403: no-delete"),
            (
                f"curl -s http://127.0.0.1:{web.outbound_ports['orders']}/orders/1",
                "web's outbound sidecar, as web",
            ),
            (
                f"curl -sSk https://127.0.0.1:{orders.inbound_port}/orders/1",
                "no client certificate: TLS alert",
            ),
            (f"mesh-ca mesh stat --admin {self.mesh.ca_admin}", "the mesh as the CA sees it"),
            (f"mesh-ca mesh edges --admin {self.mesh.ca_admin}", "per edge: req/s, p99, denials"),
            (f"mesh-ca check --admin {self.mesh.ca_admin}", "the doctor: ✔/✘ with hints"),
            (f"curl -s {orders.admin_url('/certificate')}", "orders' SVID (serial, notAfter)"),
            (f"curl -s {orders.admin_url('/policies')}", "loaded policy set"),
            (f"curl -s {orders.admin_url('/metrics')} | grep meshgate_authz", "decisions"),
            (f"tail -f {self.mesh.access_log('orders')}", "access log"),
            (f"sh {stop}", "stop everything"),
        ]:
            print(f"  {command}\n      {self.s.dim('# ' + comment)}")


def service_id(line: dict[str, Any]) -> str:
    return str(line.get("peer_id") or "")


def handshake_failures(metrics: str) -> dict[str, float]:
    """Failed inbound handshakes by reason, from the Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "meshgate_tls_handshakes_total" and labels.get("result") == "failed":
                out[labels["reason"]] = out.get(labels["reason"], 0) + sample.value
    return out


def certificate_serial(path: Path) -> str:
    from cryptography import x509

    return format(x509.load_pem_x509_certificate(path.read_bytes()).serial_number, "x")


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--work", type=Path, help="scratch directory (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="leave the mesh running at the end")
    parser.add_argument("--leaf-ttl", default="30s", help="SVID lifetime (default 30s)")
    parser.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="meshgate-demo."))
    work = work.resolve()
    if work.exists() and any(work.iterdir()):
        parser.error(f"--work {work}: the directory is not empty")
    work.mkdir(parents=True, exist_ok=True)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    style = Style(color and "NO_COLOR" not in os.environ)
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGHUP, _raise_exit)
    print(style.bold("meshgate demo") + f": web → orders → payments in {TRUST_DOMAIN}, WORK={work}")
    demo = Demo(work, args.leaf_ttl, style)
    keep = False
    try:
        try:
            demo.step(1, "Bootstrap a CA (scripts/bootstrap-ca.sh)", demo.bootstrap_ca, fatal=True)
            demo.step(2, "Start the CA server", demo.start_ca, fatal=True)
            demo.step(
                3, "Start web, orders, payments, each with a sidecar", demo.start_mesh, fatal=True
            )
        except StepFailedError as exc:
            print(style.bad(f"\nThe mesh did not start: {exc}"), file=sys.stderr)
            print(f"Logs: {work / 'logs'}", file=sys.stderr)
            return 2
        demo.step(4, "Permitted calls succeed (two mTLS hops)", demo.permitted, fatal=False)
        demo.step(5, "Calls the policies forbid get 403", demo.forbidden, fatal=False)
        demo.step(
            6, "A client without a mesh certificate is refused", demo.no_certificate, fatal=False
        )
        demo.step(
            7, "A policy edit on the control plane takes effect live", demo.live_policy_edit,
            fatal=False,
        )  # fmt: skip
        demo.step(8, "Certificates rotate with no failed request", demo.rotation, fatal=False)
        demo.step(9, "A revoked certificate is refused", demo.revocation, fatal=False)
        demo.step(
            10, "orders scales 1 → 3 → 1 under traffic, found by discovery", demo.scale,
            fatal=False,
        )  # fmt: skip
        if demo.traffic is not None and demo.traffic.is_alive():
            demo.traffic.stop()
        rows = demo.rows()
        print(f"\n{style.bold('What happened')} (from the inbound sidecars' access logs)")
        print(format_table(rows))
        report = demo.report(rows)
        (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        demo.where()
        failed = [s for s in demo.steps if not s["ok"]]
        if failed:
            print(style.bad(f"\nFAILED: {len(failed)} step(s) did not behave as described:"))
            for s in failed:
                print(style.bad(f"  [{s['number']}/{STEPS}] {s['title']}: {s['detail']}"))
        else:
            print(style.ok(f"\nAll {STEPS} steps behaved as described in {report['seconds']} s."))
        keep = args.keep
        if keep:
            demo.poke()
        return 1 if failed else 0
    except KeyboardInterrupt:
        print(style.bad("\ninterrupted: stopping everything"), file=sys.stderr)
        return 130
    finally:
        if demo.traffic is not None and demo.traffic.is_alive():
            demo.traffic.stop()
        if demo.scale_traffic is not None and demo.scale_traffic.is_alive():
            demo.scale_traffic.stop()
        if not keep:
            demo.mesh.stop()


if __name__ == "__main__":
    sys.exit(main())
