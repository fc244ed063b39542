"""tcp mode too: an outbound without endpoints finds the registered instances.

Two `ledger` instances (inbound tcp, central policies allowing `connect` from the shop
namespace) register; web's tcp outbound names `service = "ledger"` and no endpoints, and
its connections reach both instances, each verified against the ID it registered with.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.integration.control_mesh import ControlMesh, discovered, get, named_app, wait_until
from tests.procs import running_sidecar

pytestmark = pytest.mark.integration

LEDGER_POLICY = """
@id("shop-connects-ledger")
permit (principal in Namespace::"shop", action == Action::"connect", resource == Service::"ledger");
"""


def test_connections_spread_over_the_discovered_instances(tmp_path: Path) -> None:
    mesh = ControlMesh.create(tmp_path)
    mesh.edit_policy("ledger.cedar", LEDGER_POLICY)
    with mesh.serving(), ExitStack() as stack:
        apps = {n: stack.enter_context(named_app(n)) for n in ("l1", "l2")}
        nodes = {
            n: mesh.instance(n, apps[n].port, service="ledger", protocol="tcp")
            for n in ("l1", "l2")
        }
        for node in nodes.values():
            stack.enter_context(running_sidecar(node.config, node.admin))
        web_node = mesh.client("web", service="ledger", protocol="tcp")
        web = stack.enter_context(running_sidecar(web_node.config, web_node.admin))
        wait_until(
            "web to discover both ledger instances",
            lambda: len(discovered(web)) == 2,
            timeout=15,
        )
        assert web_node.outbound is not None
        answers = [get(web_node.outbound, "/entries/1") for _ in range(6)]
        assert {status for status, _ in answers} == {200}
        assert {body for _, body in answers} == {"l1", "l2"}
