"""Federation between two independent meshes (issue 17 item 3), all real processes.

Three CAs from `mesh-ca init`: ``a.example``, ``b.example`` and ``c.example``. A and B
federate both ways through each other's https_spiffe bundle endpoint (``/v1/bundle``,
authenticated as ``spiffe://TD/mesh/ca`` against the bundle held for that domain); C
trusts B, but B does not trust C. ``web`` in A calls ``orders`` in B, whose Cedar policy
names ``spiffe://a.example/ns/shop/svc/web`` exactly as it would a local workload: allowed.
``web`` in C is refused by B's inbound with a reason that says why (log, metric, access
record). Then B's ca.toml drops ``a.example``: B's CA stops serving that bundle at its next
check and B's sidecar drops it at its next poll (both every second here), which cuts the
kept-alive connection from A and refuses new ones.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from pathlib import Path

import pytest

from mesh_ca.ca_dir import LoadedCa
from meshgate.identity import SpiffeId
from tests.ca_server_process import CaServer
from tests.integration.ca_mesh import mesh_ca, serving
from tests.integration.federation_mesh import (
    federate,
    get,
    identity,
    init_domain_ca,
    until,
    write_policies,
)
from tests.integration.http_mesh import http_app
from tests.procs import Sidecar, free_port, running_sidecar, write_config

pytestmark = pytest.mark.integration

WEB_A = SpiffeId.parse("spiffe://a.example/ns/shop/svc/web")
WEB_C = SpiffeId.parse("spiffe://c.example/ns/shop/svc/web")
ORDERS_B = SpiffeId.parse("spiffe://b.example/ns/shop/svc/orders")

POLICY = """\
// B's policy names a workload of the federated trust domain a.example as it names its own.
@id("web-of-a-reads-orders")
permit (
  principal == Workload::"spiffe://a.example/ns/shop/svc/web",
  action in Action::"read",
  resource == Service::"orders"
);
"""


def _metric(sidecar: Sidecar, prefix: str) -> float:
    url = f"http://127.0.0.1:{sidecar.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def _records(sidecar: Sidecar) -> list[dict[str, object]]:
    found = []
    for line in sidecar.log().splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def test_web_in_a_calls_orders_in_b_c_is_refused_and_removing_the_federation_cuts_traffic(
    tmp_path: Path,
) -> None:
    ca_a = init_domain_ca(tmp_path / "ca-a", "a.example")
    ca_b = init_domain_ca(tmp_path / "ca-b", "b.example")
    ca_c = init_domain_ca(tmp_path / "ca-c", "c.example")
    port_a, port_b, port_c = free_port(), free_port(), free_port()
    federate(ca_a, (ca_b, port_b), refresh_seconds=1)
    federate(ca_b, (ca_a, port_a))
    federate(ca_c, (ca_b, port_b))
    policies = write_policies(tmp_path / "policies", POLICY)
    ports = {k: free_port() for k in ("orders_in", "web_out", "c_out", "a_adm", "b_adm", "c_adm")}

    with (
        http_app() as app,
        serving(ca_b, tmp_path / "ca-b.log", listen=f"127.0.0.1:{port_b}") as server_b,
        serving(ca_a, tmp_path / "ca-a.log", listen=f"127.0.0.1:{port_a}") as server_a,
        serving(ca_c, tmp_path / "ca-c.log", listen=f"127.0.0.1:{port_c}") as server_c,
    ):
        orders_config = write_config(
            tmp_path / "orders.toml",
            {
                "identity": identity(ca_b, server_b, ORDERS_B, tmp_path / "orders"),
                "inbound": {
                    "listen": f"127.0.0.1:{ports['orders_in']}",
                    "app": f"127.0.0.1:{app.server_address[1]}",
                    "service": "orders",
                    "protocol": "http",
                },
                "policy": {"dir": str(policies)},
                "admin": {"listen": f"127.0.0.1:{ports['b_adm']}"},
            },
        )

        def caller(
            name: str, ca: LoadedCa, server: CaServer, sid: SpiffeId, out: str, adm: str
        ) -> Path:
            return write_config(
                tmp_path / f"{name}.toml",
                {
                    "identity": identity(ca, server, sid, tmp_path / name),
                    "outbound": [
                        {
                            "listen": f"127.0.0.1:{ports[out]}",
                            "service": "orders",
                            "endpoints": [f"127.0.0.1:{ports['orders_in']}"],
                            "spiffe_ids": [str(ORDERS_B)],
                            "protocol": "http",
                        }
                    ],
                    "admin": {"listen": f"127.0.0.1:{ports[adm]}"},
                },
            )

        web_config = caller("web", ca_a, server_a, WEB_A, "web_out", "a_adm")
        web_c_config = caller("web-c", ca_c, server_c, WEB_C, "c_out", "c_adm")
        with (
            running_sidecar(orders_config, ports["b_adm"]) as orders,
            running_sidecar(web_config, ports["a_adm"]) as web,
            running_sidecar(web_c_config, ports["c_adm"]),
        ):
            # 1. Federated both ways: A's web reaches B's orders, allowed by B's policy.
            until(
                "web (a.example) to reach orders (b.example)",
                lambda: get(ports["web_out"], "/orders/1")[0] == 200,
                timeout=60,
            )
            status, body = get(ports["web_out"], "/orders/2")
            assert status == 200, body
            assert f"URI={WEB_A}" in body  # the XFCC the app got names the foreign caller
            # B's access line names the foreign caller and the policy that allowed it
            # (written after the response went out: wait for it).
            until(
                "orders to log the allowed request from a.example",
                lambda: any(
                    r.get("peer_id") == str(WEB_A)
                    and r.get("decision") == "allow"
                    and r.get("policies") == ["web-of-a-reads-orders"]
                    for r in _records(orders)
                ),
                timeout=15,
            )

            # A's CA fetched B's bundle from B's endpoint (https_spiffe), refreshing at the
            # configured 1 s, and keeps the latest in its CA directory.
            until(
                "A's CA to keep b.example's fetched bundle",
                (ca_a.path / "federation" / "b.example.json").exists,
                timeout=30,
            )
            status = json.loads(mesh_ca("status", "--dir", str(ca_a.path), "--json"))
            (row,) = status["federation"]
            assert row["trust_domain"] == "b.example"
            assert row["fetched"]["roots"] == 1
            until(
                "B's CA to serve /v1/bundle to A's CA at least twice (refreshes)",
                lambda: server_b.log().count('"/v1/bundle"') >= 2,
                timeout=30,
            )

            # 2. c.example is not federated with B: refused, and B says why.
            status, body = get(ports["c_out"], "/orders/3")
            assert status != 200, body
            until(
                "orders to log the refused handshake from c.example",
                lambda: any(
                    r.get("msg") == "handshake refused"
                    and r.get("reason") == "unknown_ca"
                    and "unfederated trust domain" in str(r.get("detail"))
                    for r in _records(orders)
                ),
                timeout=15,
            )
            assert (
                _metric(
                    orders,
                    'meshgate_tls_handshakes_total{direction="inbound",reason="unknown_ca",'
                    'result="failed"}',
                )
                >= 1
            )
            assert all(r.get("peer_id") != str(WEB_C) for r in _records(orders))

            # 3. A stops trusting b.example. B still trusts A, so only A can stop the
            # traffic: its pooled connection to orders is not used again and a new
            # handshake fails at A (it no longer knows B's roots).
            kept = http.client.HTTPConnection("127.0.0.1", ports["web_out"], timeout=10)
            assert get(ports["web_out"], "/orders/4", kept)[0] == 200
            federate(ca_a)  # an empty [federation]
            until(
                "web to drop b.example",
                lambda: "no longer trusts b.example" in web.log(),
                timeout=20,
            )
            status, body = get(ports["web_out"], "/orders/5", kept)
            assert status != 200, body
            served = [r.get("path") for r in _records(orders) if r.get("peer_id") == str(WEB_A)]
            assert "/orders/5" not in served

            # 4. A federates again: traffic flows again once its CA serves the bundle and
            # web has polled.
            federate(ca_a, (ca_b, port_b), refresh_seconds=1)
            until(
                "web to reach orders again",
                lambda: get(ports["web_out"], "/orders/6")[0] == 200,
                timeout=30,
            )

            # 5. Remove the federation in B: a kept-alive connection is cut and new ones
            # are refused within one refresh (B's CA check + B's sidecar poll).
            kept = http.client.HTTPConnection("127.0.0.1", ports["web_out"], timeout=10)
            assert get(ports["web_out"], "/orders/7", kept)[0] == 200
            removed_at = time.monotonic()
            federate(ca_b)  # an empty [federation]
            until(
                "orders to drop a.example",
                lambda: "no longer trusts a.example" in orders.log(),
                timeout=20,
            )
            cut_after = time.monotonic() - removed_at
            status, body = get(ports["web_out"], "/orders/8", kept)
            assert status != 200, body
            assert get(ports["web_out"], "/orders/9")[0] != 200
            # The kept-alive connection from A's sidecar was cut as untrusted, not drained.
            until(
                "orders to log the kept-alive connection from A cut as untrusted",
                lambda: any(
                    r.get("msg") == "connection closed"
                    and r.get("outcome") == "cancelled (untrusted)"
                    for r in _records(orders)
                ),
                timeout=15,
            )
            print(f"federation removal took effect after {cut_after:.1f} s")
