"""app → outbound sidecar (http) → mTLS → inbound sidecar (http, Cedar) → app: many client
connections, each one request, share a few pooled mTLS connections."""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest

from tests.integration.http_mesh import http_app, http_sidecar_pair
from tests.pki import TestPki as Pki
from tests.procs import running_sidecar

pytestmark = pytest.mark.integration


def _get(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def test_many_client_connections_share_pooled_mtls_connections(tmp_path: Path) -> None:
    with http_app() as app:
        pair = http_sidecar_pair(Pki(), tmp_path, app.server_address[1])
        with (
            running_sidecar(pair.b_config, pair.b_admin),
            running_sidecar(pair.a_config, pair.a_admin) as a,
        ):
            for i in range(30):
                status, body, _ = _get(pair.a_outbound, f"/items/{i}")
                assert status == 200, body
                assert body.startswith(f"/items/{i} xfcc=".encode())
                assert f"URI={pair.a_id}".encode() in body  # set by B from A's verified SVID
            status, body, headers = _get(pair.a_outbound, "/x", {"x-request-id": "req-42"})
            assert headers["x-app-request-id"] == "req-42"
            _, view = a.get("/upstreams")
            (row,) = view["upstreams"]
            assert row["healthy"] is True
            assert row["handshakes"] == 1  # 31 client connections, one mTLS handshake
            assert row["idle"] == 1
            # The destination refuses what policy does not permit: 403 comes back as is.
            conn = http.client.HTTPConnection("127.0.0.1", pair.a_outbound, timeout=10)
            conn.request("DELETE", "/items/1")
            assert conn.getresponse().status == 403
            conn.close()


def test_an_unreachable_destination_is_502_and_dialled_again(tmp_path: Path) -> None:
    """Its only endpoint backs off, but is dialled again rather than refused with a 503
    (see test_a_lone_endpoint_serves_again_as_soon_as_its_sidecar_is_back.py)."""
    with http_app() as app:
        pair = http_sidecar_pair(Pki(), tmp_path, app.server_address[1])
        with running_sidecar(pair.a_config, pair.a_admin) as a:  # B is not running
            for _ in range(2):
                status, body, _ = _get(pair.a_outbound, "/a")
                assert status == 502
                assert b"refused the connection" in body
            _, view = a.get("/upstreams")
            assert view["upstreams"][0]["healthy"] is False
