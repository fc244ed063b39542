"""Secure naming comes from registration: a peer must present the ID it registered with.

Two `orders` instances register; one is SIGKILLed and, before its lease runs out, a
workload with another ID (`payments`, allowed to serve only payments, so it does not
register) takes over its address. web still lists the address under the orders ID it
registered with, so every handshake there fails the identity check: the impostor's app
sees nothing, and web's GET requests all succeed on the other instance (the failed
endpoint is ejected, the request retried on another).
"""

from __future__ import annotations

import signal
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.integration.control_mesh import (
    ControlMesh,
    Load,
    discovered,
    named_app,
    wait_until,
    workload,
)
from tests.procs import running_sidecar

pytestmark = pytest.mark.integration


def test_the_impostor_never_gets_a_request(tmp_path: Path) -> None:
    # A lease long enough that the address stays listed while the impostor answers there.
    mesh = ControlMesh.create(tmp_path, lease_ttl=60, renew=20)
    with mesh.serving(), ExitStack() as stack:
        apps = {n: stack.enter_context(named_app(n)) for n in ("o1", "o2", "impostor")}
        nodes = {n: mesh.instance(n, apps[n].port) for n in ("o1", "o2")}
        orders = {
            n: stack.enter_context(running_sidecar(node.config, node.admin))
            for n, node in nodes.items()
        }
        web_node = mesh.client("web")
        web = stack.enter_context(running_sidecar(web_node.config, web_node.admin))
        taken = f"127.0.0.1:{nodes['o2'].inbound}"
        wait_until(
            "web to discover both instances",
            lambda: discovered(web) == {f"127.0.0.1:{nodes['o1'].inbound}", taken},
            timeout=15,
        )
        orders["o2"].stop(signal.SIGKILL)
        impostor = mesh.instance(
            "impostor",
            apps["impostor"].port,
            spiffe_id=workload("payments"),
            central_policies=False,
            inbound_port=nodes["o2"].inbound,
            register=False,
        )
        stack.enter_context(running_sidecar(impostor.config, impostor.admin))
        assert web_node.outbound is not None
        with Load(web_node.outbound) as load:
            wait_until("20 requests", lambda: len(load.results) >= 20, timeout=15)
            assert taken in discovered(web)  # still registered for orders
        assert load.failures() == [], load.failures()[:3]
        assert set(load.served_by()) == {"o1"}
        assert apps["impostor"].requests == 0
        _, view = web.get("/control")
        rows = {r["address"]: r for r in view["discovery"][0]["endpoints"]}
        assert rows[taken]["last_error"] is not None
