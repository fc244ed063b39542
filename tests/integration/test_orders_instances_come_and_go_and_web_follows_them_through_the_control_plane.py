"""Instances come and go; only permitted IDs serve (issue 15, "Done when").

Three `orders` sidecars register with the control plane and `web`, whose outbound names
`service = "orders"` and no endpoints, spreads GET requests over all three. One is
SIGKILLed: it leaves web's endpoint set within its lease TTL and no request fails (a
request cut by the kill is retried on another endpoint). A fourth instance starts and
receives traffic within 2 s of its registration, with no change to web. A sidecar whose ID
may not serve `orders` (policy: a workload serves only its own service) is refused, says
so in /readyz, and never receives traffic.
"""

from __future__ import annotations

import signal
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.integration.control_mesh import (
    LEASE_TTL_SECONDS,
    ControlMesh,
    Load,
    discovered,
    named_app,
    registration,
    wait_until,
    workload,
)
from tests.procs import Sidecar, running_sidecar, started_sidecar

pytestmark = pytest.mark.integration

PROPAGATION_SECONDS = 2.0  # the bound for a change to reach watchers


def address(mesh: ControlMesh, name: str) -> str:
    return f"127.0.0.1:{mesh.nodes[name].inbound}"


def test_instances_come_and_go_without_failed_requests(tmp_path: Path) -> None:
    mesh = ControlMesh.create(tmp_path)
    with mesh.serving(), ExitStack() as stack:
        apps = {n: stack.enter_context(named_app(n)) for n in ("o1", "o2", "o3", "o4", "evil")}
        orders: dict[str, Sidecar] = {}
        for name in ("o1", "o2", "o3"):
            node = mesh.instance(name, apps[name].port)
            orders[name] = stack.enter_context(running_sidecar(node.config, node.admin))
        web_node = mesh.client("web")
        web = stack.enter_context(running_sidecar(web_node.config, web_node.admin))
        assert web_node.outbound is not None
        wait_until(
            "web to discover the three orders instances",
            lambda: discovered(web) == {address(mesh, n) for n in ("o1", "o2", "o3")},
            timeout=15,
        )

        # An ID that may not serve orders registers as orders: refused, never dialled.
        evil_node = mesh.instance(
            "evil", apps["evil"].port, spiffe_id=workload("intruder"), central_policies=False
        )
        evil = stack.enter_context(running_sidecar(evil_node.config, evil_node.admin))
        wait_until(
            "the intruder's registration to be refused",
            lambda: registration(evil)["state"] == "refused",
            timeout=15,
        )
        assert registration(evil)["last_error_code"] == "registration_denied"
        _, ready = evil.get("/readyz")
        assert ready["control_plane"]["registration"]["state"] == "refused"
        assert "registration refused" in evil.log()

        with Load(web_node.outbound) as load:
            wait_until(
                "requests to reach all three instances",
                lambda: set(load.served_by()) >= {"o1", "o2", "o3"},
                timeout=15,
                detail=lambda: (load.served_by(), load.results[-3:]),
            )
            orders["o2"].stop(signal.SIGKILL)
            left = wait_until(
                "the killed instance to leave web's endpoint set",
                lambda: address(mesh, "o2") not in discovered(web),
                timeout=LEASE_TTL_SECONDS + 1.0,
            )
            after_kill = time.monotonic()

            node = mesh.instance("o4", apps["o4"].port)
            orders["o4"] = stack.enter_context(running_sidecar(node.config, node.admin))
            wait_until(
                "the fourth instance to register",
                lambda: registration(orders["o4"])["state"] == "registered",
                timeout=15,
            )
            registered_at = time.monotonic()
            took = wait_until(
                "the fourth instance to receive traffic",
                lambda: "o4" in load.served_by(registered_at),
                timeout=PROPAGATION_SECONDS,
            )
            wait_until(
                "a few more requests on the new set",
                lambda: len(load.served_by(registered_at + took)) >= 3,
                timeout=15,
            )
        assert load.failures() == [], load.failures()[:5]
        served_after = load.served_by(after_kill)
        assert "o2" not in served_after
        assert set(served_after) == {"o1", "o3", "o4"}
        assert apps["evil"].requests == 0
        print(f"killed instance left after {left:.2f} s; the new one served after {took:.2f} s")


def test_a_sidecar_drained_with_sigterm_deregisters_at_once(tmp_path: Path) -> None:
    mesh = ControlMesh.create(tmp_path)
    with mesh.serving(), ExitStack() as stack:
        apps = {n: stack.enter_context(named_app(n)) for n in ("o1", "o2")}
        orders = {}
        for name in ("o1", "o2"):
            node = mesh.instance(name, apps[name].port)
            orders[name] = stack.enter_context(started_sidecar(node.config, node.admin))
        web_node = mesh.client("web")
        web = stack.enter_context(running_sidecar(web_node.config, web_node.admin))
        wait_until(
            "web to discover both instances",
            lambda: discovered(web) == {address(mesh, "o1"), address(mesh, "o2")},
            timeout=15,
        )
        assert orders["o1"].stop() == 0
        # Well inside the lease TTL: deregistration, not expiry, took it out.
        wait_until(
            "the drained instance to leave web's set",
            lambda: discovered(web) == {address(mesh, "o2")},
            timeout=PROPAGATION_SECONDS,
        )
        assert "deregistered" in orders["o1"].log()
