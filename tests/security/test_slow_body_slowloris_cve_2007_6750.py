"""Slow request bodies (slowloris / slow POST, "R-U-Dead-Yet"; CVE-2007-6750 class): a body
that trickles in a byte at a time restarts any idle timeout forever and holds a connection
slot. Both sidecars (the inbound reading a peer, the outbound reading the local app) give a
body `body_timeout_seconds` plus one second per `body_min_rate_bytes_per_second` received,
then answer 408 and count it in `meshgate_request_body_timeouts_total`. The app never
receives a complete request."""

from __future__ import annotations

import select
import time
from pathlib import Path

import pytest

from tests.security.harness import Client, metric_value, security_mesh

pytestmark = pytest.mark.integration

_TIMEOUTS = {"body_timeout_seconds": 1.0, "body_min_rate_bytes_per_second": 100}
_HEAD = b"POST /items HTTP/1.1\r\nHost: catalog.svc\r\nContent-Length: 10000\r\n\r\n"


def _trickle(client: Client, limit_seconds: float = 30.0) -> int:
    """Send one body byte every 50 ms (20 bytes/s, far under the minimum rate) until the
    server answers; return the status. Trickling is the attack, not a wait."""
    client.send(_HEAD)
    deadline = time.monotonic() + limit_seconds
    while time.monotonic() < deadline:
        try:
            client.sock.sendall(b"x")
        except OSError:
            break  # the server is done with us: its answer is waiting
        readable, _, _ = select.select([client.sock], [], [], 0.05)
        if readable:
            break
    return client.response().status


def test_a_trickling_body_from_a_peer_is_cut_with_408_by_the_inbound(tmp_path: Path) -> None:
    with security_mesh(tmp_path, timeouts=_TIMEOUTS) as mesh:
        assert _trickle(mesh.mesh_client()) == 408
        inbound = 'meshgate_request_body_timeouts_total{direction="inbound",kind="slow"}'
        assert metric_value(mesh.pair.b_admin, inbound) == 1.0
        assert mesh.app.requests() == []

        # Not an outage: a body sent at once goes through.
        body = b"y" * 5000
        head = b"POST /items HTTP/1.1\r\nHost: catalog.svc\r\nContent-Length: 5000\r\n\r\n"
        assert mesh.mesh_client().ask(head + body).status == 200
        assert [s.body for s in mesh.app.requests()] == [body]


def test_a_trickling_body_from_the_local_app_is_cut_with_408_by_the_outbound(
    tmp_path: Path,
) -> None:
    # B is lenient here, so the 408 can only come from A's own pace.
    lenient = {"body_timeout_seconds": 600.0}
    with security_mesh(
        tmp_path, with_outbound=True, timeouts=_TIMEOUTS, b_timeouts=lenient
    ) as mesh:
        assert _trickle(mesh.plain_client()) == 408
        outbound = 'meshgate_request_body_timeouts_total{direction="outbound",kind="slow"}'
        assert metric_value(mesh.pair.a_admin, outbound) == 1.0
        assert mesh.app.requests() == []

        body = b"y" * 5000
        head = b"POST /items HTTP/1.1\r\nHost: catalog.svc\r\nContent-Length: 5000\r\n\r\n"
        assert mesh.plain_client().ask(head + body).status == 200
        assert [s.body for s in mesh.app.requests()] == [body]
