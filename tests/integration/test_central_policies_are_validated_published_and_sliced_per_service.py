"""A real `mesh-ca serve` publishes its policy directory: each sidecar gets only its own
service's slice; an edit reaches a waiting watcher as a new version; a broken edit is
refused and the last good set stays (shown by `mesh-ca policy status` and the admin view);
the status says which version each sidecar enforces and which are stale."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.ca_server_process import CaServer, serving_ca_dir
from tests.control_helpers import Caller, admin_get, control_ca, shop, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CaServer]:
    ca = control_ca(tmp_path, policy_poll_seconds=0.1)
    extra = ("--admin-listen", "127.0.0.1:0")
    with serving_ca_dir(ca, tmp_path / "server.log", extra=extra) as running:
        yield running
    assert running.process.returncode == 0, running.log()


def admin_address(server: CaServer) -> str:
    match = re.search(r"mesh-ca admin on (\S+)", server.log())
    assert match, server.log()
    return match.group(1)


def mesh_ca(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mesh_ca.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_an_edit_is_published_to_watchers_and_a_broken_one_is_refused(
    server: CaServer,
) -> None:
    policies = server.ca.path.parent / "policies"
    orders = Caller.of(server, shop("orders"))
    first = await orders.ok("/v1/control/policies", {"service": "orders"})
    assert first["version"] == 1
    assert set(first["files"]) == {
        "mesh.cedarschema",
        "entities.json",
        "guardrails.cedar",
        "shop.cedar",
    }
    assert "orders-charges-payments" not in first["files"]["shop.cedar"]  # payments' policy

    web = Caller.of(server, shop("web"))
    denied = await web.post("/v1/control/policies", {"service": "orders"})
    assert denied.status == 403
    assert json.loads(denied.body)["error"] == "service_denied"

    async with trio.open_nursery() as nursery:
        seen: list[dict[str, object]] = []

        async def watch() -> None:
            body = {"service": "orders", "after": 1, "wait_ms": 20_000}
            seen.append(await orders.ok("/v1/control/policies", body))

        nursery.start_soon(watch)
        shop_file = policies / "shop.cedar"
        shop_file.write_text(shop_file.read_text().replace('"/orders"', '"/orders/v2"'))
    (second,) = seen
    assert second["version"] == 2
    assert '"/orders/v2"' in second["files"]["shop.cedar"]  # type: ignore[index]

    # A broken edit: refused, version 2 stays, the error is shown.
    (policies / "shop.cedar").write_text("permit (principal, action, resource) when { nope };")
    address = admin_address(server)
    await wait_for(lambda: admin_get(address, "/control/policy")["last_error"] is not None)
    status = admin_get(address, "/control/policy")
    assert status["published"]["version"] == 2
    assert "shop.cedar" in status["last_error"]
    same = await orders.ok("/v1/control/policies", {"service": "orders", "after": 2})
    assert same["version"] == 2  # waited 0 ms: the current set
    assert "policy_set_refused" in server.log()
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        metrics = reply.read().decode()
    assert 'meshgate_ca_control_policy_publishes_total{result="refused"} 1.0' in metrics
    assert 'meshgate_ca_control_policy_publishes_total{result="published"} 2.0' in metrics
    assert "meshgate_ca_control_policy_version 2.0" in metrics

    text = mesh_ca("policy", "status", "--dir", str(server.ca.path))
    assert "published   version 2" in text
    assert "refused: the published version stays in force" in text
    report = json.loads(
        mesh_ca("policy", "status", "--dir", str(server.ca.path), "--output", "json")
    )
    rows = {(r["spiffe_id"], r["enforced_version"], r["state"]) for r in report["sidecars"]}
    assert (str(shop("orders")), 2, "current") in rows


async def test_endpoints_are_listed_by_the_cli_and_the_admin_view(server: CaServer) -> None:
    orders = Caller.of(server, shop("orders"))
    assert (await orders.register("orders", "127.0.0.1:9001")).status == 200
    listed = json.loads(
        mesh_ca("endpoints", "list", "--dir", str(server.ca.path), "--output", "json")
    )
    assert [(e["service"], e["address"]) for e in listed["endpoints"]] == [
        ("orders", "127.0.0.1:9001")
    ]
    assert "127.0.0.1:9001" in mesh_ca(
        "endpoints", "list", "--dir", str(server.ca.path), "--service", "orders"
    )
    refused = await Caller.of(server, shop("web")).register("orders", "127.0.0.1:9002")
    assert refused.status == 403
    with urllib.request.urlopen(f"http://{admin_address(server)}/metrics", timeout=10) as reply:
        metrics = reply.read().decode()
    assert 'meshgate_ca_control_registrations_total{result="new"} 1.0' in metrics
    assert 'meshgate_ca_control_registrations_total{result="registration_denied"} 1.0' in metrics
    assert "meshgate_ca_control_endpoints 1.0" in metrics
    view = admin_get(admin_address(server), "/control/endpoints?service=orders")
    assert [e["spiffe_id"] for e in view["endpoints"]] == [str(shop("orders"))]
    assert admin_get(admin_address(server), "/control/endpoints?service=none")["endpoints"] == []
