"""Central edits propagate and survive outages (issue 15, "Done when").

Two `orders` sidecars take their policies from the control plane (``[policy] source =
"control-plane"``). A policy edited in the CA's policy directory is enforced by both within
2 s; a broken edit is refused by the CA and both keep the last good set; with the CA down
they keep serving and enforcing (and say the set is stale), and one restarted during the
outage enforces the set it persisted in its state_dir.
"""

from __future__ import annotations

import functools
import signal
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.integration.control_mesh import (
    ORDERS_POLICY,
    ControlMesh,
    Node,
    central,
    get,
    named_app,
    wait_until,
    workload,
)
from tests.procs import Sidecar, running_sidecar, started_sidecar, wait_readyz

pytestmark = pytest.mark.integration

PROPAGATION_SECONDS = 2.0
SECRET_FORBIDDEN = (
    ORDERS_POLICY
    + """
@id("nobody-reads-secrets")
forbid (principal, action, resource == Service::"orders") when { context.path like "/secret*" };
"""
)


def stale_metric(sidecar: Sidecar) -> float:
    url = f"http://127.0.0.1:{sidecar.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("meshgate_policy_control_plane_stale "):
            return float(line.split()[1])
    raise AssertionError("no meshgate_policy_control_plane_stale in /metrics")


def moved_on(sidecar: Sidecar, version: int) -> bool:
    return bool(central(sidecar)["version"] != version)


def statuses(port: int, path: str, count: int) -> set[int]:
    return {get(port, path)[0] for _ in range(count)}


def test_central_edits_reach_every_sidecar_and_outlive_the_control_plane(
    tmp_path: Path,
) -> None:
    mesh = ControlMesh.create(tmp_path)
    with ExitStack() as stack:
        server = stack.enter_context(mesh.serving())
        apps = {n: stack.enter_context(named_app(n)) for n in ("o1", "o2")}
        nodes: dict[str, Node] = {n: mesh.instance(n, apps[n].port) for n in ("o1", "o2")}
        for node in nodes.values():
            node.config.write_text(
                node.config.read_text().replace(
                    "[control_plane]", "[control_plane]\nstale_after_seconds = 1"
                )
            )
        orders = {
            n: stack.enter_context(running_sidecar(node.config, node.admin))
            for n, node in nodes.items()
        }
        web_node = mesh.client("web")
        stack.enter_context(running_sidecar(web_node.config, web_node.admin))
        port = web_node.outbound
        assert port is not None
        wait_until("web to reach orders", lambda: get(port)[0] == 200, timeout=15)
        assert statuses(port, "/secret/1", 4) == {200}
        first = {n: central(s)["version"] for n, s in orders.items()}
        assert all(first.values())

        # An edit, published centrally, is enforced by every orders sidecar within 2 s.
        edited_at = time.monotonic()
        mesh.edit_policy("orders.cedar", SECRET_FORBIDDEN)
        for name, sidecar in orders.items():
            wait_until(
                f"{name} to enforce the edited set",
                functools.partial(moved_on, sidecar, first[name]),
                timeout=max(0.0, PROPAGATION_SECONDS - (time.monotonic() - edited_at)),
            )
        print(f"edit enforced by both orders sidecars within {time.monotonic() - edited_at:.2f} s")
        assert statuses(port, "/secret/1", 6) == {403}
        assert statuses(port, "/orders/1", 4) == {200}
        good = {n: central(s)["version"] for n, s in orders.items()}

        # A broken edit is refused by the control plane; the last good set stays.
        mesh.edit_policy("orders.cedar", "permit (principal, action, resource")
        wait_until(
            "the CA to report the broken edit",
            lambda: "orders.cedar" in server.log(),
            timeout=15,
        )
        assert statuses(port, "/secret/1", 4) == {403}
        assert {n: central(s)["version"] for n, s in orders.items()} == good
        assert all(central(s)["refused"] == 0 for s in orders.values())

        # The control plane goes down: both keep serving and enforcing, and say it is stale.
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(15)
        wait_until(
            "both sidecars to call their policy set stale",
            lambda: all(central(s)["stale"] for s in orders.values()),
            timeout=15,
        )
        assert all(stale_metric(s) == 1.0 for s in orders.values())
        _, policies = orders["o2"].get("/policies")
        assert policies["source"] == "control-plane"
        assert policies["control_plane"]["stale"] is True
        status, ready = orders["o2"].get("/readyz")  # stale is a detail: still serving
        assert status == 200
        assert ready["control_plane"]["policies"]["stale"] is True
        assert statuses(port, "/secret/1", 4) == {403}
        assert statuses(port, "/orders/1", 4) == {200}

        # A restart during the outage enforces the persisted set.
        assert orders["o1"].stop() == 0
        restarted = stack.enter_context(running_sidecar(nodes["o1"].config, nodes["o1"].admin))
        view = central(restarted)
        assert view["version"] == good["o1"]
        assert view["loaded_from"] == "persisted"
        before = len(apps["o1"].paths)
        wait_until(
            "the restarted instance to serve again",
            lambda: get(port)[0] == 200 and len(apps["o1"].paths) > before,
            timeout=15,
        )
        assert statuses(port, "/secret/2", 6) == {403}
        assert not [p for p in apps["o1"].paths if p.startswith("/secret/2")]
        assert not [p for p in apps["o2"].paths if p.startswith("/secret/2")]


def test_before_its_first_set_a_sidecar_denies_everything_and_is_not_ready(
    tmp_path: Path,
) -> None:
    mesh = ControlMesh.create(tmp_path)
    mesh.edit_policy("orders.cedar", "permit (principal, action, resource")  # never valid
    with ExitStack() as stack:
        stack.enter_context(mesh.serving())
        app = stack.enter_context(named_app("o1"))
        node = mesh.instance("o1", app.port)
        orders = stack.enter_context(started_sidecar(node.config, node.admin))
        body = wait_readyz(orders, "no_policy_set", timeout=15)
        assert body["control_plane"]["policies"]["version"] is None
        web_node = mesh.client(
            "web", endpoints=[f"127.0.0.1:{node.inbound}"], spiffe_ids=[str(workload("orders"))]
        )
        stack.enter_context(running_sidecar(web_node.config, web_node.admin))
        assert web_node.outbound is not None
        assert statuses(web_node.outbound, "/orders/1", 3) == {403}
        assert app.requests == 0

        mesh.edit_policy("orders.cedar", ORDERS_POLICY)
        wait_readyz(orders, "ready", timeout=15)
        assert statuses(web_node.outbound, "/orders/1", 3) == {200}
