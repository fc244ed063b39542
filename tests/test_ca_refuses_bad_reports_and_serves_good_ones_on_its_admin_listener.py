"""`POST /v1/control/report` on a real `mesh-ca serve`: a report from a verified SVID shows
up on the loopback admin listener's ``/v1/mesh`` under that SVID's ID and expiry; bad
bodies are refused clearly (no client certificate, wrong content type, unknown field,
too many edges, over the size cap, too fast), each with its status and code.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from mesh_ca.client import CaClient, CaClientError
from mesh_ca.control.report_wire import MAX_EDGES, MAX_REPORT_BYTES
from meshgate.identity import SpiffeId, TrustDomain
from meshgate.keys import generate_key
from tests.ca_server_process import TRUST_DOMAIN, CaServer, https_request, running_ca_server

pytestmark = pytest.mark.integration

ORDERS = SpiffeId.workload(TRUST_DOMAIN, "shop", "orders")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CaServer, str]]:
    admin = f"127.0.0.1:{_free_port()}"
    with running_ca_server(
        tmp_path_factory.mktemp("ca"), admin_listen=admin, max_body_bytes=4 * MAX_REPORT_BYTES
    ) as running:
        yield running, admin


def report(edges: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "sent_at": datetime.now(UTC).isoformat(),
        "interval_seconds": 1.0,
        "status": {"instance": "host:1", "service": "orders", "version": "0.1.0", "ready": True},
        "edges": edges or [],
    }
    return body | extra


BARE = {"direction": "outbound", "source": "orders", "destination": "payments"}
EDGE = {
    "direction": "inbound",
    "source": "web",
    "destination": "orders",
    "outcomes": [
        {"status_class": "2xx", "decision": "allow", "count": 9},
        {"status_class": "4xx", "decision": "deny", "count": 1},
    ],
    "latency": {"bounds": [0.01, 0.1], "counts": [8, 2, 0], "sum_seconds": 0.2},
    "denials": [{"decision": "deny", "policy": "no-delete", "count": 1}],
}


def view(admin: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{admin}/v1/mesh?window=1m", timeout=5) as response:
        value: dict[str, Any] = json.loads(response.read())
    return value


async def test_reports_are_kept_under_the_verified_id_and_bad_ones_refused(
    server: tuple[CaServer, str],
) -> None:
    ca, admin = server
    key = generate_key()
    async with CaClient([ca.address], TrustDomain(TRUST_DOMAIN), ca.bundles) as client:
        issued = await client.bootstrap(ca.token(ORDERS), key)

        async def send(body: bytes) -> bytes:
            return await client.report(body, issued.chain, key)

        accepted = json.loads(await send(json.dumps(report([EDGE])).encode()))
        assert accepted["accepted"] is True
        mesh = view(admin)
        [instance] = mesh["instances"]
        assert instance["spiffe_id"] == str(ORDERS)  # from the certificate
        assert instance["svid_expires_at"] == issued.not_after.isoformat()
        [edge] = mesh["edges"]
        assert (edge["source"], edge["destination"], edge["requests"]) == ("web", "orders", 10)
        assert edge["success_rate"] == 1.0
        assert edge["denied_by"] == [{"decision": "deny", "policy": "no-delete", "count": 1}]

        refusals = [
            (json.dumps(report(extra_field=1)).encode(), 400, "bad_request", "extra_field"),
            (json.dumps(report([BARE] * (MAX_EDGES + 1))).encode(), 400, "bad_request", "edges"),
            (b"{" + b" " * MAX_REPORT_BYTES + b"}", 413, "report_too_large", "bytes"),
            (b"not json", 400, "bad_request", "body"),
        ]
        for body, status, code, names in refusals:
            with pytest.raises(CaClientError) as refused:
                await send(body)
            assert (refused.value.status, refused.value.code) == (status, code)
            assert names in refused.value.message

        codes = []
        for _ in range(100):  # 10 a second, a burst of 30: a loop cannot stay under it
            try:
                await send(json.dumps(report()).encode())
            except CaClientError as exc:
                codes.append(exc.code)
                break
        assert codes == ["report_rate_limited"]

    anonymous = await https_request(
        ca, "POST", "/v1/control/report", b"{}", headers=[("content-type", "application/json")]
    )
    assert anonymous.status == 401
    assert json.loads(anonymous.body)["error"] == "client_cert_required"
    # The refused reports changed nothing.
    assert view(admin)["edges"][0]["requests"] == 10
